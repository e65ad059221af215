"""NORMAL / BACTERIA / VIRUS metrics (`--task=three_class`): per-class recall and macro one-vs-rest AUC."""

import numpy as np

from xray_keras.evaluation import metrics, statistics


def three_class_metrics(labels, probabilities, class_names):
  """Accuracy of the arg-max class, each class's recall, one-vs-rest AUCs and their mean (macro AUC),
  and the confusion matrix (rows true, columns predicted)."""
  labels = np.asarray(labels).astype(int).reshape(-1)
  probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), len(class_names))
  predicted = probabilities.argmax(axis=1)
  k = len(class_names)
  confusion = np.zeros((k, k), dtype=int)
  np.add.at(confusion, (labels, predicted), 1)
  out = {
    "accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
    "confusion_matrix": confusion.tolist(),
    "class_names": list(class_names),
    "n": int(len(labels)),
  }
  aucs = []
  for c, name in enumerate(class_names):
    rows = labels == c
    out[f"recall_{name}"] = float((predicted[rows] == c).mean()) if rows.any() else float("nan")
    auc = metrics.roc_auc(rows, probabilities[:, c])
    out[f"auc_{name}"] = auc
    aucs.append(auc)
  out["macro_auc"] = float(np.mean(aucs))
  return out


def bootstrap_ci(labels, probabilities, class_names, resamples=1000, seed=0, level=0.95):
  """Percentile bootstrap intervals over images for every scalar of `three_class_metrics`."""
  ci = statistics.percentile_bootstrap(
    lambda y, p: three_class_metrics(y, p, class_names), labels, probabilities, resamples, seed, level
  )
  return {k: list(v) for k, v in ci.items()}
