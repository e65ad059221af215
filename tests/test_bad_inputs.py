"""Bad-input suite: 200+ bad files planted among real images; a run uses every real image once."""

import csv
import io
import os
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

from tests.conftest import REPO, make_tree
from xray_keras.data import contract, decode

FOLDERS = [os.path.join(s, c) for s in ("train", "test") for c in ("NORMAL", "PNEUMONIA")]


def _png_chunk(kind, data):
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width=100_000, height=100_000):
  """A tiny PNG whose header claims `width` x `height` pixels."""
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", header)
    + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    + _png_chunk(b"IEND", b"")
  )


def jpeg_bomb(jpeg, side=60_000):
  """A real JPEG whose frame header is patched to `side` x `side` pixels."""
  data = bytearray(jpeg)
  at = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
  data[at + 5 : at + 9] = struct.pack(">HH", side, side)
  return bytes(data)


def _fs_name(name):
  """How a file name appears in the run's CSV files (non-UTF-8 bytes escaped)."""
  return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def plant(root, rng):
  """Plants bad files and valid-but-unusual images; returns (bad relative paths, unusual paths)."""
  bad, unusual = set(), {}
  real = {f: sorted(n for n in os.listdir(os.path.join(root, f))) for f in FOLDERS}
  jpeg = open(os.path.join(root, FOLDERS[0], real[FOLDERS[0]][0]), "rb").read()

  def put(folder, name, data=None, mode=None):
    path = os.path.join(root, folder, name)
    if data is not None:
      with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
      os.chmod(path, mode)
    bad.add(os.path.join(folder, name))
    return path

  for i in range(40):
    put(FOLDERS[i % 4], f"random_{i}.jpeg", rng.randbytes(rng.randint(1, 5000)))
  for i in range(40):
    source = open(os.path.join(root, FOLDERS[i % 4], real[FOLDERS[i % 4]][i % 5]), "rb").read()
    put(FOLDERS[i % 4], f"truncated_{i}.jpeg", source[: rng.randint(10, len(source) * 2 // 3)])
  for i in range(20):
    put(FOLDERS[i % 4], f"empty_{i}.jpeg", b"")
  for i in range(20):
    put(FOLDERS[i % 4], f"notes_{i}.jpeg", f"patient notes {i}\n".encode() * 20)
  for i in range(20):
    folder = FOLDERS[i % 4]
    put(folder, "._" + real[folder][i % 5], b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 40)
  for i in range(6):
    put(FOLDERS[i % 4], f"bomb_{i}.png", png_bomb())
  for i in range(6):
    put(FOLDERS[i % 4], f"bomb_{i}.jpeg", jpeg_bomb(jpeg))
  for i in range(10):
    os.symlink(f"loop_{i}_b.jpeg", os.path.join(root, FOLDERS[i % 4], f"loop_{i}_a.jpeg"))
    os.symlink(f"loop_{i}_a.jpeg", os.path.join(root, FOLDERS[i % 4], f"loop_{i}_b.jpeg"))
    bad.update({os.path.join(FOLDERS[i % 4], f"loop_{i}_a.jpeg"), os.path.join(FOLDERS[i % 4], f"loop_{i}_b.jpeg")})
  for i in range(10):
    os.symlink(f"/nonexistent/scan_{i}.jpeg", os.path.join(root, FOLDERS[i % 4], f"dangling_{i}.jpeg"))
    bad.add(os.path.join(FOLDERS[i % 4], f"dangling_{i}.jpeg"))
  for i in range(5):
    os.mkfifo(os.path.join(root, FOLDERS[i % 4], f"pipe_{i}.jpeg"))
    bad.add(os.path.join(FOLDERS[i % 4], f"pipe_{i}.jpeg"))
  for i in range(10):
    name = os.fsdecode(b"scan_\xff\xfe_%d.jpeg" % i)  # not valid UTF-8
    put(FOLDERS[i % 4], name, rng.randbytes(300))
  for i in range(10):
    put(FOLDERS[i % 4], f"report_{i}.txt", b"not an image")
  for i in range(4):  # refused on every path: the serving graph's decoder reads no CMYK
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("CMYK").save(cmyk, "JPEG", quality=95)
    put(FOLDERS[i % 4], f"cmyk_{i}.jpeg", cmyk.getvalue())
  for i in range(5):
    put(FOLDERS[i % 4], f".hidden_{i}.jpeg", jpeg)
  put(FOLDERS[0], ".DS_Store", b"\x00\x00\x00\x01Bud1")
  unreadable = []
  for i in range(10):  # a real image nobody may read (root reads it anyway)
    unreadable.append(put(FOLDERS[i % 4], f"locked_{i}.jpeg", jpeg, mode=0))
  if os.geteuid() == 0:
    for path in unreadable:
      bad.discard(os.path.relpath(path, root))
      unusual[os.path.relpath(path, root)] = "readable by root"

  # Valid but unusual: must be decoded, not skipped.
  base = Image.open(os.path.join(root, FOLDERS[1], real[FOLDERS[1]][0])).convert("L")
  pixels = np.asarray(base)
  for i in range(4):
    folder = FOLDERS[i % 4]
    Image.fromarray(pixels.astype(np.uint16) * 257).save(os.path.join(root, folder, f"sixteen_bit_{i}.png"))
    base.convert("P").save(os.path.join(root, folder, f"palette_{i}.png"))
    rotated = base.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(os.path.join(root, folder, f"exif_rotated_{i}.jpeg"), exif=exif, quality=95)
    good = os.fsdecode(b"NORMAL2-IM-9%03d-0001_\xe9.jpeg" % i)  # a real image with a Latin-1 name
    base.save(os.path.join(root, folder, good), quality=95)
    for name in (f"sixteen_bit_{i}.png", f"palette_{i}.png", f"exif_rotated_{i}.jpeg", good):
      unusual[os.path.join(folder, name)] = name
  return bad, unusual, pixels


def _rows(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_run_survives_200_bad_files_and_uses_every_real_image_once(tmp_path):
  root = make_tree(str(tmp_path / "chest_xray"), per_class=5, splits=("train", "test"))
  real = {os.path.join(f, n) for f in FOLDERS for n in os.listdir(os.path.join(root, f))}
  bad, unusual, pixels = plant(root, random.Random(0))
  assert len(bad) >= 200
  out = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.run",
      "--flagfile=experiments/smoke.cfg",
      f"--data_dir={root}",
      f"--output_dir={out}",
      f"--cache_dir={tmp_path / 'cache'}",
      "--image_size=32",
      "--val_fraction=0.3",
      "--max_images_per_split=0",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "Logging error" not in result.stderr

  skipped = _rows(out / "skipped_files.csv")
  assert {r["file"] for r in skipped} == {_fs_name(p) for p in bad}
  assert all(r["reason"] for r in skipped) and len(skipped) == len(bad)
  used = [r["file"] for r in _rows(out / "split_manifest.csv")]
  assert len(used) == len(set(used))  # each image once
  assert set(used) == {_fs_name(p) for p in real | set(unusual)}
  reasons = {r["file"]: r["reason"] for r in skipped}
  assert "too large" in reasons[os.path.join(FOLDERS[0], "bomb_0.png")]
  assert "too large" in reasons[os.path.join(FOLDERS[0], "bomb_0.jpeg")]
  assert "not a regular file" in reasons[os.path.join(FOLDERS[0], "pipe_0.jpeg")]
  assert "symbolic link" in reasons[os.path.join(FOLDERS[0], "loop_0_a.jpeg")]
  assert reasons[os.path.join(FOLDERS[0], "cmyk_0.jpeg")] == contract.CMYK_JPEG


def test_unusual_valid_images_decode_to_the_right_pixels(tmp_path):
  root = make_tree(str(tmp_path / "chest_xray"), per_class=5, splits=("train", "test"))
  _, unusual, pixels = plant(root, random.Random(1))
  reference = decode.decode_image(_png(pixels), 32, 1)
  for rel, name in unusual.items():
    if name == "readable by root":
      continue
    with open(os.path.join(root, rel), "rb") as f:
      got = decode.decode_image(f.read(), 32, 1)
    diff = np.abs(got.astype(int) - reference.astype(int)).mean()
    assert diff < 3, (name, diff)
  # The EXIF orientation matters: without it the image is far off.
  sideways = decode.decode_image(_png(np.rot90(pixels)), 32, 1)
  assert np.abs(sideways.astype(int) - reference.astype(int)).mean() > 10


def _png(pixels):
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()
