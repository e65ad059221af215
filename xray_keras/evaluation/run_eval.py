"""A trained model on its run's validation and test splits: predictions, metrics with bootstrap
intervals, the temperature, test-time augmentation, the OOD score and inference timing. Computes
only; `report/run_files.py` writes the results into the run folder."""

import dataclasses
import os
import time

import numpy as np
from absl import logging

from xray_keras import models
from xray_keras.data.records import printable
from xray_keras.evaluation import calibration, clinical, metrics, multiclass, ood, prediction, statistics

BOOTSTRAP_RESAMPLES = 1000


@dataclasses.dataclass
class RunEvaluation:
  """What the end of a run computed; `result` becomes metrics.json."""

  result: dict
  outputs: dict  # split -> raw model outputs (N, units)
  probabilities: dict  # split -> PNEUMONIA probability
  threshold: float  # chosen on validation (0.5 without it)
  calibration: dict | None = None  # calibration.json's content
  tta: dict | None = None  # split -> (files, labels, probabilities as written)
  tta_s: float | None = None
  ood: tuple | None = None  # (state, validation scores) for ood.npz/ood.json
  ood_fit_s: float | None = None
  inference: dict | None = None  # timing.json's "eval"


def evaluate(config, model, data, weights, batch_size):
  """Everything the end of a run reports about `model` on `data`'s val and test splits.

  A NaN or infinite prediction raises `UserError` before anything is computed from it.
  """
  spec, size, channels = config.model_input()
  classes = len(data.class_names) if len(data.class_names) > 2 else 1
  val_split, test_split = data.splits["val"], data.splits["test"]

  outputs = {s: prediction.predict(model, data.splits[s].images, batch_size) for s in ("val", "test")}
  probabilities = {s: models.pneumonia_probability(o) for s, o in outputs.items()}
  binary = {s: (data.splits[s].labels > 0).astype(int) for s in ("val", "test")}  # PNEUMONIA = any subtype
  for s in ("val", "test"):  # before anything is computed from them
    metrics.require_finite(binary[s], outputs[s], f"{s} predictions")
  threshold = metrics.choose_threshold(binary["val"], probabilities["val"]) if len(val_split.labels) else 0.5
  result = {
    split: metrics.evaluate_split(binary[split], probabilities[split], threshold)
    for split in ("val", "test")
    if len(data.splits[split].labels)
  }
  for split in ("val", "test"):
    if split in result:
      result[split]["ci95"] = {
        k: list(v)
        for k, v in statistics.bootstrap_ci(binary[split], probabilities[split], 0.5, BOOTSTRAP_RESAMPLES).items()
      }
      if classes > 1:
        labels = data.splits[split].labels
        result[split]["three_class"] = multiclass.three_class_metrics(labels, outputs[split], data.class_names)
        result[split]["three_class"]["ci95"] = multiclass.bootstrap_ci(
          labels, outputs[split], data.class_names, BOOTSTRAP_RESAMPLES
        )
  result["synthetic"] = data.synthetic
  result["data"] = data.summary()
  result["model"] = {
    "name": config.model.name,
    "display_name": spec.display_name,
    "params": int(model.count_params()),
    "input_shape": [size, size, channels],
    "weights": os.path.basename(os.path.normpath(weights)),  # a file name, not a local path
  }
  out = RunEvaluation(result, outputs, probabilities, threshold)
  if config.calibrate and len(val_split.labels):
    out.calibration = clinical.calibration_fit(binary["val"], probabilities["val"])
    logging.info(
      "Temperature scaling: T = %.3f, validation log loss %.4f -> %.4f",
      out.calibration["temperature"],
      out.calibration["val_log_loss_before"],
      out.calibration["val_log_loss_after"],
    )
  if config.tta > 1:
    start = time.perf_counter()
    out.tta = clinical.tta_by_split(
      model,
      {
        s: ([printable(r.path) for r in data.splits[s].records], binary[s], data.splits[s].images)
        for s in ("val", "test")
      },
      config.train.augment,
      config.tta,
      batch_size,
    )
    out.tta_s = time.perf_counter() - start
    if len(val_split.labels) and len(test_split.labels):
      single = {s: clinical.as_written(p) for s, p in probabilities.items()}  # as the report reads them
      result["tta"] = tta_result(config.tta, binary, single, {s: p for s, (_, _, p) in out.tta.items()})
  if getattr(config, "ood", False):
    fitted = _fit_ood(model, data, batch_size)
    if fitted:
      out.ood, summary, out.ood_fit_s = fitted
      result["ood"] = summary
  out.inference = inference_timing(model, test_split.images, batch_size)
  return out


