"""Decode image bytes into fixed-size uint8 arrays (NumPy and Pillow only: no TensorFlow, no Keras).

Handles what real folders hold: grayscale, RGB, RGBA, palette, 16-bit and
EXIF-rotated images (not CMYK JPEGs: the serving graph cannot read them) (JPEG APP1 or PNG eXIf; not XMP alone), any size, and DICOM radiographs
(`dicom.py`, with the optional pydicom). Undecodable input raises `DecodeError` with a
one-line reason, which callers turn into a logged skip.

The square fit (`fit_square`) uses integer crop/pad arithmetic and `resize.resize`
(bilinear, antialiased, equal to `tf.image.resize`): the exported serving graph does the
same in TensorFlow ops, so an 8-bit JPEG or PNG gives the same pixels in training and in
serving, whatever the Keras backend.
"""

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from xray_keras.data import contract, dicom, resize

RESIZE_MODES = ("squash", "pad", "crop")
# Bumped whenever decoding changes, so stale caches are never reused.
DECODER_VERSION = 8
# JPEG draft mode (libjpeg DCT scaling) decodes large JPEGs at 1/2, 1/4 or 1/8 size, keeping at
# least DRAFT_MARGIN times the target size so the final antialiased resize still averages. On 300
# original-resolution Kermany JPEGs, 98.5% of pixels are within 2 grey levels of a full decode at
# 64 px (max 40), 99.9% at 128 px, 99.99% at 224 px (2026-12-06; benchmarks/README.md#retired).
# So a JPEG is decoded at 1/2 scale from 8 times the target size on (1/4 from 16, 1/8 from 32).
DRAFT_MARGIN = 4
MAX_PIXELS = contract.MAX_PIXELS
_RESIZE_CHUNK = 512  # images per batched resize in resize_array
_COMPOSITE_ROWS = 256  # rows of an image with alpha composited at a time


class DecodeError(ValueError):
  """An input that is not a usable image."""


