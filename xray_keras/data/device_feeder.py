"""The JAX feeder: the split lives on the accelerator, augmentation runs in the train step.

The uint8 images are put on the device once. Each epoch draws a seeded
permutation (the same one `feeder.ArrayFeeder` draws) and gathers every batch
on the device, so no image crosses the host bus after the first epoch. The cast
to float and the random augmentations are layers of a training wrapper around
the model (`in_step_model`), so they are compiled into the train step with it;
the wrapper shares the model's weights and is used for `fit` only.
"""

import keras
import numpy as np

from xray_keras.data import feeder

# Above this many bytes of images the split stays on the host (tf.data or ArrayFeeder).
MAX_DEVICE_BYTES = 4 * 2**30


class ToFloat(keras.layers.Layer):
  """uint8 images to the layer's compute dtype."""

  def call(self, images):
    return keras.ops.cast(images, self.compute_dtype)


def in_step_model(model, augmenter=None):
  """A model from uint8 images: cast, augmentation (training only), then `model`'s layers."""
  inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="images_uint8")
  x = ToFloat(dtype="float32", name="to_float")(inputs)
  if augmenter is not None:
    if keras.backend.backend() == "jax":
      # Keras marks its affine augmentations unfit for XLA because TensorFlow's kernel is; the JAX
      # kernels are plain jnp ops and compile (measured: about 35 ms a batch of 32 on 2 CPU cores).
      for layer in augmenter.layers:
        layer.supports_jit = True
    x = augmenter(x)
  return keras.Model(inputs, model(x), name=f"{model.name}_train")


def fits_on_device(images):
  return images.nbytes <= MAX_DEVICE_BYTES


class DeviceFeeder(feeder.ArrayFeeder):
  """`ArrayFeeder`'s batches (same order, same shards), gathered on the JAX device as uint8."""

  def __init__(self, images, labels, batch_size, training, seed=0, shard=(0, 1), multiple=1):
    import jax

    super().__init__(images, labels, batch_size, training, seed, None, shard, multiple)
    self.images = jax.device_put(np.asarray(images, np.uint8))
    self.labels = jax.device_put(self.labels)

  def __getitem__(self, index):
    return _gather(self.images, self.labels, self.rows(index))


def _gather(images, labels, rows):
  import jax.numpy as jnp

  return jnp.take(images, rows, axis=0), jnp.take(labels, rows, axis=0)
