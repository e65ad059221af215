"""Run an exported model on decoded pixels: ONNX Runtime, LiteRT or OpenVINO, or a SavedModel's `serving_pixels`.

Only the SavedModel imports TensorFlow; the other three need their runtime, NumPy and the card.
Every runtime returns the calibrated PNEUMONIA probability (the temperature is in the graph).
"""

import os

import numpy as np

from xray_keras.data import preprocess
from xray_keras.errors import UserError
from xray_keras.serving import card

MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
FORMATS = ("saved_model", *MODEL_FILES)  # what `export --format` and a run's `--export_format` take
# The module that runs each format, and its pip package; the package's extra is the format's name.
RUNTIMES = {
  "onnx": ("onnxruntime", "onnxruntime"),
  "litert": ("ai_edge_litert", "ai-edge-litert"),
  "openvino": ("openvino", "openvino"),
}
PROBABILITY_OUTPUT, OOD_OUTPUT = "pneumonia_probability", "ood_score"  # the graph's outputs, by name
QUANTIZE = ("int8", "int8_full")  # `--quantize` beside float32 (int8_full: LiteRT's integer-only file)
_BY_EXTENSION = {os.path.splitext(name)[1]: fmt for fmt, name in MODEL_FILES.items()}


def resolve(path):
  """`(format, model file or SavedModel folder, card path)` for an export's base, version folder or model file."""
  if os.path.isdir(path) and not _model_in(path):
    versions = [int(v) for v in os.listdir(path) if v.isdigit()]
    if versions:
      path = os.path.join(path, str(max(versions)))
  if os.path.isdir(path):
    found = _model_in(path)
    if not found:
      raise UserError(f"No exported model in {path} (saved_model.pb, model.onnx, model.tflite or model.xml).")
    fmt, name = found
    if fmt == "tf_saved_model":
      return fmt, path, os.path.join(path, "assets.extra", card.NAME)
    path = os.path.join(path, name)
  fmt = _BY_EXTENSION.get(os.path.splitext(path)[1].lower())
  if fmt is None or not os.path.isfile(path):
    raise UserError(f"{path} is not an exported model (.onnx, .tflite, an OpenVINO .xml, or an export folder).")
  return fmt, path, os.path.join(os.path.dirname(path), card.NAME)


def _model_in(folder):
  if os.path.isfile(os.path.join(folder, "saved_model.pb")):
    return "tf_saved_model", ""
  for fmt, name in MODEL_FILES.items():
    if os.path.isfile(os.path.join(folder, name)):
      return fmt, name
  return None


def is_export(path):
  try:
    resolve(path)
  except UserError:
    return False
  return True


def resolve_model(path):
  """What `--model` names, read the same by every command: `("keras", file)` for a `.keras` file or a run
  folder (its model.keras), `("export", path)` for an export (base or version folder, or its model file)."""
  keras_file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
  if keras_file.endswith(".keras") and os.path.isfile(keras_file):
    return "keras", keras_file
  if is_export(path):
    return "export", path
  raise UserError(
    f"{path} is neither a run folder (with model.keras), a .keras file nor an export (a folder with "
    "saved_model.pb, model.onnx, model.tflite or model.xml beside a model_card.json, or that file)."
  )


