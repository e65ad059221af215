"""Classify image files with an exported SavedModel or a `.keras` model."""

import json
import os

import numpy as np

from xray_keras.data import decode, folder
from xray_keras.data.records import CLASS_NAMES, Skipped


def list_inputs(paths):
  """Expands files and folders (recursively, sorted) into `(files, skipped)`."""
  files, skipped = [], []
  for path in paths:
    if os.path.isdir(path):
      for dirpath, dirnames, names in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(names):
          full = os.path.join(dirpath, name)
          reason = folder.junk_reason(name)
          (skipped.append(Skipped(full, reason)) if reason else files.append(full))
    elif os.path.isfile(path):
      files.append(path)
    else:
      skipped.append(Skipped(path, "no such file or directory"))
  return files, skipped


class SavedModelPredictor:
  """Calls an export's `serving_default` signature on encoded bytes, as TF Serving would."""

  def __init__(self, path):
    import tensorflow as tf

    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
      versions = [int(v) for v in os.listdir(path) if v.isdigit()] if os.path.isdir(path) else []
      if not versions:
        raise FileNotFoundError(f"No SavedModel (saved_model.pb or a numbered version folder) in {path}")
      path = os.path.join(path, str(max(versions)))
    self._tf = tf
    self._signature = tf.saved_model.load(path).signatures["serving_default"]
    card = os.path.join(path, "assets.extra", "model_card.json")
    with open(card) as f:
      self.threshold = json.load(f)["decision_threshold"]

  def __call__(self, data):
    try:
      out = self._signature(images=self._tf.constant([data]))
    except self._tf.errors.InvalidArgumentError as e:
      lines = [line.strip() for line in e.message.splitlines()]
      detail = next((line for line in lines if line and not line.startswith(("Graph execution", "[[", "Detected at", "<"))), "")
      raise decode.DecodeError(f"not a decodable image ({detail or 'rejected by the model decoder'})") from None
    return float(out["pneumonia_probability"].numpy()[0])


class KerasPredictor:
  """Decodes with the training decoder and calls a `.keras` model (loaded with safe_mode)."""

  def __init__(self, path, resize_mode="squash", threshold=0.5):
    from xray_keras import models

    self._model = models.load_model(path)
    _, self._size, _, self._channels = self._model.input_shape
    self._resize_mode = resize_mode
    self.threshold = threshold

  def __call__(self, data):
    image = decode.decode_image(data, self._size, self._channels, self._resize_mode)
    return float(self._model.predict_on_batch(image[None].astype(np.float32)).reshape(-1)[0])


def load_predictor(path, resize_mode="squash", threshold=None):
  if path.endswith(".keras"):
    return KerasPredictor(path, resize_mode, 0.5 if threshold is None else threshold)
  predictor = SavedModelPredictor(path)
  if threshold is not None:
    predictor.threshold = threshold
  return predictor


def predict_files(predictor, files):
  """Returns `(rows, skipped)`: rows are `(file, label, probability)`."""
  rows, skipped = [], []
  for path in files:
    try:
      with open(path, "rb") as f:
        data = f.read()
      probability = predictor(data)
    except OSError as e:
      skipped.append(Skipped(path, f"unreadable ({e.strerror or type(e).__name__})"))
      continue
    except decode.DecodeError as e:
      skipped.append(Skipped(path, str(e)))
      continue
    rows.append((path, CLASS_NAMES[int(probability >= predictor.threshold)], probability))
  return rows, skipped
