"""Training and evaluation feeders: tf.data (shuffle, batch, augment, prefetch).

Augmentation is a stack of Keras preprocessing layers chosen by name. X-rays are
never flipped: left and right differ anatomically (heart on the left).
"""

import keras
import numpy as np

AUGMENTATIONS = ("rotation", "zoom", "translation", "contrast")


def augmentation(names, seed=None):
  """Returns a `keras.Sequential` of small random augmentations, or None.

  Args:
    names: iterable of str from `AUGMENTATIONS`.
    seed: int. Seed for the random layers.
  """
  names = [n for n in names if n]
  unknown = sorted(set(names) - set(AUGMENTATIONS))
  if unknown:
    raise ValueError(f"Unknown augmentation(s) {unknown}. Valid: {', '.join(AUGMENTATIONS)}")
  if not names:
    return None
  factories = {
      "rotation": lambda: keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
      "zoom": lambda: keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
      "translation": lambda: keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed),
      "contrast": lambda: keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
  }
  return keras.Sequential([factories[n]() for n in names], name="augmentation")


def tf_dataset(images, labels, batch_size, training, seed=0, augmenter=None):
  """A `tf.data.Dataset` of `(float32 images, float32 labels)` batches.

  Training data is shuffled each epoch and augmented; nothing is dropped, so
  every image is seen once per epoch and evaluation covers every image.
  """
  import tensorflow as tf

  ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
  if training:
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(batch_size)
  ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
  if training and augmenter is not None:
    ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(labels):
  """Inverse-frequency weights `{0: w0, 1: w1}` with a mean of one per image."""
  counts = np.bincount(np.asarray(labels).astype(int), minlength=2)
  total = counts.sum()
  return {c: float(total / (2.0 * n)) if n else 0.0 for c, n in enumerate(counts)}
