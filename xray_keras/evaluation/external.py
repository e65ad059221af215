"""External validation: score a finished run's model on another labelled set, without training.

The model's own temperature and validation-chosen operating points are applied unchanged; the
thresholds that would have been best on the new set are shown beside them, never used in their
place. The difference from the run's own test split is bootstrapped over the two sets
independently (they hold different images).
"""

import dataclasses
import json
import os

import numpy as np

from xray_keras.data import patients
from xray_keras.data.records import printable
from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, clinical, metrics, ood, operating_points, prediction, statistics

RESAMPLES = 1000


def resolve_run(keras_file):
  """The run folder of a `.keras` file: the folder holding it, with the run's metrics.json and flags.txt."""
  run_dir = os.path.dirname(os.path.abspath(keras_file))
  for name in ("metrics.json", "flags.txt"):
    if not os.path.isfile(os.path.join(run_dir, name)):
      raise UserError(
        f"{keras_file} is not in a finished run folder (no {name} beside it): external validation applies "
        "the run's validation-chosen thresholds. Pass the run folder or an export of it."
      )
  return run_dir


@dataclasses.dataclass
class Trained:
  """The model to validate and what it brings from training: input, temperature, thresholds, own test."""

  label: str  # how the report names it
  values: dict  # the run's flags
  size: int
  channels: int
  temperature: float | None
  thresholds: dict
  own_test: dict
  own_predictions: tuple | None  # (labels, calibrated probabilities) of the run's own test split
  probabilities: object  # images -> calibrated P(PNEUMONIA)
  run_dir: str | None = None  # None for an export, which applies the run's --preprocess itself
  ood_scores: object = None  # images -> out-of-distribution scores; None without an OOD score
  ood: dict | None = None  # {threshold, source, method} of that score


def open_model(model_path):
  """A run folder, its model.keras, or an export of any format, as a `Trained`."""
  from xray_keras.serving import runtime

  kind, path = runtime.resolve_model(model_path)
  if kind == "export":
    return _export(runtime.Runtime(path))
  return _run(path, resolve_run(path))


def _run(keras_file, run_dir):
  from xray_keras import models
  from xray_keras.training.run_dir import read_flags

  values = read_flags(os.path.join(run_dir, "flags.txt"))
  with open(os.path.join(run_dir, "metrics.json")) as f:
    metrics = json.load(f)
  size, _, channels = metrics["model"]["input_shape"]
  thresholds = clinical.decision_thresholds(run_dir)
  if not thresholds:
    raise UserError(f"{run_dir} has no validation predictions: no operating points to apply.")
  temperature = clinical.temperature(run_dir)
  own = clinical.read_predictions(run_dir).get("test")
  if own:
    own = (own[1], calibration.apply_temperature(own[2], temperature) if temperature else own[2])
  model = models.load_model(keras_file)
  batch_size = int(values.get("batch_size", 32))

  def probabilities(images):
    p = models.pneumonia_probability(prediction.predict(model, images, batch_size))
    return calibration.apply_temperature(p, temperature) if temperature else p

  state, ood_scores, ood_info = ood.load(run_dir), None, None
  if state is not None:
    ood_scores = lambda images: ood.scores(model, state, images, batch_size)  # noqa: E731
    ood_info = {
      "threshold": float(state["threshold"]),
      "source": f"the run's {ood.JSON}, {state.get('threshold_rule', 'fitted at training')}",
      "method": state.get("method", ood.METHOD),
    }

  return Trained(
    f"the run `{os.path.basename(os.path.normpath(run_dir))}`",
    values,
    size,
    channels,
    temperature,
    thresholds,
    _own_test(metrics),
    own,
    probabilities,
    run_dir,
    ood_scores,
    ood_info,
  )


def _export(runtime):
  card = runtime.card
  points = card.get("operating_points") or {}
  if not points:
    raise UserError(f"{runtime.path}: its model card has no validation-chosen operating points to apply.")
  name = card.get("model", {}).get("name", "model")
  quantized = " int8" if card.get("quantization") else ""
  ood_info = None
  if runtime.ood_threshold is not None:
    rule = (card.get("ood") or {}).get("threshold_rule", "fitted at training")
    ood_info = {
      "threshold": runtime.ood_threshold,
      "source": f"the model card's ood, {rule}",
      "method": (card.get("ood") or {}).get("method", ood.METHOD),
    }
  return Trained(
    f"the {card.get('format', runtime.format)}{quantized} export of `{name}`",
    card.get("flags", {}),
    card["input"]["image_size"],
    card["input"]["channels"],
    (card.get("calibration") or {}).get("temperature"),
    {rule: point["threshold"] for rule, point in points.items()},
    _own_test(card.get("metrics", {})),
    None,
    runtime.probabilities,
    ood_scores=(lambda images: runtime.scores(images)[1]) if ood_info else None,
    ood=ood_info,
  )


