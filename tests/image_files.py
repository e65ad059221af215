"""Generated encoded images over the input contract's parameters, and Pillow's reading of them as an oracle."""

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "GIF", "BMP")
MODES = {"PNG": ["L", "LA", "RGB", "RGBA", "P", "I;16"], "JPEG": ["L", "RGB"], "GIF": ["P"], "BMP": ["L", "RGB"]}


def tiff_orientation(orientation, big_endian=False, long_type=False):
  """A minimal EXIF (TIFF) block holding one Orientation entry, as SHORT or LONG, in either byte order."""
  order = ">" if big_endian else "<"
  value = struct.pack(order + "I", orientation) if long_type else struct.pack(order + "HH", orientation, 0)
  entry = struct.pack(order + "HHHI", 1, 0x0112, 4 if long_type else 3, 1) + value
  return (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8) + entry + b"\0\0\0\0"


def _exif(orientation, fmt, rng):
  payload = tiff_orientation(orientation, bool(rng.integers(2)), bool(rng.integers(2)))
  if fmt == "PNG" and rng.integers(2):  # several writers start a PNG's eXIf payload with JPEG's "Exif\0\0"
    payload = b"Exif\x00\x00" + payload
  return payload


def _segment(marker, payload):
  return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _chunk(kind, payload):
  return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_decoys(data, fmt, rng, kind=None):
  """`data` with EXIF-looking bytes where a reader must not take them: in a JPEG, a comment segment holding
  "Exif\0\0" and an orientation, or 128 KiB of ICC-like APP2 segments before the real APP1; in a PNG, a text
  chunk holding "eXIf" and an orientation, before any real eXIf chunk. `(bytes, what was added)`."""
  fake = Image.Exif()
  fake[0x0112] = 3
  if fmt == "PNG":
    text = _chunk(b"tEXt", b"Comment\x00eXIf" + fake.tobytes())
    return data[:33] + text + data[33:], "_text"  # after the 8-byte signature and the 25-byte IHDR chunk
  if kind == "comment" or (kind is None and rng.integers(2)):
    return data[:2] + _segment(0xFE, b"Exif\x00\x00" + fake.tobytes()) + data[2:], "_comment"
  padding = _segment(0xE2, b"ICC_PROFILE\x00" + bytes(65500))
  return data[:2] + padding + padding + data[2:], "_app2pad"


def generated(rng, truncate=True):
  """`(name, bytes)`: a structured image over format x mode x bit depth x size x orientation x EXIF-looking
  decoys x JPEG quality and progressive x truncation (a cut file, with or without a JPEG end marker after the cut)."""
  fmt = str(rng.choice(FORMATS))
  height, width = (int(x) for x in rng.integers(9, 400, 2))
  base = np.linspace(0, 1, width)[None, :] * np.linspace(0.3, 1, height)[:, None]
  base = np.clip(base + rng.normal(0, 0.08, (height, width)), 0, 1)
  mode = str(rng.choice(MODES[fmt]))
  if mode == "I;16":
    bits = int(rng.choice([10, 12, 16]))
    image = Image.fromarray(np.round(base * (2**bits - 1)).astype(np.uint16))
  else:
    grey = Image.fromarray(np.round(base * 255).astype(np.uint8), "L")
    rgb = Image.merge("RGB", [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grey])
    image = {"L": grey, "LA": Image.merge("LA", [grey, grey]), "RGB": rgb, "RGBA": rgb.convert("RGBA"), "P": rgb}[mode]
    if mode == "P":
      image = rgb.convert("P")
  kwargs, orientation = {}, int(rng.choice([1, 1, 2, 3, 4, 5, 6, 7, 8]))
  if fmt in ("JPEG", "PNG") and orientation > 1:
    kwargs["exif"] = _exif(orientation, fmt, rng)
  if fmt == "JPEG":
    kwargs.update(quality=int(rng.integers(60, 100)), progressive=bool(rng.integers(2)))
  out = io.BytesIO()
  image.save(out, fmt, **kwargs)
  data, cut = out.getvalue(), ""
  if fmt in ("JPEG", "PNG") and rng.random() < 0.25:
    data, decoy = with_decoys(data, fmt, rng)
    cut = decoy
  if truncate and rng.random() < 0.15:
    fraction = float(rng.uniform(0.3, 0.97))
    data = data[: int(len(data) * fraction)]
    cut += f"_cut{fraction:.2f}"
    if fmt == "JPEG" and rng.integers(2):
      data, cut = data + b"\xff\xd9", cut + "+eoi"
  return f"{fmt.lower()}_{mode}_{height}x{width}_o{orientation}{cut}", data


