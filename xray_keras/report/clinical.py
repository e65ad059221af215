"""The report's clinical sections: calibration, operating points, subtypes, test-time augmentation,
three classes, ensembles, and the best validation-chosen result against the study's targets."""

import os

import numpy as np
from absl import logging

from xray_keras.data import patients
from xray_keras.evaluation import calibration, ensemble, metrics, operating_points, statistics
from xray_keras.evaluation import clinical as clinical_files

# Test accuracy / AUC the study aims at (official test split, chosen on validation only).
TARGETS = {"cnn_scratch": (0.92, 0.97), "vit_scratch": (0.90, 0.95), "resnet50": (0.94, 0.98)}


def _f(value, digits=3):
  return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _ci(value, ci, digits=3):
  return f"{_f(value, digits)} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def calibration_rows(runs, resamples, seed):
  rows = []
  for run in runs:
    if not len(run.val_labels):
      continue
    test = calibration.summary(run.test_labels, run.test_probabilities, resamples=resamples, seed=seed)
    row = {
      "model": run.display_name,
      "val_ece": calibration.expected_calibration_error(run.val_labels, run.val_probabilities),
      "test": test,
      "temperature": run.temperature,
    }
    if run.temperature:
      row["test_scaled"] = calibration.summary(
        run.test_labels,
        calibration.apply_temperature(run.test_probabilities, run.temperature),
        resamples=resamples,
        seed=seed,
      )
      row["val_ece_scaled"] = calibration.expected_calibration_error(
        run.val_labels, calibration.apply_temperature(run.val_probabilities, run.temperature)
      )
    rows.append(row)
  return rows


def operating_point_rows(runs, resamples, seed):
  rows = []
  for run in runs:
    if not len(run.val_labels):
      continue
    val, test = run.val_probabilities, run.test_probabilities
    if run.temperature:  # thresholds on the scale predict and the export use
      val = calibration.apply_temperature(val, run.temperature)
      test = calibration.apply_temperature(test, run.temperature)
    for row in operating_points.operating_points(run.val_labels, val, run.test_labels, test, resamples, seed):
      rows.append({"model": run.display_name, **row})
  return rows


def subtype_rows(runs, resamples, seed):
  """Test sensitivity for bacterial and viral pneumonia, and specificity, at threshold 0.5."""
  rows = []
  for run in runs:
    kinds = np.array([patients.subtype(f, y) for f, y in zip(run.test_files, run.test_labels)])
    row = {"model": run.display_name}
    for kind in ("BACTERIA", "VIRUS", "NORMAL"):
      chosen = kinds == kind
      said = (run.test_probabilities[chosen] >= 0.5).astype(float)
      right = said if kind != "NORMAL" else 1.0 - said
      rate = lambda _, r: {"rate": float(np.mean(r)) if len(r) else np.nan}  # noqa: E731
      ci = statistics.percentile_bootstrap(rate, right, right, resamples, seed)
      row[kind] = {
        "n": int(chosen.sum()),
        "rate": rate(None, right)["rate"],
        "ci": list(ci.get("rate", (np.nan, np.nan))),
      }
    rows.append(row)
  return rows


def tta_rows(runs, resamples, seed):
  rows, unmatched = [], []
  for run in runs:
    tta = tta_predictions(run)
    if tta is None:
      if os.path.isfile(os.path.join(run.run_dir, clinical_files.TTA_PREDICTIONS)):
        unmatched.append(run.display_name)
      continue
    views, val_tta, test_tta = tta
    plain_loss = calibration.log_loss(run.val_labels, run.val_probabilities)
    tta_loss = calibration.log_loss(run.val_labels, val_tta)
    rows.append(
      {
        "model": run.display_name,
        "views": views,
        "val_log_loss": plain_loss,
        "val_log_loss_tta": tta_loss,
        "val_auc": metrics.roc_auc(run.val_labels, run.val_probabilities),
        "val_auc_tta": metrics.roc_auc(run.val_labels, val_tta),
        "test": statistics.accuracy_auc(run.test_labels, run.test_probabilities, 0.5, resamples, seed),
        "test_tta": statistics.accuracy_auc(run.test_labels, test_tta, 0.5, resamples, seed),
        "validation_chooses": clinical_files.tta_choice(plain_loss, tta_loss),
      }
    )
  if unmatched:
    logging.warning(
      "TTA table: %d run(s) skipped whose %s covers other images or labels than predictions.csv, or has no "
      "tta.json: %s",
      len(unmatched),
      clinical_files.TTA_PREDICTIONS,
      ", ".join(unmatched),
    )
  return rows


