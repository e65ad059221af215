"""In-graph preprocessing for the serving signatures, mirroring `data.decode`.

JPEGs are decoded with the accurate integer IDCT (what Pillow uses, so pixels
match training), other formats with `tf.io.decode_image`; the square fit uses
the integer geometry of `decode.resize_plan` and `tf.image.resize` (bilinear,
antialiased), the op `keras.ops.image.resize` runs on TensorFlow.
"""

import tensorflow as tf

# Request bounds of the serving signature: larger inputs get an InvalidArgument error.
MAX_BATCH = 64
MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 25_000_000  # 5000 x 5000; the largest Kermany original is about 2900 x 2900


def _declared_pixels(data):
  """Height x width from a JPEG or PNG header, before decoding (0 for other formats)."""

  def png():
    halves = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint16, little_endian=False), tf.int64)
    return (halves[0] * 65536 + halves[1]) * (halves[2] * 65536 + halves[3])  # width x height, big-endian

  def jpeg():
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0] * shape[1]

  is_png = tf.logical_and(tf.strings.length(data) >= 24, tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n"))
  return tf.cond(tf.io.is_jpeg(data), jpeg, lambda: tf.cond(is_png, png, lambda: tf.constant(0, tf.int64)))


def check_request(encoded):
  """Asserts the bounds above on a `[batch]` string tensor; returns it."""
  checks = [
      tf.debugging.assert_less_equal(tf.size(encoded), MAX_BATCH, message=f"batch larger than {MAX_BATCH} images"),
      tf.debugging.assert_less_equal(
          tf.reduce_max(tf.concat([tf.strings.length(encoded), [0]], 0)), MAX_IMAGE_BYTES,
          message=f"an image is larger than {MAX_IMAGE_BYTES} bytes"),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(encoded)


def _decode(data, channels):
  too_large = tf.debugging.assert_less_equal(
      _declared_pixels(data), tf.constant(MAX_IMAGE_PIXELS, tf.int64),
      message=f"an image is larger than {MAX_IMAGE_PIXELS} pixels")
  with tf.control_dependencies([too_large]):  # checked before any decoder allocates
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
      check_request(encoded),
      fn_output_signature=tf.TensorSpec([size, size, channels], tf.uint8),
  )
