"""Add calibration and test-time augmentation to a finished run, without training it again.

  python -m xray_keras.evaluate --run_dir=runs/study/cnn_scratch --calibrate --tta=8

`--calibrate` fits the temperature on the run's validation predictions (calibration.json);
`--tta=N` reloads the run's model and its val/test images (the run's own data flags) and writes
predictions_tta.csv. Both are what `xray_keras.run --calibrate --tta=N` writes at the end of
training; the report, `predict` and the export read them.
"""

import dataclasses
import json
import os
import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.errors import UserError

_RUN_DIR = path_flags.DEFINE_path("run_dir", None, "A finished run directory.", required=True)
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "Fit temperature scaling on the run's validation predictions.")
_TTA = flags.DEFINE_integer(
  "tta",
  1,
  "Test-time views of each val/test image (the image and N-1 copies through the run's --augment); 1: none.",
  lower_bound=1,
)
_TTA_SEED = flags.DEFINE_integer("tta_seed", 0, "Seed of the test-time augmentations.")
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 0, "Prediction batch size (the augmentations are drawn per batch); 0: the run's.", lower_bound=0
)


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


def add_tta(run_dir, views, seed=0, batch_size=0):
  """Reloads the run's model and val/test images and writes its TTA predictions."""
  from xray_keras import models
  from xray_keras.data import loader
  from xray_keras.data.records import printable
  from xray_keras.evaluation import clinical
  from xray_keras.training.run_dir import read_flags

  values = read_flags(os.path.join(run_dir, "flags.txt"))
  augment = [a for a in values.get("augment", "").split(",") if a]
  if not augment:
    raise UserError(f"{run_dir} was trained without --augment: no training augmentations to take views with.")
  with open(os.path.join(run_dir, "metrics.json")) as f:
    size = json.load(f)["model"]["input_shape"][0]
  data = loader.load(dataclasses.replace(data_config(values), image_size=size))
  saved = clinical.read_predictions(run_dir)
  splits = {}
  for split in ("val", "test"):
    arrays = data.splits[split]
    files = [printable(r.path) for r in arrays.records]
    if split in saved and saved[split][0] != files:
      raise UserError(
        f"{run_dir}: the {split} images read now differ from its predictions.csv; is --data_dir the same?"
      )
    splits[split] = (files, (arrays.labels > 0).astype(int), arrays.images)
  model = models.load_model(os.path.join(run_dir, "model.keras"))
  batch_size = batch_size or int(values.get("batch_size", 32))
  return clinical.write_tta(run_dir, model, splits, augment, views, batch_size, seed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from xray_keras.evaluation import clinical

  run_dir = _RUN_DIR.value
  try:
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
      raise UserError(f"{run_dir} is not a finished run (no metrics.json).")
    if _CALIBRATE.value:
      saved = clinical.read_predictions(run_dir)
      if "val" not in saved:
        raise UserError(f"{run_dir} has no validation predictions to fit a temperature on.")
      fitted = clinical.write_calibration(run_dir, saved["val"][1], saved["val"][2])
      logging.info(
        "Temperature %.3f: validation log loss %.4f -> %.4f",
        fitted["temperature"],
        fitted["val_log_loss_before"],
        fitted["val_log_loss_after"],
      )
    if _TTA.value > 1:
      add_tta(run_dir, _TTA.value, _TTA_SEED.value, _BATCH_SIZE.value)
      logging.info("%d-view predictions written to %s", _TTA.value, os.path.join(run_dir, clinical.TTA_PREDICTIONS))
  except UserError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: {e.strerror or e}: {e.filename}" if e.filename else f"error: {e.strerror or e}")


if __name__ == "__main__":
  app.run(main)