# EXIF orientation -> the transpose that shows the image upright (Pillow's `ImageOps.exif_transpose`).
_TRANSPOSE = {
  2: Image.Transpose.FLIP_LEFT_RIGHT,
  3: Image.Transpose.ROTATE_180,
  4: Image.Transpose.FLIP_TOP_BOTTOM,
  5: Image.Transpose.TRANSPOSE,
  6: Image.Transpose.ROTATE_270,
  7: Image.Transpose.TRANSVERSE,
  8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(image):
  """The orientation in the file's EXIF block (a JPEG's APP1, a PNG's eXIf chunk), 1 without one.

  An orientation given only in XMP is ignored (Pillow's `getexif` would read it): the serving
  graph reads EXIF only, and both paths must turn an image the same way.
  """
  if image.format == "PNG" and "exif" not in image.info:
    image.load()  # an eXIf chunk after the image data is read at the end
  raw = image.info.get("exif")
  if not raw:
    return 1
  exif = Image.Exif()
  try:
    exif.load(raw)
  except Exception:  # a damaged EXIF block: the image is shown as stored, as the serving graph does
    return 1
  value = exif.get(0x0112, 1)
  return value if isinstance(value, int) else 1


def _to_mode(image, channels):
  """Convert any Pillow image to 'L' (channels=1) or 'RGB' (channels=3)."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # Scale by the bit depth the data uses (8, 10, 12, 14 or 16 bits), not by the image's own
    # maximum: 8-bit data stored as 16-bit PNG (x * 257) comes back exactly.
    array = np.asarray(image, dtype=np.float64)
    high = array.max() if array.size else 0
    bits = next((b for b in (8, 10, 12, 14, 16, 24, 32) if high < 2**b), 32)
    image = Image.fromarray(np.clip(np.round(array * 255.0 / (2**bits - 1)), 0, 255).astype(np.uint8), "L")
  elif image.mode == "F":
    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    span = high - low if high > low else 1.0
    image = Image.fromarray(((array - low) / span * 255).astype(np.uint8), "L")
  elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    return _over_black(image if image.mode == "RGBA" else image.convert("RGBA"), channels)
  target = "L" if channels == 1 else "RGB"
  if image.mode not in ("L", "RGB"):
    image = image.convert("RGB")  # palette, CMYK, YCbCr, ...
  return image.convert(target) if image.mode != target else image


def _over_black(rgba, channels):
  """`rgba` composited over opaque black, as 'L' or 'RGB': Pillow's own compositing and conversion, a
  band of rows at a time (three RGBA copies of a whole 25 Mpx image would be 300 MB)."""
  target = "L" if channels == 1 else "RGB"
  out = Image.new(target, rgba.size)
  width, height = rgba.size
  for top in range(0, height, _COMPOSITE_ROWS):
    box = (0, top, width, min(top + _COMPOSITE_ROWS, height))
    band = rgba.crop(box)
    band = Image.alpha_composite(Image.new("RGBA", band.size, (0, 0, 0, 255)), band).convert("RGB")
    out.paste(band.convert(target) if target != "RGB" else band, box[:2])
  return out


def resize_plan(height, width, size, resize_mode):
  """Integer geometry of the square fit: `(crop box, resized shape, pad offsets)`.

  Returns:
    ((top, left, crop_h, crop_w), (out_h, out_w), (pad_top, pad_left)).
  """
  if resize_mode == "squash":
    return (0, 0, height, width), (size, size), (0, 0)
  if resize_mode == "crop":
    side = min(height, width)
    return ((height - side) // 2, (width - side) // 2, side, side), (size, size), (0, 0)
  if resize_mode == "pad":
    longest = max(height, width)
    out_h = max(1, (height * size + longest // 2) // longest)
    out_w = max(1, (width * size + longest // 2) // longest)
    return (0, 0, height, width), (out_h, out_w), ((size - out_h) // 2, (size - out_w) // 2)
  raise ValueError(f"Unknown resize_mode: {resize_mode!r}. Expected one of {RESIZE_MODES}.")


def fit_square(array, size, resize_mode="squash", full_shape=None):
  """Crops, resizes and pads a `(H, W, C)` uint8 array to `(size, size, C)` (or a batch, `(N, H, W, C)`).

  `full_shape` `(H, W)`: the image's size before a draft-mode (reduced) decode; the geometry is
  planned on it, as a full decode would, and the crop box scaled onto `array`.
  """
  height, width, channels = array.shape[-3:]
  full_h, full_w = full_shape or (height, width)
  (top, left, crop_h, crop_w), (out_h, out_w), (pad_top, pad_left) = resize_plan(full_h, full_w, size, resize_mode)
  if (full_h, full_w) != (height, width):
    sy, sx = height / full_h, width / full_w
    top, left = round(top * sy), round(left * sx)
    crop_h, crop_w = min(round(crop_h * sy), height - top), min(round(crop_w * sx), width - left)
  array = array[..., top : top + crop_h, left : left + crop_w, :]
  if (crop_h, crop_w) != (out_h, out_w):
    array = np.clip(np.round(resize.resize(array, out_h, out_w)), 0, 255).astype(np.uint8)
  if (out_h, out_w) == (size, size):
    return array
  canvas = np.zeros((*array.shape[:-3], size, size, channels), np.uint8)
  canvas[..., pad_top : pad_top + out_h, pad_left : pad_left + out_w, :] = array
  return canvas


def read_file(path):
  """A file's bytes, or DecodeError (`contract.TOO_MANY_BYTES`) before reading one over the byte limit."""
  if os.path.getsize(path) > contract.MAX_BYTES:
    raise DecodeError(contract.TOO_MANY_BYTES)
  with open(path, "rb") as f:
    return f.read()


def decode_image(data, size, channels=1, resize_mode="squash", draft=True):
  """Decode encoded image bytes to a `(size, size, channels)` uint8 array.

  Args:
    data: bytes. An encoded image (JPEG, PNG, ...).
    size: int or None. Output height and width; None keeps the original size.
    channels: int. 1 (grayscale) or 3 (RGB).
    resize_mode: str. `squash` (ignore aspect), `pad` (letterbox) or `crop`
      (centre crop).
    draft: bool. Let JPEGs much larger than `size` decode at a reduced scale.

  Returns:
    np.ndarray of shape `(size, size, channels)` and dtype uint8.

  Raises:
    DecodeError: the bytes are not a decodable image.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
  if not data:
    raise DecodeError("empty file")
  if len(data) > contract.MAX_BYTES:
    raise DecodeError(contract.TOO_MANY_BYTES)
  if dicom.is_dicom(data):
    try:
      array = dicom.read_pixels(data, MAX_PIXELS)
    except dicom.DicomError as e:
      raise DecodeError(str(e)) from None
    if array.ndim == 2 and channels == 1:
      array = array[:, :, None]  # grey already: no copy through Pillow
    else:
      mode = "L" if array.ndim == 2 else "RGB"
      array = np.asarray(_to_mode(Image.fromarray(array, mode), channels), dtype=np.uint8)
      array = array[:, :, None] if array.ndim == 2 else array
    _check_content(array, False)
    return fit_square(array, size, resize_mode) if size else array
  image_format = contract.format_of(data)
  if image_format and contract.end_missing(data, image_format):  # before any decoder, as the serving graph
    raise DecodeError(contract.cut_short(image_format))
  if image_format == "BMP" and contract.bmp_layout_problem(data):  # Pillow refuses some in its own words
    raise DecodeError(contract.BMP_FIELDS)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        image_format = image.format
        width, height = image.size
        if width * height > MAX_PIXELS:
          raise DecodeError(contract.TOO_LARGE)
        if image.format == "BMP" and contract.bmp_bits(data) not in contract.BMP_DEPTHS:
          raise DecodeError(contract.BMP_PALETTE)
        if image.format == "PNG" and contract.png_exif_count(data) > 1:
          raise DecodeError(contract.PNG_EXIF_TWICE)
        if image.format == "JPEG" and image.mode == "CMYK":
          raise DecodeError(contract.CMYK_JPEG)
        if draft and size and image.format == "JPEG":
          image.draft(image.mode, (DRAFT_MARGIN * size, DRAFT_MARGIN * size))
        orientation = _exif_orientation(image)
        if orientation in _TRANSPOSE:
          image = image.transpose(_TRANSPOSE[orientation])
          if orientation >= 5:
            width, height = height, width  # turned by 90 degrees
        array = np.asarray(_to_mode(image, channels), dtype=np.uint8)
  except DecodeError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise DecodeError(f"image too large: {e}") from None
  except UnidentifiedImageError:
    raise DecodeError("not an image format the decoder reads (JPEG, PNG, GIF, BMP, TIFF, WebP, DICOM, ...)") from None
  except Exception as e:  # Pillow raises many types for corrupt input.
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "truncated" in reason.lower():
      raise DecodeError(f"truncated {image_format or 'image'} file") from None
    raise DecodeError(f"not a decodable image ({type(e).__name__}: {reason})") from None
  if array.ndim == 2:
    array = array[:, :, None]
  _check_content(array, image_format == "JPEG")
  return fit_square(array, size, resize_mode, (height, width)) if size else array


def _check_content(array, is_jpeg):
  """Refuses a blank image or a truncated JPEG (`contract.py`: the serving graph applies the same rules)."""
  reason = contract.problem(array, is_jpeg)
  if reason:
    raise DecodeError(reason)


def resize_array(images, size, channels, resize_mode="squash"):
  """Resize a `(N, H, W[, C])` uint8 batch to `(N, size, size, channels)`."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[1:] == (size, size, channels):
    return images.astype(np.uint8, copy=False)
  if images.shape[-1] != channels:
    converted = []
    for image in images:
      mode = "L" if image.shape[-1] == 1 else "RGB"
      array = np.asarray(_to_mode(Image.fromarray(np.squeeze(image, -1) if mode == "L" else image, mode), channels))
      converted.append(array[:, :, None] if array.ndim == 2 else array)
    images = np.stack(converted) if converted else np.zeros((0, *images.shape[1:3], channels), np.uint8)
  out = np.empty((len(images), size, size, channels), dtype=np.uint8)
  for start in range(0, len(images), _RESIZE_CHUNK):  # one resize per chunk: the same numbers as one per image
    out[start : start + _RESIZE_CHUNK] = fit_square(images[start : start + _RESIZE_CHUNK], size, resize_mode)
  return out
