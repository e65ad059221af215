"""A run's `--preprocess` steps (downsample, equalize) in TensorFlow ops, inside the serving graph:
the same pixels as `data/preprocess.py` gives training."""

import tensorflow as tf

from xray_keras.serving import graph


def apply(image, steps):
  """`data.preprocess.apply` in TensorFlow ops, for one `(S, S, C)` uint8 image of the serving graph."""
  size = image.shape[0]
  for name, arg in steps:
    if name == "downsample":
      image = graph.fit_square(graph.fit_square(image, arg, "squash"), size, "squash")
    else:
      channels = []
      for c in range(image.shape[-1]):
        channel = image[:, :, c]
        histogram = tf.math.bincount(tf.cast(tf.reshape(channel, [-1]), tf.int32), minlength=256, maxlength=256)
        cdf = tf.cast(tf.cumsum(histogram), tf.float64)
        low = tf.gather(cdf, tf.reduce_min(tf.where(histogram > 0)))
        span = cdf[-1] - low
        table = tf.cast(tf.clip_by_value(tf.round((cdf - low) / tf.maximum(span, 1.0) * 255.0), 0, 255), tf.uint8)
        equalized = tf.gather(table, tf.cast(channel, tf.int32))
        channels.append(tf.where(span > 0, equalized, channel))
      image = tf.stack(channels, axis=-1)
  return image
