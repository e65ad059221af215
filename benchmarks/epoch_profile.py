"""Where a real training epoch of each scratch cfg spends its time, from TensorFlow's profiler trace.

For experiments/vit_scratch.cfg and cnn_scratch.cfg: the cfg's model, batch, XLA setting and
augmentation on real train images through the package's feeder; one warm-up epoch (tracing,
compilation), then one epoch under `tf.profiler`. The trace (XSpace) is read back and each
thread's events are reduced to self time (an event's time minus the events nested in it), then
grouped:

- wall: the epoch; step: inside the compiled train function (the Python thread's
  `multi_step_on_iterator` calls); outside it: Keras' Python loop (the run's own callbacks are
  not attached here).
- compute threads' self time by kind: matrix products, convolutions, other kernels (elementwise,
  reductions, layout), the runtime around them (executors, XLA thunk dispatch), and a thread
  waiting on the compiled program while the others run it.
- input threads: augmentation ops, and tf.data's own work.

  python benchmarks/epoch_profile.py [--models=vit_scratch,cnn_scratch] [--quick]

Writes results/epoch_profile.json.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from cpu_roofline import read_cfg, train_images  # noqa: E402

_RUNTIME = (
  "ExecutorState",
  "ExecutorDone",
  "ThunkExecutor",
  "CpuExecutable",
  "BlockUntilReady",
  "Eager",
  "KernelAndDevice",
  "TFE_",
  "FunctionRun",
  "InstantiatedCapturedFunction",
  "ThreadpoolListener",
)


def kind(name):
  """The group of a trace event by its name."""
  low = name.lower()
  if "augmentation" in low:
    return "augmentation"
  if name.startswith(("Iterator::", "Prefetch", "ParallelMap", "IteratorGetNext")):
    return "tf.data"
  if name.startswith("BlockUntilReady"):
    return "waiting on the compiled program"
  if name.startswith(_RUNTIME):
    return "runtime"
  if "conv" in low:
    return "convolutions"
  if "matmul" in low or low.startswith(("dot", "gemm", "einsum", "batchmatmul")):
    return "matrix products"
  return "other kernels"


def self_times(events, names):
  """{name: seconds} of self time on one thread: nested events are subtracted from their parent."""
  out = collections.Counter()
  stack = []  # (end_ps, name)
  for offset, duration, name in sorted((e.offset_ps, e.duration_ps, names.get(e.metadata_id, "?")) for e in events):
    while stack and stack[-1][0] <= offset:
      stack.pop()
    if stack:
      out[stack[-1][1]] -= duration / 1e12
    out[name] += duration / 1e12
    stack.append((offset + duration, name))
  return out


def breakdown(xspace_path, wall):
  """Groups of self time from a trace file, and the time inside the compiled step."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2

  space = xplane_pb2.XSpace()
  with open(xspace_path, "rb") as f:
    space.ParseFromString(f.read())
  compute, inputs, step = collections.Counter(), collections.Counter(), 0.0
  for plane in space.planes:
    if plane.name != "/host:CPU":
      continue
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      times = self_times(line.events, names)
      if line.name == "python":
        step += sum(e.duration_ps for e in line.events if names.get(e.metadata_id) == "multi_step_on_iterator") / 1e12
        continue
      target = inputs if line.name.startswith("tf_data") else compute
      for name, seconds in times.items():
        target[kind(name)] += seconds
  return {
    "wall_s": wall,
    "in_compiled_step_s": step,
    "outside_step_s": max(wall - step, 0.0),
    "compute_thread_s": dict(compute),
    "input_thread_s": dict(inputs),
  }


def profile(name, cfg, quick):
  import keras
  import numpy as np
  import tensorflow as tf

  from xray_keras import models
  from xray_keras.config import TrainConfig
  from xray_keras.data import feeder
  from xray_keras.training import trainer

  spec = models.get_spec(name)
  size = 32 if quick else int(cfg.get("image_size") or spec.default_image_size)
  batch = 8 if quick else int(cfg.get("batch_size", 32))
  images, labels = train_images(size, 4 * batch if quick else 10**9, "")
  dropout = float(cfg["dropout"]) if "dropout" in cfg else None
  jit = trainer.resolve_jit(cfg.get("jit_compile", "auto"))
  augment = [a for a in cfg.get("augment", "").split(",") if a]
  steps = -(-len(labels) // batch)
  model = models.build_model(
    name, (size, size, 1), patch_size=int(cfg.get("patch_size", 0)) or None, weights="none", dropout=dropout
  )
  train = TrainConfig(
    optimizer=cfg.get("optimizer", "adam"),
    learning_rate=float(cfg.get("learning_rate", 1e-3)),
    weight_decay=float(cfg.get("weight_decay", 0)),
    epochs=1,
    warmup_epochs=0,
  )
  model.compile(**trainer.compile_kwargs(trainer.make_optimizer(train, steps), jit))
  data = feeder.make_feeder(images, labels.astype(np.float32), batch, True, 0, feeder.augmentation(augment, seed=0))
  model.fit(data, epochs=1, verbose=0)  # warm-up: tracing, compilation
  with tempfile.TemporaryDirectory() as logdir:
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    result = breakdown(path, wall)
  keras.backend.clear_session()
  return {
    "model": name,
    "image_size": size,
    "batch_size": batch,
    "jit_compile": jit,
    "augmentation": augment,
    "images": len(labels),
    "images_per_s_profiled": len(labels) / wall,
    **result,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="vit_scratch,cnn_scratch")
  parser.add_argument("--quick", action="store_true", help="32 px, four batches of 8: checks the script runs")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  rows = [profile(name, read_cfg(name), flags.quick) for name in flags.models.split(",")]
  path = common.write_result("epoch_profile", {"quick": flags.quick, "rows": rows}, flags.output)
  for row in rows:
    total = sum(row["compute_thread_s"].values()) or 1.0
    parts = ", ".join(
      f"{k} {100 * v / total:.0f}%" for k, v in sorted(row["compute_thread_s"].items(), key=lambda kv: -kv[1])
    )
    print(
      f"{row['model']}: epoch {row['wall_s']:.2f}s ({row['images_per_s_profiled']:.0f} img/s), in the compiled step "
      f"{row['in_compiled_step_s']:.2f}s, outside {row['outside_step_s']:.2f}s; compute threads: {parts}; "
      f"input threads: " + ", ".join(f"{k} {v:.2f}s" for k, v in row["input_thread_s"].items())
    )
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
