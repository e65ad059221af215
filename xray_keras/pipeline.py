"""One run as steps: train, evaluate, write the run folder, export, report.

`python -m xray_keras.run` calls `train_and_evaluate`; federated training trains its own way and
calls `finish`. Training knows nothing of the steps after it: evaluation computes, `report/`
writes, `serving/` exports.
"""

import math
import os
import time

from absl import logging

from xray_keras.evaluation import clinical, run_eval
from xray_keras.report import run_files
from xray_keras.training import testbed, trainer


def train_and_evaluate(config):
  """Runs one experiment end to end; returns the run folder."""
  with trainer.session(config) as where:
    trained = trainer.train(config, where)
    if trained is None:  # a worker of a multi-worker run: the chief finishes it
      return where.run_dir
    return finish(config, trained)


def finish(config, trained):
  """Evaluates `trained` (a `trainer.Trained`) on val and test and writes the rest of its run folder.

  predictions.csv, calibration/TTA/OOD files when asked, samples/, model.keras, timing.json, then
  metrics.json (the finished marker), the export and the report. A NaN or infinite prediction raises
  `UserError` before anything is written.
  """
  run_dir, data = trained.run_dir, trained.data
  evaluation = run_eval.evaluate(config, trained.model, data, trained.weights, trained.batch_size)
  result, timing = evaluation.result, trained.timing
  run_files.write_run_predictions(
    os.path.join(run_dir, clinical.PREDICTIONS), data, evaluation.probabilities, evaluation.outputs
  )
  if evaluation.calibration:
    run_files.write_calibration(run_dir, evaluation.calibration)
  if evaluation.tta:
    run_files.write_tta(run_dir, evaluation.tta, config.train.augment, config.tta, seconds=evaluation.tta_s)
    timing["tta_s"] = evaluation.tta_s
    logging.info(
      "Test-time augmentation: %d views of each val/test image in %s (%.1f s)",
      config.tta,
      clinical.TTA_PREDICTIONS,
      evaluation.tta_s,
    )
  if evaluation.ood:
    run_files.write_ood(run_dir, *evaluation.ood)
    timing["ood_fit_s"] = evaluation.ood_fit_s
  run_files.write_samples(os.path.join(run_dir, "samples"), data.splits["test"])
  run_files.save_model(run_dir, trained.model)
  timing["eval"] = evaluation.inference
  timing["total_run_s"] = time.perf_counter() - trained.start
  timing["device"] = trained.device
  timing["testbed"] = testbed.describe()
  timing["synthetic"] = data.synthetic
  run_files.write_finished(run_dir, timing, result)
  if config.export:
    from xray_keras.serving import formats  # TensorFlow-only

    formats.export(run_dir, config.export_format, export_dir=config.export_dir)
  report = _write_report(run_dir) if config.report else None
  _log_summary(run_dir, result, evaluation.threshold, timing, data.synthetic, report)
  return run_dir


def _write_report(run_dir):
  """The run's report.md/report.html with figures; a failure is logged, never fatal (the run is done)."""
  from xray_keras.report import write  # matplotlib, only at the end

  try:
    write.write_report(run_dir, run_eval.BOOTSTRAP_RESAMPLES)
  except Exception as e:
    logging.warning("Report not written (%s: %s); the run itself is complete.", type(e).__name__, e)
    return None
  return os.path.abspath(os.path.join(run_dir, "report.html"))


def _log_summary(run_dir, result, threshold, timing, synthetic, report):
  test = result["test"]
  ci = test["ci95"]
  logging.info(
    "Done%s: test accuracy %.4f, AUC %.4f (threshold 0.5); accuracy %.4f at validation threshold %.3f. "
    "%.1f train img/s, %.1fs in all.",
    " on SYNTHETIC data" if synthetic else "",
    test["accuracy"],
    test["auc"],
    test["at_val_threshold"]["accuracy"],
    threshold,
    timing["train_images_per_s"] or 0.0,
    timing["total_run_s"],
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
    logging.info(run_eval.tta_line(result["tta"]))
  if report:
    logging.info("Figures and tables: python -m webbrowser -t %s", report)