class Runtime:
  """`probabilities(pixels)`: decoded `[batch, size, size, channels]` pixels in 0..255 to `[batch]` float64;
  `scores(pixels)`: those and the out-of-distribution scores (None for an export without one);
  `assess(pixels)`: those and which images the OOD threshold flags.

  The card's `preprocess` steps are applied here (a SavedModel applies them in its graph).
  """

  def __init__(self, path):
    self.format, self.path, card_path = resolve(path)
    self.card = card.read(card_path)
    module, package = RUNTIMES.get(self.format, ("tensorflow", "tensorflow"))
    try:
      __import__(module)
    except ImportError:
      hint = "pip install tensorflow" if self.format == "tf_saved_model" else f"pip install 'xray_keras[{self.format}]'"
      raise UserError(f"Running a {self.format} model needs {package}: {hint}.") from None
    self._run = getattr(self, f"_{self.format}")()
    self._steps = [] if self.format == "tf_saved_model" else preprocess.parse(self.card.get("preprocess", []))

  @property
  def ood_threshold(self):
    """The card's OOD threshold (a score above it is flagged), or None for an export without an OOD score."""
    found = (self.card.get("ood") or {}).get("threshold")
    return None if found is None else float(found)

  def probabilities(self, pixels, batch_size=32):
    return self.scores(pixels, batch_size)[0]

  def scores(self, pixels, batch_size=32):
    """`(probabilities, ood_scores)`, both `[batch]` float64; `ood_scores` is None without an OOD score."""
    if self._steps:
      pixels = preprocess.apply(np.clip(np.round(pixels), 0, 255).astype(np.uint8), self._steps)
    pixels = np.asarray(pixels, np.float32)
    out = [self._run(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    probabilities = np.concatenate([p for p, _ in out]).astype(np.float64) if out else np.zeros(0)
    if self.ood_threshold is None:
      return probabilities, None
    return probabilities, (np.concatenate([o for _, o in out]).astype(np.float64) if out else np.zeros(0))

  def assess(self, pixels, batch_size=32):
    """`(probabilities, ood_scores, flagged)`; the last two are None for an export without an OOD score."""
    probabilities, ood_scores = self.scores(pixels, batch_size)
    flagged = None if ood_scores is None else ood_scores > self.ood_threshold
    return probabilities, ood_scores, flagged

  def _onnx(self):
    import onnxruntime

    session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    if OOD_OUTPUT not in names:
      return lambda batch: (session.run(None, {name: batch})[0].reshape(-1), None)
    wanted = [PROBABILITY_OUTPUT, OOD_OUTPUT]
    return lambda batch: tuple(o.reshape(-1) for o in session.run(wanted, {name: batch}))

  def _litert(self):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=self.path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    by_name = _litert_outputs(interpreter)
    indices = [by_name[PROBABILITY_OUTPUT], by_name[OOD_OUTPUT]] if OOD_OUTPUT in by_name else [out["index"]]
    shape = [None]

    def run(batch):
      if shape[0] != batch.shape:
        interpreter.resize_tensor_input(inp["index"], batch.shape)
        interpreter.allocate_tensors()
        shape[0] = batch.shape
      interpreter.set_tensor(inp["index"], batch)
      interpreter.invoke()
      found = [interpreter.get_tensor(i).reshape(-1).copy() for i in indices]
      return (found[0], found[1] if len(found) > 1 else None)

    return run

  def _openvino(self):
    import openvino as ov

    # float32 inference: on CPUs with bfloat16 units OpenVINO would otherwise compute in bfloat16.
    compiled = ov.Core().compile_model(self.path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    if not any(OOD_OUTPUT in o.get_names() for o in compiled.outputs):
      return lambda batch: (np.asarray(compiled(batch)[0]).reshape(-1), None)
    ports = compiled.output(PROBABILITY_OUTPUT), compiled.output(OOD_OUTPUT)

    def run(batch):
      result = compiled(batch)
      return tuple(np.asarray(result[port]).reshape(-1) for port in ports)

    return run

  def _tf_saved_model(self):
    import tensorflow as tf

    signature = tf.saved_model.load(self.path).signatures.get("serving_pixels")
    if signature is None:
      raise UserError(f"{self.path} has no serving_pixels signature (exported before it existed): export it again.")

    def run(batch):
      out = signature(pixels=tf.constant(batch))
      ood_score = out.get(OOD_OUTPUT)
      return (
        out[PROBABILITY_OUTPUT].numpy().reshape(-1),
        None if ood_score is None else ood_score.numpy().reshape(-1),
      )

    return run


def _litert_outputs(interpreter):
  """`{output name: tensor index}` of the file's serving signature ({} where it has none)."""
  try:
    return {k: v["index"] for k, v in interpreter.get_signature_runner().get_output_details().items()}
  except (ValueError, KeyError, AttributeError):
    return {}
