"""`--preprocess`: image transforms that remove acquisition cues, applied wherever images enter a model.

Steps, applied in the order given:
  downsample:N  resize through N x N pixels and back (the same antialiased bilinear resize as
                decoding), so every image carries at most N px of detail whatever its source resolution;
  equalize      global histogram equalisation of each image and channel (contrast and exposure).

The same steps run on training data, evaluation, `predict` and inside the exported serving graph.
"""

import numpy as np

from xray_keras.errors import UserError

STEPS = ("downsample", "equalize")


def parse(spec):
  """`("downsample:96", "equalize")` or `"downsample:96,equalize"` as `[(name, arg), ...]`."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  steps = []
  for item in (i.strip() for i in items):
    if not item or item == "none":
      continue
    name, _, arg = item.partition(":")
    if name == "downsample":
      if not arg.isdigit() or int(arg) < 4:
        raise UserError(f"--preprocess={item}: expected downsample:N with N >= 4 pixels, e.g. downsample:96")
      steps.append((name, int(arg)))
    elif name == "equalize" and not arg:
      steps.append((name, None))
    else:
      raise UserError(f"--preprocess={item}: unknown step; expected downsample:N or equalize")
  return steps


def _equalize(channel):
  """Histogram equalisation of one uint8 `(H, W)` channel (a constant channel is left alone)."""
  histogram = np.bincount(channel.reshape(-1), minlength=256)
  cdf = np.cumsum(histogram)
  low = cdf[np.flatnonzero(histogram)[0]]
  if cdf[-1] == low:
    return channel
  table = np.clip(np.round((cdf - low) / (cdf[-1] - low) * 255.0), 0, 255).astype(np.uint8)
  return table[channel]


def apply(images, steps):
  """`(N, S, S, C)` uint8 images through `steps`; the same shape and dtype back."""
  from xray_keras.data import decode

  images = np.asarray(images)
  if not steps or not len(images):
    return images
  size, channels = images.shape[1], images.shape[-1]
  out = images.copy()
  for name, arg in steps:
    if name == "downsample":
      for i, image in enumerate(out):
        out[i] = decode.fit_square(decode.fit_square(image, arg, "squash"), size, "squash")
    else:
      for i in range(len(out)):
        for c in range(channels):
          out[i, :, :, c] = _equalize(out[i, :, :, c])
  return out
