"""Classify image files with an export (SavedModel, ONNX, LiteRT, OpenVINO) or a `.keras` model."""

import contextlib
import json
import os
import sys
import tempfile

import numpy as np

from xray_keras.data import decode, dicom, folder, preprocess
from xray_keras.data.records import CLASS_NAMES, Skipped
from xray_keras.errors import UserError
from xray_keras.serving import card, runtime


def list_inputs(paths):
  """Expands files and folders (recursively, sorted) into `(files, skipped)`.

  Links to folders are followed once: a link back into a folder already listed (a loop) or to one
  listed through another path is skipped and named, as are hidden folders and unreadable ones.
  """
  files, skipped = [], []
  for path in paths:
    if os.path.isdir(path):
      listed = {os.path.realpath(path)}
      unreadable = lambda e: skipped.append(Skipped(e.filename, f"unreadable folder ({e.strerror})"))  # noqa: E731
      for dirpath, dirnames, names in os.walk(path, onerror=unreadable, followlinks=True):
        kept = []
        for name in sorted(dirnames):
          full = os.path.join(dirpath, name)
          real = os.path.realpath(full)
          if folder.is_junk_folder(name):
            skipped.append(Skipped(full, "hidden or system folder"))
          elif real in listed:
            skipped.append(Skipped(full, "link to a folder already listed (a loop, or the same folder twice)"))
          else:
            listed.add(real)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(names):
          full = os.path.join(dirpath, name)
          reason = folder.junk_reason(name, full) or folder.file_problem(full)
          (skipped.append(Skipped(full, reason)) if reason else files.append(full))
    elif os.path.lexists(path):
      reason = folder.file_problem(path)  # a named pipe would block the read for ever
      (skipped.append(Skipped(path, reason)) if reason else files.append(path))
    else:
      skipped.append(Skipped(path, "no such file or directory"))
  return files, skipped


# What libjpeg prints to stderr about a damaged file the decoder then rejects or recovers, and
# TensorFlow's runtime echo of a refused request (its reason is already in the skip line).
_DECODER_NOISE = (
  "Corrupt JPEG data",
  "Premature end of JPEG file",
  "Invalid JPEG file structure",
  "Unsupported marker",
  "Bogus",
  "Warning:",
  "[[{{",
)


@contextlib.contextmanager
def _quiet_decoder():
  """Holds back the decoder noise above (written by C code to file descriptor 2); passes on the rest."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
        if not line.lstrip().startswith(_DECODER_NOISE) and "Local rendezvous is aborting" not in line:
          sys.stderr.write(line)


TF_NEEDED = (
  "Running {what} needs TensorFlow: pip install tensorflow (or use an ONNX, LiteRT or OpenVINO export, "
  "which need only their runtime)."
)


def _import_tensorflow(what):
  """`tensorflow`, or a UserError naming what to install."""
  try:
    import tensorflow as tf
  except ImportError:
    raise UserError(TF_NEEDED.format(what=what)) from None
  return tf


def _ood_threshold(model_card):
  found = (model_card.get("ood") or {}).get("threshold")
  return None if found is None else float(found)


class SavedModelPredictor:
  """Calls an export's `serving_default` signature on encoded bytes, as TF Serving would."""

  def __init__(self, path, operating_point="youden"):
    tf = _import_tensorflow("a SavedModel")
    _, path, card_path = runtime.resolve(path)
    self._tf = tf
    signatures = tf.saved_model.load(path).signatures
    self._signature, self._pixels_signature = signatures["serving_default"], signatures.get("serving_pixels")
    model_card = card.read(card_path)
    self._input = model_card.get("input", {})
    self.threshold = card_threshold(model_card, operating_point)
    self.ood_threshold = _ood_threshold(model_card)

  def __call__(self, data, ood=False):
    """The PNEUMONIA probability; `ood`: `(probability, ood_score)`, the score None for an export without one."""
    if dicom.is_dicom(data):
      out = self._from_pixels(data)
    else:
      try:
        with _quiet_decoder():
          out = self._signature(images=self._tf.constant([data]))
      except self._tf.errors.InvalidArgumentError as e:
        raise decode.DecodeError(f"refused by the model ({_reason(e.message)})") from None
    probability = float(out[runtime.PROBABILITY_OUTPUT].numpy()[0])
    if not ood:
      return probability
    score = out.get(runtime.OOD_OUTPUT)
    return probability, (None if score is None or self.ood_threshold is None else float(score.numpy()[0]))

  def _from_pixels(self, data):
    """DICOM, which the serving graph does not decode: the package's decoder, then `serving_pixels`."""
    if self._pixels_signature is None or "image_size" not in self._input:
      raise decode.DecodeError("a DICOM file, and this export has no serving_pixels signature to take its pixels")
    size, channels = self._input["image_size"], self._input["channels"]
    pixels = decode.decode_image(data, size, channels, self._input.get("resize_mode", "squash"))
    return self._pixels_signature(pixels=self._tf.constant(pixels[None], self._tf.float32))


