"""Export a finished run as ONNX, LiteRT or OpenVINO, in float32 or int8, for runtimes without TensorFlow.

Layout: `<export_dir>/<model name>-<format>[-int8]/<version>/` holding the model file and
`model_card.json`, written as the SavedModel is (a hidden folder renamed when complete). The graph
takes pixels (`[batch, size, size, channels]` float32 in 0..255, after the card's `preprocess`
steps) and returns the PNEUMONIA probability with the run's temperature applied, so a runtime
alone gives the calibrated number; the card's thresholds give the label.

int8 is post-training quantization. ONNX Runtime's static quantization (QDQ, per-channel weights,
the matrix products with a weight and the convolutions) and NNCF (OpenVINO) calibrate on the run's
validation images only. LiteRT's `int8` stores int8 weights and quantizes activations as it runs
(dynamic range: on ViT_scratch it agrees with the float model more closely than the calibrated
integer-only file and runs faster on x86); `int8_full` is that integer-only file, calibrated on the
validation images as a representative dataset, for accelerators without float kernels.
"""

import json
import os
import re
from importlib import metadata

import keras
import numpy as np
from absl import logging

from xray_keras import models
from xray_keras.data import preprocess
from xray_keras.data.records import CLASS_NAMES
from xray_keras.errors import UserError
from xray_keras.evaluation import clinical, ood
from xray_keras.serving import card, runtime
from xray_keras.serving.export import publish
from xray_keras.training import room
from xray_keras.training.run_dir import read_flags

# Modules an export needs: the first for float32, all for int8 (LiteRT's converter is TensorFlow's).
_MODULES = {"onnx": ("tf2onnx", "onnxruntime"), "litert": (), "openvino": ("openvino", "nncf")}
_PACKAGES = {
  "onnx": ("tf2onnx", "onnx", "onnxruntime"),
  "litert": ("ai-edge-litert",),
  "openvino": ("openvino", "nncf"),
}
CALIBRATION_IMAGES = 256


class PneumoniaProbability(keras.layers.Layer):
  """P(PNEUMONIA) from a sigmoid `(N, 1)` or NORMAL-first softmax `(N, K)` output, with a temperature."""

  def __init__(self, temperature=None, **kwargs):
    super().__init__(**kwargs)
    self.temperature = temperature

  def call(self, outputs):
    outputs = keras.ops.cast(outputs, "float32")
    p = outputs[:, 0] if outputs.shape[-1] == 1 else 1.0 - outputs[:, 0]
    if self.temperature:
      p = keras.ops.clip(p, 1e-7, 1 - 1e-7)
      p = keras.ops.sigmoid((keras.ops.log(p) - keras.ops.log(1.0 - p)) / self.temperature)
    return p

  def get_config(self):
    return {**super().get_config(), "temperature": self.temperature}


class MahalanobisScore(keras.layers.Layer):
  """The OOD score of penultimate features: `|(x - mean) @ L|` with `L @ L.T` the fitted precision.

  `mean` and `L` are non-trainable float32 weights; the whitened form keeps float32 rounding small.
  """

  def __init__(self, mean, precision, **kwargs):
    super().__init__(**kwargs)
    mean, whiten = np.asarray(mean, np.float64), ood.whitening(np.asarray(precision, np.float64))
    self.mean = self.add_weight(
      shape=mean.shape, initializer=keras.initializers.Constant(mean), trainable=False, name="mean"
    )
    self.whiten = self.add_weight(
      shape=whiten.shape, initializer=keras.initializers.Constant(whiten), trainable=False, name="whiten"
    )
    self.built = True  # its weights are fixed here, whatever the input

  def call(self, features):
    z = keras.ops.matmul(keras.ops.cast(features, "float32") - self.mean, self.whiten)
    return keras.ops.sqrt(keras.ops.sum(keras.ops.square(z), axis=-1))


