"""Each export format against the Keras model: parity on the test images, speed, size and runtime cost.

  python benchmarks/formats.py --runs=runs/vit_scratch/<ts>,runs/cnn_scratch/<ts>,runs/resnet50/<ts> [--quick]

For every finished run, exports it as a TF SavedModel and, where the runtime installs, as ONNX,
LiteRT and OpenVINO in float32 and int8 (LiteRT also integer-only, `int8_full`), and scores the
run's test split through each in a fresh process that imports only that runtime, from decoded
pixels and from the image files' bytes (what `predict` and a TF Serving client send). Against the Keras
model in this process: the largest change in PNEUMONIA probability, the change in ROC-AUC and in
accuracy at the run's decision threshold, and label agreement. Per format: batch-1 latency (p50,
p95), batch-32 throughput (images/s and the ratio to the SavedModel's, measured in the same run),
the file's size, the runtime's import time and the worker's peak resident memory; per runtime, its
installed size with its dependencies (NumPy left out: every path needs it). Writes
results/formats.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from xray_keras.serving import runtime  # noqa: E402

VARIANTS = [
  ("saved_model", ""),
  ("onnx", ""),
  ("onnx", "int8"),
  ("litert", ""),
  ("litert", "int8"),
  ("litert", "int8_full"),
  ("openvino", ""),
  ("openvino", "int8"),
]
QUICK_VARIANTS = [("saved_model", ""), ("onnx", ""), ("onnx", "int8"), ("litert", "int8")]
_MODULE = {"saved_model": "tensorflow", **{fmt: module for fmt, (module, _) in runtime.RUNTIMES.items()}}
_PACKAGE = {"saved_model": "tensorflow", **{fmt: package for fmt, (_, package) in runtime.RUNTIMES.items()}}


# What each runtime imports to run a model (LiteRT's package imports its interpreter lazily).
_IMPORTS = {
  "tf_saved_model": "tensorflow",
  "onnx": "onnxruntime",
  "litert": "ai_edge_litert.interpreter",
  "openvino": "openvino",
}


def _peak_rss_mb():
  """This process's peak resident memory since its exec (getrusage's also counts the parent's at fork)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def worker(model, images, out, calls, files=None):
  """In a fresh process: import the runtime, score `images`, time batch 1 and batch 32 from decoded
  pixels, and batch 1 from the image files' bytes (`files`, a JSON list) as `predict` and TF Serving
  take them: the SavedModel decodes in its graph, the others with the package's decoder; prints a JSON line."""

  fmt = runtime.resolve(model)[0]
  start = time.perf_counter()
  __import__(_IMPORTS[fmt])
  import_s = time.perf_counter() - start
  start = time.perf_counter()
  predictor = runtime.Runtime(model)
  load_s = time.perf_counter() - start
  pixels = np.load(images)
  probabilities = predictor.probabilities(pixels, batch_size=32)
  np.save(out, probabilities)
  batch = pixels[np.arange(32) % len(pixels)]
  predictor.probabilities(batch, batch_size=32)
  start, seen = time.perf_counter(), 0
  while seen < max(len(pixels), 32 * 4):
    predictor.probabilities(batch, batch_size=32)
    seen += 32
  throughput = seen / (time.perf_counter() - start)
  latencies = []
  for i in range(calls + 10):
    one = pixels[i % len(pixels)][None]
    start = time.perf_counter()
    predictor.probabilities(one, batch_size=1)
    latencies.append(time.perf_counter() - start)
  latencies = np.array(latencies[10:]) * 1000
  result = {
    "import_s": round(import_s, 3),
    "load_s": round(load_s, 3),
    "batch1_ms_p50": round(float(np.percentile(latencies, 50)), 3),
    "batch1_ms_p95": round(float(np.percentile(latencies, 95)), 3),
    "batch32_images_per_s": round(throughput, 1),
  }
  if files:
    from xray_keras.serving import predict

    with open(files) as f:
      encoded = [open(path, "rb").read() for path in json.load(f)]  # in memory: the disk is not timed
    score = predict.load_predictor(model)
    from_bytes = []
    for i in range(calls + 10):
      start = time.perf_counter()
      score(encoded[i % len(encoded)])
      from_bytes.append(time.perf_counter() - start)
    from_bytes = np.array(from_bytes[10:]) * 1000
    result["bytes_batch1_ms_p50"] = round(float(np.percentile(from_bytes, 50)), 3)
    result["bytes_batch1_ms_p95"] = round(float(np.percentile(from_bytes, 95)), 3)
    result["bytes_mean_kb"] = round(float(np.mean([len(e) for e in encoded])) / 1024, 1)
  result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
  print(json.dumps(result))


def install_mb(package):
  """Installed size of `package` and what it requires (markers for no extras), NumPy left out; MiB."""
  import re
  from importlib import metadata

  from packaging.requirements import Requirement

  seen, todo, total = set(), [package], 0
  while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen or name == "numpy":
      continue
    seen.add(name)
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
      continue
    for file in dist.files or []:
      path = file.locate()
      if os.path.isfile(path):
        total += os.path.getsize(path)
    for line in dist.requires or []:
      requirement = Requirement(line)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(requirement.name)
  return {"mb": round(total / 2**20, 1), "packages": len(seen)}


