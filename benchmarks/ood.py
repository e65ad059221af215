"""Which out-of-distribution score separates chest X-rays from images the model was not made for?

Scores of a trained run (`--run_dir`, or trained here with experiments/vit_scratch.cfg and
`--epochs`): the package's score (`combined`: the largest of the feature, thumbnail and histogram
distances, each over its validation scale, from the run's ood.npz), each of its parts alone (the
Mahalanobis distance of the penultimate features; of the 8x8 thumbnail; of the 16-bin grey-level
histogram), and two baselines
from the logits, the energy score and 1 - max-softmax. In-distribution: the built-in test split, and the 224 px
copy's test split where XRAY_SHARED_DATA (or ../shared) has it. Out: images the package can make
(blank, uniform noise, rendered text, pydicom's CT and MR samples, scikit-image's photographs and
drawings where it is installed, the test X-rays flipped upside
down, inverted, a 20% corner upscaled, and cut JPEGs). Each family's AUROC against the test X-rays,
the share of it flagged and the test images' false-flag rate at each score's validation 99th
percentile.

  python benchmarks/ood.py [--run_dir=runs/vit_scratch/<timestamp>] [--epochs=40] [--quick]
"""

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SCORES = ("combined", "mahalanobis", "thumbnail", "histogram", "energy", "max_softmax")
CUT_JPEGS = []  # the truncated_jpeg family's bytes


def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(np.squeeze(image).astype(np.uint8), "L").save(buffer, "PNG")
  return buffer.getvalue()


def _pixels(images, size):
  """Grey arrays of any size resized to the run's as the package resizes (no content check)."""
  from xray_keras.data import decode

  return np.concatenate([decode.resize_array(np.squeeze(i).astype(np.uint8)[None], size, 1) for i in images]).astype(
    np.float32
  )


def refused(images, encoded=None):
  """How many of `images` (as PNG, or their own bytes `encoded`) the package's decoder refuses before any
  model sees them (blank, truncated JPEG, ...)."""
  from xray_keras.data import decode

  count = 0
  for data in encoded if encoded is not None else (_png(image) for image in images):
    try:
      decode.decode_image(data, None, 1)
    except decode.DecodeError:
      count += 1
  return count


def _text(count, rng):
  font = ImageFont.load_default()
  words = ["PNEUMONIA", "NORMAL", "chest x-ray", "Patient 0042", "L", "R", "AP SUPINE", "lorem ipsum dolor"]
  out = []
  for _ in range(count):
    image = Image.new("L", (256, 256), int(rng.choice([0, 255])))
    draw = ImageDraw.Draw(image)
    for line in range(rng.integers(2, 12)):
      draw.text(
        (rng.integers(0, 120), 20 * line + 5), str(rng.choice(words)), fill=255 - image.getpixel((0, 0)), font=font
      )
    out.append(np.asarray(image.rotate(float(rng.uniform(-20, 20)))))
  return out


PHOTOS = (
  "astronaut",
  "camera",
  "coffee",
  "chelsea",
  "rocket",
  "coins",
  "moon",
  "horse",
  "clock",
  "text",
  "page",
  "cell",
)


def _photos():
  """scikit-image's sample photographs and drawings (the `bench` extra) in grey, each also flipped and
  rotated; [] without scikit-image."""
  try:
    from skimage import data
  except ImportError:
    return []
  out = []
  for name in PHOTOS:
    grey = np.asarray(
      Image.fromarray(np.asarray(getattr(data, name)()).astype(np.uint8) * (255 if name == "horse" else 1)).convert("L")
    )
    out += [grey, grey[::-1], grey[:, ::-1], grey.T]
  return out


def _dicom_samples():
  """pydicom's CT_small and MR_small as grey images, each in a few windows and orientations."""
  import pydicom
  from pydicom.data import get_testdata_file

  out = []
  for name in ("CT_small.dcm", "MR_small.dcm"):
    pixels = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
    for low, high in ((0, 100), (1, 99), (5, 95), (20, 80)):
      lo, hi = np.percentile(pixels, low), np.percentile(pixels, high)
      grey = np.clip((pixels - lo) / max(hi - lo, 1e-9), 0, 1) * 255
      out += [grey, grey[::-1], grey.T, 255 - grey]
  return out


