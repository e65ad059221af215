"""Decision thresholds chosen on validation for a clinical aim, and what they give on test."""

import numpy as np

from xray_keras.evaluation import metrics, statistics

# name: (description, rule). Each rule picks a threshold from validation labels and probabilities.
RULES = {
  "youden": "max sensitivity + specificity - 1",
  "sensitivity_95": "highest threshold with sensitivity >= 0.95",
  "specificity_90": "lowest threshold with specificity >= 0.90",
}


def _candidates(probabilities):
  """Every distinct probability, and one above the largest (predicts no PNEUMONIA at all)."""
  unique = np.unique(np.asarray(probabilities, dtype=np.float64))
  return np.r_[unique, np.nextafter(unique[-1], np.inf)] if len(unique) else np.array([0.5])


def _rates(labels, probabilities, threshold):
  m = metrics.binary_metrics(labels, probabilities, threshold)
  return m["recall"], m["specificity"]


def threshold_for(rule, labels, probabilities):
  """The validation-chosen threshold for `rule` (a key of `RULES`); predict PNEUMONIA at p >= threshold."""
  labels = np.asarray(labels).astype(int).reshape(-1)
  probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
  if rule == "youden":
    return metrics.choose_threshold(labels, probabilities)
  if rule not in RULES:
    raise ValueError(f"Unknown operating point {rule!r}; expected one of {', '.join(RULES)}")
  if len(np.unique(labels)) < 2:
    return 0.5
  candidates = _candidates(probabilities)
  rates = [_rates(labels, probabilities, t) for t in candidates]
  if rule == "sensitivity_95":
    ok = [t for t, (sens, _) in zip(candidates, rates) if sens >= 0.95]
    return float(max(ok)) if ok else float(candidates[0])
  ok = [t for t, (_, spec) in zip(candidates, rates) if spec >= 0.90]
  return float(min(ok)) if ok else float(candidates[-1])


def _bootstrap(labels, probabilities, threshold, resamples, seed):
  def rates(y, p):
    if y.min() == y.max():  # one class: neither rate is defined
      return {}
    sensitivity, specificity = _rates(y, p, threshold)
    return {"sensitivity": sensitivity, "specificity": specificity}

  ci = statistics.percentile_bootstrap(rates, labels, probabilities, resamples, seed)
  return {k: list(ci.get(k, (float("nan"), float("nan")))) for k in ("sensitivity", "specificity")}


def operating_points(val_labels, val_probabilities, test_labels, test_probabilities, resamples=1000, seed=0):
  """One row per rule: the threshold chosen on validation, its validation and test sensitivity and
  specificity, and 95% bootstrap intervals on test (the threshold held fixed)."""
  val_labels = np.asarray(val_labels).astype(int).reshape(-1)
  test_labels = np.asarray(test_labels).astype(int).reshape(-1)
  test_probabilities = np.asarray(test_probabilities, dtype=np.float64).reshape(-1)
  rows = []
  for rule, description in RULES.items():
    threshold = threshold_for(rule, val_labels, val_probabilities)
    val_sens, val_spec = _rates(val_labels, val_probabilities, threshold)
    test_metrics = metrics.binary_metrics(test_labels, test_probabilities, threshold)
    ci = _bootstrap(test_labels, test_probabilities, threshold, resamples, seed)
    rows.append(
      {
        "rule": rule,
        "description": description,
        "threshold": threshold,
        "val_sensitivity": val_sens,
        "val_specificity": val_spec,
        "test_sensitivity": test_metrics["recall"],
        "test_specificity": test_metrics["specificity"],
        "test_accuracy": test_metrics["accuracy"],
        "test_sensitivity_ci": ci["sensitivity"],
        "test_specificity_ci": ci["specificity"],
      }
    )
  return rows
