"""Images refused for their size or for what their pixels show, by one rule on every path.

The host decoder (`decode.py`, `dicom.py`) and the serving graph (`serving/graph.py`) take the size
limit and the refusal texts from here.

Both checks look at the decoded full-resolution uint8 image, before the square fit, with integer
arithmetic only, so `decode.decode_image` (Pillow, NumPy) and `serving.graph` (TensorFlow) refuse
exactly the same images with the same words:

- **No structure**: at least `FLAT_PERCENT`% of the pixel values lie within `FLAT_BAND` grey levels of
  one value (a blank, black or grey image, a flat test pattern).
- **A truncated JPEG**: a run of rows or columns at one edge, at least `TAIL_MIN` long and
  `TAIL_PERCENT`% of the image, every pixel of it `JPEG_FILL` (mid-grey) in every channel. libjpeg
  fills what a cut-short scan leaves out this way (with an end-of-image marker after the cut, no
  decoder error is raised). Black or white bars at a radiograph's edges are not refused.
"""

import numpy as np

# One size limit for every path (training, evaluate, predict with any runtime, the demo, the SavedModel),
# checked from the header before any decoder allocates: 5000 x 5000; a chest radiograph is at most
# about 4300 x 4300 (43 cm at 100 um), the largest Kermany original about 2900 x 2900.
MAX_PIXELS = 25_000_000
TOO_LARGE = f"image too large: larger than {MAX_PIXELS} pixels"
# And one limit on a file's bytes, every path and format: a 25 Mpx image fits as a 24-bit BMP (75 MB), an 8-bit
# RGB or 16-bit grey DICOM (75 or 50 MB); a SavedModel request holding it stays within 300 MB.
MAX_BYTES = 80 * 2**20
TOO_MANY_BYTES = f"file too large: larger than {MAX_BYTES} bytes"
FLAT_PERCENT = 95
FLAT_BAND = 2
TAIL_PERCENT = 10
TAIL_MIN = 8
JPEG_FILL = 128
NO_STRUCTURE = (
  f"no structure: {FLAT_PERCENT}% of its pixels within {FLAT_BAND} grey levels of one value (a blank image?)"
)
TRUNCATED = "truncated or corrupt JPEG data: an edge of the image is the JPEG decoder fill (mid-grey)"
_CHUNK = 1 << 20  # values counted at a time
BMP_DEPTHS = (24, 32)  # TensorFlow's BMP decoder reads a palette's indices as grey: 1-16 bit BMPs are refused
BMP_PALETTE = "BMP with fewer than 24 bits per pixel (a palette): save it as PNG"
CMYK_JPEG = "CMYK JPEGs are not accepted: convert the image to RGB or grey"  # TensorFlow's decoder reads no CMYK


def flat_share_exceeded(image):
  """Whether `FLAT_PERCENT`% of the values of uint8 `image` lie within `FLAT_BAND` of one value."""
  flat = np.asarray(image, np.uint8).reshape(-1)
  counts = np.zeros(256, np.int64)
  for start in range(0, flat.size, _CHUNK):  # bincount widens its input to int64: 8 bytes a pixel at once
    counts += np.bincount(flat[start : start + _CHUNK], minlength=256)
  window = np.convolve(counts, np.ones(2 * FLAT_BAND + 1, np.int64), mode="same")
  return int(window.max()) * 100 >= FLAT_PERCENT * image.size


def _tail(image):
  """Rows at the bottom of `(H, W, C)` `image` that are `JPEG_FILL` throughout."""
  filled = (image == JPEG_FILL).all(axis=(1, 2))
  broken = np.flatnonzero(~filled[::-1])
  return int(broken[0]) if broken.size else len(filled)


def flat_edge(image):
  """Whether an edge of `(H, W, C)` uint8 `image` is `JPEG_FILL` over `TAIL_MIN` and `TAIL_PERCENT`% or more."""
  turned = np.transpose(image, (1, 0, 2))
  for view in (image, image[::-1], turned, turned[::-1]):
    tail = _tail(view)
    if tail >= TAIL_MIN and tail * 100 >= TAIL_PERCENT * view.shape[0]:
      return True
  return False


