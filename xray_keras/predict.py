"""Classify chest X-ray files with a run, a `.keras` file or an exported model.

  python -m xray_keras.predict --model=saved_models/vit_scratch image.jpeg folder/ [--output=preds.csv]
  python -m xray_keras.predict --model=runs/vit_scratch/<timestamp> folder/

Prints `file<TAB>label<TAB>probability` per image (`--format=json`: one JSON object per line).
Exit code: 0 all classified, 3 some files skipped (listed on stderr), 1 a fatal error.
"""

import csv
import json
import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.data import decode
from xray_keras.errors import UserError

_MODEL = path_flags.DEFINE_path(
  "model",
  None,
  "A run folder (its model.keras), a .keras file, or an export (base or version folder; a .onnx, .tflite or OpenVINO .xml file beside its model_card.json).",
  required=True,
)
_OUTPUT = path_flags.DEFINE_path("output", "", "Also write the results as CSV to this file.")
_FORMAT = flags.DEFINE_enum("format", "tsv", ["tsv", "json"], "Standard output: tab-separated lines or JSON lines.")
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "Decision threshold; default: the one chosen on validation (the model card's, or the run's metrics.json beside a .keras file; else 0.5).",
  lower_bound=0.0,
  upper_bound=1.0,
)
_OPERATING_POINT = flags.DEFINE_enum(
  "operating_point",
  "youden",
  ["youden", "sensitivity_95", "specificity_90"],
  "Which validation-chosen threshold gives the label: youden (max sensitivity + specificity), sensitivity_95 (highest threshold with validation sensitivity >= 0.95) or specificity_90 (lowest with specificity >= 0.90). --threshold overrides it.",
)
_TTA = flags.DEFINE_integer(
  "tta",
  1,
  "Test-time augmentation for .keras models: mean PNEUMONIA probability over N views (the image and N-1 copies through the run's --augment).",
  lower_bound=1,
)
_RESIZE_MODE = flags.DEFINE_enum(
  "resize_mode",
  None,
  decode.RESIZE_MODES,
  "Square fit for .keras models; default: the run's flags.txt beside it, else squash (exports carry their own).",
)

EXIT_SKIPPED = 3


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more image files or folders.")
  from xray_keras.serving import predict

  try:
    predictor = predict.load_predictor(
      _MODEL.value, _RESIZE_MODE.value, _THRESHOLD.value, _OPERATING_POINT.value, _TTA.value
    )
  except UserError as e:
    sys.exit(f"error: {e}")
  except (OSError, ValueError) as e:
    sys.exit(f"error: cannot load --model={_MODEL.value}: {str(e).splitlines()[0]}")
  files, skipped = predict.list_inputs(argv[1:])
  rows, bad = predict.predict_files(predictor, files)
  skipped += bad
  for path, label, probability in rows:
    if _FORMAT.value == "json":
      print(
        json.dumps(
          {
            "file": path,
            "label": label,
            "pneumonia_probability": round(probability, 6),
            "threshold": predictor.threshold,
            "operating_point": _OPERATING_POINT.value,
          }
        )
      )
    else:
      print(f"{path}\t{label}\t{probability:.6f}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["file", "label", "pneumonia_probability"])
      writer.writerows((p, l, f"{q:.6f}") for p, l, q in rows)
  for s in skipped:
    print(f"skipped: {s.path}: {s.reason}", file=sys.stderr)
  logging.info(
    "Classified %d images, skipped %d (threshold %.3f, operating point %s)",
    len(rows),
    len(skipped),
    predictor.threshold,
    _OPERATING_POINT.value,
  )
  if skipped:
    sys.exit(EXIT_SKIPPED)


if __name__ == "__main__":
  app.run(main)
