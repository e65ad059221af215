"""Decoding original-resolution JPEGs to a small size, with and without JPEG draft mode.

  python benchmarks/decode_draft.py [--originals=<folder of original Kermany JPEGs>] [--quick]

Times the package's decode path (`cache.decode_files`: Pillow in a thread pool, then the
antialiased resize) over the same files twice per setting, alternated, fastest of each; reports
images/s, the ratio draft / full decode, peak RSS, and how far the pixels move (mean and 99th
percentile of |difference| in grey levels). Without `--originals` it makes stand-ins: the 224 px
copy of the dataset (or the built-in 64 px images) enlarged to 1,000-2,400 px per side with
film-like grain and saved as JPEG quality 90, the size range of the original Kermany files.
"""

import argparse
import functools
import io
import os
import sys
import tempfile
import time
from unittest import mock

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def make_originals(folder, count, seed=0):
  """Writes `count` original-sized JPEG stand-ins into `folder`; returns their names."""
  from xray_keras.data import builtin

  rng = np.random.default_rng(seed)
  if common.REAL_DATA:
    root = os.path.join(common.REAL_DATA, "train", "PNEUMONIA")
    sources = [Image.open(os.path.join(root, n)).convert("L") for n in sorted(os.listdir(root))[:count]]
  else:
    images, _ = builtin.load()
    sources = [Image.fromarray(images[i, :, :, 0]) for i in range(count)]
  names = []
  for i, source in enumerate(sources):
    width, height = (int(v) for v in rng.integers(1000, 2400, 2))
    pixels = np.asarray(source.resize((width, height), Image.BICUBIC), np.float32)
    pixels += rng.normal(0, 4, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    names.append(f"original_{i:04d}.jpeg")
    with open(os.path.join(folder, names[-1]), "wb") as f:
      f.write(out.getvalue())
  return names


def timed(root, names, size, draft):
  from xray_keras.data import cache, decode

  full = functools.partial(decode.decode_image, draft=False)
  with mock.patch.object(decode, "decode_image", decode.decode_image if draft else full):
    start = time.perf_counter()
    images, kept, skipped, _ = cache.decode_files(root, names, size, 1, "squash")
    seconds = time.perf_counter() - start
  assert not skipped and len(kept) == len(names)
  return images, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--originals", default="", help="a folder of original JPEGs (default: stand-ins)")
  parser.add_argument("--count", type=int, default=300)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--quick", action="store_true", help="12 stand-ins, one repeat")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  count, repeats = (12, 1) if flags.quick else (flags.count, flags.repeats)
  with tempfile.TemporaryDirectory() as tmp:
    if flags.originals:
      root = flags.originals
      names = sorted(n for n in os.listdir(root) if n.lower().endswith((".jpeg", ".jpg")))[:count]
    else:
      root, names = tmp, make_originals(tmp, count)
    megapixels = float(np.mean([np.prod(Image.open(os.path.join(root, n)).size) for n in names])) / 1e6
    times = {False: [], True: []}
    for _ in range(repeats):
      for draft in (False, True):
        images, seconds = timed(root, names, flags.image_size, draft)
        times[draft].append(seconds)
        if draft:
          fast = images
        else:
          slow = images
  diff = np.abs(slow.astype(int) - fast.astype(int))
  rows = {
    name: {"seconds": min(times[d]), "images_per_s": len(names) / min(times[d])}
    for name, d in (("full_decode", False), ("draft", True))
  }
  ratio = rows["draft"]["images_per_s"] / rows["full_decode"]["images_per_s"]
  for name, row in rows.items():
    print(f"{name:<12} {row['images_per_s']:8.1f} img/s ({row['seconds']:.2f} s for {len(names)} images)")
  print(
    f"draft / full: {ratio:.2f}x; pixels: mean |diff| {diff.mean():.3f}, 99th percentile "
    f"{np.percentile(diff, 99):.0f}, max {diff.max()} grey levels"
  )
  path = common.write_result(
    "decode_draft",
    {
      "quick": flags.quick,
      "images": len(names),
      "image_size": flags.image_size,
      "originals": "given folder" if flags.originals else "stand-ins enlarged to 1,000-2,400 px, JPEG q90",
      "mean_megapixels": megapixels,
      "rows": rows,
      "ratio_vs_full_decode": ratio,
      "pixel_diff": {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": int(diff.max())},
      "peak_rss_mb": common.peak_rss_mb(),
    },
    flags.output,
  )
  print("wrote", path)


if __name__ == "__main__":
  main()
