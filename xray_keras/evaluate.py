"""Score a finished run on another labelled set, or add calibration and TTA to it, without training.

  python -m xray_keras.evaluate --model=runs/vit_scratch --data_dir=site/labels.csv
  python -m xray_keras.evaluate --run_dir=runs/study/cnn_scratch --calibrate --tta=8

`--model` (a run folder, its model.keras, or an export: SavedModel, ONNX, LiteRT, OpenVINO) with
`--data_dir` (a folder, labels.csv, an npz, `kaggle`, or nothing for the built-in images) is
external validation: the model's temperature and validation-chosen operating points applied
unchanged to the set's test images (every row of a label list without a split column), written
to <run>/external/<name>/ (an export: ./external/<name>/; or --output_dir).

`--calibrate` fits the temperature on the run's validation predictions (calibration.json);
`--tta=N` reloads the run's model and its val/test images (the run's own data flags), writes
predictions_tta.csv and tta.json, and records in metrics.json which of one view and N views
validation's log loss chooses, with the views' test result. Both are what `xray_keras.run
--calibrate --tta=N` writes at the end of training; the report, `predict` and the export read them.
"""

import os
import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.errors import UserError
from xray_keras.report.tta_after_run import add_tta

_RUN_DIR = path_flags.DEFINE_path("run_dir", "", "A finished run directory (--calibrate, --tta).")
_MODEL = path_flags.DEFINE_path(
  "model", "", "External validation: a finished run folder, its model.keras, or an export (any format)."
)
_DATA_DIR = path_flags.DEFINE_path(
  "data_dir", "", "External validation: a folder, labels.csv, an npz or kaggle; empty: the built-in images."
)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "External validation: the split scored.")
_NAME = flags.DEFINE_string("name", "", "External validation: the output folder's name; empty: from --data_dir.")
_OUTPUT_DIR = path_flags.DEFINE_path(
  "output_dir", "", "External validation: where to write; empty: <run>/external/<name> (an export: ./external/<name>)."
)
_CACHE_DIR = path_flags.DEFINE_path("cache_dir", "", "Decoded-image cache; empty: the default.")
_CALIBRATE = flags.DEFINE_bool("calibrate", False, "Fit temperature scaling on the run's validation predictions.")
_TTA = flags.DEFINE_integer(
  "tta",
  1,
  "Test-time views of each val/test image (the image and N-1 copies through the run's --augment); 1: none.",
  lower_bound=1,
  upper_bound=64,
)
_TTA_SEED = flags.DEFINE_integer("tta_seed", 0, "Seed of the test-time augmentations.")
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 0, "Prediction batch size (the augmentations are drawn per batch); 0: the run's.", lower_bound=0
)


def ood_summary(ood):
  """The console's out-of-distribution line: flagged count, threshold and its source, metrics both ways."""
  if ood is None:
    return "Out of distribution: the model has no OOD score (trained with --ood=false or before it existed)."

  def both(m):
    auc = "-" if m["auc"] is None else f"{m['auc']:.3f}"
    accuracy = "-" if m["accuracy"] is None else f"{m['accuracy']:.3f}"
    return f"ROC-AUC {auc}, accuracy {accuracy} ({m['n']} images)"

  return (
    f"Out of distribution: {ood['flagged']} of {ood['n']} images flagged ({ood['method']} score above "
    f"{ood['threshold']:.4g}, from {ood['source']}). All: {both(ood['all'])}; without the flagged: "
    f"{both(ood['without_flagged'])}."
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from xray_keras.evaluation import clinical
  from xray_keras.report import run_files

  run_dir = _RUN_DIR.value
  if not (run_dir or _MODEL.value):
    raise app.UsageError("Pass --model (and --data_dir) to score a run on another set, or --run_dir.")
  if _MODEL.value:
    try:
      from xray_keras import external_validation

      folder, result = external_validation.validate(
        _MODEL.value, _DATA_DIR.value, _SPLIT.value, _NAME.value, _OUTPUT_DIR.value, _CACHE_DIR.value
      )
    except UserError as e:
      sys.exit(f"error: {e}")
    at = result["at_0.5"]
    logging.info(
      "%d images: ROC-AUC %.3f [%.3f, %.3f], accuracy %.3f at 0.5 (own test ROC-AUC %.3f). Report: %s",
      at["n"],
      at["auc"],
      *at["ci95"].get("auc", (float("nan"), float("nan"))),
      at["accuracy"],
      result["own_test"].get("auc") or float("nan"),
      os.path.join(folder, "report.html"),
    )
    logging.info("%s", ood_summary(result.get("ood")))
    return
  try:
    if not os.path.isfile(os.path.join(run_dir, "metrics.json")):
      raise UserError(f"{run_dir} is not a finished run (no metrics.json).")
    if _CALIBRATE.value:
      saved = clinical.read_predictions(run_dir)
      if "val" not in saved:
        raise UserError(f"{run_dir} has no validation predictions to fit a temperature on.")
      fitted = clinical.calibration_fit(saved["val"][1], saved["val"][2])
      run_files.write_calibration(run_dir, fitted)
      logging.info(
        "Temperature %.3f: validation log loss %.4f -> %.4f",
        fitted["temperature"],
        fitted["val_log_loss_before"],
        fitted["val_log_loss_after"],
      )
    if not (_CALIBRATE.value or _TTA.value > 1):
      raise UserError("Nothing to do for --run_dir: pass --calibrate, --tta=N (N >= 2) or both.")
    if _TTA.value > 1:
      add_tta(run_dir, _TTA.value, _TTA_SEED.value, _BATCH_SIZE.value)
      logging.info("%d-view predictions written to %s", _TTA.value, os.path.join(run_dir, clinical.TTA_PREDICTIONS))
  except UserError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: {e.strerror or e}: {e.filename}" if e.filename else f"error: {e.strerror or e}")


if __name__ == "__main__":
  app.run(main)
