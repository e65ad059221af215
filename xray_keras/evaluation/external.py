"""External validation: score a finished run's model on another labelled set, without training.

The model's own temperature and validation-chosen operating points are applied unchanged; the
thresholds that would have been best on the new set are shown beside them, never used in their
place. The difference from the run's own test split is bootstrapped over the two sets
independently (they hold different images).
"""

import dataclasses

import numpy as np

from xray_keras.data import patients
from xray_keras.data.records import printable
from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, metrics, operating_points, statistics

RESAMPLES = 1000


@dataclasses.dataclass
class Trained:
  """The model to validate and what it brings from training: input, temperature, thresholds, own test."""

  label: str  # how the report names it
  values: dict  # the run's flags
  size: int
  channels: int
  temperature: float | None
  thresholds: dict
  own_test: dict
  own_predictions: tuple | None  # (labels, calibrated probabilities) of the run's own test split
  probabilities: object  # images -> calibrated P(PNEUMONIA)
  run_dir: str | None = None  # None for an export, which applies the run's --preprocess itself
  ood_scores: object = None  # images -> out-of-distribution scores; None without an OOD score
  ood: dict | None = None  # {threshold, source, method} of that score


def own_test(metrics):
  """The own test split's n, ROC-AUC and CIs from a metrics.json (or a model card's `metrics`)."""
  test = metrics.get("test", {})
  return {"n": test.get("n"), "auc": test.get("auc"), "ci95": test.get("ci95", {})}


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


def _auc_difference(labels, probabilities, own, seed=0):
  """External minus own test ROC-AUC, with a 95% bootstrap interval (`statistics.percentile_interval`)
  resampling each set on its own.

  `own` is `(labels, probabilities)`, or the own AUC alone (an export carries no test predictions):
  then only this set is resampled and the interval leaves out the own split's sampling error.
  """
  rng = np.random.default_rng(seed)
  fixed = np.isscalar(own)
  own_point = own if fixed else metrics.roc_auc(*own)
  difference = metrics.roc_auc(labels, probabilities) - own_point
  draws = []
  for _ in range(RESAMPLES):
    a = rng.integers(0, len(labels), len(labels))
    if fixed:
      own_draw = own_point
    else:
      b = rng.integers(0, len(own[0]), len(own[0]))
      own_draw = metrics.roc_auc(own[0][b], own[1][b])
    draw = metrics.roc_auc(labels[a], probabilities[a]) - own_draw
    if np.isfinite(draw):
      draws.append(draw)
  return {
    "auc_difference": float(difference),
    "ci95": list(statistics.percentile_interval(draws, difference)),
    "resampled": "this set only (own test AUC held fixed)" if fixed else "both sets",
  }


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
  ood_scores: np.ndarray | None = None  # None where the model has no OOD score


def score(trained, data, split):
  """The model's calibrated probabilities (and OOD scores) on `data.splits[split]`; `UserError` if a
  probability is NaN or infinite."""
  arrays = data.splits[split]
  if not len(arrays.labels):
    raise UserError(f"The {split} split of {data.name} holds no images to evaluate.")
  probabilities = np.asarray(trained.probabilities(arrays.images), np.float64)
  labels = (arrays.labels > 0).astype(int)
  metrics.require_finite(labels, probabilities, f"{split} predictions of {trained.label} on {data.name}")
  files = [printable(r.path) for r in arrays.records]
  ood_scores = None if trained.ood_scores is None else np.asarray(trained.ood_scores(arrays.images), np.float64)
  return Scored(files, labels, probabilities, list(arrays.records), ood_scores)


def _summary(labels, probabilities):
  """ROC-AUC and accuracy at 0.5 (None where they cannot be computed: no image, or one class for the AUC)."""
  if not len(labels):
    return {"n": 0, "auc": None, "accuracy": None}
  m = metrics.binary_metrics(labels, probabilities, 0.5)
  auc = m["auc"] if len(set(labels)) > 1 and np.isfinite(m["auc"]) else None
  return {"n": int(len(labels)), "auc": auc, "accuracy": m["accuracy"]}


def ood_summary(trained, scored):
  """metrics.json's `ood`: the images the OOD score flags, and ROC-AUC / accuracy at 0.5 with and without them."""
  if scored.ood_scores is None:
    return None
  flagged = scored.ood_scores > trained.ood["threshold"]
  kept = ~flagged
  return {
    **trained.ood,
    "flagged": int(flagged.sum()),
    "n": int(len(flagged)),
    "all": _summary(scored.labels, scored.probabilities),
    "without_flagged": _summary(scored.labels[kept], scored.probabilities[kept]),
  }


def evaluate(trained, scored):
  """metrics.json's object for an external set."""
  labels, probabilities = scored.labels, scored.probabilities
  thresholds = trained.thresholds
  result = {
    "n": int(len(labels)),
    "positives": int(labels.sum()),
    "temperature": trained.temperature,
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
  result["ood"] = ood_summary(trained, scored)
  result["own_test"] = trained.own_test
  own = trained.own_predictions or trained.own_test.get("auc")
  if own is not None and len(set(labels)) > 1:
    result["difference_from_own_test"] = _auc_difference(labels, probabilities, own)
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
