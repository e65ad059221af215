"""The end of a run, central or federated: evaluation on val and test and the rest of the run folder."""

import contextlib
import csv
import math
import os
import time

import numpy as np
from absl import logging

from xray_keras import atomic, models
from xray_keras.data.records import CLASS_NAMES, printable
from xray_keras.evaluation import calibration, clinical, metrics, multiclass, ood, prediction, statistics
from xray_keras.training import room, testbed
from xray_keras.training import run_dir as run_dirs
from xray_keras.training.checkpoint import CHECKPOINT, HEAD_WEIGHTS

BOOTSTRAP_RESAMPLES = 1000


def finish_run(config, run_dir, model, data, weights, batch_size, timing_report, used_device, start):
  """Evaluates a trained model on val and test and writes the rest of the run folder.

  predictions.csv, calibration/TTA files when asked, samples/, model.keras, timing.json
  (`timing_report` plus inference timing and the test bed), then metrics.json (the finished
  marker), the export and the report. Shared by central and federated training. A NaN or infinite
  prediction raises `UserError` before anything is written.
  """
  spec, size, channels = config.model_input()
  classes = len(data.class_names) if len(data.class_names) > 2 else 1
  val_split, test_split = data.splits["val"], data.splits["test"]

  outputs = {s: prediction.predict(model, data.splits[s].images, batch_size) for s in ("val", "test")}
  probabilities = {s: models.pneumonia_probability(o) for s, o in outputs.items()}
  binary = {s: (data.splits[s].labels > 0).astype(int) for s in ("val", "test")}  # PNEUMONIA = any subtype
  for s in ("val", "test"):  # before anything is computed or written from them
    metrics.require_finite(binary[s], outputs[s], f"{s} predictions")
  if len(val_split.labels):
    threshold = metrics.choose_threshold(binary["val"], probabilities["val"])
  else:
    threshold = 0.5
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
  _write_predictions(os.path.join(run_dir, "predictions.csv"), data, probabilities, outputs)
  if config.calibrate and len(val_split.labels):
    fitted = clinical.write_calibration(run_dir, binary["val"], probabilities["val"])
    logging.info(
      "Temperature scaling: T = %.3f, validation log loss %.4f -> %.4f",
      fitted["temperature"],
      fitted["val_log_loss_before"],
      fitted["val_log_loss_after"],
    )
  if config.tta > 1:
    by_split = clinical.write_tta(
      run_dir,
      model,
      {
        s: ([printable(r.path) for r in data.splits[s].records], binary[s], data.splits[s].images)
        for s in ("val", "test")
      },
      config.train.augment,
      config.tta,
      batch_size,
    )
    logging.info("Test-time augmentation: %d views of each val/test image in %s", config.tta, clinical.TTA_PREDICTIONS)
    if len(val_split.labels) and len(test_split.labels):
      single = {s: clinical.as_written(p) for s, p in probabilities.items()}  # as the report reads them
      result["tta"] = _tta_result(config.tta, binary, single, {s: p for s, (_, _, p) in by_split.items()})
  if getattr(config, "ood", False):
    fitted = _fit_ood(run_dir, model, data, batch_size)
    if fitted:
      result["ood"] = fitted
      timing_report["ood_fit_s"] = fitted.pop("seconds")
  _write_samples(os.path.join(run_dir, "samples"), test_split)
  room.check(run_dir, 2 * room.weights_bytes(model), "model.keras")
  with without_training_state(model):
    model.save(os.path.join(run_dir, "model.keras"))

  timing_report["eval"] = _inference_timing(model, test_split.images, batch_size)
  timing_report["total_run_s"] = time.perf_counter() - start
  timing_report["device"] = used_device
  timing_report["mixed_precision"] = config.train.mixed_precision
  timing_report["testbed"] = testbed.describe()
  timing_report["synthetic"] = data.synthetic
  atomic.write_json(os.path.join(run_dir, "timing.json"), timing_report)
  # metrics.json is written last: its presence marks a finished run.
  atomic.write_json(os.path.join(run_dir, run_dirs.FINISHED_MARKER), result)
  _clean_up(run_dir)
  if config.export:
    from xray_keras.serving import formats  # TensorFlow-only

    formats.export(run_dir, config.export_format, export_dir=config.export_dir)
  report = _write_run_report(run_dir) if config.report else None
  synthetic = " on SYNTHETIC data" if data.synthetic else ""
  test = result["test"]
  ci = test["ci95"]
  logging.info(
    "Done%s: test accuracy %.4f, AUC %.4f (threshold 0.5); accuracy %.4f at validation threshold %.3f. "
    "%.1f train img/s, %.1fs in all.",
    synthetic,
    test["accuracy"],
    test["auc"],
    test["at_val_threshold"]["accuracy"],
    threshold,
    timing_report["train_images_per_s"] or 0.0,
    timing_report["total_run_s"],
  )
  logging.info("Run folder: %s", run_dir)
  logging.info(
    "Test (%d images, threshold 0.5): accuracy %.3f [95%% CI %.3f, %.3f], ROC-AUC %.3f [95%% CI %.3f, %.3f]",
    test["n"],
    test["accuracy"],
    *ci.get("accuracy", (math.nan, math.nan)),
    test["auc"],
    *ci.get("auc", (math.nan, math.nan)),
  )
  if "tta" in result:
    _log_tta(result["tta"])
  if report:
    logging.info("Figures and tables: python -m webbrowser -t %s", report)
  return run_dir