def _own_test(metrics):
  """The own test split's n, ROC-AUC and CIs from a metrics.json (or a model card's `metrics`)."""
  test = metrics.get("test", {})
  return {"n": test.get("n"), "auc": test.get("auc"), "ci95": test.get("ci95", {})}


def _rates(labels, probabilities, threshold):
  m = metrics.binary_metrics(labels, probabilities, threshold)
  tn, fp = m["confusion_matrix"][0]
  fn = m["confusion_matrix"][1][0]
  return {
    "threshold": float(threshold),
    "accuracy": m["accuracy"],
    "sensitivity": m["recall"],
    "specificity": m["specificity"],
    "ppv": m["precision"],
    "npv": tn / (tn + fn) if tn + fn else float("nan"),
    "auc": m["auc"],
    "n": m["n"],
    "false_positives": fp,
    "false_negatives": fn,
  }


def _with_ci(labels, probabilities, threshold):
  out = _rates(labels, probabilities, threshold)
  ci = statistics.percentile_bootstrap(lambda y, p: _rates(y, p, threshold), labels, probabilities, RESAMPLES)
  out["ci95"] = {
    k: list(v) for k, v in ci.items() if k in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc")
  }
  return out


def _auc_difference(labels, probabilities, own, seed=0):
  """External minus own test ROC-AUC, with a 95% bootstrap interval (`statistics.percentile_interval`)
  resampling each set on its own.

  `own` is `(labels, probabilities)`, or the own AUC alone (an export carries no test predictions):
  then only this set is resampled and the interval leaves out the own split's sampling error.
  """
  rng = np.random.default_rng(seed)
  fixed = np.isscalar(own)
  own_point = own if fixed else metrics.roc_auc(*own)
  difference = metrics.roc_auc(labels, probabilities) - own_point
  draws = []
  for _ in range(RESAMPLES):
    a = rng.integers(0, len(labels), len(labels))
    if fixed:
      own_draw = own_point
    else:
      b = rng.integers(0, len(own[0]), len(own[0]))
      own_draw = metrics.roc_auc(own[0][b], own[1][b])
    draw = metrics.roc_auc(labels[a], probabilities[a]) - own_draw
    if np.isfinite(draw):
      draws.append(draw)
  return {
    "auc_difference": float(difference),
    "ci95": list(statistics.percentile_interval(draws, difference)),
    "resampled": "this set only (own test AUC held fixed)" if fixed else "both sets",
  }


def _subtypes(records, labels, probabilities, threshold):
  """Per subtype (a `subtype` column, else the Kermany file name): images, and how many the model calls right."""
  names = [r.subtype or patients.subtype(r.path, r.label) for r in records]
  out = {}
  for name in sorted(set(names)):
    rows = np.array([n == name for n in names])
    correct = (probabilities[rows] >= threshold).astype(int) == labels[rows]
    out[name] = {"n": int(rows.sum()), "correct": int(correct.sum()), "fraction_correct": float(correct.mean())}
  return out


@dataclasses.dataclass
class Scored:
  files: list
  labels: np.ndarray
  probabilities: np.ndarray
  records: list
  ood_scores: np.ndarray | None = None  # None where the model has no OOD score


def score(trained, data, split):
  """The model's calibrated probabilities (and OOD scores) on `data.splits[split]`; `UserError` if a
  probability is NaN or infinite."""
  arrays = data.splits[split]
  if not len(arrays.labels):
    raise UserError(f"The {split} split of {data.name} holds no images to evaluate.")
  probabilities = np.asarray(trained.probabilities(arrays.images), np.float64)
  labels = (arrays.labels > 0).astype(int)
  metrics.require_finite(labels, probabilities, f"{split} predictions of {trained.label} on {data.name}")
  files = [printable(r.path) for r in arrays.records]
  ood_scores = None if trained.ood_scores is None else np.asarray(trained.ood_scores(arrays.images), np.float64)
  return Scored(files, labels, probabilities, list(arrays.records), ood_scores)


