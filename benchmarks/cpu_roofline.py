"""How close each study model's CPU training comes to the machine's float32 peak.

  python benchmarks/cpu_roofline.py [--models=vit_scratch,cnn_scratch,resnet50,vit_base] [--quick]

For each model at its experiments/<model>.cfg size, batch, precision, XLA setting and augmentation:
- FLOPs per training image, counted by XLA from the compiled train step (`train_flops.py`, in a
  JAX process): the matrix products and convolutions (model FLOPs) and everything (elementwise
  and random bits too); for ViT_scratch also by hand (`vit_hand_flops`), which must agree with
  the compiled step's model FLOPs within 10%;
- train img/s on one in-memory batch repeated (no input pipeline), and end to end: the real train
  split through the package's feeder with the cfg's augmentation (a whole epoch for the
  from-scratch models; `--pretrained_steps` steps for the pretrained ones), each the median of
  `--repeats` epochs after a warm-up one, each followed by a memory-bandwidth probe (`copy_gbps`:
  these shared machines slow down for seconds at a time);
- achieved GFLOP/s (model FLOPs x img/s) and its fraction of the float32 peak, which this run
  measures with a large matmul (TensorFlow, all cores).
Pretrained models train from random weights here (speed does not depend on the weights), with the
cfg's phase-2 `--unfreeze`. Writes results/cpu_roofline.json with the CPU (its name and x86
family/model), its vector extensions and every timed epoch.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import common  # noqa: E402

VECTOR_FLAGS = (
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "avx512f",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_bf16",
  "amx_int8",
  "asimd",
  "sve",
)
MODELS = ("vit_scratch", "cnn_scratch", "resnet50", "vit_base")


def vector_extensions():
  """The CPU's vector extensions that matter for float32/bfloat16 math, from /proc/cpuinfo."""
  from xray_keras.training.device import cpu_flags

  flags = cpu_flags()
  return [f for f in VECTOR_FLAGS if f in flags]


def read_cfg(name):
  """`{flag: value}` of experiments/<name>.cfg, its --flagfile's first (the cfgs include it on their first line)."""
  from xray_keras.training.run_dir import read_flags

  values = read_flags(os.path.join(REPO, "experiments", f"{name}.cfg"))
  include = values.pop("flagfile", None)
  return {**(read_cfg(os.path.splitext(os.path.basename(include))[0]) if include else {}), **values}


def vit_hand_flops(image_size=64, patch=8, channels=1, layers=4, hidden=56, mlp=224):
  """Model FLOPs of one ViT_scratch training image: 2 per multiply-add of every matrix product,
  x3 for training (forward, gradient of the input, gradient of the weights), x2 for the patch
  embedding (no gradient of the pixels)."""
  patches = (image_size // patch) ** 2
  tokens = patches + 1
  embed = patches * patch * patch * channels * hidden
  block = (
    tokens * hidden * 3 * hidden  # q, k, v
    + 2 * tokens * tokens * hidden  # scores and weighted values, all heads
    + tokens * hidden * hidden  # attention output
    + 2 * tokens * hidden * mlp
  )  # MLP in and out
  head = hidden
  return 2 * (2 * embed + 3 * (layers * block + head))


def peak_gflops(size=4096, repeats=5):
  """Float32 matmul GFLOP/s of this machine (TensorFlow, all cores): the best of `repeats`."""
  import tensorflow as tf

  a, b = tf.random.normal((size, size)), tf.random.normal((size, size))
  matmul = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))
  matmul(a, b).numpy()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).numpy()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def copy_gbps(megabytes=64, seconds=0.5):
  """Memory bandwidth now: GB/s read and written by copying a `megabytes` array (more than this CPU's
  caches hold) for `seconds`. On a shared machine it swings with the neighbours' traffic, and so does
  a small model's step, which streams its activations through memory; a matmul stays in cache."""
  import numpy as np

  source = np.ones(megabytes * 2**18, np.float32)
  target = np.empty_like(source)
  np.copyto(target, source)  # the target's pages mapped before the clock starts
  start, copies = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    np.copyto(target, source)
    copies += 1
  return 2 * source.nbytes * copies / (time.perf_counter() - start) / 1e9


