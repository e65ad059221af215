"""A built-in, deterministic, chest-X-ray-like data set for runs without real data.

Each image is a torso with two dark lung fields, spine, ribs and heart shadow,
with noise and small random pose changes. PNEUMONIA images add a diffuse
haze over the lungs and one to three blurred, mottled opacities (consolidations), so a model can learn the
classes. Everything it produces is named "synthetic".
"""

import numpy as np

from xray_keras.data.records import CLASS_NAMES, Record


def _ellipse(yy, xx, cy, cx, ry, rx):
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def render(rng, size, pneumonia):
  """Renders one `(size, size)` float image in [0, 255]."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  dy, dx = rng.normal(0, 0.02, 2)
  image = np.full((size, size), 15.0, np.float32)
  image[_ellipse(yy, xx, 0.55 + dy, 0.5 + dx, 0.48, 0.42)] = 150.0
  lungs = []
  for side in (-1, 1):
    lung = _ellipse(yy, xx, 0.5 + dy, 0.5 + dx + side * 0.17, 0.3, 0.12 + rng.uniform(-0.01, 0.01))
    image[lung] = 55.0
    lungs.append(lung)
  for k in range(6):
    rib_y = 0.28 + 0.085 * k + dy
    arc = np.abs(yy - rib_y - 0.25 * (xx - 0.5 - dx) ** 2) < 0.012
    image[arc & (lungs[0] | lungs[1])] += 35.0
  image[np.abs(xx - 0.5 - dx) < 0.035] = 190.0
  heart = _ellipse(yy, xx, 0.66 + dy, 0.45 + dx, 0.12, 0.1)
  image[heart] = 170.0
  if pneumonia:
    visible_lung = (lungs[0] | lungs[1]) & ~heart
    image[visible_lung] += rng.uniform(20, 35)  # diffuse haze over the lungs
    lung_pixels = np.argwhere(visible_lung)
    # Mottled texture: coarse noise upsampled to the image size.
    coarse = rng.uniform(0.4, 1.0, (8, 8))
    mottle = np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1)))[:size, :size]
    for _ in range(rng.integers(1, 4)):
      cy, cx = lung_pixels[rng.integers(len(lung_pixels))] / size
      radius = rng.uniform(0.08, 0.15)
      blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))
      image += rng.uniform(80, 120) * blob * mottle * visible_lung
  image = image * rng.uniform(0.9, 1.1) + rng.uniform(-10, 10)
  image += rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255)


def generate(split, count, size, channels, seed):
  """Generates `count` images (half of each class) for one split.

  Returns:
    (images, labels, records): uint8 `(count, size, size, channels)`, int labels
    and `Record`s whose paths start with `synthetic/`.
  """
  split_offset = {"train": 0, "val": 1, "test": 2}[split]
  images = np.empty((count, size, size, channels), np.uint8)
  labels = np.arange(count) % 2
  records = []
  for i in range(count):
    rng = np.random.default_rng([seed, split_offset, i])
    images[i] = render(rng, size, bool(labels[i])).astype(np.uint8)[:, :, None]
    name = f"synthetic/{split}/{CLASS_NAMES[labels[i]]}/synthetic_{i:05d}.png"
    records.append(Record(name, int(labels[i]), split, f"synthetic-{split}-{i:05d}"))
  return images, labels, records
