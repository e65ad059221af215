"""Antialiased bilinear resizing in NumPy, pixel for pixel what `tf.image.resize(..., "bilinear",
antialias=True)` computes on a CPU, so decoding needs neither TensorFlow nor Keras.

The resize is separable: rows first, then columns. Each output pixel is a weighted sum over a span
of input pixels under a triangle kernel widened by the downscaling factor, with the weights
normalised to sum to one. Weights and sums are float32, accumulated in the same order as
TensorFlow's kernel, so the rounded uint8 results are identical (tests/test_decode.py holds the two
against each other).
"""

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def _spans(in_size, out_size):
  """`(starts, weights)`: for each output index the first input index and the span's weights.

  Computed once per pair of sizes (a Python loop: 2.6 ms for 224 to 64), read-only.
  """
  f32 = np.float32
  scale = f32(out_size) / f32(in_size)
  inv_scale = f32(1.0 / float(scale))
  kernel_scale = max(inv_scale, f32(1.0))
  span = min(2 * int(np.ceil(kernel_scale)) + 1, in_size)
  one_over_kernel_scale = f32(1.0) / kernel_scale
  starts = np.zeros(out_size, np.int64)
  weights = np.zeros((out_size, span), np.float32)
  for x in range(out_size):
    sample = f32(f32(x) + f32(0.5)) * inv_scale
    if sample < 0 or sample > in_size:
      continue
    first = int(np.ceil(f32(sample - kernel_scale) - f32(0.5)))
    last = int(np.floor(f32(sample + kernel_scale) - f32(0.5)))
    first, last = min(max(first, 0), in_size - 1), min(max(last, 0), in_size - 1) + 1
    position = (np.arange(first, last).astype(np.float32) + f32(0.5)) - sample
    row = np.maximum(f32(1.0) - np.abs(position * one_over_kernel_scale), f32(0.0)).astype(np.float32)
    total = f32(0.0)
    for w in row:
      total = f32(total + w)
    if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
      row = row * (f32(1.0) / total)
    starts[x] = first
    weights[x, : last - first] = row
  starts.flags.writeable = weights.flags.writeable = False
  return starts, weights


def _gather(array, axis, starts, weights):
  """Weighted sums over spans along `axis`, accumulated in float32 one span position at a time."""
  length = array.shape[axis]
  out_shape = list(array.shape)
  out_shape[axis] = len(starts)
  out = np.zeros(out_shape, np.float32)
  shape = [1] * array.ndim
  shape[axis] = len(starts)
  for k in range(weights.shape[1]):
    taken = np.take(array, np.minimum(starts + k, length - 1), axis=axis)  # uint8 stays uint8 here
    out += weights[:, k].reshape(shape) * taken  # float32 products: the same as from a float32 copy
  return out


def resize(images, height, width):
  """`(..., H, W, C)` uint8 or float images to `(..., height, width, C)` float32.

  uint8 input is not copied to float32 whole (4 bytes a source pixel): each pass converts only the
  rows or columns it takes, and a uint8 value is exact in float32, so the sums are the same.
  """
  images = np.asarray(images)
  if images.dtype not in (np.uint8, np.float32):
    images = images.astype(np.float32)
  rows = _gather(images, images.ndim - 3, *_spans(images.shape[-3], height))
  return _gather(rows, images.ndim - 2, *_spans(images.shape[-2], width))
