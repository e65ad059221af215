"""Blank images and truncated JPEGs: refused with the same words by the host decoder and the serving graph."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import image_files
from tests.conftest import _builtin, real_jpeg, shared_data
from xray_keras.data import builtin, contract, decode
from xray_keras.serving import graph


def _encoded(array, fmt, **kwargs):
  out = io.BytesIO()
  Image.fromarray(array).save(out, fmt, **kwargs)
  return out.getvalue()


def _cases(seed, count):
  """`(name, bytes, expected refusal or "")`: blank and near-blank images, real X-rays, and truncated JPEGs."""
  rng = np.random.default_rng(seed)
  names = list(_builtin()[("test", "PNEUMONIA")])
  for i in range(count):
    kind = rng.choice(["constant", "near", "structured", "real", "truncated"])
    fmt = rng.choice(["PNG", "JPEG", "BMP", "GIF"]) if kind != "truncated" else "JPEG"
    height, width = (int(x) for x in rng.integers(9, 300, 2))
    mode = rng.choice(["L", "RGB"]) if fmt != "BMP" else "RGB"  # an 8-bit BMP is refused (test below)
    shape = (height, width) if mode == "L" else (height, width, 3)
    value = int(rng.integers(0, 256))
    if kind == "constant":
      array, expected = np.full(shape, value, np.uint8), contract.NO_STRUCTURE
    elif kind == "near":  # +-1 around one value: 100% within the band, whatever JPEG or GIF does to it
      array, expected = np.clip(value + rng.integers(-1, 2, shape), 0, 255).astype(np.uint8), contract.NO_STRUCTURE
    elif kind == "structured":
      ramp = np.linspace(0, 255, width)[None, :] + rng.normal(0, 20, (height, width))
      array = np.clip(ramp, 0, 255).astype(np.uint8)
      array, expected = (array if mode == "L" else np.dstack([array] * 3)), ""
    if kind in ("constant", "near", "structured"):
      yield f"{kind}_{mode}_{height}x{width}.{fmt.lower()}", _encoded(array, fmt), expected
      continue
    data = real_jpeg("test", "PNEUMONIA", names[i % len(names)])
    if kind == "real":
      yield f"real_{i}.jpeg", data, ""
      continue
    cut = float(rng.choice([0.3, 0.5, 0.7]))
    yield f"truncated_{cut}_{i}.jpeg", data[: int(len(data) * cut)] + b"\xff\xd9", contract.TRUNCATED


def _host(data, channels):
  try:
    decode.decode_image(data, 48, channels)
  except decode.DecodeError as e:
    return str(e)
  return ""


def _graph(data, channels):
  try:
    graph.decode_one(tf.constant(data), channels, 48)
  except tf.errors.InvalidArgumentError as e:
    return e.message
  return ""


@pytest.mark.parametrize("channels", [1, 3])
def test_both_decoders_refuse_blank_images_and_truncated_jpegs_alike(channels):
  seen = set()
  for name, data, expected in _cases(seed=channels, count=60):
    host, served = _host(data, channels), _graph(data, channels)
    seen.add(name.split("_")[0])
    if expected:
      assert host == expected and expected in served, (name, host, served)
    else:
      assert host == "" and served == "", (name, host, served)
  assert seen == {"constant", "near", "structured", "real", "truncated"}


def test_no_built_in_image_is_refused_and_the_rules_catch_what_they_name():
  refused = []
  for name, split, _, data in builtin.files():
    with Image.open(io.BytesIO(data)) as image:
      array = np.asarray(image.convert("L"))[:, :, None]
    if contract.problem(array, True):
      refused.append((split, name))
  assert refused == []
  assert contract.problem(np.zeros((64, 64, 1), np.uint8), False) == contract.NO_STRUCTURE
  filled = np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8)
  filled[-8:] = contract.JPEG_FILL  # one MCU row of mid-grey: 10% of 80 rows
  assert contract.problem(filled, True) == contract.TRUNCATED and contract.problem(filled, False) == ""
  filled[-8:, 0, 0] = 127
  assert contract.problem(filled, True) == ""
  black_bars = np.random.default_rng(1).integers(0, 256, (224, 224, 1), dtype=np.uint8)
  black_bars[:, :30] = 0  # a radiograph's own black border is not refused
  assert contract.problem(black_bars, True) == ""


def test_no_image_of_the_224_px_dataset_is_refused():
  import glob
  import os

  files = sorted(glob.glob(os.path.join(shared_data(), "*", "*", "*.jpeg")))
  refused = [f for f in files if _host(open(f, "rb").read(), 1)]
  assert len(files) == 5856 and refused == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_one_size_limit_on_both_decoders(fmt):
  side = (contract.MAX_PIXELS // 5000 + 1, 5000)  # one column over the limit
  data = _encoded(np.zeros((side[1], side[0]), np.uint8), fmt)
  host, served = _host(data, 1), _graph(data, 1)
  assert host.startswith(contract.TOO_LARGE) and contract.TOO_LARGE in served, (host, served)


def _agree(seed, count):
  """Generated images (tests/image_files.py) give the same pixels on both decoders and Pillow, or the same refusal."""
  rng = np.random.default_rng(seed)
  for _ in range(count):
    name, data = image_files.generated(rng)
    channels, size = int(rng.choice([1, 3])), int(rng.choice([32, 48, 64]))
    mode = str(rng.choice(decode.RESIZE_MODES))
    outcome, detail = image_files.compare(data, channels, size, mode, name)
    assert outcome in image_files.DOCUMENTED, f"{name} {channels}ch {size}px {mode}: {outcome}: {detail}"


def test_generated_images_decode_to_the_same_pixels_on_both_decoders():
  _agree(seed=0, count=40)


@pytest.mark.slow
def test_generated_images_decode_to_the_same_pixels_on_both_decoders_many():
  _agree(seed=1, count=300)


@pytest.mark.parametrize("mode", ["1", "L", "P"])
def test_bmps_with_a_palette_are_refused_alike(mode):
  """TensorFlow's BMP decoder reads a palette's indices as grey: both paths refuse 1-8 bit BMPs in the same words."""
  ramp = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
  image = Image.fromarray(ramp).convert(mode)
  if mode == "P":
    image = Image.fromarray(np.dstack([ramp, ramp[::-1], ramp])).quantize(16)
  data = _encoded(np.asarray(image.convert("L")), "BMP") if mode == "L" else None
  if data is None:
    out = io.BytesIO()
    image.save(out, "BMP")
    data = out.getvalue()
  assert contract.bmp_bits(data) <= 8
  host, served = _host(data, 1), _graph(data, 1)
  assert host == contract.BMP_PALETTE and contract.BMP_PALETTE in served, (host, served)
  rgb = _encoded(np.dstack([ramp] * 3), "BMP")
  assert contract.bmp_bits(rgb) == 24 and _host(rgb, 1) == "" and _graph(rgb, 1) == ""


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_a_file_cut_short_is_refused_alike_before_any_decoder(fmt):
  ramp = np.add.outer(np.arange(120), np.arange(150)).astype(np.uint8)
  data = _encoded(np.dstack([ramp, ramp[::-1], ramp]) if fmt != "GIF" else ramp, fmt)
  for cut in (0.5, 0.9, 0.99):
    short = data[: int(len(data) * cut)]
    host, served = _host(short, 1), _graph(short, 1)
    assert host == contract.cut_short(fmt) and contract.cut_short(fmt) in served, (cut, host, served)
  assert contract.end_missing(data[:-1], fmt) == (fmt != "GIF") and not contract.end_missing(data, fmt)


def test_one_byte_limit_on_every_path_checked_before_reading(tmp_path):
  path = tmp_path / "padded.png"
  image = _encoded(np.add.outer(np.arange(60), np.arange(80)).astype(np.uint8), "PNG")
  with open(path, "wb") as f:
    f.write(image)
    f.truncate(contract.MAX_BYTES + 1)  # sparse: nothing of it is read
  with pytest.raises(decode.DecodeError, match=contract.TOO_MANY_BYTES):
    decode.read_file(str(path))
  path.write_bytes(image)
  assert decode.read_file(str(path)) == image
  padded = tf.constant([image + b"\0" * (contract.MAX_BYTES + 1 - len(image))])
  with pytest.raises(tf.errors.InvalidArgumentError, match=contract.TOO_MANY_BYTES):
    graph.decode_batch(padded, 32, 1, "squash")


def test_the_decode_pool_is_sized_by_memory_as_well_as_cores(monkeypatch):
  from xray_keras.data import cache

  by_cores = min(8, (os.cpu_count() or 1) * 2)
  for available, expected in [(None, by_cores), (10**12, by_cores), (3 * cache.WORKER_BYTES, 1), (0, 1)]:
    monkeypatch.setattr(cache, "_available_memory", lambda a=available: a)
    assert cache.default_workers() == expected, available
  monkeypatch.setattr(cache, "_available_memory", lambda: 4 * cache.WORKER_BYTES)
  assert cache.default_workers() == min(by_cores, 2)
  monkeypatch.setattr(cache, "_available_memory", lambda: 10**12)
  dicom_50_mb = 50 * 2**20  # a 25 Mpx 16-bit radiograph: two threads share the decode budget
  assert cache.default_workers(dicom_50_mb) == min(by_cores, 2) and cache.default_workers(200_000) == by_cores


@pytest.mark.parametrize("fmt,decoy", [("JPEG", "comment"), ("JPEG", "app2pad"), ("PNG", "text")])
@pytest.mark.parametrize("orientation", [1, 6])
def test_exif_is_read_from_its_own_segment_or_chunk_not_from_bytes_that_look_like_it(fmt, decoy, orientation):
  """A comment or text chunk holding EXIF-like bytes (orientation 3), or 128 KiB of APP2 segments before the real
  APP1: both decoders find the EXIF Pillow finds, by walking the file's segments or chunks."""
  ramp = np.add.outer(np.arange(50), 2 * np.arange(70)).astype(np.uint8)
  exif = Image.Exif()
  exif[0x0112] = orientation
  plain = _encoded(np.dstack([ramp, ramp[::-1], ramp]), fmt, **({"exif": exif.tobytes()} if orientation > 1 else {}))
  data, _ = image_files.with_decoys(plain, fmt, np.random.default_rng(0), decoy)
  for channels in (1, 3):
    assert image_files.compare(data, channels, 48, "pad") == (image_files.SAME_PIXELS, "")
  np.testing.assert_array_equal(decode.decode_image(data, None), decode.decode_image(plain, None))


