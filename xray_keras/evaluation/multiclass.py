"""NORMAL / BACTERIA / VIRUS metrics (`--task=three_class`): per-class recall and macro one-vs-rest AUC."""

import numpy as np

from xray_keras.evaluation import metrics


def three_class_metrics(labels, probabilities, class_names):
  """Accuracy of the arg-max class, each class's recall, one-vs-rest AUCs and their mean (macro AUC),
  and the confusion matrix (rows true, columns predicted)."""
  labels = np.asarray(labels).astype(int).reshape(-1)
  probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(labels), len(class_names))
  predicted = probabilities.argmax(axis=1)
  k = len(class_names)
  confusion = np.zeros((k, k), dtype=int)
  np.add.at(confusion, (labels, predicted), 1)
  out = {"accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
         "confusion_matrix": confusion.tolist(), "class_names": list(class_names), "n": int(len(labels))}
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
  labels, probabilities = np.asarray(labels), np.asarray(probabilities)
  rng = np.random.default_rng(seed)
  draws = {}
  for _ in range(resamples):
    rows = rng.integers(0, len(labels), len(labels))
    for key, value in three_class_metrics(labels[rows], probabilities[rows], class_names).items():
      if isinstance(value, float) and np.isfinite(value):
        draws.setdefault(key, []).append(value)
  tail = (1 - level) / 2 * 100
  return {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in draws.items()}