def _fit_ood(model, data, batch_size):
  """The OOD score fitted on train (Gaussian) and validation (threshold): `((state, val scores),
  metrics.json's summary, seconds)`, or None without train or validation images."""
  train = data.splits.get("train")
  val, test = data.splits["val"], data.splits["test"]
  if train is None or len(train.images) < 2 or not len(val.images):
    logging.info("No OOD score: it needs train and validation images.")
    return None
  start = time.perf_counter()
  extract = ood.extractor(model, batch_size)
  state, val_scores = ood.fit(model, train.images, val.images, batch_size, extract)
  test_scores = ood.scores(model, state, test.images, batch_size, extract)
  seconds = time.perf_counter() - start
  flagged = {
    "val_flagged": int(np.sum(val_scores > state["threshold"])),
    "test_flagged": int(np.sum(test_scores > state["threshold"])),
  }
  logging.info(
    "OOD score (Mahalanobis: %d features of %s%s): threshold %.3f flags %d of %d val and %d of %d test images (%.1f s).",
    len(state["mean"]),
    state["layer"],
    f", {state['grid']}x{state['grid']} thumbnail" if "grid" in state else "",
    state["threshold"],
    flagged["val_flagged"],
    len(val_scores),
    flagged["test_flagged"],
    len(test_scores),
    seconds,
  )
  summary = {"threshold": state["threshold"], **flagged, "test_n": int(len(test_scores))}
  return (state, val_scores), summary, seconds


def tta_result(views, binary, single, tta):
  """The TTA predictions' validation log loss against the single view's, validation's choice, and test."""
  losses = {k: calibration.log_loss(binary["val"], p["val"]) for k, p in (("single", single), ("tta", tta))}
  return {
    "views": int(views),
    "val_log_loss": losses["tta"],
    "val_log_loss_single_view": losses["single"],
    "val_auc": metrics.roc_auc(binary["val"], tta["val"]),
    "validation_chooses": clinical.tta_choice(losses["single"], losses["tta"]),
    "test": {
      "n": int(len(binary["test"])),
      **statistics.accuracy_auc(binary["test"], tta["test"], 0.5, BOOTSTRAP_RESAMPLES),
    },
  }


def inference_timing(model, images, batch_size):
  """Throughput of batched prediction (whole batches) and latency of single-image calls."""
  images = images.astype(np.float32)
  timed = prediction.whole_batches(images[: max(batch_size, len(images) - len(images) % batch_size)], batch_size)
  prediction.predict(model, timed[:batch_size], batch_size)  # warm up
  start = time.perf_counter()
  prediction.predict(model, timed, batch_size)
  throughput = len(timed) / (time.perf_counter() - start)
  model.predict_on_batch(images[:1])
  latencies = []
  for i in range(min(20, len(images))):
    start = time.perf_counter()
    model.predict_on_batch(images[i : i + 1])
    latencies.append(time.perf_counter() - start)
  return {
    "images_per_s": throughput,
    "batch_size": batch_size,
    "latency_ms_per_image": 1000 * float(np.median(latencies)),
  }


def tta_line(tta):
  """The closing line of TTA: validation's choice and the test result with the views."""
  test = tta["test"]
  choice = (
    "which validation chooses"
    if tta["validation_chooses"] == "TTA"
    else "for the record: validation keeps the single view"
  )
  test_ci, auc_ci = test["accuracy_ci"], test["auc_ci"]
  return (
    f"Test with {tta['views']}-view TTA, {choice} (validation log loss {tta['val_log_loss']:.3f} with it, "
    f"{tta['val_log_loss_single_view']:.3f} without): accuracy {test['accuracy']:.3f} "
    f"[95% CI {test_ci[0]:.3f}, {test_ci[1]:.3f}], ROC-AUC {test['auc']:.3f} [95% CI {auc_ci[0]:.3f}, {auc_ci[1]:.3f}]"
  )