def card_threshold(model_card, operating_point):
  """The model card's threshold for `operating_point` (youden: its decision threshold)."""
  if operating_point == "youden":
    return model_card["decision_threshold"]
  points = model_card.get("operating_points") or {}
  if operating_point not in points:
    raise UserError(
      f"This export's model card has no {operating_point} operating point (exported before "
      "operating points, or without validation data); pass --threshold instead."
    )
  return points[operating_point]["threshold"]


class RuntimePredictor:
  """Decodes with the package's decoder and runs an ONNX, LiteRT or OpenVINO export: no TensorFlow, no Keras."""

  def __init__(self, path, operating_point="youden"):
    self._runtime = runtime.Runtime(path)
    self._input = self._runtime.card["input"]
    self.threshold = card_threshold(self._runtime.card, operating_point)
    self.ood_threshold = self._runtime.ood_threshold

  def __call__(self, data, ood=False):
    """The PNEUMONIA probability; `ood`: `(probability, ood_score)`, the score None for an export without one."""
    size, channels = self._input["image_size"], self._input["channels"]
    pixels = decode.decode_image(data, size, channels, self._input.get("resize_mode", "squash"))
    probabilities, ood_scores = self._runtime.scores(pixels[None])
    if not ood:
      return float(probabilities[0])
    return float(probabilities[0]), (None if ood_scores is None else float(ood_scores[0]))


def _reason(message):
  """The first meaningful line of a TensorFlow error, without its assertion and graph dump."""
  for line in (line.strip() for line in message.splitlines()):
    if not line or line.startswith(("Graph execution", "[[", "Detected at", "<", "File ", "Condition x")):
      continue
    line = line.removeprefix("assertion failed: ").strip("[] ")
    return line.split("] [", 1)[0].split(" [Condition", 1)[0].strip("[] .") or "not a decodable image"
  return "not a decodable image"


