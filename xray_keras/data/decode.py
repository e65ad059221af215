"""Decode image bytes into fixed-size uint8 arrays with Pillow (no TensorFlow).

Handles what real folders hold: grayscale, RGB, RGBA, palette, CMYK, 16-bit and
EXIF-rotated images, any size. Undecodable input raises `DecodeError` with a
one-line reason, which callers turn into a logged skip.
"""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("squash", "pad", "crop")
# Bumped whenever decoding changes, so stale caches are never reused.
DECODER_VERSION = 1
# The largest original Kermany image is ~2900x2900; anything beyond this is a bomb.
MAX_PIXELS = 60_000_000


class DecodeError(ValueError):
  """An input that is not a usable image."""


def _to_mode(image, channels):
  """Convert any Pillow image to 'L' (channels=1) or 'RGB' (channels=3)."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    array = np.asarray(image, dtype=np.float64)
    high = array.max() if array.size else 0
    scale = 255.0 / high if high > 0 else 0.0
    image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L")
  elif image.mode == "F":
    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    span = high - low if high > low else 1.0
    image = Image.fromarray(((array - low) / span * 255).astype(np.uint8), "L")
  elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (0, 0, 0, 255))
    image = Image.alpha_composite(background, image)
  target = "L" if channels == 1 else "RGB"
  if image.mode not in ("L", "RGB"):
    image = image.convert("RGB")  # palette, CMYK, YCbCr, ...
  return image.convert(target) if image.mode != target else image


def _fit(image, size, resize_mode):
  if resize_mode == "squash":
    return image.resize((size, size), Image.Resampling.BILINEAR)
  if resize_mode == "crop":
    return ImageOps.fit(image, (size, size), Image.Resampling.BILINEAR)
  if resize_mode == "pad":
    return ImageOps.pad(image, (size, size), Image.Resampling.BILINEAR, color=0)
  raise ValueError(f"Unknown resize_mode: {resize_mode!r}. Expected one of {RESIZE_MODES}.")


def decode_image(data, size, channels=1, resize_mode="squash"):
  """Decode encoded image bytes to a `(size, size, channels)` uint8 array.

  Args:
    data: bytes. An encoded image (JPEG, PNG, ...).
    size: int or None. Output height and width; None keeps the original size.
    channels: int. 1 (grayscale) or 3 (RGB).
    resize_mode: str. `squash` (ignore aspect), `pad` (letterbox) or `crop`
      (centre crop).

  Returns:
    np.ndarray of shape `(size, size, channels)` and dtype uint8.

  Raises:
    DecodeError: the bytes are not a decodable image.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
  if not data:
    raise DecodeError("empty file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
          raise DecodeError(f"image too large ({width}x{height} pixels)")
        if image.format == "JPEG" and size:
          # Let libjpeg decode at a reduced scale; it keeps at least 2x the target size.
          image.draft(image.mode, (2 * size, 2 * size))
        image = ImageOps.exif_transpose(image)
        image = _to_mode(image, channels)
        if size:
          image = _fit(image, size, resize_mode)
        array = np.asarray(image, dtype=np.uint8)
  except DecodeError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise DecodeError(f"image too large: {e}") from None
  except Exception as e:  # Pillow raises many types for corrupt input.
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DecodeError(f"not a decodable image ({type(e).__name__}: {reason})") from None
  if array.ndim == 2:
    array = array[:, :, None]
  return array


def resize_array(images, size, channels, resize_mode="squash"):
  """Resize a `(N, H, W[, C])` uint8 batch to `(N, size, size, channels)`."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.shape[1:] == (size, size, channels):
    return images.astype(np.uint8, copy=False)
  out = np.empty((len(images), size, size, channels), dtype=np.uint8)
  for i, image in enumerate(images):
    mode = "L" if image.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(np.squeeze(image, -1) if mode == "L" else image, mode)
    pil = _fit(_to_mode(pil, channels), size, resize_mode)
    array = np.asarray(pil, dtype=np.uint8)
    out[i] = array[:, :, None] if array.ndim == 2 else array
  return out
