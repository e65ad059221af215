"""The study's table from its runs: one row per model and seed, and each model's mean and range.

  python benchmarks/study_table.py --studies=runs/study_cpu/seed42,runs/study_cpu/seed7,runs/study_cpu/seed1

Reads each study folder's finished runs (metrics.json, timing.json, flags.txt, run.log, study.json)
and writes results/study_cpu.json: `{"runs": [{model, seed, val_auc, test_auc, test_accuracy, wall_s,
train_images_per_s, commit, cpu, date, ...}], "models": {model: {mean and range over seeds}}}`.
wall_s is the model's whole run, start to report: the study runner's process time where it timed
the run, else run.log's first to last line. Prints the Markdown table the README and docs/study.md show.
"""

import argparse
import datetime
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

ORDER = ("cnn_scratch", "vit_scratch", "resnet50", "vit_base")


def _log_span(path):
  """(first line's time, seconds from the first to the last line) of a run.log."""
  stamps = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        stamps.append(datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"))
      except ValueError:
        continue
  return stamps[0], (stamps[-1] - stamps[0]).total_seconds()


def run_row(study_dir, model, timed):
  from xray_keras.training.run_dir import read_flags

  folder = os.path.join(study_dir, model)
  with open(os.path.join(folder, "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(folder, "timing.json")) as f:
    timing = json.load(f)
  flags = read_flags(os.path.join(folder, "flags.txt"))
  started, span = _log_span(os.path.join(folder, "run.log"))
  testbed = timing.get("testbed", {})
  at_val = metrics["test"]["at_val_threshold"]
  tta = metrics.get("tta")
  return {
    "model": model,
    "seed": int(flags.get("seed", 0)),
    "val_auc": metrics["val"]["auc"],
    "test_auc": metrics["test"]["auc"],
    "test_accuracy": metrics["test"]["accuracy"],
    "wall_s": round(timed if timed else span, 1),
    "wall_source": "study runner (process)" if timed else "run.log span",
    "train_images_per_s": timing.get("train_images_per_s"),
    "commit": testbed.get("commit"),
    "cpu": f"{testbed.get('cpu')} x{testbed.get('cpu_cores')}",
    "date": started.strftime("%Y-%m-%d"),
    "test_auc_ci95": metrics["test"]["ci95"].get("auc"),
    "test_accuracy_ci95": metrics["test"]["ci95"].get("accuracy"),
    "val_threshold": at_val["threshold"],
    "sensitivity_at_val_threshold": at_val["recall"],
    "specificity_at_val_threshold": at_val["specificity"],
    "tta_test_auc": tta["test"]["auc"] if tta else None,
    "tta_chosen_by_validation": (tta["validation_chooses"] == "TTA") if tta else None,
    "image_size": metrics["model"]["input_shape"][0],
    "params": metrics["model"]["params"],
    "weights": metrics["model"]["weights"],
    "mixed_precision": timing.get("mixed_precision"),
  }


def summarise(rows):
  out = {}
  for model in [m for m in ORDER if any(r["model"] == m for r in rows)]:
    mine = [r for r in rows if r["model"] == model]
    entry = {"seeds": [r["seed"] for r in mine]}
    for key in ("val_auc", "test_auc", "test_accuracy", "wall_s", "train_images_per_s"):
      values = np.array([r[key] for r in mine], np.float64)
      entry[key] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    out[model] = entry
  return out


def markdown(rows, models):
  lines = [
    "| model | seeds | test ROC-AUC, mean [range] | test accuracy, mean [range] | val ROC-AUC | wall time, mean | train img/s |",
    "|---|---|---|---|---|---|---|",
  ]

  def r(s, k, f):
    return f"{s[k]['mean']:{f}} [{s[k]['min']:{f}}, {s[k]['max']:{f}}]"

  for model, s in models.items():
    lines.append(
      f"| {model} | {', '.join(map(str, s['seeds']))} | {r(s, 'test_auc', '.3f')} | {r(s, 'test_accuracy', '.3f')} | "
      f"{s['val_auc']['mean']:.4f} | {s['wall_s']['mean'] / 60:.1f} min | {s['train_images_per_s']['mean']:.0f} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--studies", required=True, help="Comma-separated study folders (one per seed).")
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "study_cpu.json"))
  args = parser.parse_args()
  rows = []
  for study_dir in args.studies.split(","):
    timed = {}
    status = os.path.join(study_dir, "study.json")
    if os.path.isfile(status):
      with open(status) as f:
        timed = {m: s.get("wall_s") for m, s in json.load(f)["runs"].items()}
    for model in ORDER:
      if os.path.isfile(os.path.join(study_dir, model, "metrics.json")):
        rows.append(run_row(study_dir, model, timed.get(model)))
  models = summarise(rows)
  per_seed = {}
  for r in rows:
    per_seed.setdefault(r["seed"], 0.0)
    per_seed[r["seed"]] += r["wall_s"]
  payload = {"runs": rows, "models": models, "study_wall_s_per_seed": per_seed}
  path = common.write_result("study_cpu", payload, args.output)
  print(markdown(rows, models))
  print(path)


if __name__ == "__main__":
  main()
