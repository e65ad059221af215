"""A PneumoniaMNIST-shaped npz of real X-rays, saved as uint8 and as float 0..1, trains to the same
numbers: the float file is read as intensities (scaled by 255 and rounded), not truncated to 0/1.

Builds both files from the real images (28 px, the data's own patient-grouped train / val / test),
trains ViT_scratch (experiments/vit_scratch.cfg at 28 px, 7 px patches) on each with the same seed
and writes results/npz_float_twin.json: test accuracy and ROC-AUC with 95% CIs and the largest
pixel difference between what the two runs trained on.

  python benchmarks/npz_float_twin.py [--epochs=20] [--quick]
"""

import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from xray_keras.data import loader  # noqa: E402

_EPOCHS = flags.DEFINE_integer("epochs", 20, "Training epochs of each run.")
_QUICK = flags.DEFINE_bool("quick", False, "A test of the script: 1 epoch on 40 images per split and class.")
_OUTPUT = flags.DEFINE_string("output", "", "Result file; empty: results/npz_float_twin.json.")


def write_twins(folder, cap=0):
  """`(uint8 path, float path)`: the real images at 28 px in both encodings."""
  data = loader.load(loader.DataConfig(image_size=28, max_images_per_split=cap))
  arrays = {}
  for split in ("train", "val", "test"):
    arrays[f"{split}_images"] = data.splits[split].images[..., 0]
    arrays[f"{split}_labels"] = data.splits[split].labels.reshape(-1, 1).astype(np.uint8)
  paths = os.path.join(folder, "pneumoniamnist_uint8.npz"), os.path.join(folder, "pneumoniamnist_float01.npz")
  np.savez(paths[0], **arrays)
  np.savez(paths[1], **{k: (v.astype(np.float32) / 255.0 if k.endswith("_images") else v) for k, v in arrays.items()})
  return paths


def main(argv):
  del argv
  epochs = 1 if _QUICK.value else _EPOCHS.value
  rows = {}
  with tempfile.TemporaryDirectory() as folder:
    paths = write_twins(folder, 40 if _QUICK.value else 0)
    for name, path in zip(("uint8", "float01"), paths):
      out = os.path.join(folder, name)
      common.run_timing(
        [
          "--flagfile=experiments/vit_scratch.cfg",
          f"--data_dir={path}",
          "--image_size=28",
          "--patch_size=7",
          f"--epochs={epochs}",
          "--noreport",
        ],
        out,
        what=f"the {name} run",
      )
      with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
      test = metrics["test"]
      rows[name] = {
        "test_accuracy": test["accuracy"],
        "test_auc": test["auc"],
        "test_auc_ci95": test["ci95"]["auc"],
        "test_accuracy_ci95": test["ci95"]["accuracy"],
        "data_notes": metrics["data"]["notes"],
      }
    pixels = [loader.load(loader.DataConfig(data_dir=p, image_size=28)).splits["train"].images for p in paths]
  payload = {
    "quick": _QUICK.value,
    "epochs": epochs,
    "command": "experiments/vit_scratch.cfg --image_size=28 --patch_size=7, same seed",
    "max_pixel_difference": int(np.abs(pixels[0].astype(int) - pixels[1]).max()),
    "runs": rows,
    "test_auc_difference": rows["float01"]["test_auc"] - rows["uint8"]["test_auc"],
  }
  path = common.write_result("npz_float_twin", payload, _OUTPUT.value or None)
  for name, row in rows.items():
    print(f"{name}: test accuracy {row['test_accuracy']:.3f}, AUC {row['test_auc']:.3f} {row['test_auc_ci95']}")
  print(f"largest pixel difference {payload['max_pixel_difference']}; wrote {path}")


if __name__ == "__main__":
  app.run(main)