def three_class_rows(runs):
  rows = []
  for run in runs:
    three = run.metrics.get("test", {}).get("three_class")
    if three:
      rows.append({"model": run.display_name, **three})
  return rows


def _same_images(runs):
  first = runs[0]
  same = [r for r in runs if r.test_files == first.test_files and list(r.val_files) == list(first.val_files)]
  if len(same) < len(runs):
    logging.warning(
      "Ensembles: %d run(s) left out whose predictions.csv lists other val or test images than %s's: %s",
      len(runs) - len(same),
      first.display_name,
      ", ".join(r.display_name for r in runs if r not in same),
    )
  return same


def tta_predictions(run):
  """`(views, val, test)`: tta.json's number of views and the run's TTA probabilities where its TTA file covers
  the same images with the same labels as predictions.csv; None otherwise (no TTA, or views of other images
  that cannot be set beside them)."""
  by_split = clinical_files.read_predictions(run.run_dir, clinical_files.TTA_PREDICTIONS)
  info = by_split and clinical_files.tta_info(run.run_dir)
  if not info:
    return None
  expected = {"val": (run.val_files, run.val_labels), "test": (run.test_files, run.test_labels)}
  for split, (files, labels) in expected.items():
    if split not in by_split:
      return None
    tta_files, tta_labels, _ = by_split[split]
    if tta_files != list(files) or not np.array_equal(tta_labels, labels):
      return None
  return info["views"], by_split["val"][2], by_split["test"][2]


def chosen_prediction(run):
  """`(name, val, test)`: the run's probabilities as validation chose them, the TTA views' where they lower
  validation's log loss over the same images, else the single view's."""
  tta = tta_predictions(run)
  if tta is not None:
    views, val_tta, test_tta = tta
    single = calibration.log_loss(run.val_labels, run.val_probabilities)
    if clinical_files.tta_choice(single, calibration.log_loss(run.val_labels, val_tta)) == "TTA":
      return f"{run.display_name} (TTA x{views})", val_tta, test_tta
  return run.display_name, run.val_probabilities, run.test_probabilities


