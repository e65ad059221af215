"""The GPU test bed in one call: step speed against torch.compile, then the four-model study end to end.

For an H100/H200 machine with JAX (CUDA) and PyTorch; TensorFlow is not needed:

  KERAS_BACKEND=jax python3 benchmarks/gpu_study.py --data_dir=<chest_xray_224> --output=gpu_study.json

1. `gpu_vs_torch.py` for the four models (224 px, bf16), within `--compare_budget_s`.
2. The study as a user runs it: `python -m xray_keras.run --flagfile=experiments/study.cfg` on the
   real data with mixed bfloat16 and `--weights=none` (pretrained models start from random weights
   here, as their ImageNet files are not on the machine), report included; wall time, and the GPU's
   utilisation sampled by `nvidia-smi` every 0.5 s (mean over the whole study and while it trains).
3. For CNN_scratch and ViT_scratch: the same model's in-memory training step (`step_speed.py`) at its
   cfg size and batch, against the study's epoch images/s: `epoch_vs_step` near 1 means the feeder
   keeps up with the step.
4. The levers on the compute gap to torch.compile, each a `step_speed.py` run of ResNet50 / ViT_Base
   at 224 px against our model at the same batch (`LEVERS`): the bare backbone without our wrapper,
   twice the batch, Keras flash attention (ViT_Base), and XLA flags. No lever starts after
   `--levers_budget_s`.

The result file is rewritten after each part, so a run cut short keeps what finished. `--quick`
checks the script on the CPU: built-in data, 32 px, a few images, one epoch, two models.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import cpu_vs_torch  # noqa: E402

REPO = os.path.dirname(HERE)
MODELS = ("cnn_scratch", "vit_scratch", "resnet50", "vit_base")
SCRATCH = ("cnn_scratch", "vit_scratch")
# name -> (models, extra step_speed arguments, batch factor, extra environment)
LEVERS = {
  "ours": (("resnet50", "vit_base"), [], 1, {}),
  "plain_backbone": (("resnet50", "vit_base"), ["--plain"], 1, {}),
  "batch_x2": (("resnet50", "vit_base"), [], 2, {}),
  "flash_attention": (("vit_base",), ["--flash_attention"], 1, {}),
  "xla_autotune_4": (("resnet50", "vit_base"), [], 1, {"XLA_FLAGS": "--xla_gpu_autotune_level=4"}),
}
QUICK_FLAGS = [
  "--image_size=32",
  "--max_images_per_split=8",
  "--epochs=1",
  "--head_epochs=0",
  "--batch_size=8",
  "--bootstrap_resamples=10",
]


class GpuSampler(threading.Thread):
  """Samples `nvidia-smi` GPU utilisation (%) every `interval` seconds until stopped."""

  def __init__(self, interval=0.5):
    super().__init__(daemon=True)
    self.interval, self.samples, self._stop_event = interval, [], threading.Event()
    self.available = shutil.which("nvidia-smi") is not None

  def run(self):
    while self.available and not self._stop_event.is_set():
      try:
        out = subprocess.run(
          ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
          capture_output=True,
          text=True,
          timeout=5,
        ).stdout.split()
        self.samples.append((round(time.time(), 2), float(out[0])))
      except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        pass
      self._stop_event.wait(self.interval)

  def stop(self):
    self._stop_event.set()
    self.join(timeout=10)

  def mean(self, windows=None):
    """Mean utilisation over all samples, or over those inside the `(start, end)` windows (Unix time)."""
    values = [u for t, u in self.samples if windows is None or any(a <= t <= b for a, b in windows)]
    return sum(values) / len(values) if values else None


def compare_with_torch(flags):
  """Part 1: gpu_vs_torch.py's rows (its own process, its own result file)."""
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    args = [
      sys.executable,
      os.path.join(HERE, "gpu_vs_torch.py"),
      f"--output={out.name}",
      f"--budget_s={flags.compare_budget_s}",
      f"--models={flags.compare_models}",
    ]
    if flags.quick:
      args += ["--quick", "--peer=torch"]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
      return {"error": result.stderr[-2000:]}
    with open(out.name) as f:
      report = json.load(f)
  return {k: report[k] for k in ("device", "peak_bf16_flops", "precision", "image_size", "rows", "skipped_for_time")}