class KerasPredictor:
  """Decodes with the training decoder and calls a `.keras` model (loaded with safe_mode).

  Beside a run's `model.keras`, the run's `metrics.json` and `flags.txt` give the decision
  threshold chosen on validation and the resize mode, and its `ood.npz` the OOD score, as an
  export's model card does.
  """

  def __init__(self, path, resize_mode=None, threshold=None, operating_point="youden", tta=1):
    try:
      from xray_keras import models
      from xray_keras.evaluation import clinical
      from xray_keras.training.run_dir import read_flags
    except ImportError as e:
      if not any(name in (e.name or str(e)) for name in ("tensorflow", "keras")):
        raise
      raise UserError(TF_NEEDED.format(what="a .keras model")) from None
    from xray_keras.evaluation import ood

    self.model = models.load_model(path)
    _, self._size, _, self._channels = self.model.input_shape
    run_dir = os.path.dirname(os.path.abspath(path))
    self._ood_state, self._extract = ood.load(run_dir), None
    self.ood_threshold = None if self._ood_state is None else float(self._ood_state["threshold"])
    metrics, flags_txt = os.path.join(run_dir, "metrics.json"), os.path.join(run_dir, "flags.txt")
    flags = read_flags(flags_txt) if os.path.isfile(flags_txt) else {}
    self._steps = preprocess.parse(flags.get("preprocess", ""))
    self._augment = [a for a in flags.get("augment", "").split(",") if a]
    self._tta = tta
    if tta > 1 and not self._augment:
      raise UserError("--tta needs the run's --augment layers (its flags.txt lists none).")
    self._temperature = clinical.temperature(run_dir)
    if threshold is None:
      points = clinical.decision_thresholds(
        run_dir, tta=tta > 1 and os.path.isfile(os.path.join(run_dir, clinical.TTA_PREDICTIONS))
      )
      if points:
        threshold = points[operating_point]
      elif operating_point != "youden":
        raise UserError(
          f"No validation predictions beside {path} to choose the {operating_point} threshold on; "
          "pass --threshold instead."
        )
      elif os.path.isfile(metrics):
        with open(metrics) as f:
          threshold = float(json.load(f).get("val", {}).get("at_val_threshold", {}).get("threshold", 0.5))
    if resize_mode is None:
      resize_mode = flags.get("resize_mode")
    self._resize_mode = resize_mode or "squash"
    self.threshold = 0.5 if threshold is None else threshold

  def __call__(self, data, ood=False):
    """The PNEUMONIA probability; `ood`: `(probability, ood_score)`, the score (of the image, not its TTA
    views) None without the run's `ood.npz`."""
    from xray_keras import models
    from xray_keras.evaluation import calibration, clinical
    from xray_keras.evaluation import ood as ood_score

    image = decode.decode_image(data, self._size, self._channels, self._resize_mode)
    image = preprocess.apply(image[None], self._steps).astype(np.float32)
    if self._tta > 1:
      probability = clinical.tta_predict(self.model, image, self._augment, self._tta, batch_size=1)
    else:
      probability = models.pneumonia_probability(self.model.predict_on_batch(image))
    if self._temperature:
      probability = calibration.apply_temperature(probability, self._temperature)
    if not ood or self._ood_state is None:
      return (float(probability[0]), None) if ood else float(probability[0])
    if self._extract is None:
      self._extract = ood_score.extractor(self.model, batch_size=1)
    score = ood_score.scores(self.model, self._ood_state, image, extract=self._extract)
    return float(probability[0]), float(score[0])


def load_predictor(path, resize_mode=None, threshold=None, operating_point="youden", tta=1):
  """The predictor of `--model`: a run folder, a `.keras` file or an export (`runtime.resolve_model`)."""
  kind, path = runtime.resolve_model(path)
  if kind == "keras":
    return KerasPredictor(path, resize_mode, threshold, operating_point, tta)
  if tta > 1:
    raise UserError("--tta needs a run's model.keras: an export serves one view of each image.")
  fmt = runtime.resolve(path)[0]
  predictor = (SavedModelPredictor if fmt == "tf_saved_model" else RuntimePredictor)(path, operating_point)
  if threshold is not None:
    predictor.threshold = threshold
  return predictor


def predict_files(predictor, files):
  """Returns `(rows, skipped)`: rows are `(file, label, probability)`."""
  rows, skipped = assess_files(predictor, files, ood=False)
  return [row[:3] for row in rows], skipped


def assess_files(predictor, files, ood=True):
  """Returns `(rows, skipped)`: rows are `(file, label, probability, ood_score, flagged)`, the last two
  None where the model has no OOD score (or `ood` is false); flagged: the score is above `predictor.ood_threshold`."""
  rows, skipped = [], []
  for path in files:
    try:
      data = decode.read_file(path)
      probability, score = predictor(data, ood=True) if ood else (predictor(data), None)
    except OSError as e:
      skipped.append(Skipped(path, f"unreadable ({e.strerror or type(e).__name__})"))
      continue
    except decode.DecodeError as e:
      skipped.append(Skipped(path, str(e)))
      continue
    flagged = None if score is None else bool(score > predictor.ood_threshold)
    rows.append((path, CLASS_NAMES[int(probability >= predictor.threshold)], probability, score, flagged))
  return rows, skipped