def _fit_ood(run_dir, model, data, batch_size):
  """Fits the OOD score on train (Gaussian) and validation (threshold) into ood.json/ood.npz; returns
  `{threshold, val_flagged, test_flagged, seconds}` for metrics.json, or None without train or val images."""
  train = data.splits.get("train")
  val, test = data.splits["val"], data.splits["test"]
  if train is None or len(train.images) < 2 or not len(val.images):
    logging.info("No OOD score: it needs train and validation images.")
    return None
  start = time.perf_counter()
  extract = ood.extractor(model, batch_size)
  state, val_scores = ood.fit(model, train.images, val.images, batch_size, extract)
  test_scores = ood.scores(model, state, test.images, batch_size, extract)
  summary = ood.save(run_dir, state, val_scores)
  seconds = time.perf_counter() - start
  flagged = {
    "val_flagged": int(np.sum(val_scores > state["threshold"])),
    "test_flagged": int(np.sum(test_scores > state["threshold"])),
  }
  logging.info(
    "OOD score (Mahalanobis, %d features of %s): threshold %.3f flags %d of %d val and %d of %d test images (%.1f s).",
    summary["dims"],
    summary["feature_layer"],
    state["threshold"],
    flagged["val_flagged"],
    len(val_scores),
    flagged["test_flagged"],
    len(test_scores),
    seconds,
  )
  return {"threshold": state["threshold"], **flagged, "test_n": int(len(test_scores)), "seconds": seconds}


def _tta_result(views, binary, single, tta):
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


def _log_tta(tta):
  test = tta["test"]
  logging.info(
    "Test with %d-view TTA, %s (validation log loss %.3f with it, %.3f without): accuracy %.3f [95%% CI %.3f, %.3f], "
    "ROC-AUC %.3f [95%% CI %.3f, %.3f]",
    tta["views"],
    "which validation chooses"
    if tta["validation_chooses"] == "TTA"
    else "for the record: validation keeps the single view",
    tta["val_log_loss"],
    tta["val_log_loss_single_view"],
    test["accuracy"],
    *test["accuracy_ci"],
    test["auc"],
    *test["auc_ci"],
  )


def _write_run_report(run_dir):
  """The run's report.md/report.html with figures; a failure is logged, never fatal (the run is done)."""
  from xray_keras.report import write  # matplotlib, only at the end

  try:
    write.write_report(run_dir, BOOTSTRAP_RESAMPLES)
  except Exception as e:
    logging.warning("Report not written (%s: %s); the run itself is complete.", type(e).__name__, e)
    return None
  return os.path.abspath(os.path.join(run_dir, "report.html"))


@contextlib.contextmanager
def without_training_state(model):
  """Saves of `model` within skip the optimizer and compile settings (one copy of the weights only)."""
  optimizer, compiled = getattr(model, "optimizer", None), model.compiled
  model.optimizer, model.compiled = None, False
  try:
    yield model
  finally:
    model.optimizer, model.compiled = optimizer, compiled


def _clean_up(run_dir):
  """Deletes what only an unfinished run needs: the last-good and phase-1 weights."""
  for name in (CHECKPOINT, HEAD_WEIGHTS):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      os.remove(path)
  with contextlib.suppress(OSError):
    os.rmdir(os.path.join(run_dir, os.path.dirname(CHECKPOINT)))


def _inference_timing(model, images, batch_size):
  """Throughput of batched prediction (whole batches) and latency of single-image calls."""
  images = images.astype(np.float32)
  timed = prediction.whole_batches(images[: max(batch_size, len(images) - len(images) % batch_size)], batch_size)
  prediction.predict(model, timed[:batch_size], batch_size)  # warm up
  start = time.perf_counter()
  prediction.predict(model, timed, batch_size)
  throughput = len(timed) / (time.perf_counter() - start)
  single = images[:1]
  model.predict_on_batch(single)
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


def _write_samples(folder, split, per_class=2):
  """A few images of each class as PNG, for the TF Serving warm-up file and examples."""
  from PIL import Image

  os.makedirs(folder, exist_ok=True)
  for label, name in enumerate(n.lower() for n in CLASS_NAMES):
    for k, i in enumerate(np.flatnonzero(split.labels == label)[:per_class]):
      image = split.images[i]
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(folder, f"{name}_{k}.png"))


def _write_predictions(path, data, probabilities, outputs):
  """file, split, 0/1 label, PNEUMONIA probability; with three classes also the class and each probability."""
  names = list(data.class_names) if len(data.class_names) > 2 else []
  with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(
      ["file", "split", "label", "probability"] + (["class"] + [f"p_{n}" for n in names] if names else [])
    )
    for split, probs in probabilities.items():
      arrays = data.splits[split]
      for i, (record, p) in enumerate(zip(arrays.records, probs)):
        extra = [names[arrays.labels[i]]] + [clinical.written(q) for q in outputs[split][i]] if names else []
        writer.writerow([printable(record.path), split, record.label, clinical.written(p)] + extra)
