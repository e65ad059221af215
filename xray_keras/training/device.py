"""`--device`: make auto/cpu/gpu real for the active Keras backend; `--mixed_precision=auto` likewise."""

import os

import keras
from absl import logging

from xray_keras import choices
from xray_keras.errors import UserError

DEVICES = choices.DEVICES


def configure(device):
  """Restricts the backend to `device` before any op runs. Returns what will be used.

  Raises:
    UserError: `gpu` was asked for and the backend sees none.
  """
  if device not in DEVICES:
    raise UserError(f"Unknown device: {device!r}. Expected one of {DEVICES}.")
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
      if gpus:
        try:
          tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
          raise UserError(
            "--device=cpu must take effect before TensorFlow starts; it did not (GPUs already in use)."
          ) from None
      return "cpu"
    if device == "gpu" and not gpus:
      raise UserError(
        "--device=gpu, but TensorFlow sees no GPU (check the CUDA driver and the tensorflow[and-cuda] install)."
      )
    return f"gpu x{len(gpus)}" if gpus else "cpu"
  if backend == "jax":
    import jax

    if device == "cpu":
      jax.config.update("jax_platforms", "cpu")
      return "cpu"
    try:
      gpus = jax.devices("gpu")
    except RuntimeError:
      gpus = []
    if device == "gpu" and not gpus:
      raise UserError("--device=gpu, but JAX sees no GPU (install jax[cuda12] and check the driver).")
    return f"gpu x{len(gpus)}" if gpus else "cpu"
  if device == "gpu":
    raise UserError(f"--device=gpu is not supported on the {backend} backend here.")
  return "cpu"


def compilation_cache(cache_dir):
  """JAX: persists compiled XLA programs under `cache_dir`/jax_compilation. Returns the folder, or None.

  A rerun of the same model and shapes then loads its train step instead of compiling it
  (ViT_scratch on 2 CPU cores: first step about 10 s cold, 2 s warm). TensorFlow has no such cache.
  """
  if keras.backend.backend() != "jax":
    return None
  import jax
  from jax.experimental.compilation_cache import compilation_cache as jax_cache

  from xray_keras.data import cache

  folder = os.path.join(cache_dir or cache.default_cache_dir(), "jax_compilation")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    logging.warning("No JAX compilation cache (%s): every run compiles from scratch.", e)
    return None
  # JAX reads the cache through etils.epath, which would import TensorFlow (tf.io.gfile) wherever it
  # is installed; a local folder needs no TensorFlow.
  os.environ.setdefault("EPATH_USE_TF", "false")
  jax_cache.reset_cache()  # JAX fixes its cache setting at its first compile, which may have happened
  jax_cache.set_cache_dir(folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return folder


def cpu_flags(cpuinfo="/proc/cpuinfo"):
  """The CPU's feature flags (x86 `flags`, Arm `Features` in /proc/cpuinfo); empty where it cannot be read."""
  try:
    with open(cpuinfo) as f:
      lines = [line for line in f if line.split(":", 1)[0].strip() in ("flags", "Features")]
  except OSError:
    return set()
  return set(lines[0].split(":", 1)[1].split()) if lines else set()


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
  """Whether the CPU does bfloat16 arithmetic natively (x86 AVX-512 BF16 or AMX, Arm BF16): elsewhere
  a bfloat16 step is emulated and slower than float32. False where the CPU cannot be read."""
  return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16", "bf16"})


def mixed_precision_policy(value, used_device, cpuinfo="/proc/cpuinfo"):
  """`--mixed_precision` made concrete: `auto` is mixed_bfloat16 on a CPU with native bfloat16, else none."""
  if value != "auto":
    return value
  if used_device == "cpu" and cpu_has_bfloat16(cpuinfo):
    logging.info("--mixed_precision=auto: mixed_bfloat16 (the CPU has native bfloat16 arithmetic)")
    return "mixed_bfloat16"
  reason = "a GPU is in use" if used_device != "cpu" else "the CPU has no native bfloat16 arithmetic"
  logging.info("--mixed_precision=auto: float32 (%s)", reason)
  return "none"
