"""Averages of several models' probabilities, with weights chosen on validation only."""

import itertools

import numpy as np

from xray_keras.evaluation import calibration

SPACES = ("probability", "logit")


def combine(probabilities, weights, space="probability"):
  """Weighted mean of `[models, images]` probabilities, taken as probabilities or as logits."""
  probabilities = np.asarray(probabilities, dtype=np.float64)
  weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
  if space == "logit":
    return 1.0 / (1.0 + np.exp(-(weights @ calibration.to_logits(probabilities))))
  if space != "probability":
    raise ValueError(f"Unknown ensemble space {space!r}; expected one of {SPACES}")
  return weights @ probabilities


def simplex_grid(models, step=0.1):
  """Every weight vector on a grid of `step` that sums to 1."""
  units = int(round(1 / step))
  for cut in itertools.combinations(range(units + models - 1), models - 1):
    parts = np.diff(np.r_[-1, cut, units + models - 1]) - 1
    yield parts / units


def choose_weights(val_labels, val_probabilities, space="probability", step=0.1):
  """The grid weights with the lowest validation log loss (ties: the most even weights).

  Reads validation labels and probabilities only.
  """
  val_probabilities = np.asarray(val_probabilities, dtype=np.float64)
  best, best_loss = None, np.inf
  for weights in simplex_grid(len(val_probabilities), step):
    loss = calibration.log_loss(val_labels, combine(val_probabilities, weights, space))
    if loss < best_loss - 1e-12 or (abs(loss - best_loss) <= 1e-12 and np.std(weights) < np.std(best)):
      best, best_loss = weights, loss
  return [float(w) for w in best]
