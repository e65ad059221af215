"""External validation: score a finished run's model on another labelled set, without training.

The model's own temperature and validation-chosen operating points are applied unchanged; the
thresholds that would have been best on the new set are shown beside them, never used in their
place. The difference from the run's own test split is bootstrapped over the two sets
independently (they hold different images).
"""

import dataclasses
import json
import os

import numpy as np

from xray_keras.data import patients
from xray_keras.data.records import printable
from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, clinical, metrics, operating_points, statistics

RESAMPLES = 1000


def resolve_run(model_path):
  """The run folder of `--model` (a run folder or its model.keras)."""
  run_dir = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
  if os.path.isdir(model_path) and os.path.isfile(os.path.join(model_path, "saved_model.pb")):
    raise UserError(
      f"{model_path} is an export; evaluate reads a run folder or its model.keras (beside its metrics.json and "
      "predictions.csv, which hold the operating points and the test results to compare with)."
    )
  for name in ("model.keras", "metrics.json"):
    if not os.path.isfile(os.path.join(run_dir, name)):
      raise UserError(f"{run_dir} is not a finished run folder (no {name}).")
  return run_dir


def _rates(labels, probabilities, threshold):
  m = metrics.binary_metrics(labels, probabilities, threshold)
  tn, fp = m["confusion_matrix"][0]
  fn = m["confusion_matrix"][1][0]
  return {
    "threshold": float(threshold),
    "accuracy": m["accuracy"],
    "sensitivity": m["recall"],
    "specificity": m["specificity"],
    "ppv": m["precision"],
    "npv": tn / (tn + fn) if tn + fn else float("nan"),
    "auc": m["auc"],
    "n": m["n"],
    "false_positives": fp,
    "false_negatives": fn,
  }


def _with_ci(labels, probabilities, threshold):
  out = _rates(labels, probabilities, threshold)
  ci = statistics.percentile_bootstrap(lambda y, p: _rates(y, p, threshold), labels, probabilities, RESAMPLES)
  out["ci95"] = {
    k: list(v) for k, v in ci.items() if k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc")
  }
  return out