def _png_with_chunks(grey, chunks):
  import struct
  import zlib

  def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

  header = struct.pack(">IIBBBBB", grey.shape[1], grey.shape[0], 8, 0, 0, 0, 0)
  rows = b"".join(b"\0" + row.tobytes() for row in grey)
  middle = b"".join(chunk(k, p) for k, p in chunks)
  return (
    b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + middle + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
  )


def _outside_tester_cases():
  """Unusual files a second, independent generator found decoded differently (2026-12-07), each now one answer."""
  grey = np.add.outer(np.arange(40) * 5, np.arange(60) * 3).astype(np.uint8)
  rgb = np.dstack([grey, grey[::-1], 255 - grey])
  big_long = image_files.tiff_orientation(6, big_endian=True, long_type=True)
  jpeg = _encoded(rgb, "JPEG", quality=90, exif=b"Exif\x00\x00" + big_long)
  twice = [(b"eXIf", image_files.tiff_orientation(6)), (b"eXIf", image_files.tiff_orientation(3))]
  alpha = np.where(np.arange(grey.size).reshape(grey.shape) % 3 == 0, 60, 255)
  return {
    "png_exif_big_endian_long": (_png_with_chunks(grey, [(b"eXIf", big_long)]), ""),
    "jpeg_exif_big_endian_long": (jpeg, ""),
    "png_two_exif_chunks": (_png_with_chunks(grey, twice), contract.PNG_EXIF_TWICE),
    "bmp_trailing_bytes": (_encoded(rgb, "BMP") + b"\0\0", ""),
    "bmp_red_in_low_byte": (image_files.bmp32(rgb, (0xFF, 0xFF00, 0xFF0000, 0)), contract.BMP_FIELDS),
    "bmp_10_10_10": (image_files.bmp32(rgb, (0x3FF00000, 0xFFC00, 0x3FF, 0)), contract.BMP_FIELDS),
    "bmp_v4_alpha": (image_files.bmp32(rgb, (0xFF0000, 0xFF00, 0xFF, 0xFF000000), 108, alpha), ""),
  }


@pytest.mark.parametrize("name", sorted(_outside_tester_cases()))
def test_what_an_outside_tester_found_is_one_answer_on_both_decoders(name):
  data, refusal = _outside_tester_cases()[name]
  for channels in (1, 3):
    outcome, detail = image_files.compare(data, channels, 32, "squash")
    assert outcome == (image_files.SAME_REFUSAL if refusal else image_files.SAME_PIXELS), (name, outcome, detail)
    assert detail == refusal, (name, detail)
