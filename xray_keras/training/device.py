"""`--device`: make auto/cpu/gpu real for the active Keras backend."""

import keras

from xray_keras.errors import UserError

DEVICES = ("auto", "cpu", "gpu")


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
          raise UserError("--device=cpu must take effect before TensorFlow starts; it did not (GPUs already in use).") from None
      return "cpu"
    if device == "gpu" and not gpus:
      raise UserError("--device=gpu, but TensorFlow sees no GPU (check the CUDA driver and the tensorflow[and-cuda] install).")
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