def _auc_difference(labels, probabilities, own_labels, own_probabilities, seed=0):
  """External minus own test ROC-AUC, with a 95% bootstrap interval resampling each set on its own."""
  rng = np.random.default_rng(seed)
  draws = []
  for _ in range(RESAMPLES):
    a = rng.integers(0, len(labels), len(labels))
    b = rng.integers(0, len(own_labels), len(own_labels))
    difference = metrics.roc_auc(labels[a], probabilities[a]) - metrics.roc_auc(own_labels[b], own_probabilities[b])
    if np.isfinite(difference):
      draws.append(difference)
  point = metrics.roc_auc(labels, probabilities) - metrics.roc_auc(own_labels, own_probabilities)
  return {"auc_difference": float(point), "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]}


def _subtypes(records, labels, probabilities, threshold):
  """Per subtype (a `subtype` column, else the Kermany file name): images, and how many the model calls right."""
  names = [r.subtype or patients.subtype(r.path, r.label) for r in records]
  out = {}
  for name in sorted(set(names)):
    rows = np.array([n == name for n in names])
    correct = (probabilities[rows] >= threshold).astype(int) == labels[rows]
    out[name] = {"n": int(rows.sum()), "correct": int(correct.sum()), "fraction_correct": float(correct.mean())}
  return out


@dataclasses.dataclass
class Scored:
  files: list
  labels: np.ndarray
  probabilities: np.ndarray
  records: list


def score(run_dir, data, split, batch_size):
  """The run's model on `data.splits[split]`, on the run's calibrated scale where it has a temperature."""
  from xray_keras import models

  arrays = data.splits[split]
  if not len(arrays.labels):
    raise UserError(f"The {split} split of {data.name} holds no images to evaluate.")
  model = models.load_model(os.path.join(run_dir, "model.keras"))
  probabilities = models.pneumonia_probability(model.predict(arrays.images.astype(np.float32), batch_size, verbose=0))
  temperature = clinical.temperature(run_dir)
  if temperature:
    probabilities = calibration.apply_temperature(probabilities, temperature)
  files = [printable(r.path) for r in arrays.records]
  return Scored(files, (arrays.labels > 0).astype(int), np.asarray(probabilities, np.float64), list(arrays.records))


def evaluate(run_dir, scored):
  """metrics.json's object for an external set."""
  labels, probabilities = scored.labels, scored.probabilities
  thresholds = clinical.decision_thresholds(run_dir)
  if not thresholds:
    raise UserError(f"{run_dir} has no validation predictions: no operating points to apply.")
  result = {
    "n": int(len(labels)),
    "positives": int(labels.sum()),
    "temperature": clinical.temperature(run_dir),
    "at_0.5": _with_ci(labels, probabilities, 0.5),
    "operating_points": {},
    "calibration": calibration.summary(labels, probabilities, resamples=RESAMPLES),
    "subtypes": _subtypes(scored.records, labels, probabilities, thresholds["youden"]),
  }
  for rule, threshold in thresholds.items():
    best = operating_points.threshold_for(rule, labels, probabilities) if len(set(labels)) > 1 else float("nan")
    result["operating_points"][rule] = {
      "description": operating_points.RULES[rule],
      "validation_chosen": _with_ci(labels, probabilities, threshold),
      "best_on_this_set": _rates(labels, probabilities, best) if np.isfinite(best) else None,
    }
  own = clinical.read_predictions(run_dir).get("test")
  with open(os.path.join(run_dir, "metrics.json")) as f:
    own_metrics = json.load(f).get("test", {})
  result["own_test"] = {"n": own_metrics.get("n"), "auc": own_metrics.get("auc"), "ci95": own_metrics.get("ci95", {})}
  if own and len(set(labels)) > 1:
    own_probabilities = own[2]
    if result["temperature"]:
      own_probabilities = calibration.apply_temperature(own_probabilities, result["temperature"])
    result["difference_from_own_test"] = _auc_difference(labels, probabilities, own[1], own_probabilities)
  return result


def data_config(values):
  """The run's `DataConfig` from its flags.txt values (`run_dir.read_flags`)."""
  from xray_keras.data.loader import DataConfig

  kwargs = {}
  for field in dataclasses.fields(DataConfig):
    name = {"source": "data_source"}.get(field.name, field.name)
    if name not in values:
      continue
    value = values[name]
    if field.type is bool or field.type == "bool":
      kwargs[field.name] = value == "true"
    elif field.type in (int, "int"):
      kwargs[field.name] = int(value)
    elif field.type in (float, "float"):
      kwargs[field.name] = float(value)
    elif field.type in (tuple, "tuple"):
      kwargs[field.name] = tuple(v for v in value.split(",") if v)
    else:
      kwargs[field.name] = value
  return DataConfig(**kwargs)


def validate(model_path, data_dir, split="test", name="", output_dir="", cache_dir=""):
  """Scores the run's model on `data_dir` and writes the external folder; returns (folder, metrics)."""
  from xray_keras.data import loader
  from xray_keras.report import external as report
  from xray_keras.training.run_dir import read_flags

  run_dir = resolve_run(model_path)
  values = read_flags(os.path.join(run_dir, "flags.txt"))
  with open(os.path.join(run_dir, "metrics.json")) as f:
    size, _, channels = json.load(f)["model"]["input_shape"]
  config = dataclasses.replace(
    data_config(values),
    source="auto",
    data_dir=data_dir,
    image_size=size,
    channels=channels,
    cache_dir=cache_dir,
    max_images_per_split=0,
  )
  data = loader.load(config, need=(split,))
  name = name or (os.path.splitext(os.path.basename(os.path.normpath(data_dir)))[0] if data_dir else "builtin")
  folder = output_dir or os.path.join(run_dir, "external", name)
  scored = score(run_dir, data, split, int(values.get("batch_size", 32)))
  result = evaluate(run_dir, scored)
  report.write(folder, name, run_dir, data, scored, result)
  return folder, result