def _cut_jpegs(images):
  """Each image as a JPEG cut at 10, 25 and 50% of its bytes with an end-of-image marker: the pixels as
  Pillow decodes them (it fills what is missing), and the bytes (`CUT_JPEGS`, for the decoder's refusals)."""
  from PIL import ImageFile

  out = []
  CUT_JPEGS.clear()
  previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
  try:
    for image in images:
      buffer = io.BytesIO()
      Image.fromarray(np.squeeze(image).astype(np.uint8), "L").resize((224, 224)).save(buffer, "JPEG", quality=95)
      data = buffer.getvalue()
      for fraction in (0.10, 0.25, 0.50):
        cut = data[: int(len(data) * fraction)] + b"\xff\xd9"
        CUT_JPEGS.append(cut)
        with Image.open(io.BytesIO(cut)) as decoded:
          out.append(np.asarray(decoded.convert("L")))
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous
  return out


def families(test, size, count, rng):
  """{family: float32 pixels at the run's size}; `test`: the run-size test X-rays."""
  picked = test[rng.permutation(len(test))[:count]]
  side = max(2, int(round(0.2 * size)))
  corners = [(slice(0, side), slice(0, side)), (slice(0, side), slice(-side, None))]
  corners += [(slice(-side, None), slice(0, side)), (slice(-side, None), slice(-side, None))]
  crops = [image[corners[i % 4]] for i, image in enumerate(picked)]
  return {
    "blank": np.stack([np.full((size, size, 1), v, np.float32) for v in np.linspace(0, 255, 16)]),
    "uniform_noise": rng.uniform(0, 255, (count, size, size, 1)).astype(np.float32),
    "text": _pixels(_text(count, rng), size),
    "dicom_ct_mr": _pixels(_dicom_samples(), size),
    **({"photos_drawings": _pixels(photos, size)} if (photos := _photos()) else {}),
    "upside_down": picked[:, ::-1].copy(),
    "inverted": 255.0 - picked,
    "corner_crop_20pct": _pixels(crops, size),
    "truncated_jpeg": _pixels(_cut_jpegs(picked[: max(1, count // 3)]), size),
  }


def all_scores(model, state, extract, images):
  from xray_keras.evaluation import ood

  features, logits = extract(images)
  distance = ood.mahalanobis(features, state["mean"], state["precision"])
  grid = int(state["grid"])
  return {
    "combined": ood.combine(state, distance, images),
    "mahalanobis": distance,
    "thumbnail": ood.mahalanobis(ood.thumbnail(images, grid), state["thumb_mean"], state["thumb_precision"]),
    "histogram": ood.mahalanobis(ood.histogram(images), state["hist_mean"], state["hist_precision"]),
    "energy": ood.energy(logits),
    "max_softmax": ood.max_softmax(logits),
  }


def _train(epochs, quick, out):
  # quick: smoke.cfg with 100 images per split and class, enough train images for the thumbnail and histogram
  args = (
    ["--flagfile=experiments/smoke.cfg", "--max_images_per_split=100"]
    if quick
    else ["--flagfile=experiments/vit_scratch.cfg"]
  )
  args += [f"--epochs={epochs}", "--report=false"]
  start = time.perf_counter()
  timing = common.run_timing(args, out, what="the benchmark's training run")
  return {"args": args, "seconds": time.perf_counter() - start, "ood_fit_s": timing.get("ood_fit_s")}


def _splits(run_dir, data_dir=""):
  """The run's validation and test splits (its own data config), or another folder's test split."""
  from xray_keras.data import loader
  from xray_keras.evaluation import external
  from xray_keras.training.run_dir import read_flags

  config = external.data_config(read_flags(os.path.join(run_dir, "flags.txt")))
  if data_dir:
    config = dataclasses.replace(config, data_dir=data_dir, source="auto", max_images_per_split=0)
    return {"test": loader.load(config, need=("test",)).splits["test"].images.astype(np.float32)}
  data = loader.load(config, need=("val", "test"))
  return {s: data.splits[s].images.astype(np.float32) for s in ("val", "test")}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", default="", help="a finished run with ood.npz; empty: train one")
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--quick", action="store_true", help="smoke.cfg's tiny run and few images (CI)")
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "ood.json"))
  args = parser.parse_args()

  from xray_keras import models
  from xray_keras.evaluation import metrics, ood

  training = None
  run_dir = args.run_dir
  if not run_dir:
    run_dir = tempfile.mkdtemp(prefix="ood_bench_")
    training = _train(1 if args.quick else args.epochs, args.quick, run_dir)
  state = ood.load(run_dir)
  if state is None or "thumb_mean" not in state or "hist_mean" not in state:
    raise SystemExit(f"{run_dir} has no {ood.NPZ} with a thumbnail and histogram: run it again with --ood.")
  model = models.load_model(os.path.join(run_dir, "model.keras"))
  size = int(model.input_shape[1])
  extract = ood.extractor(model, 64)
  rng = np.random.default_rng(0)

  splits = _splits(run_dir)
  in_sets = {"builtin_test": splits["test"]}
  if common.REAL_DATA and not args.quick:
    in_sets["shared_224_test"] = _splits(run_dir, common.REAL_DATA)["test"]
  val = all_scores(model, state, extract, splits["val"])
  thresholds = {k: ood.threshold_of(v) for k, v in val.items()}
  scored_in = {name: all_scores(model, state, extract, images) for name, images in in_sets.items()}
  out_sets = families(splits["test"], size, 24 if args.quick else 300, rng)
  rows = []
  for family, images in out_sets.items():
    scored = all_scores(model, state, extract, images)
    refusals = refused(images, CUT_JPEGS if family == "truncated_jpeg" else None)
    for name in SCORES:
      row = {
        "family": family,
        "n": len(images),
        "decoder_refuses": refusals,
        "score": name,
        "flagged": float(np.mean(scored[name] > thresholds[name])),
      }
      for in_name, in_scores in scored_in.items():
        labels = np.r_[np.zeros(len(in_scores[name])), np.ones(len(images))]
        row[f"auroc_vs_{in_name}"] = metrics.roc_auc(labels, np.r_[in_scores[name], scored[name]])
      rows.append(row)
  false_flags = {
    name: {in_name: float(np.mean(s[name] > thresholds[name])) for in_name, s in scored_in.items()} for name in SCORES
  }
  mean_auroc = {
    name: float(np.mean([r["auroc_vs_builtin_test"] for r in rows if r["score"] == name])) for name in SCORES
  }
  run_metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
  payload = {
    "run": {
      "dir": os.path.basename(os.path.normpath(run_dir)),
      "model": run_metrics["model"]["name"],
      "test_auc": run_metrics["test"]["auc"],
      "flags": {k: v for k, v in json.load(open(os.path.join(run_dir, ood.JSON))).items()},
      "training": training,
    },
    "quick": args.quick,
    "in_distribution": {k: len(v) for k, v in in_sets.items()},
    "thresholds": thresholds,
    "false_flag_rate": false_flags,
    "mean_auroc_vs_builtin_test": mean_auroc,
    "rows": rows,
  }
  path = common.write_result("ood", payload, args.output)
  for row in rows:
    aurocs = " ".join(f"{k[9:]}={v:.3f}" for k, v in row.items() if k.startswith("auroc_vs_"))
    print(f"{row['family']:>18} {row['score']:>12} flagged {row['flagged']:.2f}  AUROC {aurocs}")
  print("false flags:", json.dumps(false_flags), "mean AUROC:", json.dumps(mean_auroc))
  print(path)


if __name__ == "__main__":
  main()
