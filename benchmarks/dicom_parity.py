"""DICOM against JPEG: the same test images scored by a trained run, and the decode rate.

  python benchmarks/dicom_parity.py --runs=runs/vit_scratch,runs/cnn_scratch [--quick]

Writes every test image of the 224 px data (the built-in 64 px copy where it is absent) as DICOM,
cycling through the storage variants of tests/dicom_files.py (MONOCHROME2 8 and 16 bits, signed 12
bits, MONOCHROME1 with rescale and window, RGB, RLE, JPEG 2000 lossless, JPEG lossless, JPEG
baseline re-encoded from the decoded pixels), and scores each run on both label lists with
`xray_keras.evaluate`'s external validation. Then times `decode_image` (to 224 px, one process)
on a 2048 x 2048 12-bit radiograph stored uncompressed and as JPEG 2000, against the same image as
an 8-bit JPEG. Writes results/dicom_parity.json.
"""

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from tests import dicom_files  # noqa: E402


def test_images(quick, scratch):
  """[(path to a JPEG, label)] of the test split (the built-in images written under `scratch`)."""
  from xray_keras.data import builtin, folder

  if common.REAL_DATA and not quick:
    root, records, _ = folder.list_records(common.REAL_DATA)
    return [(os.path.join(root, r.path), r.label) for r in records if r.split == "test"]
  # the built-in archive's test images, NORMAL and PNEUMONIA
  out, folder_ = [], os.path.join(scratch, "builtin_test")
  os.makedirs(folder_)
  for name, split, label, data in builtin.files():
    if split == "test":
      path = os.path.join(folder_, os.path.basename(name))
      with open(path, "wb") as f:
        f.write(data)
      out.append((path, label))
  return out[:: max(1, len(out) // 40)][:40] if quick else out


def write_lists(images, out):
  """labels_jpeg.csv (the originals) and labels_dicom.csv (the same pixels as DICOM variants)."""
  os.makedirs(os.path.join(out, "dicom"))
  jpeg_rows, dicom_rows, kinds = ["path,label"], ["path,label"], {}
  for index, (path, label) in enumerate(images):
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("L"))
    name, (data, _, _) = sorted(dicom_files.variants(pixels).items())[index % 9]
    kinds[name] = kinds.get(name, 0) + 1
    target = os.path.join("dicom", f"{index:05d}.dcm")
    with open(os.path.join(out, target), "wb") as f:
      f.write(data)
    jpeg_rows.append(f"{path},{label}")
    dicom_rows.append(f"{target},{label}")
  for name, rows in (("labels_jpeg.csv", jpeg_rows), ("labels_dicom.csv", dicom_rows)):
    with open(os.path.join(out, name), "w") as f:
      f.write("\n".join(rows) + "\n")
  return kinds


def decode_rate(path, repeats):
  """Decodes per second of the X-ray at `path` upscaled to 2048 px, as JPEG and as 12-bit DICOM."""
  from xray_keras.data import decode

  with Image.open(path) as image:
    big = np.asarray(image.convert("L").resize((2048, 2048), Image.BILINEAR))
  stored = dicom_files.twelve_bit(big)
  plain = dicom_files.to_bytes(dicom_files.dataset(stored, bits_stored=12))
  from pydicom.uid import JPEG2000Lossless

  j2k = dicom_files.dataset(stored, bits_stored=12)
  j2k.compress(JPEG2000Lossless)
  jpeg = io.BytesIO()
  Image.fromarray(big, "L").save(jpeg, "JPEG", quality=95)
  rates = {}
  for name, data in (
    ("jpeg_8bit", jpeg.getvalue()),
    ("dicom_uncompressed_12bit", plain),
    ("dicom_jpeg2000_lossless_12bit", dicom_files.to_bytes(j2k)),
  ):
    decode.decode_image(data, 224)
    start = time.perf_counter()
    for _ in range(repeats):
      decode.decode_image(data, 224)
    rates[name] = {"images_per_s": repeats / (time.perf_counter() - start), "file_bytes": len(data)}
  for row in rates.values():
    row["ratio_vs_jpeg"] = row["images_per_s"] / rates["jpeg_8bit"]["images_per_s"]
  return rates


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True, help="comma-separated finished run folders")
  parser.add_argument("--quick", action="store_true", help="40 built-in test images, 3 decodes each")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="dicom_parity_") as out:
    images = test_images(flags.quick, out)
    rows, kinds = score(flags.runs, images, out)
    rates = decode_rate(images[0][0], 3 if flags.quick else 20)
  for name, row in rates.items():
    print(f"decode {name}: {row['images_per_s']:.1f} img/s ({row['ratio_vs_jpeg']:.2f}x JPEG)")
  payload = {"quick": flags.quick, "variants": kinds, "runs": rows, "decode_2048px_to_224px": rates}
  print("wrote", common.write_result("dicom_parity", payload, flags.output))


def score(runs, images, out):
  """Each run's scores on `images` and on their DICOM copies written under `out`, and the count of each variant."""
  from xray_keras import external_validation

  kinds = write_lists(images, out)
  rows = []
  for run in runs.split(","):
    scored = {}
    for kind in ("jpeg", "dicom"):
      folder, result = external_validation.validate(
        run, os.path.join(out, f"labels_{kind}.csv"), output_dir=os.path.join(out, "external", kind)
      )
      scored[kind] = result["at_0.5"]
      with open(os.path.join(folder, "predictions.csv")) as f:
        scored[f"{kind}_probabilities"] = np.array([float(line.split(",")[2]) for line in f.read().splitlines()[1:]])
    row = {
      "run": os.path.basename(os.path.normpath(run)),
      "images": len(images),
      "jpeg_auc": scored["jpeg"]["auc"],
      "dicom_auc": scored["dicom"]["auc"],
      "auc_difference": scored["dicom"]["auc"] - scored["jpeg"]["auc"],
      "max_probability_difference": float(np.max(np.abs(scored["dicom_probabilities"] - scored["jpeg_probabilities"]))),
      "label_agreement_at_0.5": float(
        np.mean((scored["dicom_probabilities"] >= 0.5) == (scored["jpeg_probabilities"] >= 0.5))
      ),
    }
    rows.append(row)
    print(
      f"{row['run']}: {row['images']} images, ROC-AUC JPEG {row['jpeg_auc']:.4f}, DICOM {row['dicom_auc']:.4f} "
      f"({row['auc_difference']:+.4f}); max |p difference| {row['max_probability_difference']:.4f}",
      flush=True,
    )
  return rows, kinds


if __name__ == "__main__":
  main()
