"""Where one train step of a study model goes, op kind by op kind: ours (TensorFlow) against PyTorch.

The question behind it: why a model's train step is slower than its PyTorch peer's in some
precision (in `cpu_vs_torch.json`, the convolutional models in bfloat16). Each (framework,
precision) runs in its own process on the same batch as `step_speed.py`: warm-up steps, then
`--steps` steps under the framework's own profiler (`tf.profiler`, `torch.profiler`). Self time
(an event's time minus the events nested in it) is summed per op type and grouped: convolutions
forward, their input and filter gradients, batch norm (and its gradient), casts and copies, matrix
products, the optimizer, other kernels.

  python benchmarks/op_profile.py [--models=resnet50,cnn_scratch] [--precisions=float32,bfloat16] [--quick]

Needs the `bench` extra (PyTorch, torchvision). Writes results/op_profile.json: per row, the step's
median wall time, and milliseconds per step of each group summed over the compute threads (so
with two threads busy the groups add up to about twice the wall time).
"""

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from epoch_profile import self_times  # noqa: E402
from step_speed import _batch, torch_step  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PLAN = {"cnn_scratch": 32, "vit_scratch": 32, "resnet50": 16, "vit_base": 8}  # batch, as in cpu_vs_torch.py
GROUPS = (
  "convolution forward",
  "convolution input gradient",
  "convolution filter gradient",
  "batch norm",
  "casts and copies",
  "matrix products",
  "optimizer",
  "other kernels",
)


def tf_group(event):
  """The group of a TensorFlow trace event, "scope/node:OpType" (batch norm by its layer's scope)."""
  node, _, op = event.rpartition(":")
  node, low = node.lower(), (op or event).lower()
  if "backpropfilter" in low:
    return "convolution filter gradient"
  if "backpropinput" in low:
    return "convolution input gradient"
  if "conv" in low:
    return "convolution forward"
  if node.startswith(("adam/", "sgd/", "adamw/")) or low.startswith(("resourceapply", "assign")):
    return "optimizer"
  if "_bn" in node or "batchnorm" in low or "batch_norm" in node:
    return "batch norm"
  if low in ("cast", "identity", "copy", "_mkltotf"):
    return "casts and copies"
  if "matmul" in low or "einsum" in low:
    return "matrix products"
  return "other kernels"


def torch_group(name):
  """The group of a PyTorch profiler op name."""
  low = name.lower()
  if "convolution_backward" in low:
    return "convolution filter gradient"  # one op computes both gradients; counted here
  if "conv" in low:
    return "convolution forward"
  if "batch_norm" in low:
    return "batch norm"
  if low in ("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"):
    return "casts and copies"
  if low.endswith(("::mm", "::addmm", "::bmm", "::linear", "::matmul", "::baddbmm")):
    return "matrix products"
  if "foreach" in low or "optimizer" in low or "adam" in low:
    return "optimizer"
  return "other kernels"


