"""Test-time views added to a finished run, as a run with `--tta` makes them at its end (`evaluate --tta`)."""

import dataclasses
import json
import os
import tempfile
import time

import numpy as np
from absl import logging

from xray_keras.errors import UserError


def add_tta(run_dir, views, seed=0, batch_size=0):
  """Reloads the run's model and val/test images and writes its TTA predictions."""
  from xray_keras import models
  from xray_keras.data import loader
  from xray_keras.data.records import printable
  from xray_keras.evaluation import clinical, external
  from xray_keras.report import run_files
  from xray_keras.training.run_dir import read_flags

  values = read_flags(os.path.join(run_dir, "flags.txt"))
  augment = [a for a in values.get("augment", "").split(",") if a]
  if not augment:
    raise UserError(f"{run_dir} was trained without --augment: no training augmentations to take views with.")
  metrics_path = os.path.join(run_dir, "metrics.json")
  with open(metrics_path) as f:
    try:
      run_metrics = json.load(f)
      size = int(run_metrics["model"]["input_shape"][0])
    except (ValueError, KeyError, IndexError, TypeError) as e:
      raise UserError(f"{metrics_path} is not a run's metrics.json ({type(e).__name__}: {e}).") from None
  try:  # before minutes of views, not after
    tempfile.TemporaryFile(dir=run_dir).close()
    open(metrics_path, "a").close()
  except OSError as e:
    raise UserError(f"Cannot write into {run_dir}: {e.strerror}.") from None
  saved = clinical.read_predictions(run_dir)
  if not all(s in saved and len(saved[s][1]) for s in ("val", "test")):
    raise UserError(f"{run_dir} has no validation and test predictions (predictions.csv) to set the views against.")
  data = loader.load(dataclasses.replace(external.data_config(values), image_size=size))
  splits = {}
  for split in ("val", "test"):
    arrays = data.splits[split]
    files = [printable(r.path) for r in arrays.records]
    labels = (arrays.labels > 0).astype(int)
    if saved[split][0] != files:
      raise UserError(
        f"{run_dir}: the {split} images read now differ from its predictions.csv; is --data_dir the same?"
      )
    if not np.array_equal(saved[split][1], labels):
      raise UserError(f"{run_dir}: the {split} labels in its predictions.csv differ from the images' folders.")
    splits[split] = (files, labels, arrays.images)
  model = models.load_model(os.path.join(run_dir, "model.keras"))
  batch_size = batch_size or int(values.get("batch_size", 32))
  start = time.perf_counter()
  by_split = clinical.tta_by_split(model, splits, augment, views, batch_size, seed)
  seconds = time.perf_counter() - start
  from xray_keras import atomic
  from xray_keras.evaluation import run_eval

  result = run_eval.tta_result(
    views,
    {s: saved[s][1] for s in ("val", "test")},
    {s: saved[s][2] for s in ("val", "test")},
    {s: by_split[s][2] for s in ("val", "test")},
  )
  # metrics.json first loses its old "tta", so a failed write below leaves no entry that disagrees with the files.
  atomic.write_json(metrics_path, {k: v for k, v in run_metrics.items() if k != "tta"})
  run_files.write_tta(run_dir, by_split, augment, views, seed, seconds, made_by="xray_keras.evaluate")
  atomic.write_json(metrics_path, {**run_metrics, "tta": result})
  logging.info(run_eval.tta_line(result))
  return by_split
