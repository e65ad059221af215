"""The files the end of a run writes into its folder from what `evaluation/run_eval.py` computed:
predictions, calibration, TTA predictions, the OOD state, sample images, model.keras, timing.json
and, last, metrics.json (the finished marker). Each file is written whole or not at all."""

import contextlib
import csv
import os

import numpy as np

from xray_keras import atomic
from xray_keras.data.records import CLASS_NAMES, printable
from xray_keras.evaluation import clinical, ood
from xray_keras.training import room
from xray_keras.training import run_dir as run_dirs
from xray_keras.training.checkpoint import CHECKPOINT, HEAD_WEIGHTS


def write_predictions(path, by_split):
  """`by_split`: `{split: (files, labels, probabilities)}`, as `clinical.read_predictions` returns."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "split", "label", "probability"])
    for split, (files, labels, probabilities) in by_split.items():
      writer.writerows(
        [file, split, int(label), clinical.written(p)] for file, label, p in zip(files, labels, probabilities)
      )
  os.replace(tmp, path)


def write_run_predictions(path, data, probabilities, outputs):
  """file, split, 0/1 label, PNEUMONIA probability; with three classes also the class and each probability."""
  names = list(data.class_names) if len(data.class_names) > 2 else []
  with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(
      ["file", "split", "label", "probability"] + (["class"] + [f"p_{n}" for n in names] if names else [])
    )
    for split, probs in probabilities.items():
      arrays = data.splits[split]
      for i, (record, p) in enumerate(zip(arrays.records, probs)):
        extra = [names[arrays.labels[i]]] + [clinical.written(q) for q in outputs[split][i]] if names else []
        writer.writerow([printable(record.path), split, record.label, clinical.written(p)] + extra)


def write_calibration(run_dir, fitted):
  """calibration.json: `fitted` from `clinical.calibration_fit`."""
  atomic.write_json(os.path.join(run_dir, clinical.CALIBRATION), fitted)


def write_tta(run_dir, by_split, augment, views, seed=0, seconds=None, made_by="xray_keras.run"):
  """predictions_tta.csv and tta.json: `by_split` from `clinical.tta_by_split`, which took `seconds`
  in `made_by` (the run at its end, or `xray_keras.evaluate` afterwards)."""
  write_predictions(os.path.join(run_dir, clinical.TTA_PREDICTIONS), by_split)
  atomic.write_json(
    os.path.join(run_dir, clinical.TTA),
    {
      "views": int(views),
      "augment": list(augment),
      "seed": seed,
      "first_view": "the image itself",
      "seconds": seconds,
      "made_by": made_by,
    },
  )


def write_ood(run_dir, state, val_scores):
  """ood.npz (the means and precisions) and then ood.json (the rest), each atomically; returns ood.json's content."""
  tmp = os.path.join(run_dir, ood.NPZ + ".tmp.npz")
  np.savez(tmp, **{k: state[k] for k in ood.ARRAYS if k in state})
  os.replace(tmp, os.path.join(run_dir, ood.NPZ))
  summary = ood.describe(state, val_scores)
  atomic.write_json(os.path.join(run_dir, ood.JSON), summary)
  return summary


def write_samples(folder, split, per_class=2):
  """A few images of each class as PNG, for the TF Serving warm-up file and examples."""
  from PIL import Image

  os.makedirs(folder, exist_ok=True)
  for label, name in enumerate(n.lower() for n in CLASS_NAMES):
    for k, i in enumerate(np.flatnonzero(split.labels == label)[:per_class]):
      image = split.images[i]
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(folder, f"{name}_{k}.png"))


def save_model(run_dir, model):
  """model.keras without the optimizer state (one copy of the weights), after checking the disk has room."""
  room.check(run_dir, 2 * room.weights_bytes(model), "model.keras")
  with without_training_state(model):
    model.save(os.path.join(run_dir, "model.keras"))


def write_finished(run_dir, timing_report, result):
  """timing.json, then metrics.json (its presence marks a finished run), then drops what only an
  unfinished run needs (the last-good and phase-1 weights)."""
  atomic.write_json(os.path.join(run_dir, "timing.json"), timing_report)
  atomic.write_json(os.path.join(run_dir, run_dirs.FINISHED_MARKER), result)
  for name in (CHECKPOINT, HEAD_WEIGHTS):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      os.remove(path)
  with contextlib.suppress(OSError):
    os.rmdir(os.path.join(run_dir, os.path.dirname(CHECKPOINT)))


@contextlib.contextmanager
def without_training_state(model):
  """Saves of `model` within skip the optimizer and compile settings (one copy of the weights only)."""
  optimizer, compiled = getattr(model, "optimizer", None), model.compiled
  model.optimizer, model.compiled = None, False
  try:
    yield model
  finally:
    model.optimizer, model.compiled = optimizer, compiled
