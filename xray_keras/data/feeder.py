"""Training and evaluation feeders: tf.data on TensorFlow, a NumPy `PyDataset` elsewhere.

Both shuffle training data each epoch (seeded), batch without dropping images
and apply the same augmentation: a stack of Keras preprocessing layers chosen by
name. X-rays are never flipped: left and right differ anatomically.
"""

import math
import os

import keras
import numpy as np

from xray_keras import choices
from xray_keras.data.affine import RandomAffine

AUGMENTATIONS = choices.AUGMENTATIONS
GEOMETRIC_AND_CONTRAST = AUGMENTATIONS[:4]
PARALLEL_CALLS = min(os.cpu_count() or 1, 8)  # batches cast and augmented at once
PREFETCH = 2  # batches ready ahead of the train step


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
    "brightness": lambda: keras.layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed),
    # Blur and sharpen: edge sharpness follows each original's resolution, not the diagnosis.
    "blur": lambda: keras.layers.RandomGaussianBlur(0.5, kernel_size=5, sigma=(0.1, 1.5), seed=seed),
    "sharpness": lambda: keras.layers.RandomSharpness(0.3, value_range=(0, 255), seed=seed),
    # rotation, zoom and translation with the same ranges, in one resampling
    "affine": lambda: RandomAffine(0.03, 0.1, 0.05, seed=seed),
  }
  return keras.Sequential([factories[n]() for n in names], name="augmentation")


def make_feeder(images, labels, batch_size, training, seed=0, augmenter=None, shard=(0, 1), multiple=1):
  """tf.data on the TensorFlow backend; `ArrayFeeder` (no TensorFlow needed) otherwise."""
  if keras.backend.backend() == "tensorflow":
    return tf_dataset(images, labels, batch_size, training, seed, augmenter)
  return ArrayFeeder(images, labels, batch_size, training, seed, augmenter, shard, multiple)


class ArrayFeeder(keras.utils.PyDataset):
  """Batches NumPy arrays without tf.data (for JAX machines without TensorFlow).

  `shard=(index, count)` feeds this process's share of every global batch (multi-process
  training); `multiple` trims a batch to a multiple of it (the device count must divide it).
  """

  def __init__(self, images, labels, batch_size, training, seed=0, augmenter=None, shard=(0, 1), multiple=1):
    super().__init__()
    self.images, self.labels = images, np.asarray(labels, np.float32)
    self.count = len(images)
    self.batch_size, self.training, self.seed, self.augmenter = batch_size, training, seed, augmenter
    self.shard, self.multiple = shard, multiple
    self._epoch = 0
    self._order = self._permutation()

  def _permutation(self):
    if not self.training:
      return np.arange(self.count, dtype=np.int32)
    return np.random.default_rng([self.seed, self._epoch]).permutation(self.count).astype(np.int32)

  def __len__(self):
    return math.ceil(self.count / self.batch_size)

  def rows(self, index):
    """The image indices of batch `index` fed by this process."""
    rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
    rows = rows[: len(rows) - len(rows) % self.multiple]
    start, count = self.shard
    return rows[start::count]

  def left_out(self):
    """Images per epoch that no batch feeds (a last batch the devices cannot split)."""
    return self.count % self.batch_size % self.multiple

  def __getitem__(self, index):
    rows = self.rows(index)
    images = self.images[rows].astype(np.float32)
    if self.training and self.augmenter is not None:
      images = keras.ops.convert_to_numpy(self.augmenter(images, training=True))
    return images, self.labels[rows]

  def on_epoch_end(self):
    self._epoch += 1
    self._order = self._permutation()


def tf_dataset(images, labels, batch_size, training, seed=0, augmenter=None):
  """A `tf.data.Dataset` of `(float32 images, float32 labels)` batches.

  Training data is shuffled each epoch and augmented, and every image is seen once per epoch; the
  last batch is filled up from the next shuffle (a few images seen twice), so every training batch
  has one shape and an XLA step is compiled once. Evaluation covers every image once.

  tf.data's autotuning is off and the parallelism fixed (`PARALLEL_CALLS`, `PREFETCH`): with it on,
  an epoch often ended only when the autotuning thread's sleep did (10 ms, doubling each time), so
  ViT_scratch's 5.5 s epochs took 10.26 s in 12 of 28 (two runs of the retired benchmarks/epoch_end_wait.py: benchmarks/README.md#retired).
  """
  import tensorflow as tf

  ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
  if training:
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    short = -len(images) % batch_size
    if short and len(images) > batch_size:
      ds = ds.repeat(2).take(len(images) + short)
  ds = ds.batch(batch_size)
  augment = augmenter if training and augmenter is not None else None
  ds = ds.map(
    lambda x, y: (_as_float(x, augment), y),
    num_parallel_calls=PARALLEL_CALLS,
    deterministic=True,
  )
  return ds.prefetch(PREFETCH).with_options(pipeline_options())


def pipeline_options():
  """The `tf.data.Options` of the package's datasets: autotuning off (`tf_dataset` says why), and
  sharding by element (in-memory arrays have no files to shard between workers)."""
  import tensorflow as tf

  options = tf.data.Options()
  options.autotune.enabled = False
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return options


def _as_float(images, augment):
  import tensorflow as tf

  images = tf.cast(images, tf.float32)
  return augment(images, training=True) if augment is not None else images


def class_weights(labels, classes=2):
  """Inverse-frequency weights `{0: w0, 1: w1, ...}` with a mean of one per image."""
  classes = max(classes, 2)
  counts = np.bincount(np.asarray(labels).astype(int), minlength=classes)
  total = counts.sum()
  return {c: float(total / (classes * n)) if n else 0.0 for c, n in enumerate(counts)}
