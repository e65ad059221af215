"""The report's figures, written as PNG files with matplotlib (no display needed)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xray_keras.evaluation import metrics  # noqa: E402


def roc_points(labels, scores):
  """False- and true-positive rates over every threshold, from (0, 0) to (1, 1)."""
  labels = np.asarray(labels).astype(bool)
  order = np.argsort(-np.asarray(scores), kind="mergesort")
  scores, labels = np.asarray(scores)[order], labels[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  tp = np.cumsum(labels)[last_of_tie]
  fp = np.cumsum(~labels)[last_of_tie]
  return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def training_curves(runs, path):
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for ax, key in zip(axes, ("loss", "accuracy", "auc")):
    for i, run in enumerate(runs):
      epochs = [h["epoch"] + 1 for h in run.history]
      color = f"C{i}"
      ax.plot(epochs, [h.get(key, np.nan) for h in run.history], color=color, label=f"{run.display_name} train")
      ax.plot(
        epochs,
        [h.get(f"val_{key}", np.nan) for h in run.history],
        color=color,
        ls="--",
        label=f"{run.display_name} val",
      )
    ax.set_xlabel("epoch")
    ax.set_title(key)
  axes[0].legend(fontsize=7)
  return _save(fig, path)


def federated_curves(series, path):
  """Validation AUC and loss per model: `series[model]` = [(label, epochs, auc, loss, is_central)]."""
  fig, axes = plt.subplots(len(series), 2, figsize=(12, 3.8 * len(series)), squeeze=False)
  for row, (model, lines) in zip(axes, series.items()):
    for i, (label, x, auc, loss, central) in enumerate(lines):
      style = dict(color="black", lw=2) if central else dict(color=f"C{i}", lw=1.2)
      row[0].plot(x, auc, label=label, **style)
      row[1].plot(x, loss, label=label, **style)
    for ax, key in zip(row, ("validation AUC", "validation loss")):
      ax.set_xlabel("epochs of local training")
      ax.set_title(f"{model}: {key}")
    row[0].legend(fontsize=7)
  return _save(fig, path)


def roc_curves(runs, path):
  fig, ax = plt.subplots(figsize=(5, 5))
  for run in runs:
    fpr, tpr = roc_points(run.test_labels, run.test_probabilities)
    auc = metrics.roc_auc(run.test_labels, run.test_probabilities)
    ax.plot(fpr, tpr, label=f"{run.display_name} (AUC {auc:.3f})")
  ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
  ax.set_xlabel("false-positive rate (1 - specificity)")
  ax.set_ylabel("true-positive rate (sensitivity)")
  ax.set_title("ROC on the test split")
  ax.legend(fontsize=8, loc="lower right")
  return _save(fig, path)


def confusion_matrices(runs, path):
  fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.2), squeeze=False)
  for ax, run in zip(axes[0], runs):
    matrix = np.array(run.metrics["test"]["at_val_threshold"]["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
      ax.text(j, i, str(value), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"])
    ax.set_xlabel("predicted")
    ax.set_title(f"{run.display_name}\nthreshold {run.threshold:.2f}", fontsize=9)
  axes[0][0].set_ylabel("true")
  return _save(fig, path)


def epoch_time_bars(runs, path, test_bed=""):
  fig, ax = plt.subplots(figsize=(5, 3.5))
  names = [r.display_name for r in runs]
  ax.bar(names, [r.timing.get("mean_epoch_s") or 0 for r in runs], color=[f"C{i}" for i in range(len(runs))])
  ax.set_ylabel("seconds per epoch")
  ax.set_title(f"Time per epoch {test_bed}".strip())
  return _save(fig, path)


def accuracy_scatter(runs, path):
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, run in enumerate(runs):
    accuracy = run.metrics["test"]["accuracy"]
    axes[0].scatter(run.params, accuracy, color=f"C{i}", label=run.display_name)
    axes[1].scatter(run.train_s / 60, accuracy, color=f"C{i}", label=run.display_name)
  axes[0].set_xscale("log")
  axes[0].set_xlabel("parameters")
  axes[1].set_xlabel("training time (min)")
  for ax in axes:
    ax.set_ylabel("test accuracy")
  axes[0].legend(fontsize=8)
  return _save(fig, path)


def explanation_grid(rows, path):
  """`rows`: (model name, images (N, H, W, C), maps (N, H, W), titles) per model; one row each."""
  columns = max(len(r[1]) for r in rows)
  fig, axes = plt.subplots(len(rows), columns, figsize=(1.9 * columns, 2.1 * len(rows)), squeeze=False)
  for (name, images, maps, titles), axis_row in zip(rows, axes):
    for ax, image, heat, title in zip(axis_row, images, maps, titles):
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image.astype("uint8"), cmap="gray")
      ax.imshow(heat, cmap="jet", alpha=0.35)
      ax.set_title(title, fontsize=7)
    for ax in axis_row:
      ax.axis("off")
    axis_row[0].text(-0.1, 0.5, name, transform=axis_row[0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
  return _save(fig, path)


def reliability_diagrams(entries, path, bins=10):
  """`entries`: (model name, labels, probabilities, calibrated probabilities or None) on test."""
  from xray_keras.evaluation import calibration

  fig, axes = plt.subplots(1, len(entries), figsize=(3.4 * len(entries), 3.5), squeeze=False)
  for ax, (name, labels, probabilities, calibrated) in zip(axes[0], entries):
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for probs, style, tag in ((probabilities, "o-", "as trained"), (calibrated, "s--", "temperature-scaled")):
      if probs is None:
        continue
      points = [(m, f) for m, f, n in calibration.reliability(labels, probs, bins) if n]
      ece = calibration.expected_calibration_error(labels, probs, bins)
      ax.plot(*zip(*points), style, ms=3, label=f"{tag} (ECE {ece:.3f})")
    ax.set_xlabel("mean predicted PNEUMONIA probability")
    ax.set_title(name, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
  axes[0][0].set_ylabel("fraction PNEUMONIA")
  return _save(fig, path)
