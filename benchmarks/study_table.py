"""The study's table from its runs: one row per model and seed, and each model's mean and range.

  python benchmarks/study_table.py --studies=runs/study_cpu/seed42,runs/study_cpu/seed7,runs/study_cpu/seed1
  python benchmarks/study_table.py --levers=runs/levers/resnet50_epochs2_seed42,...   # results/study_levers.json
  python benchmarks/study_table.py --levers=... --output=benchmarks/results/study_levers_tta.json

Reads each study folder's finished runs (metrics.json, timing.json, flags.txt, run.log, study.json)
and writes results/study_cpu.json: `{"runs": [{model, seed, val_auc, test_auc, test_accuracy, wall_s,
train_images_per_s, commit, cpu, date, ...}], "models": {model: {mean and range over seeds}}}`.
wall_s is the model's whole run, start to report: the study runner's process time where it timed
the run, else the sum of run.log's stretches (one per process; a resumed run has several).
val_auc, test_auc, test_accuracy, the sensitivity and specificity and the comparisons are those of the
prediction validation chose, as the run's closing lines report it: the TTA views where the run has them
and they lowered validation's log loss (metrics.json's "tta"), else the one view; the one view's figures
stay beside. Prints the Markdown table the README and docs/study.md show.
"""

import argparse
import datetime
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from xray_keras.errors import UserError  # noqa: E402

ORDER = ("cnn_scratch", "vit_scratch", "resnet50", "vit_base")


def _log_span(path):
  """(first line's time, seconds the run's processes logged): a resumed run's log holds one stretch per
  process, each opened by its "Model <name>:" line; the gaps between them (and an unlogged tail of a
  stopped process) are not counted."""
  stretches = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
      except ValueError:
        continue
      opens = " INFO Model " in line
      if not stretches or (opens and stretches[-1][2]):
        stretches.append([stamp, stamp, False])
      stretches[-1][1] = stamp
      stretches[-1][2] |= opens
  return stretches[0][0], sum((end - start).total_seconds() for start, end, _ in stretches), len(stretches)