def pillow_reference(data, channels):
  """The contract's pixels at full size read by Pillow's own functions: `ImageOps.exif_transpose`, 16-bit grey
  scaled by the bit depth it uses, transparency over black, then Pillow's grey or RGB conversion."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    image = ImageOps.exif_transpose(image)
  if image.mode in ("I;16", "I"):
    values = np.asarray(image).astype(np.int64)
    bits = next(b for b in (8, 10, 12, 14, 16) if values.max() < 2**b)
    image = Image.fromarray(np.round(values * 255 / (2**bits - 1)).astype(np.uint8), "L")
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("LA", "RGBA"):
    black = Image.new("RGBA", image.size, (0, 0, 0, 255))
    image = Image.alpha_composite(black, image.convert("RGBA")).convert("RGB" if image.mode == "RGBA" else "L")
  array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  return array[:, :, None] if array.ndim == 2 else array


SAME_PIXELS, SAME_REFUSAL = "same pixels", "same refusal"
# Documented in docs/inputs.md: a JPEG cut short and closed with an end marker can stop TensorFlow's libjpeg
# where Pillow's reports the cut; both refuse it, the SavedModel in TensorFlow's words.
TENSORFLOW_WORDS = "refused by both, the SavedModel in TensorFlow's words"
# Also documented: a colour JPEG cut short and closed with an end marker, its fill under the refusal rule's
# tenth of the image, is accepted by both; the two libjpeg builds finish the cut MCU row 1 grey level apart.
CUT_JPEG_ONE_LEVEL = "a cut JPEG closed with an end marker: accepted by both, 1 grey level apart"
DOCUMENTED = (SAME_PIXELS, SAME_REFUSAL, TENSORFLOW_WORDS, CUT_JPEG_ONE_LEVEL)


def compare(data, channels, size, mode, name=""):
  """`(outcome, detail)` of one encoded image through the host decoder (training, evaluate, predict, the demo),
  the serving graph (the SavedModel) and, where accepted, Pillow's reading at full size (`pillow_reference`).

  outcome: one of DOCUMENTED (`name`, from `generated`, tells a cut JPEG), or a disagreement ("pixels differ",
  "host refuses only", "graph refuses only", "refusals differ", "host differs from Pillow").
  """
  import tensorflow as tf

  from xray_keras.data import decode
  from xray_keras.serving import graph

  try:
    host, refusal = decode.decode_image(data, size, channels, mode), ""
  except decode.DecodeError as e:
    host, refusal = None, str(e)
  try:
    image, full = graph.decode_one(tf.constant(data), channels, size)
    served, served_refusal = graph.fit_square(image, size, mode, full).numpy(), ""
  except tf.errors.InvalidArgumentError as e:
    served, served_refusal = None, " ".join(e.message.split())
  if refusal and served_refusal:
    if refusal in served_refusal:
      return SAME_REFUSAL, refusal
    tensorflow_jpeg = refusal == "truncated JPEG file" and "DecodeJpeg" in served_refusal
    return (TENSORFLOW_WORDS if tensorflow_jpeg else "refusals differ"), f"{refusal} | {served_refusal[:200]}"
  if refusal:
    return "host refuses only", refusal
  if served_refusal:
    return "graph refuses only", served_refusal[:200]
  if not np.array_equal(host, served):
    gap = np.abs(host.astype(int) - served).max()
    cut_jpeg = name.startswith("jpeg_RGB") and name.endswith("+eoi") and gap == 1
    return (CUT_JPEG_ONE_LEVEL if cut_jpeg else "pixels differ"), f"max {gap} grey levels"
  full_host, reference = decode.decode_image(data, None, channels), pillow_reference(data, channels)
  if full_host.shape != reference.shape or not np.array_equal(full_host, reference):
    return "host differs from Pillow", f"{full_host.shape} against {reference.shape}"
  return SAME_PIXELS, ""


def bmp32(rgb, masks=(0xFF0000, 0xFF00, 0xFF, 0), header=40, alpha=None):
  """A 32-bit BI_BITFIELDS BMP of `(H, W, 3)` uint8 `rgb` with the given red, green, blue and alpha masks."""
  height, width = rgb.shape[:2]
  alpha = np.full((height, width), 255) if alpha is None else alpha

  def placed(values, mask):
    return 0 if not mask else values.astype(np.int64) << ((mask & -mask).bit_length() - 1)

  words = placed(rgb[..., 0], masks[0]) | placed(rgb[..., 1], masks[1]) | placed(rgb[..., 2], masks[2])
  pixels = (words | placed(alpha, masks[3])).astype("<u4")[::-1].tobytes()
  info = struct.pack("<IiiHHIIiiII", header, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
  info += struct.pack("<III", *masks[:3]) + (struct.pack("<I", masks[3]) if header >= 108 else b"")
  info += bytes(header + (12 if header == 40 else 0) - len(info))
  return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels
