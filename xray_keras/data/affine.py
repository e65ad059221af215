"""`RandomAffine`: the rotation, zoom and translation of `--augment` in one resampling of each image."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="xray_keras")
class RandomAffine(keras.layers.Layer):
  """Rotates, zooms and shifts each image of a batch by its own random amounts, in one bilinear pass.

  The same ranges as `RandomRotation(rotation)`, `RandomZoom(zoom)` and
  `RandomTranslation(translation, translation)` applied one after the other, composed into one
  transform, so each image is resampled once instead of three times (less blur, a third of the
  work). Points outside the image are filled with 0. Inference passes images through unchanged.

  Args:
    rotation: float. Largest rotation, as a fraction of a full turn.
    zoom: float. Largest relative zoom in or out (the same for height and width).
    translation: float. Largest shift, as a fraction of the image's height and width.
    seed: int or None.
  """

  def __init__(self, rotation=0.03, zoom=0.1, translation=0.05, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.rotation, self.zoom, self.translation, self.seed = rotation, zoom, translation, seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_masking = True

  def transforms(self, batch, height, width):
    """`(batch, 8)` projective transforms mapping each output pixel to the input point it samples."""

    def uniform(limit):
      return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)

    angle = uniform(self.rotation) * 2.0 * math.pi
    scale = 1.0 + uniform(self.zoom)
    shift_x, shift_y = uniform(self.translation) * width, uniform(self.translation) * height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
    # input = centre + scale * R(angle) @ (output - centre) - shift
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = cx - a0 * cx - a1 * cy - shift_x
    b2 = cy - b0 * cx - b1 * cy - shift_y
    zeros = ops.zeros_like(angle)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

  def call(self, images, training=True):
    if not training:
      return images
    shape = ops.shape(images)
    transforms = self.transforms(shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32"))
    out = ops.image.affine_transform(
      ops.cast(images, "float32"), transforms, interpolation="bilinear", fill_mode="constant", fill_value=0.0
    )
    return ops.cast(out, images.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"rotation": self.rotation, "zoom": self.zoom, "translation": self.translation, "seed": self.seed})
    return config