def _train_speed(folder, timing):
  """Median train img/s over every epoch in history.csv (a resumed run's timing.json holds only its last
  process's epochs), as timing.json counts it; timing.json's figure where the history has none."""
  import csv

  path = os.path.join(folder, "history.csv")
  if os.path.isfile(path):
    with open(path, newline="") as f:
      speeds = sorted(float(r["train_images_per_s"]) for r in csv.DictReader(f) if r.get("train_images_per_s"))
    if speeds:
      return speeds[len(speeds) // 2]
  return timing.get("train_images_per_s")


def run_row(study_dir, model, timed):
  from xray_keras.evaluation import clinical
  from xray_keras.training.run_dir import read_flags

  folder = os.path.join(study_dir, model)
  with open(os.path.join(folder, "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(folder, "timing.json")) as f:
    timing = json.load(f)
  flags = read_flags(os.path.join(folder, "flags.txt"))
  started, span, processes = _log_span(os.path.join(folder, "run.log"))
  if processes > 1:
    timed = None  # the runner timed only the last process
  testbed = timing.get("testbed", {})
  tta, made = metrics.get("tta"), clinical.tta_info(folder)
  chosen = _chosen_prediction(folder, metrics, made)
  wall_s, wall_source = (timed, "study runner (process)") if timed else (span, f"run.log, {processes} process(es)")
  added = _tta_added_afterwards(folder, made, tta)
  if added is not None:  # the views a run with --tta computes at its end, made by xray_keras.evaluate instead
    wall_s += added
    wall_source += f" + {added:.0f} s of TTA views made afterwards by xray_keras.evaluate"
  return {
    "model": model,
    "study": study_dir,
    "seed": int(flags.get("seed", 0)),
    **chosen,
    "wall_s": round(wall_s, 1),
    "wall_source": wall_source,
    "train_images_per_s": _train_speed(folder, timing),
    "commit": testbed.get("commit"),
    "cpu": f"{testbed.get('cpu')} x{testbed.get('cpu_cores')}",
    "date": started.strftime("%Y-%m-%d"),
    "one_view_val_auc": metrics["val"]["auc"],
    "one_view_test_auc": metrics["test"]["auc"],
    "one_view_test_accuracy": metrics["test"]["accuracy"],
    "tta_test_auc": tta["test"]["auc"] if tta else None,
    "tta_chosen_by_validation": (tta["validation_chooses"] == "TTA") if tta else None,
    "image_size": metrics["model"]["input_shape"][0],
    "params": metrics["model"]["params"],
    "weights": metrics["model"]["weights"],
    "mixed_precision": timing.get("mixed_precision"),
  }


def _tta_added_afterwards(folder, made, recorded):
  """Seconds of the TTA views (tta.json's content `made`) that `xray_keras.evaluate --tta` added to a finished
  run (those metrics.json's `recorded` entry is about); None if the run made its own or records none."""
  if made.get("made_by") != "xray_keras.evaluate" or not recorded or made.get("views") != recorded["views"]:
    return None
  seconds = made.get("seconds")
  if not isinstance(seconds, (int, float)) or not np.isfinite(seconds) or seconds < 0:
    raise ValueError(f"{folder}/tta.json: seconds is {seconds!r}, not a duration")
  return float(seconds)


def _chooses_tta(metrics):
  return (metrics.get("tta") or {}).get("validation_chooses") == "TTA"


def _chosen_prediction(folder, metrics, made):
  """The row's figures from the prediction validation chose: its val AUC, test accuracy and ROC-AUC with
  95% CIs, and the sensitivity and specificity at its validation-chosen (Youden) threshold; `made`: tta.json's
  content, which must be the views metrics.json's TTA entry is about."""
  if not _chooses_tta(metrics):
    at_val = metrics["test"]["at_val_threshold"]
    return {
      "prediction": "one view",
      "val_auc": metrics["val"]["auc"],
      "test_auc": metrics["test"]["auc"],
      "test_accuracy": metrics["test"]["accuracy"],
      "test_auc_ci95": metrics["test"]["ci95"].get("auc"),
      "test_accuracy_ci95": metrics["test"]["ci95"].get("accuracy"),
      "val_threshold": at_val["threshold"],
      "sensitivity_at_val_threshold": at_val["recall"],
      "specificity_at_val_threshold": at_val["specificity"],
    }
  from xray_keras.evaluation import clinical
  from xray_keras.evaluation import metrics as metrics_lib

  tta = metrics["tta"]
  views = clinical.read_predictions(folder, clinical.TTA_PREDICTIONS)
  again = f"; rerun python -m xray_keras.evaluate --run_dir={folder} --tta={tta['views']}"
  if not {"val", "test"} <= set(views):
    raise ValueError(
      f"{folder}: metrics.json says validation chose TTA, but has no val/test {clinical.TTA_PREDICTIONS}{again}"
    )
  if made.get("views") != tta["views"]:
    raise ValueError(f"{folder}: tta.json and metrics.json disagree on the number of views{again}")
  _, labels, probabilities = views["test"]
  if abs(metrics_lib.roc_auc(labels, probabilities) - tta["test"]["auc"]) > 1e-9:
    raise ValueError(
      f"{folder}: {clinical.TTA_PREDICTIONS} is not the prediction metrics.json's TTA entry was computed from{again}"
    )
  threshold = clinical.decision_thresholds(folder, tta=True)["youden"]
  at_val = metrics_lib.binary_metrics(labels, probabilities, threshold)
  return {
    "prediction": f"{tta['views']}-view TTA",
    "val_auc": tta["val_auc"],
    "test_auc": tta["test"]["auc"],
    "test_accuracy": tta["test"]["accuracy"],
    "test_auc_ci95": tta["test"]["auc_ci"],
    "test_accuracy_ci95": tta["test"]["accuracy_ci"],
    "val_threshold": threshold,
    "sensitivity_at_val_threshold": at_val["recall"],
    "specificity_at_val_threshold": at_val["specificity"],
  }


def _test_predictions(study_dir, model):
  """{file: (label, probability)} of a run's test images, from the prediction validation chose."""
  import csv

  from xray_keras.evaluation import clinical

  folder = os.path.join(study_dir, model)
  with open(os.path.join(folder, "metrics.json")) as f:
    name = clinical.TTA_PREDICTIONS if _chooses_tta(json.load(f)) else clinical.PREDICTIONS
  with open(os.path.join(folder, name), newline="") as f:
    return {r["file"]: (int(r["label"]), float(r["probability"])) for r in csv.DictReader(f) if r["split"] == "test"}


def compare_models(studies, rows):
  """DeLong (AUC) and McNemar (accuracy at 0.5) between every pair of models, per seed, on the same test images."""
  from xray_keras.evaluation import statistics

  out = []
  for study_dir in studies:
    seed = next((r["seed"] for r in rows if r["study"] == study_dir), None)
    models = [m for m in ORDER if any(r["model"] == m and r["study"] == study_dir for r in rows)]
    predictions = {m: _test_predictions(study_dir, m) for m in models}
    for i, a in enumerate(models):
      for b in models[i + 1 :]:
        files = sorted(set(predictions[a]) & set(predictions[b]))
        labels = np.array([predictions[a][f][0] for f in files])
        pa, pb = (np.array([predictions[m][f][1] for f in files]) for m in (a, b))
        if not (np.isfinite(pa).all() and np.isfinite(pb).all()):
          raise ValueError(f"non-finite test probabilities in {study_dir} ({a} or {b})")
        delong = statistics.delong_test(labels, pa, pb)
        mcnemar = statistics.mcnemar_test(labels, pa >= 0.5, pb >= 0.5)
        out.append({"seed": seed, "a": a, "b": b, "images": len(files),
                    "auc_difference": delong["difference"], "delong_p": delong["p_value"],
                    "mcnemar_a_only": mcnemar["a_only"], "mcnemar_b_only": mcnemar["b_only"],
                    "mcnemar_p": mcnemar["p_value"]})  # fmt: skip
  return out


def summarise(rows):
  out = {}
  for model in [m for m in ORDER if any(r["model"] == m for r in rows)]:
    mine = [r for r in rows if r["model"] == model]
    entry = {"seeds": [r["seed"] for r in mine]}
    keys = ("val_auc", "test_auc", "test_accuracy", "wall_s", "train_images_per_s")
    for key in (*keys, "sensitivity_at_val_threshold", "specificity_at_val_threshold"):
      values = np.array([r[key] for r in mine], np.float64)
      entry[key] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
    out[model] = entry
  return out


NAMES = {"cnn_scratch": "CNN_scratch", "vit_scratch": "ViT_scratch", "resnet50": "ResNet50", "vit_base": "ViT_Base"}


def markdown(rows, models):
  """The table the README and docs/study.md show."""
  lines = [
    "| model | input | test ROC-AUC, mean [range] | seed 42 [95% CI] | test accuracy | sens. / spec. | val AUC "
    "| wall time | train img/s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]

  def r(s, k, f, scale=1):
    return f"{s[k]['mean'] * scale:{f}} [{s[k]['min'] * scale:{f}}, {s[k]['max'] * scale:{f}}]"

  for model, s in models.items():
    first = next(x for x in rows if x["model"] == model and x["seed"] == s["seeds"][0])
    low, high = first["test_auc_ci95"]
    lines.append(
      f"| {NAMES.get(model, model)} | {first['image_size']} px | {r(s, 'test_auc', '.3f')} | "
      f"{first['test_auc']:.3f} [{low:.3f}, {high:.3f}] | {s['test_accuracy']['mean']:.3f} | "
      f"{s['sensitivity_at_val_threshold']['mean']:.3f} / {s['specificity_at_val_threshold']['mean']:.3f} | "
      f"{s['val_auc']['mean']:.4f} | {r(s, 'wall_s', '.0f', 1 / 60)} min | {s['train_images_per_s']['mean']:.0f} |"
    )
  return "\n".join(lines)


def write_levers(folders, output=None, append=False):
  """One row per run of a recipe tried for the study's time, with the flags a lever changes; with `append`,
  after the rows already in `output` (a row of the same run folder is replaced). Each row names its CPU."""
  from xray_keras.evaluation import clinical
  from xray_keras.training.run_dir import read_flags

  rows = []
  for folder in folders:
    folder = folder.rstrip("/")
    row = run_row(os.path.dirname(folder), os.path.basename(folder), None)
    with open(os.path.join(folder, "metrics.json")) as f:
      row["model"] = json.load(f)["model"]["name"]
    flags = read_flags(os.path.join(folder, "flags.txt"))
    lever_flags = ("epochs", "head_epochs", "image_size", "patch_size", "batch_size", "mixed_precision", "ema_momentum")
    row["recipe"] = {k: flags.get(k) for k in lever_flags + ("preprocess", "augment")}
    row["recipe"]["tta"] = clinical.tta_views(folder)
    with open(os.path.join(folder, "timing.json")) as f:
      row["recipe"]["optimizer"] = json.load(f).get("optimizer")  # the class; older runs: Keras' own, unrecorded
    row["folder"] = folder
    rows.append(row)
    print(f"{row['model']} {row['recipe']}: {row['prediction']}: val AUC {row['val_auc']:.4f}, "
          f"test AUC {row['test_auc']:.4f}, {row['wall_s'] / 60:.1f} min, "
          f"{row['train_images_per_s']:.1f} train img/s")  # fmt: skip
  output = output or os.path.join(common.RESULTS, "study_levers.json")
  if append and os.path.isfile(output):
    with open(output) as f:
      earlier = json.load(f)["runs"]
    again = {r["folder"] for r in rows}
    rows = [r for r in earlier if r.get("folder") not in again] + rows
  print(common.write_result("study_levers", {"runs": rows}, output))


def main():
  try:
    _main()
  except (OSError, KeyError, ValueError, UserError) as e:
    sys.exit(f"error: {type(e).__name__ + ': ' if isinstance(e, KeyError) else ''}{e}")


def _main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--studies", default="", help="Comma-separated study folders (one per seed).")
  parser.add_argument(
    "--levers",
    default="",
    help="Comma-separated single runs of a changed recipe: written to results/study_levers.json.",
  )
  parser.add_argument("--append", action="store_true", help="--levers: add the runs to those already in the file.")
  parser.add_argument(
    "--output", default="", help="The result file; empty: results/study_cpu.json (--levers: results/study_levers.json)."
  )
  args = parser.parse_args()
  if args.levers:
    return write_levers(args.levers.split(","), args.output or None, args.append)
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
  comparisons = compare_models(args.studies.split(","), rows)
  payload = {"runs": rows, "models": models, "study_wall_s_per_seed": per_seed, "comparisons": comparisons}
  path = common.write_result("study_cpu", payload, args.output or os.path.join(common.RESULTS, "study_cpu.json"))
  print(markdown(rows, models))
  for c in comparisons:
    print(f"seed {c['seed']}: {c['a']} - {c['b']}: AUC {c['auc_difference']:+.3f}, DeLong p = {c['delong_p']:.2g}; "
          f"McNemar {c['mcnemar_a_only']} vs {c['mcnemar_b_only']}, p = {c['mcnemar_p']:.2g}")  # fmt: skip
  print(path)


if __name__ == "__main__":
  main()