def bmp_bits(data):
  """Bits per pixel a BMP's header declares, or None for data that is not a BMP."""
  if data[:2] != b"BM" or len(data) < 30:
    return None
  return int.from_bytes(data[28:30], "little")


BMP_FIELDS = "BMP with colour masks other than 8-bit red, green, blue (and alpha): save it as PNG"
PNG_EXIF_TWICE = "PNG with more than one eXIf chunk (the PNG standard allows one): which orientation holds is unclear"


def bmp_layout_problem(data):
  """Why a 24/32-bit BMP's pixel layout is refused, or "": compression other than none, or bit fields other than
  TensorFlow's fixed blue, green, red (and alpha) bytes, which it would read without looking at them."""
  field = lambda at: int.from_bytes(data[at : at + 4], "little")  # noqa: E731
  compression, header = field(30), field(14)
  if compression == 0 or bmp_bits(data) not in BMP_DEPTHS:  # 1-16 bits: BMP_PALETTE's rule
    return ""
  alpha = field(66) if header >= 56 or compression == 6 else 0
  standard = (field(54), field(58), field(62)) == (0xFF0000, 0xFF00, 0xFF) and alpha in (0, 0xFF000000)
  return "" if compression in (3, 6) and standard and bmp_bits(data) == 32 else BMP_FIELDS


def png_exif_count(data):
  """How many eXIf chunks a PNG holds, walking its chunks to IEND."""
  pos, count = 8, 0
  while pos + 12 <= len(data):
    kind = data[pos + 4 : pos + 8]
    count += kind == b"eXIf"
    if kind == b"IEND":
      break
    pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
  return count


def format_of(data):
  """ "JPEG", "PNG", "GIF" or "BMP" from the first bytes, as the serving graph tells them apart; None otherwise."""
  if data[:3] == b"\xff\xd8\xff":
    return "JPEG"
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "PNG"
  if data[:6] in (b"GIF87a", b"GIF89a"):
    return "GIF"
  if data[:2] == b"BM" and len(data) >= 26:
    return "BMP"
  return None


def cut_short(fmt):
  """The refusal of a `fmt` ("JPEG", "PNG", "GIF", "BMP") file whose end is missing."""
  return f"truncated {fmt} file"


def end_missing(data, fmt):
  """Whether encoded `data` of format `fmt` lacks the end its format requires (read from the bytes, before any
  decoder, by the same rule as the serving graph): a JPEG's end-of-image marker and, walking its segments, its
  frame header; a PNG's IEND chunk; a BMP's last row. A GIF's first frame is walked to its end by each decoder."""
  if fmt == "JPEG":
    return b"\xff\xd9" not in data or not jpeg_headers_whole(data)
  if fmt == "PNG":
    return PNG_END not in data
  if fmt == "BMP":
    return len(data) < bmp_end(data)
  return False


JPEG_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)  # SOF markers


def jpeg_headers_whole(data):
  """Whether walking a JPEG's marker segments from the start reaches a frame header and then a whole
  start-of-scan segment (the headers a decoder reads before any pixel data)."""
  pos, frame = 2, False
  while pos + 4 <= len(data):
    marker = data[pos + 1]
    if data[pos] != 0xFF or marker == 0xFF:  # junk or fill bytes between segments
      pos += 1
    elif marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
      pos += 2
    elif marker == 0xD9:
      return False
    else:
      end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
      if marker == 0xDA:
        return frame and end <= len(data)
      frame, pos = frame or marker in JPEG_FRAMES, end
  return False


PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and its (fixed) checksum


def bmp_end(data):
  """The byte after a BMP's last pixel row, from its header: pixel offset + rows x row stride."""
  offset, width = int.from_bytes(data[10:14], "little"), int.from_bytes(data[18:22], "little", signed=True)
  height, bits = int.from_bytes(data[22:26], "little", signed=True), int.from_bytes(data[28:30], "little")
  return offset + abs(height) * ((bits * abs(width) + 31) // 32) * 4


def problem(image, is_jpeg):
  """Why decoded `(H, W, C)` uint8 `image` is refused, or ""."""
  if image.size and flat_share_exceeded(image):
    return NO_STRUCTURE
  if is_jpeg and image.size and flat_edge(image):
    return TRUNCATED
  return ""
