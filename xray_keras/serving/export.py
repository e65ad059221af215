"""Export a finished run as a versioned SavedModel that TF Serving loads unchanged.

Layout: `<export_dir>/<model name>/<version>/` with `assets.extra/model_card.json`
and `assets.extra/tf_serving_warmup_requests`. The version is written into a
hidden temporary folder beside it and renamed when complete, so a server
watching the base path never sees a half-written model.
"""

import io
import json
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from xray_keras import atomic, models
from xray_keras.data import preprocess
from xray_keras.data.records import CLASS_NAMES
from xray_keras.errors import UserError
from xray_keras.evaluation import clinical, ood
from xray_keras.serving import card, graph, preprocess_tf
from xray_keras.training import room
from xray_keras.training.run_dir import read_flags

SAMPLES_DIR = "samples"


def next_version(base):
  """One above the highest integer version folder under `base` (1 if none)."""
  versions = [int(name) for name in os.listdir(base) if name.isdigit()] if os.path.isdir(base) else []
  return max(versions, default=0) + 1


def publish(base, write):
  """Calls `write(folder)` on a hidden folder under `base`, then renames it to the next version; returns its path.

  Hidden and renamed when complete, so a server watching `base` never sees a half-written model.
  """
  tmp = atomic.temp_dir(base)
  try:
    write(tmp)
    while True:
      target = os.path.join(base, str(next_version(base)))
      try:
        os.rename(tmp, target)  # fails if another export took this version meanwhile
        return target
      except OSError:
        if not os.path.exists(target):
          raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _serving_fns(
  model, size, channels, resize_mode, threshold, temperature=None, steps=(), class_names=CLASS_NAMES, ood_score=None
):
  """`serving_default` (encoded bytes) and `serving_pixels`: decode, `--preprocess` steps, the model,
  the temperature on the PNEUMONIA probability, the label at `threshold`; with `ood_score` (`ood_scorer`)
  also `ood_score` and `out_of_distribution`."""
  classes = tf.constant(list(CLASS_NAMES))

  def outputs(pixels):
    if ood_score is None:
      raw = tf.cast(model(pixels, training=False), tf.float32)
    else:
      distance, raw = ood_score(pixels)
    probability = tf.reshape(raw, [-1]) if raw.shape[-1] == 1 else 1.0 - raw[:, 0]
    if temperature:
      p = tf.clip_by_value(probability, 1e-7, 1 - 1e-7)
      probability = tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / temperature)
    predicted = tf.cast(probability >= threshold, tf.int32)
    out = {
      "pneumonia_probability": probability,
      "probabilities": tf.stack([1.0 - probability, probability], axis=1),
      "label": tf.gather(classes, predicted),
      "label_id": predicted,
    }
    if ood_score is not None:
      out["ood_score"] = distance
      out["out_of_distribution"] = distance > ood_score.threshold
    if raw.shape[-1] > 1:
      out["class_probabilities"] = raw
      out["class"] = tf.gather(tf.constant(list(class_names)), tf.argmax(raw, axis=1))
    return out

  def prepared(images):
    if not steps:
      return images
    return tf.map_fn(
      lambda image: preprocess_tf.apply(image, steps),
      images,
      fn_output_signature=tf.TensorSpec([size, size, channels], tf.uint8),
    )

  def from_bytes(images):
    return outputs(tf.cast(prepared(graph.decode_batch(images, size, channels, resize_mode)), tf.float32))

  def from_pixels(pixels):
    if steps:
      pixels = prepared(tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8))
    return outputs(tf.cast(pixels, tf.float32))

  return from_bytes, from_pixels


class OODScorer:
  """`pixels -> (ood_score, model outputs)` for the serving functions; `tracked` for the export archive."""

  def __init__(self, model, state):
    from xray_keras.evaluation import ood
    from xray_keras.serving.formats import OODScore

    self.features = ood.feature_model(model)
    self.distance = OODScore(state, name="ood_score")
    self.threshold = tf.constant(float(state["threshold"]), tf.float32)
    self.tracked = (self.features, self.distance)

  def __call__(self, pixels):
    features, raw = self.features(pixels, training=False)
    return self.distance(features, pixels), tf.cast(raw, tf.float32)


