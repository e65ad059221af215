"""What the out-of-distribution score costs: in a run, and per request when serving.

  python benchmarks/ood_cost.py --run_dir=runs/vit_scratch/<timestamp> [--calls=300] [--quick]

The run: the OOD fit's own time (timing.json's `ood_fit_s`, timed around the fit in the run) against
the run's time without it. Serving: the run exported twice, with its OOD score and without it (the
same run folder less ood.json/ood.npz), in each format whose runtime is installed; batch-1 calls
alternate between the two exports, from the test images' file bytes (SavedModel's `serving_default`,
as TF Serving gets them; the other formats through `predict`'s decoder) and from decoded pixels.
Writes results/ood_cost.json: p50 latencies and the median of the per-call ratios with / without,
per format and input.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

FORMATS = ("saved_model", "onnx", "litert", "openvino")


def _alternate(pair, inputs, calls):
  """p50 milliseconds of each of `pair`'s two callables, called in turn on the same inputs, and the
  median of the per-input ratios (first / second): robust to the machine's speed drifting."""
  times = ([], [])
  for i in range(calls + 10):
    for k in (0, 1) if i % 2 else (1, 0):
      start = time.perf_counter()
      pair[k](inputs[i % len(inputs)])
      times[k].append(time.perf_counter() - start)
  first, second = (np.array(t[10:]) * 1000 for t in times)
  p50 = [round(float(np.percentile(t, 50)), 3) for t in (first, second)]
  return p50, round(float(np.median(first / second)), 3)


def _test_split(run_dir, limit):
  """Up to `limit` of the run's test images as the model takes them, and their files (none for the
  built-in data, which has no image files)."""
  from xray_keras.data import loader
  from xray_keras.evaluation import external
  from xray_keras.training.run_dir import read_flags

  config = external.data_config(read_flags(os.path.join(run_dir, "flags.txt")))
  test = loader.load(config, need=("test",)).splits["test"]
  paths = [os.path.join(config.data_dir or "", r.path) for r in test.records[:limit]]  # relative to the data folder
  files = [path for path in paths if os.path.isfile(path)]
  return test.images[:limit].astype(np.float32), files


def _run_cost(run_dir):
  with open(os.path.join(run_dir, "timing.json")) as f:
    timing = json.load(f)
  fit, total = timing.get("ood_fit_s"), timing["total_run_s"]
  return {
    "ood_fit_s": fit,
    "total_run_s": total,
    "run_longer_by": None if fit is None else round(fit / (total - fit), 4),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--calls", type=int, default=300)
  parser.add_argument("--quick", action="store_true", help="20 calls, SavedModel and ONNX only (CI)")
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "ood_cost.json"))
  args = parser.parse_args()

  from xray_keras.evaluation import ood
  from xray_keras.serving import formats, predict, runtime

  calls = 20 if args.quick else args.calls
  rows = []
  with tempfile.TemporaryDirectory(prefix="ood_cost_") as work:
    plain = os.path.join(work, "without_ood")
    shutil.copytree(args.run_dir, plain, ignore=shutil.ignore_patterns(ood.JSON, ood.NPZ, "external"))
    test_pixels, files = _test_split(args.run_dir, 64)
    encoded = [open(path, "rb").read() for path in files]  # in memory: the disk is not timed
    for fmt in FORMATS[:2] if args.quick else FORMATS:
      try:
        exports = [
          formats.export(run, fmt, "", os.path.join(work, fmt, name))
          for run, name in ((args.run_dir, "with"), (plain, "without"))
        ]
      except Exception as e:  # noqa: BLE001  (a converter or runtime that does not install: say so)
        rows.append({"format": fmt, "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
        continue
      runtimes = [runtime.Runtime(path) for path in exports]
      pixels = [image[None] for image in test_pixels]
      row = {"format": fmt, "has_ood": [r.ood_threshold is not None for r in runtimes]}
      row["pixels_ms_p50"], row["pixels_ratio_with_to_without"] = _alternate(
        [lambda x, r=r: r.scores(x, 1) for r in runtimes], pixels, calls
      )
      if encoded:
        predictors = [predict.load_predictor(path) for path in exports]
        row["bytes_ms_p50"], row["bytes_ratio_with_to_without"] = _alternate(
          [lambda d, p=p: p(d, ood=True) for p in predictors], encoded, calls
        )
        row["bytes_mean_kb"] = round(float(np.mean([len(e) for e in encoded])) / 1024, 1)
      rows.append(row)
      print(json.dumps(row), flush=True)
  payload = {"run": os.path.basename(os.path.normpath(args.run_dir)), "calls": calls, "quick": args.quick}
  payload["run_cost"] = _run_cost(args.run_dir)
  payload["serving"] = rows
  path = common.write_result("ood_cost", payload, args.output)
  print(json.dumps(payload["run_cost"]))
  print(path)


if __name__ == "__main__":
  main()
