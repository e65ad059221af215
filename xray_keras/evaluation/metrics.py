"""Binary classification metrics in NumPy: the numbers in metrics.json."""

import numpy as np

from xray_keras.errors import UserError


def require_finite(labels, probabilities, what="predictions"):
  """Raises `UserError` unless every label and prediction is finite: no metric comes from NaN or infinity.

  `probabilities` is `(N,)` or `(N, classes)`; a row counts once however many of its values are not finite.
  `what` names them in the message, e.g. "test predictions".
  """
  for values, message in (
    (probabilities, f"{what} are NaN or infinite: no metric computed (the model's weights are probably not finite)"),
    (labels, f"labels of the {what} are NaN or infinite: no metric computed"),
  ):
    finite = np.isfinite(np.asarray(values, dtype=np.float64))
    rows = finite.all(axis=tuple(range(1, finite.ndim)))
    if not rows.all():
      raise UserError(f"{int((~rows).sum())} of {len(rows)} {message}")


def midranks(values):
  """Ranks from 1; tied values share the mean of their ranks."""
  values = np.asarray(values, dtype=np.float64)
  order = np.argsort(values, kind="mergesort")
  ordered = values[order]
  starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first index of each tie group
  counts = np.diff(np.r_[starts, len(values)])
  ranks = np.empty(len(values), dtype=np.float64)
  ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
  return ranks


def roc_auc(labels, scores):
  """ROC-AUC as the Mann-Whitney statistic (ties count one half).

  Returns NaN when only one class is present; raises `UserError` on NaN or infinite input.
  """
  require_finite(labels, scores)
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, dtype=np.float64)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = midranks(scores)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ratio(num, den):
  return float(num / den) if den else 0.0


def binary_metrics(labels, probabilities, threshold=0.5):
  """Accuracy, precision, recall (sensitivity), specificity, F1, AUC and the confusion matrix.

  Args:
    labels: array of 0/1. 1 = PNEUMONIA (the positive class).
    probabilities: array of float. Predicted PNEUMONIA probability.
    threshold: float. Predict PNEUMONIA when probability >= threshold.

  Returns:
    dict; `confusion_matrix` is `[[TN, FP], [FN, TP]]` (rows true, columns predicted).

  Raises:
    UserError: a label or probability is NaN or infinite.
  """
  require_finite(labels, probabilities)
  labels = np.asarray(labels).astype(int).reshape(-1)
  probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
  predicted = (probabilities >= threshold).astype(int)
  tp = int(np.sum((predicted == 1) & (labels == 1)))
  tn = int(np.sum((predicted == 0) & (labels == 0)))
  fp = int(np.sum((predicted == 1) & (labels == 0)))
  fn = int(np.sum((predicted == 0) & (labels == 1)))
  precision = _ratio(tp, tp + fp)
  recall = _ratio(tp, tp + fn)
  return {
    "accuracy": _ratio(tp + tn, len(labels)),
    "precision": precision,
    "recall": recall,
    "specificity": _ratio(tn, tn + fp),
    "f1": _ratio(2 * precision * recall, precision + recall),
    "auc": roc_auc(labels, probabilities),
    "confusion_matrix": [[tn, fp], [fn, tp]],
    "threshold": float(threshold),
    "n": int(len(labels)),
  }


def choose_threshold(labels, probabilities):
  """The threshold maximising Youden's J (sensitivity + specificity - 1).

  Ties go to the threshold closest to 0.5. Use on validation data only.
  """
  labels = np.asarray(labels).astype(int).reshape(-1)
  probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
  if len(np.unique(labels)) < 2:
    return 0.5
  best, best_j = 0.5, -np.inf
  for t in np.unique(probabilities):
    m = binary_metrics(labels, probabilities, t)
    j = m["recall"] + m["specificity"] - 1.0
    if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
      best, best_j = float(t), j
  return best


def evaluate_split(labels, probabilities, chosen_threshold):
  """metrics.json's object for one split: metrics at 0.5 plus at the validation threshold."""
  result = binary_metrics(labels, probabilities, 0.5)
  result["at_val_threshold"] = binary_metrics(labels, probabilities, chosen_threshold)
  return result