def ensemble_rows(runs, resamples, seed, space="probability", step=0.1):
  """Weighted averages chosen on validation: all models, and each model's seeds, each run's prediction as
  validation chose it (TTA or one view); DeLong against the single run validation ranks best (lowest
  validation log loss)."""
  runs = [r for r in runs if len(r.val_labels)]
  if len(runs) < 2:
    return []
  runs = _same_images(runs)
  chosen_by_run = {id(r): chosen_prediction(r) for r in runs}  # each run's files read once, not per group
  groups = [("all models", runs)]
  by_model = {}
  for run in runs:
    by_model.setdefault(run.name.split("_seed")[0], []).append(run)
  groups += [
    (f"{members[0].metrics['model'].get('display_name', name)} seeds", members)
    for name, members in by_model.items()
    if len(members) > 1 and len(by_model) > 1
  ]
  out = []
  for title, members in groups:
    if len(members) < 2:
      continue
    chosen = [chosen_by_run[id(r)] for r in members]
    val = np.stack([c[1] for c in chosen])
    test = np.stack([c[2] for c in chosen])
    labels, val_labels = members[0].test_labels, members[0].val_labels
    best = min(chosen, key=lambda c: calibration.log_loss(val_labels, c[1]))
    for kind, weights in (
      ("validation-chosen weights", ensemble.choose_weights(val_labels, val, space, step)),
      ("equal weights", [1.0 / len(members)] * len(members)),
    ):
      combined_val = ensemble.combine(val, weights, space)
      combined = ensemble.combine(test, weights, space)
      threshold = metrics.choose_threshold(val_labels, combined_val)
      delong = statistics.delong_test(labels, combined, best[2])
      out.append(
        {
          "ensemble": f"{title}, {kind}",
          "members": [c[0] for c in chosen],
          "weights": [float(w) for w in weights],
          "space": space,
          "val_log_loss": calibration.log_loss(val_labels, combined_val),
          "val_auc": metrics.roc_auc(val_labels, combined_val),
          "test": statistics.accuracy_auc(labels, combined, 0.5, resamples, seed),
          "test_accuracy_at_val_threshold": metrics.binary_metrics(labels, combined, threshold)["accuracy"],
          "val_threshold": threshold,
          "best_single": best[0],
          "best_single_auc": metrics.roc_auc(labels, best[2]),
          "delong_vs_best_single": delong["p_value"],
          "auc_minus_best_single": delong["difference"],
        }
      )
  return out


def target_rows(runs, tta, ensembles):
  """Per model, the setting validation prefers (single view or TTA), its test accuracy and AUC, and the target."""
  tta_by_model = {r["model"]: r for r in tta}
  rows = []
  for run in runs:
    row = {
      "model": run.display_name,
      "setting": "single view",
      "test_accuracy": run.metrics["test"]["accuracy"],
      "test_auc": run.metrics["test"]["auc"],
      "test_accuracy_at_val_threshold": run.metrics["test"]["at_val_threshold"]["accuracy"],
    }
    entry = tta_by_model.get(run.display_name)
    if entry and entry["validation_chooses"] == "TTA":
      row.update(
        setting=f"TTA x{entry['views']}",
        test_accuracy=entry["test_tta"]["accuracy"],
        test_auc=entry["test_tta"]["auc"],
        test_accuracy_at_val_threshold=None,
      )
    row["target"] = TARGETS.get(run.name.split("_seed")[0])
    rows.append(row)
  for e in ensembles:
    if e["ensemble"].endswith("validation-chosen weights"):
      rows.append(
        {
          "model": f"Ensemble ({e['ensemble'].rsplit(',', 1)[0]})",
          "setting": "weights chosen on validation",
          "test_accuracy": e["test"]["accuracy"],
          "test_auc": e["test"]["auc"],
          "test_accuracy_at_val_threshold": e["test_accuracy_at_val_threshold"],
          "target": None,
        }
      )
  return rows


