"""Uncertainty and model comparison on one test set: bootstrap CIs, DeLong and McNemar tests."""

import math

import numpy as np

from xray_keras.evaluation import metrics


def percentile_interval(draws, estimate, level=0.95):
  """The percentile interval of bootstrap `draws`, extended to the point `estimate` where it lies outside.

  The percentile interval can exclude its estimate when nearly all draws fall on one side of it: a
  statistic biased under resampling, such as the binned ECE of well-calibrated probabilities (a
  resample of a calibrated set is rarely calibrated, so ECE 0 gets nearly all its draws above 0). The
  interval is then widened to reach the estimate, never narrowed: `(min(low, estimate), max(high,
  estimate))`, at least as wide as the percentile interval, so it covers at least as often.
  """
  tail = (1 - level) / 2 * 100
  low, high = float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))
  if math.isfinite(estimate):
    low, high = min(low, float(estimate)), max(high, float(estimate))
  return low, high


def percentile_bootstrap(fn, labels, scores, resamples=1000, seed=0, level=0.95):
  """Bootstrap intervals over images for every finite float scalar that `fn(labels, scores)`
  returns in its dict; resamples where a value is undefined (not finite) are left out for that value.

  Each is `percentile_interval` of its draws: the percentile interval, widened to the estimate on
  all images where that lies outside it, so every interval contains its estimate.

  Returns:
    `{key: (low, high)}`.

  Raises:
    UserError: a label or score is NaN or infinite.
  """
  metrics.require_finite(labels, scores)
  labels, scores = np.asarray(labels), np.asarray(scores)
  rng = np.random.default_rng(seed)
  draws = {}
  for _ in range(resamples):
    rows = rng.integers(0, len(labels), len(labels))
    for key, value in fn(labels[rows], scores[rows]).items():
      if isinstance(value, float) and math.isfinite(value):
        draws.setdefault(key, []).append(value)
  point = fn(labels, scores) if draws else {}
  return {k: percentile_interval(v, point.get(k, math.nan), level) for k, v in draws.items()}


def bootstrap_ci(labels, probabilities, threshold=0.5, resamples=1000, seed=0, level=0.95):
  """Bootstrap intervals (`percentile_bootstrap`) over test images for every scalar of `binary_metrics`.

  Returns:
    `{metric: (low, high)}`; resamples where a metric is undefined (one class) are left out.
  """
  return percentile_bootstrap(
    lambda y, p: metrics.binary_metrics(y, p, threshold), labels, probabilities, resamples, seed, level
  )


def accuracy_auc(labels, probabilities, threshold=0.5, resamples=1000, seed=0):
  """Accuracy and ROC-AUC with their bootstrap intervals, and sensitivity and specificity, at `threshold`."""
  point = metrics.binary_metrics(labels, probabilities, threshold)
  ci = bootstrap_ci(labels, probabilities, threshold, resamples, seed)
  return {
    "accuracy": point["accuracy"],
    "accuracy_ci": list(ci.get("accuracy", (np.nan, np.nan))),
    "auc": point["auc"],
    "auc_ci": list(ci.get("auc", (np.nan, np.nan))),
    "sensitivity": point["recall"],
    "specificity": point["specificity"],
  }


def delong_components(labels, scores):
  """Per-image structural components of the AUC (DeLong et al. 1988), via midranks (Sun & Xu 2014).

  Returns:
    (auc, v10 over positives, v01 over negatives).
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, dtype=np.float64)
  pos, neg = scores[labels], scores[~labels]
  m, n = len(pos), len(neg)
  all_ranks = metrics.midranks(np.concatenate([pos, neg]))
  v10 = (all_ranks[:m] - metrics.midranks(pos)) / n  # share of negatives below each positive
  v01 = 1.0 - (all_ranks[m:] - metrics.midranks(neg)) / m  # share of positives above each negative
  return float(v10.mean()), v10, v01


def delong_test(labels, scores_a, scores_b):
  """Two-sided DeLong test of equal AUC for two models scored on the same images.

  Returns:
    dict with `auc_a`, `auc_b`, `difference`, `z`, `p_value`.
  """
  auc_a, v10_a, v01_a = delong_components(labels, scores_a)
  auc_b, v10_b, v01_b = delong_components(labels, scores_b)
  s10 = np.cov(np.stack([v10_a, v10_b]))
  s01 = np.cov(np.stack([v01_a, v01_b]))
  cov = s10 / len(v10_a) + s01 / len(v01_a)
  variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
  difference = auc_a - auc_b
  if variance <= 0:
    z, p = (0.0, 1.0) if difference == 0 else (math.inf, 0.0)
  else:
    z = difference / math.sqrt(variance)
    p = math.erfc(abs(z) / math.sqrt(2))
  return {"auc_a": auc_a, "auc_b": auc_b, "difference": difference, "z": z, "p_value": p}


def mcnemar_test(labels, predicted_a, predicted_b):
  """Exact two-sided McNemar test of equal accuracy on the same images.

  Returns:
    dict with `a_only` (images only A gets right), `b_only` and `p_value`.
  """
  labels = np.asarray(labels).astype(int)
  right_a = np.asarray(predicted_a).astype(int) == labels
  right_b = np.asarray(predicted_b).astype(int) == labels
  b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
  n, k = b + c, min(b, c)
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n if n else 1.0
  return {"a_only": b, "b_only": c, "p_value": min(1.0, 2 * tail)}