def _summary(labels, probabilities):
  """ROC-AUC and accuracy at 0.5 (None where they cannot be computed: no image, or one class for the AUC)."""
  if not len(labels):
    return {"n": 0, "auc": None, "accuracy": None}
  m = metrics.binary_metrics(labels, probabilities, 0.5)
  auc = m["auc"] if len(set(labels)) > 1 and np.isfinite(m["auc"]) else None
  return {"n": int(len(labels)), "auc": auc, "accuracy": m["accuracy"]}


def ood_summary(trained, scored):
  """metrics.json's `ood`: the images the OOD score flags, and ROC-AUC / accuracy at 0.5 with and without them."""
  if scored.ood_scores is None:
    return None
  flagged = scored.ood_scores > trained.ood["threshold"]
  kept = ~flagged
  return {
    **trained.ood,
    "flagged": int(flagged.sum()),
    "n": int(len(flagged)),
    "all": _summary(scored.labels, scored.probabilities),
    "without_flagged": _summary(scored.labels[kept], scored.probabilities[kept]),
  }


def evaluate(trained, scored):
  """metrics.json's object for an external set."""
  labels, probabilities = scored.labels, scored.probabilities
  thresholds = trained.thresholds
  result = {
    "n": int(len(labels)),
    "positives": int(labels.sum()),
    "temperature": trained.temperature,
    "at_0.5": _with_ci(labels, probabilities, 0.5),
    "operating_points": {},
    "calibration": calibration.summary(labels, probabilities, resamples=RESAMPLES),
    "subtypes": _subtypes(scored.records, labels, probabilities, thresholds["youden"]),
  }
  for rule, threshold in thresholds.items():
    best = operating_points.threshold_for(rule, labels, probabilities) if len(set(labels)) > 1 else float("nan")
    result["operating_points"][rule] = {
      "description": operating_points.RULES[rule],
      "validation_chosen": _with_ci(labels, probabilities, threshold),
      "best_on_this_set": _rates(labels, probabilities, best) if np.isfinite(best) else None,
    }
  result["ood"] = ood_summary(trained, scored)
  result["own_test"] = trained.own_test
  own = trained.own_predictions or trained.own_test.get("auc")
  if own is not None and len(set(labels)) > 1:
    result["difference_from_own_test"] = _auc_difference(labels, probabilities, own)
  return result


def data_config(values):
  """The run's `DataConfig` from its flags.txt values (`run_dir.read_flags`)."""
  from xray_keras.data.loader import DataConfig

  kwargs = {}
  for field in dataclasses.fields(DataConfig):
    name = {"source": "data_source"}.get(field.name, field.name)
    if name not in values:
      continue
    value = values[name]
    if field.type is bool or field.type == "bool":
      kwargs[field.name] = value == "true"
    elif field.type in (int, "int"):
      kwargs[field.name] = int(value)
    elif field.type in (float, "float"):
      kwargs[field.name] = float(value)
    elif field.type in (tuple, "tuple"):
      kwargs[field.name] = tuple(v for v in value.split(",") if v)
    else:
      kwargs[field.name] = value
  return DataConfig(**kwargs)


def validate(model_path, data_dir, split="test", name="", output_dir="", cache_dir=""):
  """Scores the model on `data_dir` and writes the external folder; returns (folder, metrics)."""
  from xray_keras.data import loader
  from xray_keras.report import external as report

  trained = open_model(model_path)
  config = dataclasses.replace(
    data_config(trained.values),
    source="auto",
    data_dir=data_dir,
    image_size=trained.size,
    channels=trained.channels,
    cache_dir=cache_dir,
    max_images_per_split=0,
  )
  if trained.run_dir is None:
    config = dataclasses.replace(config, preprocess=())
  data = loader.load(config, need=(split,))
  name = name or (os.path.splitext(os.path.basename(os.path.normpath(data_dir)))[0] if data_dir else "builtin")
  folder = output_dir or os.path.join(trained.run_dir or "", "external", name)
  scored = score(trained, data, split)
  result = evaluate(trained, scored)
  report.write(folder, name, trained.label, data, scored, result)
  return folder, result