def write_warmup(path, model_name, samples):
  """TF Serving's warm-up file: PredictionLog records for `serving_default`."""
  from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

  with tf.io.TFRecordWriter(path) as writer:
    request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
    )
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(samples, dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    writer.write(log.SerializeToString())


def _samples(run_dir):
  """The run's sample test images as PNG, and the first again as JPEG (the common case)."""
  folder = os.path.join(run_dir, SAMPLES_DIR)
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  if not names:
    raise UserError(f"{run_dir} has no {SAMPLES_DIR}/ images for the TF Serving warm-up file.")
  out = []
  for name in names:
    with open(os.path.join(folder, name), "rb") as f:
      out.append(f.read())
  jpeg = io.BytesIO()
  with Image.open(io.BytesIO(out[0])) as image:
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(jpeg, "JPEG", quality=95)
  return out + [jpeg.getvalue()]


def export_run(run_dir, export_dir="saved_models", model_name=None):
  """Exports the finished run in `run_dir`. Returns the version directory written."""
  metrics_path = os.path.join(run_dir, "metrics.json")
  if not os.path.isfile(metrics_path):
    raise UserError(f"{run_dir} is not a finished run (no metrics.json); nothing to export.")
  if keras.backend.backend() != "tensorflow":
    raise UserError("SavedModel export needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
  with open(metrics_path) as f:
    metrics = json.load(f)
  flags = read_flags(os.path.join(run_dir, "flags.txt"))
  model = models.load_model(os.path.join(run_dir, "model.keras"))
  ood_state = ood.load(run_dir)
  scorer = OODScorer(model, ood_state) if ood_state else None
  size, _, channels = metrics["model"]["input_shape"]
  resize_mode = flags.get("resize_mode", "squash")
  temperature = clinical.temperature(run_dir)
  steps = preprocess.parse(flags.get("preprocess", ""))
  class_names = tuple(metrics.get("data", {}).get("class_names") or CLASS_NAMES)
  model_card = card.build(
    run_dir,
    metrics,
    flags,
    steps,
    temperature,
    class_names,
    "inside the graph, to pneumonia_probability, before the threshold",
    format="tf_saved_model",
    signatures={
      "serving_default": f"images: [batch] encoded {graph.ACCEPTED} bytes",
      "serving_pixels": f"pixels: [batch, {size}, {size}, {channels}] float32 in 0..255",
    },
  )
  threshold = model_card["decision_threshold"]
  # "applications:EfficientNetV2B0" -> "applications_EfficientNetV2B0": a folder and TF Serving model name.
  model_name = model_name or re.sub(r"[^A-Za-z0-9_.-]", "_", metrics["model"]["name"])

  from_bytes, from_pixels = _serving_fns(
    model, size, channels, resize_mode, threshold, temperature, steps, class_names, scorer
  )
  archive = keras.export.ExportArchive()
  archive.track(model)
  for tracked in scorer.tracked if scorer else ():
    archive.track(tracked)
  archive.add_endpoint("serving_default", from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
  archive.add_endpoint(
    "serving_pixels",
    from_pixels,
    input_signature=[tf.TensorSpec([None, size, size, channels], tf.float32, name="pixels")],
  )

  base = os.path.join(export_dir, model_name)
  room.check(export_dir, 2 * room.weights_bytes(model), "the SavedModel")

  def write(tmp):
    archive.write_out(tmp, verbose=False)
    extra = os.path.join(tmp, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    model_card["versions"] = {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__}
    card.write(extra, model_card)
    write_warmup(os.path.join(extra, "tf_serving_warmup_requests"), model_name, _samples(run_dir))

  target = publish(base, write)
  version = int(os.path.basename(target))
  logging.info("Exported %s version %d to %s", model_name, version, target)
  return target
