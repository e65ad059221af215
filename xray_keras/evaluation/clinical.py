"""A finished run's clinical extras: its temperature (calibration.json) and its test-time-augmented
predictions (predictions_tta.csv), computed here and read back from the run folder (written by
`report/run_files.py` at the end of a run or by `xray_keras.evaluate`)."""

import csv
import json
import math
import os

import numpy as np

from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, metrics, operating_points

PREDICTIONS = "predictions.csv"
TTA_PREDICTIONS = "predictions_tta.csv"
CALIBRATION = "calibration.json"
TTA = "tta.json"
AUGMENT_CHUNK = 256  # images per eager augmentation call


def tta_predict(model, images, augment, views, batch_size=32, seed=0):
  """Mean PNEUMONIA probability over `views` views of each image: the image itself, then
  `views - 1` copies through the run's training augmentations (random layers in training mode)."""
  import keras

  from xray_keras.data import feeder
  from xray_keras.evaluation import prediction
  from xray_keras.models import pneumonia_probability

  images = np.asarray(images, dtype=np.float32)
  if not len(images):
    return np.zeros((0,), np.float32)
  total = pneumonia_probability(prediction.predict(model, images, batch_size))
  augmenter = feeder.augmentation(augment, seed=seed) if views > 1 else None
  if augmenter is None:
    return total
  for _ in range(views - 1):
    view = np.concatenate(
      [
        keras.ops.convert_to_numpy(augmenter(images[start : start + AUGMENT_CHUNK], training=True))
        for start in range(0, len(images), AUGMENT_CHUNK)
      ]
    )
    total += pneumonia_probability(prediction.predict(model, view, batch_size))
  return total / views


def written(probability):
  """A probability as the predictions files write it (6 decimals)."""
  return f"{probability:.6f}"


def as_written(probabilities):
  """`probabilities` as a predictions file holds them, so figures computed from either agree."""
  return np.array([float(written(p)) for p in np.asarray(probabilities, dtype=np.float64).reshape(-1)])


def read_predictions(run_dir, name=PREDICTIONS):
  """`{split: (files, labels, probabilities)}` from a run's predictions file; `{}` if it has none.

  Raises `UserError` for a row that is not a val or test image's 0/1 label and probability in [0, 1], for an
  image listed twice in a split, and if a split holds a NaN or infinite probability: nothing is computed
  from them.
  """
  path = os.path.join(run_dir, name)
  if not os.path.isfile(path):
    return {}
  out, seen = {}, set()
  try:
    with open(path, newline="", encoding="utf-8") as f:
      for line, row in enumerate(csv.DictReader(f), start=2):
        try:
          split, file, label, probability = row["split"], row["file"], int(row["label"]), float(row["probability"])
        except (KeyError, TypeError, ValueError) as e:
          raise UserError(f"{path}, line {line}: not a prediction row ({type(e).__name__}: {e}).") from None
        if split not in ("val", "test"):
          raise UserError(f"{path}, line {line}: split {split!r} is neither val nor test.")
        if label not in (0, 1):
          raise UserError(f"{path}, line {line}: label {label} is neither 0 (NORMAL) nor 1 (PNEUMONIA).")
        if math.isfinite(probability) and not 0 <= probability <= 1:
          raise UserError(f"{path}, line {line}: probability {probability} is outside [0, 1].")
        if (split, file) in seen:
          raise UserError(f"{path}, line {line}: {file} is listed twice in the {split} split.")
        seen.add((split, file))
        files, labels, probabilities = out.setdefault(split, ([], [], []))
        files.append(file)
        labels.append(label)
        probabilities.append(probability)
  except UnicodeDecodeError as e:
    raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
  out = {s: (files, np.array(labels), np.array(probabilities)) for s, (files, labels, probabilities) in out.items()}
  for split, (_, labels, probabilities) in out.items():
    metrics.require_finite(labels, probabilities, f"{split} predictions in {path}")
  return out


def calibration_fit(val_labels, val_probabilities):
  """The temperature fitted on validation, as calibration.json holds it."""
  temperature = calibration.fit_temperature(val_labels, val_probabilities)
  return {
    "method": "temperature scaling",
    "temperature": temperature,
    "fitted_on": "val",
    "at_search_bound": not 0.051 < temperature < 19.9,
    "val_images": int(len(val_labels)),
    "val_log_loss_before": calibration.log_loss(val_labels, val_probabilities),
    "val_log_loss_after": calibration.log_loss(
      val_labels, calibration.apply_temperature(val_probabilities, temperature)
    ),
  }


def temperature(run_dir):
  """The run's fitted temperature, or None if it was not calibrated."""
  path = os.path.join(run_dir, CALIBRATION)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    value = json.load(f).get("temperature")
  return float(value) if value and math.isfinite(value) else None


def tta_by_split(model, splits, augment, views, batch_size=32, seed=0):
  """`{split: (files, labels, probabilities as written)}` for `splits`: `{split: (files, labels, images)}`.

  `UserError` if a prediction is NaN or infinite.
  """
  by_split = {
    s: (files, labels, as_written(tta_predict(model, images, augment, views, batch_size, seed)))
    for s, (files, labels, images) in splits.items()
  }
  for s, (_, labels, probabilities) in by_split.items():
    metrics.require_finite(labels, probabilities, f"{s} predictions with {views}-view TTA")
  return by_split


def tta_choice(val_log_loss_single_view, val_log_loss_tta):
  """Validation's choice, the one that counts: "TTA" where the views lower its log loss, else "single view"."""
  return "TTA" if val_log_loss_tta < val_log_loss_single_view else "single view"


def tta_info(run_dir):
  """tta.json's content (views, augmentations, seed, seconds, made_by), or {} where the run has no TTA.

  Raises `UserError` if the file is not a JSON object whose "views" is a whole number of at least 2.
  """
  path = os.path.join(run_dir, TTA)
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not JSON ({e}).") from None
  views = info.get("views") if isinstance(info, dict) else None
  if not (isinstance(views, int) and not isinstance(views, bool) and views >= 2):
    raise UserError(f'{path} is not a TTA record: it needs "views", a whole number of at least 2.')
  return info


def tta_views(run_dir):
  return int(tta_info(run_dir).get("views", 1))


def decision_thresholds(run_dir, tta=False):
  """`{rule: threshold}` chosen on the run's validation predictions (TTA ones with `tta`), on the
  calibrated scale when the run has a temperature; `{}` without validation predictions."""
  by_split = read_predictions(run_dir, TTA_PREDICTIONS if tta else PREDICTIONS)
  if "val" not in by_split:
    return {}
  _, labels, probabilities = by_split["val"]
  t = temperature(run_dir)
  if t:
    probabilities = calibration.apply_temperature(probabilities, t)
  out = {rule: operating_points.threshold_for(rule, labels, probabilities) for rule in operating_points.RULES}
  finished = os.path.join(run_dir, "metrics.json")
  if not (t or tta) and os.path.isfile(finished):  # metrics.json has it from unrounded probabilities
    with open(finished) as f:
      out["youden"] = float(json.load(f).get("val", {}).get("at_val_threshold", {}).get("threshold", out["youden"]))
  return out
