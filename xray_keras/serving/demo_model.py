"""What the demo page shows for a model: probabilities, labels at each operating point, an overlay, the card.

A run (its folder or `model.keras`) is scored by Keras and explained by Grad-CAM or attention
rollout (`report/explain.py`). An export (SavedModel, ONNX, LiteRT, OpenVINO) is scored by its
runtime, without Keras, and explained by occlusion: the drop in probability when each square of
the image is covered by its mean grey. Where the card has an out-of-distribution score, an image
above its threshold is flagged and gets no label.

`about_markdown` says how to read the number, from the run's or export's own files only: who the
model learnt from, whether the probability is calibrated, each operating point in words.
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
NOT_RECORDED = "not recorded"
UNLIKE_TRAINING = "not like the chest X-rays this model was trained on"
# The Kermany set (Cell 2018), by the names the loader records for it; a folder by its download's name.
KERMANY = "the Kermany chest X-rays: paediatric patients aged 1 to 5 at Guangzhou Women and Children's Medical Center"
_KERMANY_NAMES = {"builtin:chest_xray_64": "", "tfds:chest_xray_pneumonia": "", "chest_xray": " (by its folder's name)"}
_RESIZE = {"squash": "squashed", "pad": "letterboxed", "crop": "centre-cropped"}
# The rules in words, for a reader who does not know the names.
RULE_WORDS = {"youden": "Balanced", "sensitivity_95": "High sensitivity", "specificity_90": "High specificity"}


@dataclasses.dataclass
class Scored:
  """One file: its probability and label per operating point, or the reason it was refused."""

  name: str
  probability: float | None = None
  labels: dict = dataclasses.field(default_factory=dict)
  refused: str = ""
  path: str = ""
  ood_score: float | None = None
  flagged: bool = False  # above the card's OOD threshold: unlike the training X-rays; the page shows no label


class DemoModel:
  def __init__(self, path, operating_point="youden"):
    kind, path = runtime.resolve_model(os.path.normpath(path))
    self.val_predictions, self.calibration_record, self._run_dir = None, None, None
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
    self._ood_state = None

  def _run_evidence(self, run_dir):
    """The run's validation predictions (calibrated scale) and calibration.json, for `about_markdown`."""
    from xray_keras.evaluation import calibration, clinical

    val = clinical.read_predictions(run_dir).get("val")
    if val is not None:
      t = clinical.temperature(run_dir)
      self.val_predictions = (val[1], calibration.apply_temperature(val[2], t) if t else val[2])
    path = os.path.join(run_dir, clinical.CALIBRATION)
    if os.path.isfile(path):
      with open(path) as f:
        self.calibration_record = json.load(f)

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
    self.kind, self._run_dir = "run", run_dir
    self._run_evidence(run_dir)
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
    ood = self._ood([path for path in paths if path in probabilities])
    out = []
    for path in paths:
      name = os.path.basename(path)
      if path in probabilities:
        p = probabilities[path]
        score, flagged = ood.get(path, (None, False))
        labels = {rule: CLASS_NAMES[int(p >= t)] for rule, t in self.thresholds.items()}
        out.append(Scored(name, p, labels, path=path, ood_score=score, flagged=flagged))
      else:
        out.append(Scored(name, refused=reasons.get(path, "not read"), path=path))
    return out

  @property
  def ood_threshold(self):
    """The card's OOD threshold (a score above it is flagged), or None without an OOD score."""
    found = (self.card.get("ood") or {}).get("threshold")
    return None if found is None else float(found)

  def _ood(self, paths):
    """`{path: (ood_score, flagged)}`; `{}` where the card has no OOD score."""
    if not paths or self.ood_threshold is None:
      return {}
    pixels = np.stack([self._pixels(path) for path in paths])
    if self.kind == "run":
      from xray_keras.evaluation import ood

      if self._ood_state is None:
        self._ood_state = ood.load(self._run_dir)
      steps = preprocess.parse(self.card.get("preprocess", []))
      inputs = preprocess.apply(pixels.astype(np.uint8), steps).astype(np.float32) if steps else pixels
      _, scores, flagged = ood.assess(self.predictor.model, self._ood_state, inputs)
    else:
      _, scores, flagged = self._export_runtime().assess(pixels)
      if scores is None:
        return {}
    return {path: (float(s), bool(f)) for path, s, f in zip(paths, scores, flagged)}

  def _pixels(self, path):
    """The file decoded as the model takes it (the card's size, channels and resize)."""
    data = decode.read_file(path)
    contract = self.card["input"]
    return decode.decode_image(
      data, contract["image_size"], contract["channels"], contract.get("resize_mode", "squash")
    )

  def _export_runtime(self):
    if self._runtime is None:
      self._runtime = runtime.Runtime(self._export)
    return self._runtime

  def overlay(self, path):
    """`(RGB uint8 image, method)`: where the model looked, over the image as the model sees it."""
    pixels = self._pixels(path)
    if self.kind == "run":
      from xray_keras.evaluation import explain

      model = self.predictor.model
      steps = preprocess.parse(self.card.get("preprocess", []))
      inputs = preprocess.apply(pixels[None].astype(np.uint8), steps).astype(np.float32) if steps else pixels[None]
      heat = explain.explain(model, inputs)
      if heat is None:
        return _blend(pixels, None), "no explanation for this model"
      return _blend(pixels, heat[0]), explain.method(model)
    return _blend(pixels, self._occlusion(pixels)), f"occlusion ({OCCLUSION_GRID} x {OCCLUSION_GRID} squares)"

  def _occlusion(self, pixels):
    size = pixels.shape[0]
    edges = np.linspace(0, size, OCCLUSION_GRID + 1).round().astype(int)
    covered = np.repeat(pixels[None].astype(np.float32), OCCLUSION_GRID**2 + 1, axis=0)
    for i in range(OCCLUSION_GRID):
      for j in range(OCCLUSION_GRID):
        covered[1 + i * OCCLUSION_GRID + j, edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = pixels.mean()
    p = self._export_runtime().probabilities(covered)
    drop = np.maximum(p[0] - p[1:], 0).reshape(OCCLUSION_GRID, OCCLUSION_GRID)
    heat = np.asarray(Image.fromarray(drop.astype(np.float32)).resize((size, size), Image.BILINEAR))
    span = heat.max() - heat.min()
    return (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)

  def card_markdown(self):
    return card_markdown(self.card, self.kind)

  def about_markdown(self):
    rates = validation_rates(self.card, self.val_predictions)
    return about_markdown(self.card, rates, self.calibration_record)


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


def validation_rates(model_card, val_predictions=None):
  """`{rule: (sensitivity, specificity, images)}` on validation at the card's thresholds.

  From the card's own validation metrics where they were taken at the rule's threshold, else from the
  run's validation predictions `(labels, probabilities)`; a rule with neither is left out.
  """
  out = {}
  at = model_card.get("metrics", {}).get("val", {}).get("at_val_threshold") or {}
  for rule, point in (model_card.get("operating_points") or {}).items():
    t = point["threshold"]
    if at.get("threshold") is not None and abs(at["threshold"] - t) < 1e-9 and "recall" in at:
      out[rule] = (at["recall"], at["specificity"], at.get("n"))
    elif val_predictions is not None:
      labels, probabilities = (np.asarray(a) for a in val_predictions)
      positive, negative = labels == 1, labels == 0
      if positive.any() and negative.any():
        called = probabilities >= t
        out[rule] = (called[positive].mean(), 1 - called[negative].mean(), len(labels))
  return out


def _decimals(values):
  """The fewest decimals (3 to 6) that tell `values` apart."""
  for d in range(3, 7):
    if len({f"{v:.{d}f}" for v in values}) == len(set(values)):
      return d
  return 6


def _population(model_card):
  data = model_card.get("data", {})
  name = data.get("name", "")
  if model_card.get("synthetic"):
    return "synthetic images, no patients: its numbers say nothing about X-rays"
  if name in _KERMANY_NAMES:
    return f"{KERMANY}; data {name}{_KERMANY_NAMES[name]}"
  return f"{NOT_RECORDED} (data {name or '?'}, from a {data.get('source', '?')})"


def _calibration(model_card, record):
  found = model_card.get("calibration")
  if not found:
    return (
      "**not calibrated** (no temperature scaling): the probability ranks images, "
      "but is not the chance that one has pneumonia"
    )
  figure = NOT_RECORDED
  if record and record.get("val_log_loss_after") is not None:
    figure = (
      f"{record['val_log_loss_before']:.3f} before, {record['val_log_loss_after']:.3f} after "
      f"({record.get('val_images', '?')} images)"
    )
  return (
    f"**calibrated**: temperature scaling (T = {found['temperature']:.3f}) fitted on validation; "
    f"validation log loss {figure}"
  )


def _ranking(points):
  """`{rule: words}`: which rule calls the most and the fewest images PNEUMONIA (lowest, highest threshold)."""
  values = sorted({p["threshold"] for p in points.values()})
  if len(values) < 2:
    return {}
  out = {}
  for rule, p in points.items():
    if p["threshold"] == values[0]:
      out[rule] = "of these, the lowest threshold: calls the most images PNEUMONIA"
    elif p["threshold"] == values[-1]:
      out[rule] = "of these, the highest threshold: calls the fewest images PNEUMONIA"
    else:
      out[rule] = "calls more images PNEUMONIA than the highest threshold, fewer than the lowest"
  return out


def about_markdown(model_card, rates, calibration_record=None):
  """How to read the number: the training population, calibration, and each operating point in words."""
  contract = model_card["input"]
  colour = "grey" if contract["channels"] == 1 else f"colour ({contract['channels']} channels)"
  resize = _RESIZE.get(contract.get("resize_mode", "squash"), contract.get("resize_mode"))
  lines = [
    "### How to read the number",
    f"- **Trained on**: {_population(model_card)}. "
    f"The model sees each image as {contract['image_size']} x {contract['image_size']} px {colour}, {resize}.",
    f"- **Probability**: {_calibration(model_card, calibration_record)}.",
  ]
  points = model_card.get("operating_points") or {}
  if not points:
    lines.append(f"- **Operating points**: {NOT_RECORDED} (no validation split).")
  ranking = _ranking(points)
  decimals = _decimals([p["threshold"] for p in points.values()])
  for rule, p in points.items():
    if rule in rates:
      sensitivity, specificity, n = rates[rule]
      on = f"on validation ({n} images)" if n else "on validation"
      found = f"caught {sensitivity:.0%} of pneumonia and cleared {specificity:.0%} of normal X-rays {on}"
    else:
      found = f"validation sensitivity and specificity {NOT_RECORDED}"
    words = "; ".join(w for w in (f"threshold {p['threshold']:.{decimals}f}", found, ranking.get(rule)) if w)
    lines.append(f"- **{RULE_WORDS.get(rule, rule)}** (`{rule}`: {p.get('description', '')}): {words}.")
  ood = model_card.get("ood")
  if ood:
    lines.append(
      f"- **Unlike the training X-rays**: an image whose OOD score ({ood.get('method', '?')}) is above "
      f"{ood['threshold']:.3g} ({ood.get('threshold_rule', NOT_RECORDED)}) is flagged and gets no label."
    )
  return "\n".join(lines)