def tf_groups(xspace_path, steps):
  """{group: ms per step} of the compute threads' self time in a TensorFlow trace."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2

  space = xplane_pb2.XSpace()
  with open(xspace_path, "rb") as f:
    space.ParseFromString(f.read())
  out, types = collections.Counter(), collections.Counter()
  for plane in space.planes:
    if plane.name != "/host:CPU":
      continue
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if line.name == "python" or line.name.startswith("tf_data"):
        continue
      for name, seconds in self_times(line.events, names).items():
        if name.startswith(("ExecutorState", "ThreadpoolListener", "Eager", "FunctionRun", "KernelAndDevice")):
          continue
        types[name.rpartition(":")[2] or name] += seconds
        out[tf_group(name)] += seconds
  per_step = {g: 1000 * out[g] / steps for g in GROUPS if out[g]}
  top = {t: round(1000 * s / steps, 2) for t, s in types.most_common(12)}
  return per_step, top


def profile_keras(model_name, size, batch, precision, steps):
  import keras
  import tensorflow as tf

  from xray_keras import models
  from xray_keras.models import fused_adam

  if precision == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = models.build_model(model_name, (size, size, 1), weights="none")
  model.compile(optimizer=fused_adam.FusedAdam(1e-4), loss=keras.losses.BinaryCrossentropy(), jit_compile=False)
  images, labels = (keras.ops.convert_to_tensor(a) for a in _batch(size, batch))
  for _ in range(2):
    model.train_on_batch(images, labels)
  with tempfile.TemporaryDirectory() as logdir:
    tf.profiler.experimental.start(logdir)
    walls = []
    for _ in range(steps):
      start = time.perf_counter()
      model.train_on_batch(images, labels)
      walls.append(time.perf_counter() - start)
    tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    groups, top = tf_groups(path, steps)
  return {
    "framework": "keras-tensorflow",
    "step_s": sorted(walls)[len(walls) // 2],
    "groups_ms": groups,
    "top_ops_ms": top,
  }


def profile_torch(model_name, size, batch, precision, steps):
  import torch

  model, step, _ = torch_step(model_name, size, batch, precision, None)
  model.train()
  for _ in range(2):
    step()
  walls = []
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      start = time.perf_counter()
      step()
      walls.append(time.perf_counter() - start)
  out, types = collections.Counter(), collections.Counter()
  for event in prof.key_averages():
    seconds = event.self_cpu_time_total / 1e6
    types[event.key] += seconds
    out[torch_group(event.key)] += seconds
  groups = {g: 1000 * out[g] / steps for g in GROUPS if out[g]}
  top = {t: round(1000 * s / steps, 2) for t, s in types.most_common(12)}
  return {
    "framework": "torch",
    "threads": torch.get_num_threads(),
    "step_s": sorted(walls)[len(walls) // 2],
    "groups_ms": groups,
    "top_ops_ms": top,
  }


def worker(flags):
  fn = profile_torch if flags.framework == "torch" else profile_keras
  row = fn(flags.model, flags.size, flags.batch, flags.precision, flags.steps)
  row.update({"model": flags.model, "precision": flags.precision, "image_size": flags.size, "batch_size": flags.batch})
  row["train_images_per_s"] = flags.batch / row["step_s"]
  with open(flags.result, "w") as f:
    json.dump(row, f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet50,cnn_scratch")
  parser.add_argument("--precisions", default="float32,bfloat16")
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--quick", action="store_true", help="32 px, batch 2, one step: checks the script runs")
  parser.add_argument("--output", default=None)
  parser.add_argument("--framework", default=None, help=argparse.SUPPRESS)  # the worker's own flags
  parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
  flags = parser.parse_args()
  if flags.framework:
    return worker(flags)
  size, steps = (32, 1) if flags.quick else (224, flags.steps)
  rows = []
  for model in flags.models.split(","):
    batch = 2 if flags.quick else PLAN[model]
    for precision in flags.precisions.split(","):
      for framework in ("keras", "torch"):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
          args = [sys.executable, __file__, f"--framework={framework}", f"--model={model}", f"--steps={steps}"]
          args += [f"--precision={precision}", f"--size={size}", f"--batch={batch}", f"--result={out.name}"]
          env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
          done = subprocess.run(args, capture_output=True, text=True, env=env)
          if done.returncode:
            raise RuntimeError(f"{framework} {model} {precision} failed:\n{done.stderr[-3000:]}")
          with open(out.name) as f:
            row = json.load(f)
        rows.append(row)
        shown = ", ".join(f"{g} {ms:.0f}" for g, ms in row["groups_ms"].items())
        print(
          f"{model} {row['framework']} {precision}: {row['train_images_per_s']:.2f} img/s; ms/step: {shown}", flush=True
        )
  path = common.write_result("op_profile", {"quick": flags.quick, "image_size": size, "rows": rows}, flags.output)
  print("wrote", path)


if __name__ == "__main__":
  main()
