"""The external-validation folder: predictions.csv, metrics.json, report.md/html and a reliability diagram."""

import csv
import os

from xray_keras import atomic
from xray_keras.report import html


def _ci(values, key):
  low, high = values.get("ci95", {}).get(key, (float("nan"), float("nan")))
  return f"{values[key]:.3f} [{low:.3f}, {high:.3f}]"


def _lines(name, model_label, data, result):
  at = result["at_0.5"]
  lines = [
    f"# External validation: {name}",
    "",
    f"Model: {model_label}, applied unchanged (its temperature "
    f"{result['temperature'] or 'none'}, its validation-chosen operating points). Data: {data.name} "
    f"({data.source}), {result['n']} images, {result['positives']} PNEUMONIA; {len(data.skipped)} files skipped "
    "(skipped_files.csv). 95% intervals: percentile bootstrap over images.",
    "",
    "| metric | this set (threshold 0.5) |",
    "|---|---|",
  ]
  for key, label in (("auc", "ROC-AUC"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                     ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV")):  # fmt: skip
    lines.append(f"| {label} | {_ci(at, key)} |")
  own = result["own_test"]
  if own.get("auc") is not None:
    lines += ["", f"The run's own test split: {own['n']} images, ROC-AUC {own['auc']:.3f}."]
  if "difference_from_own_test" in result:
    d = result["difference_from_own_test"]
    lines.append(
      f"Difference (this set minus own test): ROC-AUC {d['auc_difference']:+.3f} "
      f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (unpaired bootstrap, resampling {d['resampled']})."
    )
  lines += ood_lines(result.get("ood"))
  lines += [
    "",
    "## Operating points",
    "",
    "Chosen on the run's validation split and applied unchanged; beside them, the threshold the same rule "
    "would pick on this set (for comparison only: picking it needs this set's labels).",
    "",
    "| rule | threshold | sensitivity | specificity | best threshold here | its sensitivity / specificity |",
    "|---|---|---|---|---|---|",
  ]
  for rule, point in result["operating_points"].items():
    chosen, best = point["validation_chosen"], point["best_on_this_set"]
    best_cells = f"{best['threshold']:.3f} | {best['sensitivity']:.3f} / {best['specificity']:.3f}" if best else "- | -"
    lines.append(
      f"| {rule} | {chosen['threshold']:.3f} | {_ci(chosen, 'sensitivity')} | {_ci(chosen, 'specificity')} | "
      f"{best_cells} |"
    )
  c = result["calibration"]
  lines += [
    "",
    "## Calibration",
    "",
    f"ECE {c['ece']:.3f} [{c['ece_ci'][0]:.3f}, {c['ece_ci'][1]:.3f}], Brier {c['brier']:.3f} "
    f"[{c['brier_ci'][0]:.3f}, {c['brier_ci'][1]:.3f}]. ![reliability](reliability.png)",
    "",
    "## Subtypes (at the validation-chosen Youden threshold)",
    "",
    "| subtype | images | correct |",
    "|---|---|---|",
  ]
  for subtype, row in result["subtypes"].items():
    lines.append(f"| {subtype} | {row['n']} | {row['correct']} ({row['fraction_correct']:.1%}) |")
  return lines


def _metric(value):
  return "-" if value is None else f"{value:.3f}"


def ood_lines(ood):
  """The report's out-of-distribution paragraph: how many images were flagged, metrics with and without them."""
  if ood is None:
    return ["", "Out of distribution: the model has no OOD score (trained with --ood=false or before it existed)."]
  every, kept = ood["all"], ood["without_flagged"]
  return [
    "",
    "## Out of distribution",
    "",
    f"{ood['flagged']} of {ood['n']} images flagged as unlike the training X-rays ({ood['method']} score above "
    f"{ood['threshold']:.4g}, from {ood['source']}); `ood_score` in predictions.csv.",
    "",
    "| images | n | ROC-AUC | accuracy at 0.5 |",
    "|---|---|---|---|",
    f"| all | {every['n']} | {_metric(every['auc'])} | {_metric(every['accuracy'])} |",
    f"| without the flagged | {kept['n']} | {_metric(kept['auc'])} | {_metric(kept['accuracy'])} |",
  ]


def write(folder, name, model_label, data, scored, result):
  """Writes the folder; returns the path of report.html."""
  from xray_keras.data import loader
  from xray_keras.report import figures

  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "predictions.csv"), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "label", "probability", "subtype", "ood_score", "ood"])
    columns = [("", "")] * len(scored.files)
    if scored.ood_scores is not None:
      threshold = result["ood"]["threshold"]
      columns = [(f"{s:.6f}", "flagged" if s > threshold else "ok") for s in scored.ood_scores]
    rows = zip(scored.files, scored.labels, scored.probabilities, scored.records, columns)
    for file, label, p, record, (score, word) in rows:
      writer.writerow([file, int(label), f"{p:.6f}", record.subtype, score, word])
  loader.write_skipped(data.skipped, os.path.join(folder, "skipped_files.csv"))
  figures.reliability_diagrams(
    [(name, scored.labels, scored.probabilities, None)], os.path.join(folder, "reliability.png")
  )
  atomic.write_json(os.path.join(folder, "metrics.json"), {"name": name, "data": data.summary(), **result})
  lines = _lines(name, model_label, data, result)
  with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  html.write(lines, os.path.join(folder, "report.html"))
  return os.path.join(folder, "report.html")
