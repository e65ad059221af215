"""External validation as one step: open a trained model (a run folder, its model.keras or an
export), read another site's labelled images, score them and write the external folder.

`python -m xray_keras.evaluate --model=... --data_dir=...` calls `validate`; the statistics are
`evaluation/external.py`'s, the folder `report/external.py`'s.
"""

import dataclasses
import json
import os

from xray_keras import models
from xray_keras.data import loader
from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, clinical, external, ood, prediction
from xray_keras.report import external as report
from xray_keras.serving import runtime
from xray_keras.training.run_dir import read_flags


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


def open_model(model_path):
  """A run folder, its model.keras, or an export of any format, as a `Trained`."""
  kind, path = runtime.resolve_model(model_path)
  if kind == "export":
    return _export(runtime.Runtime(path))
  return _run(path, resolve_run(path))


def _run(keras_file, run_dir):
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

  return external.Trained(
    f"the run `{os.path.basename(os.path.normpath(run_dir))}`",
    values,
    size,
    channels,
    temperature,
    thresholds,
    external.own_test(metrics),
    own,
    probabilities,
    run_dir,
    ood_scores,
    ood_info,
  )


def _export(opened):
  card = opened.card
  points = card.get("operating_points") or {}
  if not points:
    raise UserError(f"{opened.path}: its model card has no validation-chosen operating points to apply.")
  name = card.get("model", {}).get("name", "model")
  quantized = " int8" if card.get("quantization") else ""
  ood_info = None
  if opened.ood_threshold is not None:
    rule = (card.get("ood") or {}).get("threshold_rule", "fitted at training")
    ood_info = {
      "threshold": opened.ood_threshold,
      "source": f"the model card's ood, {rule}",
      "method": (card.get("ood") or {}).get("method", ood.METHOD),
    }
  return external.Trained(
    f"the {card.get('format', opened.format)}{quantized} export of `{name}`",
    card.get("flags", {}),
    card["input"]["image_size"],
    card["input"]["channels"],
    (card.get("calibration") or {}).get("temperature"),
    {rule: point["threshold"] for rule, point in points.items()},
    external.own_test(card.get("metrics", {})),
    None,
    opened.probabilities,
    ood_scores=(lambda images: opened.scores(images)[1]) if ood_info else None,
    ood=ood_info,
  )


def validate(model_path, data_dir, split="test", name="", output_dir="", cache_dir=""):
  """Scores the model on `data_dir` and writes the external folder; returns (folder, metrics)."""
  trained = open_model(model_path)
  config = dataclasses.replace(
    external.data_config(trained.values),
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
  scored = external.score(trained, data, split)
  result = external.evaluate(trained, scored)
  report.write(folder, name, trained.label, data, scored, result)
  return folder, result