class OODScore(keras.layers.Layer):
  """A run's OOD score (`evaluation/ood.py`) from `(features, pixels)`: the feature distance, and with
  the image's parts in the state (thumbnail, histogram), the largest distance each over its scale."""

  def __init__(self, state, **kwargs):
    super().__init__(**kwargs)
    self.features = MahalanobisScore(state["mean"], state["precision"], name="features")
    self.grid = int(state["grid"]) if "thumb_mean" in state else 0
    self.bins = int(state["bins"]) if "hist_mean" in state else 0
    self.scales = {"feature": float(state.get("feature_scale", 1.0))}
    if self.grid:
      self.thumb = MahalanobisScore(state["thumb_mean"], state["thumb_precision"], name="thumbnail")
      self.scales["thumb"] = float(state["thumb_scale"])
    if self.bins:
      self.hist = MahalanobisScore(state["hist_mean"], state["hist_precision"], name="histogram")
      self.scales["hist"] = float(state["hist_scale"])
    self.built = True

  def call(self, features, pixels):
    distance = self.features(features)
    if not (self.grid or self.bins):
      return distance
    scores = [distance / self.scales["feature"]]
    grey = keras.ops.mean(keras.ops.cast(pixels, "float32"), axis=-1)
    size = pixels.shape[1]
    if self.grid:
      g = self.grid
      cells = keras.ops.mean(keras.ops.reshape(grey, (-1, g, size // g, g, size // g)), axis=(2, 4))
      scores.append(self.thumb(keras.ops.reshape(cells, (-1, g * g)) / 255.0) / self.scales["thumb"])
    if self.bins:
      shares = ood.bin_shares(keras.ops.reshape(grey, (-1, size * size)), self.bins, keras.ops)
      scores.append(self.hist(shares) / self.scales["hist"])
    out = scores[0]
    for score in scores[1:]:
      out = keras.ops.maximum(out, score)
    return out


def serving_model(model, temperature, ood_state=None):
  """Pixels in, calibrated PNEUMONIA probability out; with a run's OOD state (`ood.load`) a dict of
  `pneumonia_probability` and `ood_score`."""
  pixels = keras.Input(model.input_shape[1:], name="pixels")
  probability = PneumoniaProbability(temperature, name="pneumonia_probability")
  if not ood_state:
    return keras.Model(pixels, probability(model(pixels)))
  features, outputs = ood.feature_model(model)(pixels)
  score = OODScore(ood_state, name="ood_score")(features, pixels)
  return keras.Model(pixels, {"pneumonia_probability": probability(outputs), "ood_score": score})


def _register_erfc():
  """tf2onnx has no converter for Erfc (exact GELU on TensorFlow): erfc(x) = 1 - erf(x), with ONNX's Erf."""
  from tf2onnx import utils
  from tf2onnx.handler import tf_op

  @tf_op("Erfc")
  class _Erfc:  # noqa: F841  (registered by the decorator)
    @classmethod
    def version_9(cls, ctx, node, **kwargs):
      dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
      one = ctx.make_const(utils.make_name("erfc_one"), np.array(1, dtype))
      erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
      ctx.replace_inputs(node, [one.output[0], erf.output[0]])
      node.type = "Sub"


def calibration_images(run_dir, values, size, channels, steps, limit=CALIBRATION_IMAGES):
  """Up to `limit` of the run's validation images, as the model sees them (float32 0..255)."""
  import dataclasses

  from xray_keras.data import loader
  from xray_keras.evaluation import external

  config = dataclasses.replace(external.data_config(values), image_size=size, channels=channels, preprocess=())
  try:
    data = loader.load(config, need=("val",))
  except UserError as e:
    raise UserError(f"int8 calibration reads the run's validation images, and they cannot be loaded: {e}") from None
  images = data.splits["val"].images[:limit]
  return preprocess.apply(images, steps).astype(np.float32)


def _versions(fmt):
  out = {}
  for name in ("keras", "tensorflow", "numpy", *_PACKAGES[fmt]):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def export(run_dir, fmt="saved_model", quantize="", export_dir="saved_models", model_name=None):
  """Exports `run_dir` as a SavedModel (`saved_model`) or for another runtime; returns the version folder."""
  from xray_keras.serving import export as saved_model

  if fmt == "saved_model":
    if quantize:
      raise UserError("--quantize applies to onnx, litert and openvino; the SavedModel stays float32 for TF Serving.")
    return saved_model.export_run(run_dir, export_dir, model_name)
  return export_format(run_dir, fmt, quantize, export_dir, model_name)


def export_format(run_dir, fmt, quantize="", export_dir="saved_models", model_name=None):
  """Exports the finished run in `run_dir` as `fmt` (onnx, litert, openvino); returns the version folder."""
  if fmt not in runtime.MODEL_FILES:
    raise UserError(f"Unknown export format {fmt!r}: one of {', '.join(runtime.FORMATS)}.")
  if quantize not in ("", *runtime.QUANTIZE):
    raise UserError(f"Unknown --quantize={quantize}: int8, int8_full (litert), or nothing for float32.")
  if quantize == "int8_full" and fmt != "litert":
    raise UserError("--quantize=int8_full is LiteRT's integer-only file; onnx and openvino take --quantize=int8.")
  if keras.backend.backend() != "tensorflow":
    raise UserError(f"The {fmt} export needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
  for module in _MODULES[fmt] if quantize else _MODULES[fmt][:1]:
    try:
      __import__(module)
    except ImportError:
      raise UserError(f"The {fmt} export needs {module}: pip install 'xray_keras[{fmt}]'.") from None
  metrics_path = os.path.join(run_dir, "metrics.json")
  if not os.path.isfile(metrics_path):
    raise UserError(f"{run_dir} is not a finished run (no metrics.json); nothing to export.")
  with open(metrics_path) as f:
    metrics = json.load(f)
  values = read_flags(os.path.join(run_dir, "flags.txt"))
  size, _, channels = metrics["model"]["input_shape"]
  steps = preprocess.parse(values.get("preprocess", ""))
  temperature = clinical.temperature(run_dir)
  ood_state = ood.load(run_dir)
  model = serving_model(models.load_model(os.path.join(run_dir, "model.keras")), temperature, ood_state)
  calibrated = quantize and (fmt, quantize) != ("litert", "int8")
  calibration = calibration_images(run_dir, values, size, channels, steps) if calibrated else None
  class_names = tuple(metrics.get("data", {}).get("class_names") or CLASS_NAMES)
  name = model_name or re.sub(r"[^A-Za-z0-9_.-]", "_", metrics["model"]["name"])
  base = os.path.join(export_dir, f"{name}-{fmt}" + (f"-{quantize}" if quantize else ""))
  model_card = card.build(
    run_dir,
    metrics,
    values,
    steps,
    temperature,
    class_names,
    "inside the graph, to pneumonia_probability",
    format=fmt,
    file=runtime.MODEL_FILES[fmt],
    runtime=runtime.RUNTIMES[fmt][1],
    io={
      "input": f"pixels: [batch, {size}, {size}, {channels}] float32 in 0..255, after the preprocess steps",
      "output": "pneumonia_probability: [batch] float32, the temperature already applied"
      + ("; ood_score: [batch] float32, flagged above the card's ood.threshold" if ood_state else ""),
    },
    quantization=(
      {
        "scheme": f"{quantize} post-training",
        "calibration": f"{len(calibration)} validation images"
        if calibrated
        else "none (activations quantized at run time)",
        "tool": _TOOLS[fmt, quantize],
      }
      if quantize
      else None
    ),
  )
  model_card["versions"] = _versions(fmt)
  room.check(export_dir, 3 * room.weights_bytes(model), f"the {fmt} export")

  def write(folder):
    path = os.path.join(folder, runtime.MODEL_FILES[fmt])
    _WRITERS[fmt](model, path, quantize, calibration)
    card.write(folder, model_card)

  target = publish(base, write)
  logging.info("Exported %s as %s%s to %s", name, fmt, f" ({quantize})" if quantize else "", target)
  return target


_TOOLS = {
  ("onnx", "int8"): "ONNX Runtime quantize_static (QDQ; per-channel int8 weights, int8 activations; "
  "MatMul with a weight, Gemm, Conv; attention's activation products in float)",
  (
    "litert",
    "int8",
  ): "LiteRT converter, Optimize.DEFAULT (dynamic range: int8 weights, activations quantized at run time)",
  ("litert", "int8_full"): "LiteRT converter, Optimize.DEFAULT with a representative dataset (integer-only where "
  "kernels exist, float input and output)",
  ("openvino", "int8"): "NNCF quantize (int8 weights and activations; transformers: NNCF's transformer scheme "
  "without SmoothQuant, the patch embedding in float)",
}


def _spec(model):
  return [keras.InputSpec(shape=(None, *model.input_shape[1:]), dtype="float32")]


def _onnx(model, path, quantize, calibration):
  _register_erfc()
  model.export(path, format="onnx", verbose=False, input_signature=_spec(model))
  if not quantize:
    return
  import onnx
  import onnxruntime
  from onnxruntime import quantization

  fp32 = path + ".float32"
  os.rename(path, fp32)
  quantization.quant_pre_process(fp32, fp32, skip_symbolic_shape=True)
  input_name = onnxruntime.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name

  class Reader(quantization.CalibrationDataReader):
    def __init__(self):
      self._batches = iter(np.array_split(calibration, max(1, len(calibration) // 16)))

    def get_next(self):
      batch = next(self._batches, None)
      return None if batch is None else {input_name: batch}

  quantization.quantize_static(
    fp32,
    path,
    Reader(),
    quant_format=quantization.QuantFormat.QDQ,
    per_channel=True,
    op_types_to_quantize=["MatMul", "Gemm", "Conv"],
    nodes_to_exclude=_activation_products(onnx.load(fp32)),
    activation_type=quantization.QuantType.QInt8,
    weight_type=quantization.QuantType.QInt8,
  )
  os.remove(fp32)


def _activation_products(graph):
  """MatMuls of two activations (attention's scores and weighted values): int8 there doubles ViT_scratch's
  largest probability change (0.04 to 0.09 over three trainings)."""
  weights = {t.name for t in graph.graph.initializer}
  return [n.name for n in graph.graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


def _litert(model, path, quantize, calibration):
  import tensorflow as tf

  options = {"optimizations": [tf.lite.Optimize.DEFAULT]} if quantize else {}
  if calibration is not None:

    def representative():
      for image in calibration:
        yield [image[None]]

    options["representative_dataset"] = representative
  model.export(path, format="litert", verbose=False, input_signature=_spec(model), **options)


def _openvino(model, path, quantize, calibration):
  import openvino as ov

  model.export(path, format="openvino", verbose=False, input_signature=_spec(model))
  if not quantize:
    return
  import nncf

  # NNCF's transformer scheme keeps softmax, layer norm and GELU inputs in float. Without SmoothQuant
  # and with the patch embedding in float, ViT_scratch's largest probability change over three
  # trainings fell from 0.06-0.27 to 0.03-0.09.
  transformer = any(re.search("Transformer|Attention|^ViT", type(layer).__name__) for layer in _layers(model))
  graph = ov.Core().read_model(path)
  options = {}
  if transformer:
    patches = [op.get_friendly_name() for op in graph.get_ops() if op.get_type_name() == "Convolution"][:1]
    options = {
      "model_type": nncf.ModelType.TRANSFORMER,
      "advanced_parameters": nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1),
      "ignored_scope": nncf.IgnoredScope(names=patches, validate=False),
    }
  quantized = nncf.quantize(
    graph, nncf.Dataset([image[None] for image in calibration]), subset_size=len(calibration), **options
  )
  for suffix in (".xml", ".bin"):
    os.remove(path[: -len(".xml")] + suffix)
  ov.save_model(quantized, path, compress_to_fp16=False)


def _layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _layers(layer)


_WRITERS = {"onnx": _onnx, "litert": _litert, "openvino": _openvino}