def sections(runs, study_dir, resamples, seed, with_ensemble, ensemble_space="probability"):
  """Markdown lines, a dict for results.json and the figure files written."""
  from xray_keras.report import figures

  data = {
    "calibration": calibration_rows(runs, resamples, seed),
    "operating_points": operating_point_rows(runs, resamples, seed),
    "subtypes": subtype_rows(runs, resamples, seed),
    "tta": tta_rows(runs, resamples, seed),
    "three_class": three_class_rows(runs),
  }
  data["ensembles"] = ensemble_rows(runs, resamples, seed, ensemble_space) if with_ensemble else []
  data["targets"] = target_rows(runs, data["tta"], data["ensembles"])
  md, figure_files = [], []
  if data["calibration"]:
    md += [
      "## Calibration",
      "",
      "Can the probability be read as a risk? Expected calibration error (10 equal-width bins of the PNEUMONIA "
      "probability) and Brier score on test, with 95% bootstrap intervals. With `--calibrate` a temperature "
      "is fitted on validation (lowest validation log loss) and applied by `predict` and the export.",
      "",
      _table(
        ["model", "val ECE", "test ECE", "test Brier", "temperature", "test ECE scaled", "test Brier scaled"],
        [
          [
            r["model"],
            _f(r["val_ece"]),
            _ci(r["test"]["ece"], r["test"]["ece_ci"]),
            _ci(r["test"]["brier"], r["test"]["brier_ci"]),
            _f(r["temperature"], 2) if r["temperature"] else "-",
            _ci(r["test_scaled"]["ece"], r["test_scaled"]["ece_ci"]) if r.get("test_scaled") else "-",
            _ci(r["test_scaled"]["brier"], r["test_scaled"]["brier_ci"]) if r.get("test_scaled") else "-",
          ]
          for r in data["calibration"]
        ],
      ),
      "",
    ]
    entries = [
      (
        r.display_name,
        r.test_labels,
        r.test_probabilities,
        calibration.apply_temperature(r.test_probabilities, r.temperature) if r.temperature else None,
      )
      for r in runs
      if len(r.val_labels)
    ]
    try:
      figures.reliability_diagrams(entries, os.path.join(study_dir, "reliability.png"))
      figure_files.append("reliability.png")
      md += ["![reliability.png](reliability.png)", ""]
    except Exception as e:  # a figure must never cost the report
      md += [f"(No reliability diagram: {type(e).__name__}.)", ""]
  if data["operating_points"]:
    md += [
      "## Operating points",
      "",
      "Thresholds chosen on validation for three clinical aims (on the temperature-scaled probability when the "
      "run is calibrated), and the sensitivity and specificity they give on test (95% bootstrap intervals, "
      "threshold held fixed). `predict --operating_point` and the export's model card use the same thresholds.",
      "",
      _table(
        ["model", "aim", "threshold", "val sensitivity", "val specificity", "test sensitivity", "test specificity"],
        [
          [
            r["model"],
            r["description"],
            _f(r["threshold"], 3),
            _f(r["val_sensitivity"]),
            _f(r["val_specificity"]),
            _ci(r["test_sensitivity"], r["test_sensitivity_ci"]),
            _ci(r["test_specificity"], r["test_specificity_ci"]),
          ]
          for r in data["operating_points"]
        ],
      ),
      "",
    ]
  if data["subtypes"]:
    first = data["subtypes"][0]
    md += [
      "## Pneumonia subtypes",
      "",
      "Sensitivity on bacterial and on viral pneumonia (subtype from the file name) and specificity, on test at "
      f"threshold 0.5, with 95% bootstrap intervals (test images: {first['BACTERIA']['n']} bacterial, "
      f"{first['VIRUS']['n']} viral, {first['NORMAL']['n']} normal).",
      "",
      _table(
        ["model", "sensitivity BACTERIA", "sensitivity VIRUS", "specificity NORMAL"],
        [
          [r["model"]] + [_ci(r[k]["rate"], r[k]["ci"]) for k in ("BACTERIA", "VIRUS", "NORMAL")]
          for r in data["subtypes"]
        ],
      ),
      "",
    ]
  if data["three_class"]:
    md += [
      "## Three classes (NORMAL / BACTERIA / VIRUS)",
      "",
      "Runs trained with `--task=three_class`: arg-max accuracy, each class's recall and the macro one-vs-rest AUC on "
      "test, with 95% bootstrap intervals. Their PNEUMONIA probability (BACTERIA + VIRUS) is in every other table.",
      "",
      _table(
        ["model", "accuracy", "recall NORMAL", "recall BACTERIA", "recall VIRUS", "macro AUC"],
        [
          [r["model"]]
          + [
            _ci(r[k], r["ci95"].get(k, [np.nan, np.nan]))
            for k in ("accuracy", "recall_NORMAL", "recall_BACTERIA", "recall_VIRUS", "macro_auc")
          ]
          for r in data["three_class"]
        ],
      ),
      "",
    ]
  if data["tta"]:
    md += [
      "## Test-time augmentation",
      "",
      "The mean PNEUMONIA probability over N views (the image and N-1 copies through the run's training "
      "augmentations, no flips). Validation chooses between one view and N by validation log loss; test at "
      "threshold 0.5 with 95% bootstrap intervals.",
      "",
      _table(
        [
          "model",
          "views",
          "val log loss 1 / N",
          "val AUC 1 / N",
          "test accuracy 1 view",
          "test accuracy N views",
          "test AUC 1 view",
          "test AUC N views",
          "validation chooses",
        ],
        [
          [
            r["model"],
            r["views"],
            f"{_f(r['val_log_loss'])} / {_f(r['val_log_loss_tta'])}",
            f"{_f(r['val_auc'])} / {_f(r['val_auc_tta'])}",
            _ci(r["test"]["accuracy"], r["test"]["accuracy_ci"]),
            _ci(r["test_tta"]["accuracy"], r["test_tta"]["accuracy_ci"]),
            _ci(r["test"]["auc"], r["test"]["auc_ci"]),
            _ci(r["test_tta"]["auc"], r["test_tta"]["auc_ci"]),
            r["validation_chooses"],
          ]
          for r in data["tta"]
        ],
      ),
      "",
    ]
  if data["ensembles"]:
    md += [
      "## Ensembles",
      "",
      f"Weighted means of the models' PNEUMONIA {'probabilities' if ensemble_space == 'probability' else 'logits'}, each model's as validation chose it (TTA where named); weights on a 0.1 grid chosen by validation log loss "
      "(validation labels only), beside equal weights. Test at threshold 0.5 with 95% bootstrap intervals; DeLong "
      "against the single model with the lowest validation log loss.",
      "",
      _table(
        [
          "ensemble",
          "weights",
          "val AUC",
          "test accuracy",
          "test AUC",
          "acc. at val threshold",
          "vs best single",
          "AUC difference",
          "DeLong p",
        ],
        [
          [
            e["ensemble"],
            ", ".join(f"{m} {w:.2f}" for m, w in zip(e["members"], e["weights"])),
            _f(e["val_auc"]),
            _ci(e["test"]["accuracy"], e["test"]["accuracy_ci"]),
            _ci(e["test"]["auc"], e["test"]["auc_ci"]),
            f"{_f(e['test_accuracy_at_val_threshold'])} (t={_f(e['val_threshold'], 2)})",
            e["best_single"],
            f"{e['auc_minus_best_single']:+.3f}",
            f"{e['delong_vs_best_single']:.3g}",
          ]
          for e in data["ensembles"]
        ],
      ),
      "",
    ]
  if any(r["target"] for r in data["targets"]) or data["ensembles"]:
    md += [
      "## Against the targets",
      "",
      "Each model's setting chosen on validation only (single view or TTA), its test accuracy (threshold 0.5, and "
      "at the validation-chosen threshold) and AUC, against the study's targets. Published anchors on the same "
      "test split: Google AutoML Vision 94.6% / 0.991, MedMNIST v2 ResNet-50 (224 px) 88.4% / 0.962.",
      "",
      _table(
        ["model", "setting", "test accuracy", "acc. at val threshold", "test AUC", "target accuracy / AUC", "met"],
        [
          [
            r["model"],
            r["setting"],
            _f(r["test_accuracy"]),
            _f(r["test_accuracy_at_val_threshold"]),
            _f(r["test_auc"]),
            f"{r['target'][0]:.2f} / {r['target'][1]:.2f}" if r["target"] else "-",
            ("yes" if r["test_accuracy"] >= r["target"][0] and r["test_auc"] >= r["target"][1] else "no")
            if r["target"]
            else "-",
          ]
          for r in data["targets"]
        ],
      ),
      "",
    ]
  return md, data, figure_files
