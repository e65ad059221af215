"""What the demo page shows for a model: probabilities, labels at each operating point, an overlay, the card.

A run (its folder or `model.keras`) is scored by Keras and explained by Grad-CAM or attention
rollout (`report/explain.py`). An export (SavedModel, ONNX, LiteRT, OpenVINO) is scored by its
runtime, without Keras, and explained by occlusion: the drop in probability when each square of
the image is covered by its mean grey.
"""

import dataclasses
import json
import os

import numpy as np
from PIL import Image

from xray_keras.data import decode, preprocess
from xray_keras.data.records import CLASS_NAMES
from xray_keras.errors import UserError
from xray_keras.serving import card, predict, runtime

NOT_A_DEVICE = (
  "Not a medical device: a research model, not cleared for diagnosis or for any clinical decision. "
  "Its numbers hold for images like those it was tested on."
)
OCCLUSION_GRID = 8
DISPLAY_SIZE = 320


@dataclasses.dataclass
class Scored:
  """One file: its probability and label per operating point, or the reason it was refused."""

  name: str
  probability: float | None = None
  labels: dict = dataclasses.field(default_factory=dict)
  refused: str = ""
  path: str = ""


class DemoModel:
  def __init__(self, path, operating_point="youden"):
    kind, path = runtime.resolve_model(os.path.normpath(path))
    if kind == "keras":
      self._init_run(path, operating_point)
    else:
      self.kind = "export"
      self.predictor = predict.load_predictor(path, operating_point=operating_point)
      self.card = card.read(runtime.resolve(path)[2])
      self._export, self._runtime = path, None
    self.operating_point = operating_point
    points = self.card.get("operating_points") or {}
    self.thresholds = {rule: p["threshold"] for rule, p in points.items()} or {"youden": self.predictor.threshold}

  def _init_run(self, keras_file, operating_point):
    from xray_keras.evaluation import clinical
    from xray_keras.training.run_dir import read_flags

    run_dir = os.path.dirname(os.path.abspath(keras_file))
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
      raise UserError(
        f"{run_dir} is not a finished run (no metrics.json): its thresholds and test metrics are unknown."
      )
    with open(metrics_path) as f:
      metrics = json.load(f)
    values = read_flags(os.path.join(run_dir, "flags.txt"))
    steps = preprocess.parse(values.get("preprocess", ""))
    self.kind = "run"
    self.predictor = predict.KerasPredictor(keras_file, operating_point=operating_point)
    self.card = card.build(
      run_dir,
      metrics,
      values,
      steps,
      clinical.temperature(run_dir),
      tuple(metrics.get("data", {}).get("class_names") or CLASS_NAMES),
      "after the model",
      format="keras",
    )

  def score(self, paths):
    """`[Scored]` for `paths`, in order: predict's listing, decoding and refusals."""
    files, skipped = predict.list_inputs(paths)
    rows, bad = predict.predict_files(self.predictor, files)
    reasons = {s.path: s.reason for s in skipped + bad}
    probabilities = {path: probability for path, _, probability in rows}
    out = []
    for path in paths:
      name = os.path.basename(path)
      if path in probabilities:
        p = probabilities[path]
        labels = {rule: CLASS_NAMES[int(p >= t)] for rule, t in self.thresholds.items()}
        out.append(Scored(name, p, labels, path=path))
      else:
        out.append(Scored(name, refused=reasons.get(path, "not read"), path=path))
    return out

  def overlay(self, path):
    """`(RGB uint8 image, method)`: where the model looked, over the image as the model sees it."""
    with open(path, "rb") as f:
      data = f.read()
    contract = self.card["input"]
    pixels = decode.decode_image(
      data, contract["image_size"], contract["channels"], contract.get("resize_mode", "squash")
    )
    if self.kind == "run":
      from xray_keras.report import explain

      model = self.predictor.model
      steps = preprocess.parse(self.card.get("preprocess", []))
      inputs = preprocess.apply(pixels[None].astype(np.uint8), steps).astype(np.float32) if steps else pixels[None]
      heat = explain.explain(model, inputs)
      if heat is None:
        return _blend(pixels, None), "no explanation for this model"
      return _blend(pixels, heat[0]), explain.method(model)
    return _blend(pixels, self._occlusion(pixels)), f"occlusion ({OCCLUSION_GRID} x {OCCLUSION_GRID} squares)"

  def _occlusion(self, pixels):
    if self._runtime is None:
      self._runtime = runtime.Runtime(self._export)
    size = pixels.shape[0]
    edges = np.linspace(0, size, OCCLUSION_GRID + 1).round().astype(int)
    covered = np.repeat(pixels[None].astype(np.float32), OCCLUSION_GRID**2 + 1, axis=0)
    for i in range(OCCLUSION_GRID):
      for j in range(OCCLUSION_GRID):
        covered[1 + i * OCCLUSION_GRID + j, edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = pixels.mean()
    p = self._runtime.probabilities(covered)
    drop = np.maximum(p[0] - p[1:], 0).reshape(OCCLUSION_GRID, OCCLUSION_GRID)
    heat = np.asarray(Image.fromarray(drop.astype(np.float32)).resize((size, size), Image.BILINEAR))
    span = heat.max() - heat.min()
    return (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)

  def card_markdown(self):
    return card_markdown(self.card, self.kind)


def _blend(pixels, heat):
  grey = np.repeat(np.asarray(pixels, np.float32)[..., :1], 3, axis=-1)
  if heat is not None:
    heat = np.clip(np.asarray(heat, np.float32), 0, 1)[..., None]
    colour = np.concatenate([np.clip(2 * heat, 0, 1), np.clip(2 * heat - 1, 0, 1), np.zeros_like(heat)], -1) * 255
    grey = (1 - 0.45 * heat) * grey + 0.45 * heat * colour
  image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
  return np.asarray(image.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.BILINEAR))


