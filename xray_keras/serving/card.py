"""The model card every export carries: what the model learnt from, its input contract, its decision rules.

Reading a card imports neither TensorFlow nor Keras, so a runtime-only install can use it.
"""

import datetime
import json
import os

from xray_keras.data.records import CLASS_NAMES
from xray_keras.errors import UserError

NAME = "model_card.json"
# Flags whose values are local paths: the model card keeps only their last component.
_PATH_FLAGS = ("data_dir", "output_dir", "cache_dir", "tfds_data_dir", "export_dir", "flagfile", "weights")


def public_flags(values):
  return {k: (os.path.basename(os.path.normpath(v)) if k in _PATH_FLAGS and v else v) for k, v in values.items()}


def validation_threshold(metrics):
  """The decision threshold a run chose on validation (0.5 without a validation split)."""
  return float(metrics.get("val", {}).get("at_val_threshold", {}).get("threshold", 0.5))


def operating_point_card(run_dir):
  """`{rule: {threshold, description}}` chosen on the run's validation predictions (calibrated scale)."""
  from xray_keras.evaluation import clinical, operating_points

  thresholds = clinical.decision_thresholds(run_dir)
  return {rule: {"threshold": t, "description": operating_points.RULES[rule]} for rule, t in thresholds.items()}


def ood_card(run_dir):
  """The run's out-of-distribution score as the card states it (from ood.json), or None without one."""
  path = os.path.join(run_dir, "ood.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    fitted = json.load(f)
  return {
    "output": "ood_score",
    "flagged_when": "ood_score > threshold: the image is unlike the training X-rays; do not trust its label",
    **{k: fitted[k] for k in ("method", "threshold", "threshold_rule", "feature_layer", "dims", "val_inside_rate")},
    "fitted_on": "train split (mean, covariance); validation split (threshold)",
  }


def build(run_dir, metrics, flags, steps, temperature, class_names, applied, **extra):
  """The card's common fields; `applied` says where the temperature is applied, `extra` adds the format's own."""
  points = operating_point_card(run_dir)
  size, _, channels = metrics["model"]["input_shape"]
  ood = ood_card(run_dir)
  return {
    "model": metrics["model"],
    "class_names": list(CLASS_NAMES),
    "positive_class": CLASS_NAMES[1],
    "input": {
      "image_size": size,
      "channels": channels,
      "resize_mode": flags.get("resize_mode", "squash"),
      "pixel_range": [0, 255],
    },
    **extra,
    "decision_threshold": points["youden"]["threshold"] if points else validation_threshold(metrics),
    "threshold_source": "chosen on the validation split (Youden's J)",
    "operating_points": points,
    "calibration": (
      {"method": "temperature scaling", "temperature": temperature, "fitted_on": "validation", "applied": applied}
      if temperature
      else None
    ),
    **({"ood": ood} if ood else {}),
    "preprocess": [f"{n}:{a}" if a else n for n, a in steps],
    "task_classes": list(class_names),
    "metrics": {k: metrics[k] for k in ("val", "test") if k in metrics},
    "data": metrics["data"],
    "synthetic": metrics.get("synthetic", False),
    "flags": public_flags(flags),
    "exported_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }


def write(folder, card):
  with open(os.path.join(folder, NAME), "w") as f:
    json.dump(card, f, indent=2)


def read(path):
  """The card at `path`; a one-line error if it is missing or not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"No {NAME} at {path}: an export's card holds its input size, resize and thresholds.") from None
  except (OSError, ValueError) as e:
    raise UserError(f"Cannot read the model card {path}: {e}") from None
