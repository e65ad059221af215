"""Can the probability be trusted: ECE, Brier score, reliability bins and temperature scaling."""

import numpy as np

from xray_keras.evaluation.metrics import require_finite

EPS = 1e-7


def _arrays(labels, probabilities):
  require_finite(labels, probabilities)
  return (
    np.asarray(labels, dtype=np.float64).reshape(-1),
    np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 0.0, 1.0),
  )


def reliability(labels, probabilities, bins=10):
  """Equal-width bins of the PNEUMONIA probability: `(mean probability, PNEUMONIA fraction, count)` each.

  A bin's upper edge belongs to it only for the last bin (1.0 falls in the last bin).
  """
  labels, probabilities = _arrays(labels, probabilities)
  index = np.minimum((probabilities * bins).astype(int), bins - 1)
  out = []
  for b in range(bins):
    rows = index == b
    count = int(rows.sum())
    out.append(
      (
        float(probabilities[rows].mean()) if count else float("nan"),
        float(labels[rows].mean()) if count else float("nan"),
        count,
      )
    )
  return out


def expected_calibration_error(labels, probabilities, bins=10):
  """Sum over bins of (bin share) x |PNEUMONIA fraction - mean probability| (equal-width bins)."""
  n = len(np.asarray(labels).reshape(-1))
  return (
    float(
      sum(
        count / n * abs(fraction - mean) for mean, fraction, count in reliability(labels, probabilities, bins) if count
      )
    )
    if n
    else float("nan")
  )


def brier_score(labels, probabilities):
  """Mean squared difference between the PNEUMONIA probability and the 0/1 label."""
  labels, probabilities = _arrays(labels, probabilities)
  return float(np.mean((probabilities - labels) ** 2)) if len(labels) else float("nan")


def log_loss(labels, probabilities):
  """Mean negative log-likelihood of the labels (binary cross-entropy)."""
  labels, probabilities = _arrays(labels, probabilities)
  p = np.clip(probabilities, EPS, 1 - EPS)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def to_logits(probabilities):
  p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)
  return np.log(p) - np.log1p(-p)


def apply_temperature(probabilities, temperature):
  """sigmoid(logit(p) / T): T > 1 softens over-confident probabilities, T < 1 sharpens."""
  return 1.0 / (1.0 + np.exp(-to_logits(probabilities) / float(temperature)))


def fit_temperature(labels, probabilities, low=0.05, high=20.0, iterations=80):
  """The temperature minimising log loss on `labels` (validation), by golden-section search.

  The loss is convex in 1/T, so the search runs over 1/T in `[1/high, 1/low]`.
  """
  labels, _ = _arrays(labels, probabilities)
  if len(labels) == 0 or len(np.unique(labels)) < 2:
    return 1.0
  logits = to_logits(probabilities)

  def loss(inverse):
    z = logits * inverse
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))

  a, b = 1.0 / high, 1.0 / low
  ratio = (np.sqrt(5) - 1) / 2
  c, d = b - ratio * (b - a), a + ratio * (b - a)
  fc, fd = loss(c), loss(d)
  for _ in range(iterations):
    if fc < fd:
      b, d, fd = d, c, fc
      c = b - ratio * (b - a)
      fc = loss(c)
    else:
      a, c, fc = c, d, fd
      d = a + ratio * (b - a)
      fd = loss(d)
  return float(1.0 / ((a + b) / 2))


def summary(labels, probabilities, bins=10, resamples=1000, seed=0, level=0.95):
  """ECE, Brier score and log loss, each with a percentile bootstrap interval over images."""
  from xray_keras.evaluation import statistics

  labels, probabilities = _arrays(labels, probabilities)

  def scores(y, p):
    return {"ece": expected_calibration_error(y, p, bins), "brier": brier_score(y, p), "log_loss": log_loss(y, p)}

  out = scores(labels, probabilities)
  ci = statistics.percentile_bootstrap(scores, labels, probabilities, resamples if len(labels) else 0, seed, level)
  for k in list(out):
    out[f"{k}_ci"] = list(ci.get(k, (float("nan"), float("nan"))))
  return out