def _ci(metrics, key):
  low, high = metrics.get("ci95", {}).get(key, (None, None))
  return f" [95% CI {low:.3f}, {high:.3f}]" if low is not None else ""


def card_markdown(model_card, kind):
  """The model card as the page shows it: what it learnt from, how it tested, its rules, its limits."""
  model, data = model_card["model"], model_card.get("data", {})
  counts = data.get("counts", {})
  lines = [f"### {model.get('display_name', model['name'])}: {model.get('params', 0):,} parameters"]
  source = model_card.get("format", kind)
  quantization = model_card.get("quantization")
  lines.append(f"Format: {source}" + (f", {quantization['scheme']}" if quantization else "") + ".")
  if counts:
    split = ", ".join(f"{counts[s]['total']:,} {s}" for s in ("train", "val", "test") if s in counts)
    lines.append(
      f"Trained on {data.get('name', 'its data')} ({split} images; validation split by {data.get('validation', 'image')})."
    )
  if model_card.get("synthetic"):
    lines.append("**Trained on synthetic images: its numbers say nothing about X-rays.**")
  test = model_card.get("metrics", {}).get("test")
  if test:
    lines.append(
      f"Test ({test.get('n', '?')} images): ROC-AUC {test['auc']:.3f}{_ci(test, 'auc')}, "
      f"accuracy at 0.5 {test['accuracy']:.3f}{_ci(test, 'accuracy')}."
    )
  points = model_card.get("operating_points") or {}
  if points:
    lines.append("Operating points, chosen on validation:")
    lines += [f"- {rule}: threshold {p['threshold']:.3f}: {p['description']}" for rule, p in points.items()]
  contract = model_card["input"]
  lines.append(
    f"Input: {contract['image_size']} px, {contract['channels']} channel(s), resize {contract.get('resize_mode', 'squash')}."
  )
  lines.append(f"**{NOT_A_DEVICE}**")
  return "\n\n".join(lines)