def run_study(flags, study_dir, sampler):
  """Part 2: the study command; returns its wall time, exit code and the per-model timing."""
  args = [
    sys.executable,
    "-m",
    "xray_keras.run",
    "--flagfile=experiments/study.cfg",
    f"--models={flags.models}",
    f"--output_dir={study_dir}",
    "--overwrite",
    "--weights=none",
    f"--mixed_precision={flags.precision}",
  ]
  args += [f"--data_dir={flags.data_dir}"] if flags.data_dir else []
  args += QUICK_FLAGS if flags.quick else []
  args += flags.study_flags.split() if flags.study_flags else []
  start = time.perf_counter()
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
  wall = time.perf_counter() - start
  out = {
    "command": " ".join(args[1:]),
    "exit_code": result.returncode,
    "wall_s": wall,
    "report_written": os.path.isfile(os.path.join(study_dir, "report.md")),
    "models": {},
  }
  if result.returncode:
    out["stderr_tail"] = result.stderr[-2000:]
  training = []
  for model in flags.models.split(","):
    path = os.path.join(study_dir, model, "timing.json")
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      timing = json.load(f)
    fit_s = timing.get("fit_s") or 0.0
    ended = os.path.getmtime(os.path.join(study_dir, model, "history.csv"))  # the last epoch's row
    training.append((ended - fit_s, ended))
    out["models"][model] = {
      k: timing.get(k)
      for k in (
        "fit_s",
        "total_run_s",
        "train_images_per_s",
        "batch_size",
        "mean_epoch_s",
        "epochs_run",
        "first_step_s",
      )
    }
    with open(os.path.join(study_dir, model, "metrics.json")) as f:
      metrics = json.load(f)
    out["models"][model]["input_shape"] = metrics["model"]["input_shape"]
    out["models"][model]["test_auc"] = metrics["test"]["auc"]
  out["gpu_util_mean_pct"] = sampler.mean()
  out["gpu_util_training_pct"] = sampler.mean(training) if training else None
  return out


def epoch_vs_step(flags, study):
  """Part 3: in-memory step speed of the scratch models at the study's size and batch."""
  rows = []
  timing = (
    ["--warmup=1", "--min_steps=1", "--min_seconds=0"]
    if flags.quick
    else ["--warmup=5", "--min_steps=50", "--min_seconds=5"]
  )
  for model in SCRATCH:
    run = study["models"].get(model)
    if not run:
      continue
    size, batch = run["input_shape"][0], run["batch_size"]
    patch = 8 if model == "vit_scratch" else 0
    step = cpu_vs_torch.run_worker(
      "keras", "jax", model, "bfloat16" if "bfloat16" in flags.precision else "float32", size, batch, patch, timing
    )
    epoch = run["train_images_per_s"]
    rows.append(
      {
        "model": model,
        "image_size": size,
        "batch_size": batch,
        "epoch_train_images_per_s": epoch,
        "step_train_images_per_s": step["train_images_per_s"],
        "epoch_vs_step": epoch / step["train_images_per_s"] if epoch else None,
      }
    )
  return rows


