"""In-graph preprocessing for the serving signatures, mirroring `data.decode`.

JPEGs are decoded with the accurate integer IDCT (what Pillow uses, so pixels
match training), other formats with `tf.io.decode_image`; the square fit uses
the integer geometry of `decode.resize_plan` and `tf.image.resize` (bilinear,
antialiased), the op `keras.ops.image.resize` runs on TensorFlow.
"""

import tensorflow as tf


def _decode(data, channels):
  image = tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=channels, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False),
  )
  image.set_shape([None, None, channels])
  return image


def _resize(image, height, width):
  resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([height, width]), method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def fit_square(image, size, resize_mode):
  """`decode.fit_square` in TensorFlow ops, for one `(H, W, C)` uint8 image."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  if resize_mode == "crop":
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]
    height = width = side
    out_h = out_w = tf.constant(size)
  elif resize_mode == "pad":
    longest = tf.maximum(height, width)
    out_h = tf.maximum(1, (height * size + longest // 2) // longest)
    out_w = tf.maximum(1, (width * size + longest // 2) // longest)
  elif resize_mode == "squash":
    out_h = out_w = tf.constant(size)
  else:
    raise ValueError(f"Unknown resize_mode: {resize_mode!r}")
  same = tf.logical_and(tf.equal(height, out_h), tf.equal(width, out_w))
  image = tf.cond(same, lambda: image, lambda: _resize(image, out_h, out_w))
  if resize_mode == "pad":
    top, left = (size - out_h) // 2, (size - out_w) // 2
    image = tf.pad(image, [[top, size - out_h - top], [left, size - out_w - left], [0, 0]])
  return tf.ensure_shape(image, [size, size, None])


def decode_batch(encoded, size, channels, resize_mode):
  """Decodes a `[batch]` string tensor of encoded images to `[batch, size, size, channels]` uint8."""
  return tf.map_fn(
      lambda data: fit_square(_decode(data, channels), size, resize_mode),
      encoded,
      fn_output_signature=tf.TensorSpec([size, size, channels], tf.uint8),
  )