def test_split(run_dir, limit):
  """The run's test images as it saw them before its preprocess steps, and the labels."""
  import dataclasses

  from xray_keras.data import loader
  from xray_keras.evaluation import external
  from xray_keras.training.run_dir import read_flags

  values = read_flags(os.path.join(run_dir, "flags.txt"))
  with open(os.path.join(run_dir, "metrics.json")) as f:
    size, _, channels = json.load(f)["model"]["input_shape"]
  config = dataclasses.replace(external.data_config(values), image_size=size, channels=channels, preprocess=())
  test = loader.load(config, need=("test",)).splits["test"]
  paths = [os.path.join(config.data_dir or "", r.path) for r in test.records[:limit]]  # relative to the data folder
  files = [path for path in paths if os.path.isfile(path)]
  return test.images[:limit].astype(np.float32), (test.labels[:limit] > 0).astype(int), values, files


def keras_probabilities(run_dir, pixels, values):
  from xray_keras import models
  from xray_keras.data import preprocess
  from xray_keras.evaluation import clinical
  from xray_keras.serving import formats

  model = formats.serving_model(models.load_model(os.path.join(run_dir, "model.keras")), clinical.temperature(run_dir))
  steps = preprocess.parse(values.get("preprocess", ""))
  inputs = preprocess.apply(pixels.astype(np.uint8), steps) if steps else pixels
  return np.asarray(model.predict(np.asarray(inputs, np.float32), 32, verbose=0), np.float64)


def folder_mb(folder):
  total = 0
  for root, _, names in os.walk(folder):
    total += sum(os.path.getsize(os.path.join(root, n)) for n in names if n != "model_card.json")
  return round(total / 2**20, 3)


def bench_run(run_dir, work, calls, limit, variants=VARIANTS):
  from xray_keras.evaluation import metrics
  from xray_keras.serving import formats

  pixels, labels, values, files = test_split(run_dir, limit)
  images = os.path.join(work, "test.npy")
  np.save(images, pixels)
  file_list = os.path.join(work, "files.json")
  with open(file_list, "w") as f:
    json.dump(files, f)
  expected = keras_probabilities(run_dir, pixels, values)
  with open(os.path.join(run_dir, "metrics.json")) as f:
    name = json.load(f)["model"]["name"]
  row = {"run": run_dir, "model": name, "test_images": len(pixels), "keras_test_auc": metrics.roc_auc(labels, expected)}
  row["formats"], skipped = {}, {}
  for fmt, quantize in variants:
    key = fmt + (f"-{quantize}" if quantize else "")
    try:
      __import__(_MODULE[fmt])
      start = time.perf_counter()
      folder = formats.export(run_dir, fmt, quantize, os.path.join(work, "exports"))
      export_s = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001  (a runtime or converter that does not install or convert: say so)
      skipped[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      continue
    out = os.path.join(work, f"{name}-{key}.npy")
    command = [sys.executable, os.path.abspath(__file__), "--worker", folder, images, out, str(calls)]
    command += [file_list] if files else []  # the built-in data has no image files
    result = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    if result.returncode:
      skipped[key] = result.stderr.strip().splitlines()[-1][:300]
      continue
    timing = json.loads(result.stdout.strip().splitlines()[-1])
    got = np.load(out)
    with open(runtime.resolve(folder)[2]) as f:
      threshold = json.load(f)["decision_threshold"]
    row["formats"][key] = {
      "max_abs_probability_difference": float(np.abs(got - expected).max()),
      "auc_difference": metrics.roc_auc(labels, got) - metrics.roc_auc(labels, expected),
      "accuracy_difference": float(np.mean((got >= threshold) == labels) - np.mean((expected >= threshold) == labels)),
      "label_agreement": float(np.mean((got >= threshold) == (expected >= threshold))),
      "decision_threshold": threshold,
      "file_mb": folder_mb(folder),
      "export_s": round(export_s, 1),
      **timing,
    }
  base = row["formats"].get("saved_model")
  for entry in row["formats"].values():
    if base:
      entry["batch1_p50_speedup_vs_saved_model"] = round(base["batch1_ms_p50"] / entry["batch1_ms_p50"], 2)
      entry["batch32_throughput_ratio_vs_saved_model"] = round(
        entry["batch32_images_per_s"] / base["batch32_images_per_s"], 2
      )
      if "bytes_batch1_ms_p50" in base and "bytes_batch1_ms_p50" in entry:
        entry["bytes_batch1_p50_speedup_vs_saved_model"] = round(
          base["bytes_batch1_ms_p50"] / entry["bytes_batch1_ms_p50"], 2
        )
  row["skipped"] = skipped
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", required=True, help="Comma-separated finished run folders.")
  parser.add_argument(
    "--quick", action="store_true", help="20 batch-1 calls, at most 64 test images, SavedModel, ONNX and LiteRT int8."
  )
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "formats.json"))
  args = parser.parse_args()
  calls, limit = (20, 64) if args.quick else (300, None)
  runs = []
  with tempfile.TemporaryDirectory(prefix="formats_") as work:
    for run_dir in args.runs.split(","):
      folder = os.path.join(work, str(len(runs)))
      os.makedirs(folder)
      runs.append(bench_run(run_dir, folder, calls, limit, QUICK_VARIANTS if args.quick else VARIANTS))
      print(json.dumps(runs[-1], indent=1), flush=True)
  runtimes = {}
  for fmt, package in _PACKAGE.items():
    try:
      __import__(_MODULE[fmt])
    except ImportError:
      continue
    runtimes[package] = install_mb(package)
  path = common.write_result(
    "formats",
    {"quick": args.quick, "batch1_calls": calls, "runs": runs, "runtime_install": runtimes},
    args.output,
  )
  print(f"Wrote {path}")


if __name__ == "__main__":
  if len(sys.argv) in (6, 7) and sys.argv[1] == "--worker":
    worker(*sys.argv[2:5], int(sys.argv[5]), *sys.argv[6:])
  else:
    main()