def levers(flags):
  """Part 4: images/s of each lever against "ours" in the same script run."""
  import gpu_vs_torch

  start, rows, skipped = time.perf_counter(), [], []
  size = 32 if flags.quick else 224
  timing = (
    ["--warmup=1", "--min_steps=1", "--min_seconds=0"]
    if flags.quick
    else ["--warmup=3", "--min_steps=10", "--min_seconds=3"]
  )
  for name, (models, extra, factor, env) in LEVERS.items():
    for model in models:
      if model not in flags.lever_models.split(","):
        continue
      if time.perf_counter() - start > flags.levers_budget_s:
        skipped.append(f"{name} {model}")
        continue
      batch = 2 if flags.quick else gpu_vs_torch.PLAN[model][0]
      saved = {k: os.environ.get(k) for k in env}
      os.environ.update(env)
      try:
        row = cpu_vs_torch.run_worker("keras", "jax", model, "bfloat16", size, batch * factor, 0, timing, extra)
      except RuntimeError as e:
        rows.append({"lever": name, "model": model, "error": str(e)[-500:]})
        continue
      finally:
        for k, v in saved.items():
          os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
      rows.append(
        {
          "lever": name,
          "model": model,
          "batch_size": batch * factor,
          "train_images_per_s": row["train_images_per_s"],
          "infer_images_per_s": row["infer_images_per_s"],
        }
      )
  base = {r["model"]: r["train_images_per_s"] for r in rows if r["lever"] == "ours" and "error" not in r}
  for r in rows:
    if "error" not in r and r["model"] in base:
      r["ratio_vs_ours"] = r["train_images_per_s"] / base[r["model"]]
  return {"rows": rows, "skipped_for_time": skipped}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=common.REAL_DATA, help="the 224 px Kermany copy; empty: built-in data")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--compare_models", default=",".join(MODELS))
  parser.add_argument("--compare_budget_s", type=float, default=150.0)
  parser.add_argument("--precision", default="mixed_bfloat16")
  parser.add_argument("--study_flags", default="", help="extra flags for every study run, space-separated")
  parser.add_argument("--skip_compare", action="store_true")
  parser.add_argument("--lever_models", default="resnet50,vit_base")
  parser.add_argument("--levers_budget_s", type=float, default=100.0)
  parser.add_argument("--study_dir", default="", help="keep the study here; empty: a temporary folder, deleted")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  os.environ["KERAS_BACKEND"] = "jax"
  if flags.quick:
    flags.data_dir = ""
    flags.models = ",".join(SCRATCH) if flags.models == ",".join(MODELS) else flags.models
    flags.compare_models = "vit_scratch"
  start = time.perf_counter()
  result = {"quick": flags.quick, "data_dir": os.path.basename(os.path.normpath(flags.data_dir)) or "builtin"}

  def save():
    result["total_s"] = time.perf_counter() - start
    return common.write_result("gpu_study", result, flags.output)

  if not flags.skip_compare:
    result["gpu_vs_torch"] = compare_with_torch(flags)
    save()
    print("part 1 (gpu_vs_torch) done", flush=True)
  study_dir = flags.study_dir or tempfile.mkdtemp(prefix="gpu_study_")
  sampler = GpuSampler()
  sampler.start()
  try:
    result["study"] = run_study(flags, study_dir, sampler)
  finally:
    sampler.stop()
  start_s = sampler.samples[0][0] if sampler.samples else 0.0
  result["study"]["gpu_util_samples"] = [(round(t - start_s, 1), u) for t, u in sampler.samples]
  save()
  print(f"part 2 (study) done: exit {result['study']['exit_code']}, {result['study']['wall_s']:.0f} s", flush=True)
  result["epoch_vs_step"] = epoch_vs_step(flags, result["study"])
  save()
  result["levers"] = levers(flags)
  path = save()
  if not flags.study_dir:
    shutil.rmtree(study_dir, ignore_errors=True)
  for row in result["epoch_vs_step"]:
    print(
      f"  {row['model']}: epoch {row['epoch_train_images_per_s']:.0f} img/s, step "
      f"{row['step_train_images_per_s']:.0f} img/s, ratio {row['epoch_vs_step']:.2f}"
    )
  for row in result["levers"]["rows"]:
    print(
      f"  lever {row['lever']} {row['model']}: "
      + (
        f"{row['train_images_per_s']:.0f} img/s, x{row.get('ratio_vs_ours', float('nan')):.2f}"
        if "error" not in row
        else "failed"
      )
    )
  print("wrote", path)
  return 0 if result["study"]["exit_code"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