def count_flops(model, size, batch, patch, unfreeze="all", dots=False):
  """`train_flops.py`'s JSON for the model's train step (and each of its matrix products with `dots`)."""
  args = [
    sys.executable,
    os.path.join(HERE, "train_flops.py"),
    f"--model={model}",
    f"--image_size={size}",
    f"--batch_size={batch}",
    f"--patch_size={patch}",
    f"--unfreeze={unfreeze}",
    *(["--dots"] if dots else []),
  ]
  result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "jax"}, cwd=REPO)
  if result.returncode:
    raise RuntimeError(f"train_flops.py {model} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def train_images(size, count, data_dir):
  """`count` real train images (and labels) at `size` px: the full-resolution data where given,
  else the built-in 64 px X-rays, resized up when `size` is larger (speed does not depend on it)."""
  import numpy as np

  from xray_keras.data import loader

  data = loader.load(loader.DataConfig(data_dir=data_dir, image_size=size if data_dir else min(size, 64)))
  train = data.splits["train"]
  images, labels = train.images[:count], train.labels[:count]
  if images.shape[1] != size:
    import tensorflow as tf

    images = tf.cast(tf.round(tf.image.resize(images, (size, size))), tf.uint8).numpy()
  return images, np.asarray(labels)


def measure(name, cfg, data_dir, quick, pretrained_steps, flops=None, repeats=3):
  """Train img/s in memory and end to end at the cfg's size and batch, the median of `repeats` epochs each;
  `flops`: `count_flops`'s, if counted."""
  import keras
  import numpy as np
  from end_to_end import repeated_batch

  from xray_keras import models
  from xray_keras.config import TrainConfig
  from xray_keras.data import feeder
  from xray_keras.training import trainer, transfer
  from xray_keras.training.timing import TimingCallback

  spec = models.get_spec(name)
  size = 32 if quick else int(cfg.get("image_size") or spec.default_image_size)
  batch = int(cfg.get("batch_size", 32))
  patch = int(cfg.get("patch_size", 0))
  unfreeze = cfg.get("unfreeze", "all")
  dropout = float(cfg["dropout"]) if "dropout" in cfg else None
  jit = trainer.resolve_jit(cfg.get("jit_compile", "auto"))
  augment = [a for a in cfg.get("augment", "").split(",") if a]
  precision = cfg.get("mixed_precision", "none")
  if precision != "none":
    keras.mixed_precision.set_global_policy(precision)
  steps = (pretrained_steps if spec.pretrained else 0) or (2 if quick else 0)

  flops = flops or count_flops(name, size, batch, patch, unfreeze)
  images, labels = train_images(size, steps * batch if steps else 10**9, data_dir)
  steps = steps or math.ceil(len(labels) / batch)
  images, labels = images[: steps * batch], labels[: steps * batch]

  model = models.build_model(name, (size, size, 1), patch_size=patch or None, weights="none", dropout=dropout)
  if spec.pretrained:
    transfer.set_trainable(model, unfreeze, freeze_batchnorm=False)
  train_config = TrainConfig(
    optimizer=cfg.get("optimizer", "adam"),
    learning_rate=float(cfg.get("learning_rate", 1e-3)),
    weight_decay=float(cfg.get("weight_decay", 0)),
    schedule=cfg.get("schedule", "constant"),
    epochs=1,
    warmup_epochs=0,
  )
  model.compile(
    **trainer.compile_kwargs(trainer.make_optimizer(train_config, steps), jit),
    steps_per_execution=int(cfg.get("steps_per_execution", 1)),
  )

  bandwidth = []

  def fit_s(dataset):
    timing = TimingCallback(len(labels), batch)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[timing], shuffle=False)
    bandwidth.append(copy_gbps())
    return timing.epochs[0]["train_s"]

  # Whole batches only, as tf.data feeds training (its last batch filled from the next shuffle): one
  # compiled shape, compiled in the warm-up.
  filled = keras.backend.backend() == "tensorflow" and len(labels) > batch
  count = steps * batch if filled else len(labels)
  memory = repeated_batch(
    images[:batch].astype(np.float32), labels[:batch].astype(np.float32), steps, count - batch * (steps - 1)
  )
  real = feeder.make_feeder(images, labels, batch, True, 0, feeder.augmentation(augment, seed=0))
  fit_s(real)  # warm-up: tracing, compilation, the first shuffle
  memory_s = [fit_s(memory) for _ in range(repeats)]
  real_s = [fit_s(real) for _ in range(repeats)]
  return {
    "model": name,
    "display_name": spec.display_name,
    "image_size": size,
    "batch_size": batch,
    "jit_compile": jit,
    "mixed_precision": precision,
    "augmentation": augment,
    "unfreeze": unfreeze if spec.pretrained else None,
    "images_timed": count,
    "whole_epoch": not spec.pretrained or quick,
    "model_flops_per_image": flops["matmul_flops_per_image"],
    "all_flops_per_image": flops["flops_per_image"],
    "epochs_timed": repeats,
    "in_memory_images_per_s": count / statistics.median(memory_s),
    "end_to_end_images_per_s": count / statistics.median(real_s),
    "in_memory_images_per_s_each": [count / s for s in memory_s],
    "end_to_end_images_per_s_each": [count / s for s in real_s],
    "copy_gbps_after_each": bandwidth[1:],  # in memory, then end to end, as the epochs above
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--data_dir", default="", help="full-resolution data for the end-to-end epochs; empty: built-in")
  parser.add_argument("--pretrained_steps", type=int, default=6, help="end-to-end steps timed for pretrained models")
  parser.add_argument("--repeats", type=int, default=3, help="epochs timed of each kind; img/s is their median")
  parser.add_argument("--quick", action="store_true", help="32 px, two batches, one model: checks the script runs")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  peak = peak_gflops(1024 if flags.quick else 4096)
  print(f"float32 matmul peak: {peak:.0f} GFLOP/s", flush=True)
  rows = []
  for name in flags.models.split(","):
    row = measure(name, read_cfg(name), flags.data_dir, flags.quick, flags.pretrained_steps, repeats=flags.repeats)
    for kind in ("in_memory", "end_to_end"):
      gflops = row["model_flops_per_image"] * row[f"{kind}_images_per_s"] / 1e9
      row[f"{kind}_gflops"], row[f"{kind}_fraction_of_peak"] = gflops, gflops / peak
    if name == "vit_scratch":
      row["hand_model_flops_per_image"] = vit_hand_flops(row["image_size"], int(read_cfg(name).get("patch_size", 8)))
      row["hand_vs_compiled"] = row["hand_model_flops_per_image"] / row["model_flops_per_image"]
    rows.append(row)
    print(
      f"{name:<12} {row['image_size']:>4}px b{row['batch_size']}: {row['model_flops_per_image'] / 1e6:9.1f} MFLOP/img, "
      f"in memory {row['in_memory_images_per_s']:7.1f} img/s ({row['in_memory_fraction_of_peak']:.1%} of peak), "
      f"end to end {row['end_to_end_images_per_s']:7.1f} img/s ({row['end_to_end_fraction_of_peak']:.1%})",
      flush=True,
    )
  import tensorflow as tf

  path = common.write_result(
    "cpu_roofline",
    {
      "quick": flags.quick,
      "vector_extensions": vector_extensions(),
      "tensorflow": tf.__version__,
      "float32_peak_gflops": peak,
      "peak_by": "TensorFlow float32 matmul 4096x4096, best of 5",
      "rows": rows,
    },
    flags.output,
  )
  print("wrote", path)


if __name__ == "__main__":
  main()
