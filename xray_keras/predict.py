"""Classify chest X-ray files with a run, a `.keras` file or an exported model.

  python -m xray_keras.predict --model=saved_models/vit_scratch image.jpeg folder/ [--output=preds.csv]
  python -m xray_keras.predict --model=runs/vit_scratch/<timestamp> folder/

Prints `file<TAB>label<TAB>probability<TAB>ood_score<TAB>ood` per image (`--format=json`: one JSON
object per line), `ood` being `flagged` (the out-of-distribution score is above the model's threshold:
unlike the training X-rays) or `ok`; both blank for a model without an OOD score. `--strict` refuses
the flagged images instead of classifying them.
Exit code: 0 all classified, 3 some files skipped or refused (listed on stderr), 1 a fatal error.
"""

import csv
import json
import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.data import decode
from xray_keras.data.records import Skipped
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
_STRICT = flags.DEFINE_bool(
  "strict",
  False,
  "Refuse the images the out-of-distribution score flags (unlike the training X-rays): listed on stderr "
  "with their score, not classified; exit code 3. Needs a model with an OOD score.",
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
FLAGGED, OK = "flagged", "ok"
UNLIKE = "not like the chest X-rays this model was trained on"


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
  if predictor.ood_threshold is None:
    if _STRICT.value:
      sys.exit(
        f"error: --strict needs an out-of-distribution score, and --model={_MODEL.value} has none "
        "(trained with --ood=false or before it existed, or exported before): retrain or re-export it."
      )
    print(
      f"note: --model={_MODEL.value} has no out-of-distribution score (trained with --ood=false or before it "
      "existed, or exported before): the ood_score and ood columns are blank.",
      file=sys.stderr,
    )
  files, skipped = predict.list_inputs(argv[1:])
  rows, bad = predict.assess_files(predictor, files)
  skipped += bad
  refused = []
  if _STRICT.value:
    refused = [
      Skipped(path, f"flagged: {UNLIKE} (OOD score {score:.4g} > threshold {predictor.ood_threshold:.4g})")
      for path, _, _, score, flagged in rows
      if flagged
    ]
    rows = [row for row in rows if not row[4]]
  for path, label, probability, score, flagged in rows:
    word = "" if flagged is None else (FLAGGED if flagged else OK)
    if _FORMAT.value == "json":
      print(
        json.dumps(
          {
            "file": path,
            "label": label,
            "pneumonia_probability": round(probability, 6),
            "threshold": predictor.threshold,
            "operating_point": _OPERATING_POINT.value,
            "ood_score": None if score is None else round(score, 6),
            "ood": word or None,
            "ood_threshold": predictor.ood_threshold,
          }
        )
      )
    else:
      print(f"{path}\t{label}\t{probability:.6f}\t{_score(score)}\t{word}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["file", "label", "pneumonia_probability", "ood_score", "ood"])
      writer.writerows(
        (p, l, f"{q:.6f}", _score(o), "" if g is None else (FLAGGED if g else OK)) for p, l, q, o, g in rows
      )
  for s in skipped:
    print(f"skipped: {s.path}: {s.reason}", file=sys.stderr)
  for s in refused:
    print(f"refused: {s.path}: {s.reason}", file=sys.stderr)
  logging.info(
    "Classified %d images (%d flagged out of distribution), refused %d (--strict), skipped %d "
    "(threshold %.3f, operating point %s)",
    len(rows),
    sum(bool(row[4]) for row in rows),
    len(refused),
    len(skipped),
    predictor.threshold,
    _OPERATING_POINT.value,
  )
  if skipped or refused:
    sys.exit(EXIT_SKIPPED)


def _score(score):
  return "" if score is None else f"{score:.6f}"


if __name__ == "__main__":
  app.run(main)
