"""In-graph preprocessing for the serving signatures, mirroring `data.decode` step for step.

Accepted formats: JPEG, PNG, GIF and BMP; each image's declared size is read from its header and
checked before any decoder runs (for a GIF, its first frame's descriptor too; only that frame is
decoded). Then, as the training decoder does with Pillow: the EXIF orientation of a JPEG or PNG is
applied (not an orientation given in XMP alone), a GIF frame smaller than its screen is placed on
Pillow's canvas, large JPEGs decode at a reduced DCT scale (Pillow's draft mode), 16-bit
grey PNGs are scaled by the bit depth their data uses, transparent images are composited on black,
colour becomes grey with Pillow's integer formula, and the square fit uses the integer geometry of
`decode.resize_plan` with `tf.image.resize` (bilinear, antialiased), the op `keras.ops.image.resize`
runs on TensorFlow. CMYK JPEGs are refused with a message saying so.
"""

import tensorflow as tf

from xray_keras.data import contract, decode

# Request bounds of the serving signature: larger inputs get an InvalidArgument error.
MAX_BATCH = 64
MAX_IMAGE_BYTES = contract.MAX_BYTES  # the one limit of every path
MAX_IMAGE_PIXELS = contract.MAX_PIXELS  # the one limit of every path
ACCEPTED = "JPEG, PNG, GIF or BMP"
_JPEG, _PNG, _GIF, _BMP = range(4)


def _bytes(data, start, length):
  """`length` bytes of `data` from `start` as int64 (zeros past the end)."""
  size = tf.cast(tf.strings.length(data), tf.int64)
  start = tf.cast(tf.clip_by_value(tf.cast(start, tf.int64), 0, size), tf.int32)  # a header's wild offset: no bytes
  raw = tf.io.decode_raw(tf.strings.substr(data, start, length), tf.uint8)
  return tf.pad(tf.cast(raw, tf.int64), [[0, length - tf.size(raw)]])


def _uint(data, start, length, little_endian):
  values = _bytes(data, start, length)
  weights = tf.constant([256**i for i in range(length)], tf.int64)
  return tf.reduce_sum(values * (weights if little_endian else tf.reverse(weights, [0])))


def image_format(data):
  """0 JPEG, 1 PNG, 2 GIF, 3 BMP, -1 anything else (WebP, TIFF, text, ...)."""
  head = tf.strings.substr(data, 0, 8)
  is_png = tf.equal(head, b"\x89PNG\r\n\x1a\n")
  is_gif = tf.logical_or(
    tf.equal(tf.strings.substr(data, 0, 6), b"GIF87a"), tf.equal(tf.strings.substr(data, 0, 6), b"GIF89a")
  )
  is_bmp = tf.logical_and(tf.equal(tf.strings.substr(data, 0, 2), b"BM"), tf.strings.length(data) >= 26)
  codes = tf.stack([tf.io.is_jpeg(data), is_png, is_gif, is_bmp])
  return tf.cond(
    tf.reduce_any(codes),
    lambda: tf.cast(tf.argmax(tf.cast(codes, tf.int32)), tf.int32),
    lambda: tf.constant(-1, tf.int32),
  )


def _declared_size(data, fmt):
  """(height, width) from the header of an accepted format, before decoding."""

  def jpeg():
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0], shape[1]

  def png():
    return _uint(data, 20, 4, False), _uint(data, 16, 4, False)

  def bmp():
    height = _uint(data, 22, 4, True)
    height = tf.where(height >= 2**31, 2**32 - height, height)  # negative: top-down rows
    return height, _uint(data, 18, 4, True)

  gif = lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64))  # noqa: E731  (`_gif_first_frame` instead)
  return tf.switch_case(fmt, [jpeg, png, gif, bmp])


def _require(condition, reason):
  """An assertion whose error message is `reason` alone (TensorFlow adds its node name after it)."""
  return tf.debugging.Assert(condition, [tf.constant(reason)], summarize=1)


def check_request(encoded):
  """Asserts the bounds above on a `[batch]` string tensor; returns it."""
  checks = [
    _require(tf.size(encoded) <= MAX_BATCH, f"batch larger than {MAX_BATCH} images"),
    _require(
      tf.reduce_max(tf.concat([tf.strings.length(encoded), [0]], 0)) <= MAX_IMAGE_BYTES,
      contract.TOO_MANY_BYTES,
    ),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(encoded)


def _after(found, skip):
  return tf.where(found >= 0, found + skip, tf.constant(-1, tf.int64))


def _text(data, start, length):
  """`length` bytes of `data` from `start` as a string (shorter or empty past the end)."""
  start = tf.clip_by_value(tf.cast(start, tf.int64), 0, tf.cast(tf.strings.length(data), tf.int64))
  return tf.strings.substr(data, start, tf.constant(length, tf.int64))


def _walk(data, step, start, limit=100_000):
  """Walks `data`'s blocks from `start`: `step(pos) -> (next pos, found at or -1, stop)`; the first find, or -1."""
  _, found, _ = tf.while_loop(
    lambda pos, found, stop: tf.logical_not(stop),
    lambda pos, found, stop: step(pos),
    (tf.cast(start, tf.int64), tf.constant(-1, tf.int64), tf.constant(False)),
    maximum_iterations=limit,
  )
  return found


def _jpeg_segment(data, wanted):
  """Where the first marker segment for which `wanted(marker, pos)` holds starts, walking a JPEG's markers up to
  its first scan as Pillow does (bytes inside other segments are never taken for one); -1 without one."""
  size = tf.cast(tf.strings.length(data), tf.int64)

  def step(pos):
    first, marker = _uint(data, pos, 1, False), _uint(data, pos + 1, 1, False)
    found = tf.logical_and(tf.equal(first, 0xFF), wanted(marker, pos))
    stop = tf.logical_or(pos + 4 > size, tf.logical_and(tf.equal(first, 0xFF), (marker == 0xDA) | (marker == 0xD9)))
    standalone = (marker == 0xD8) | (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD7)) | (marker == 0xFF)
    one, two = tf.constant(1, tf.int64), tf.constant(2, tf.int64)
    advance = tf.where(standalone, two, two + _uint(data, pos + 2, 2, False))
    advance = tf.where(tf.logical_or(tf.not_equal(first, 0xFF), tf.equal(marker, 0xFF)), one, advance)
    return pos + advance, tf.where(found, pos, tf.constant(-1, tf.int64)), tf.logical_or(stop, found)

  return _walk(data, step, 2)


def _jpeg_exif(data):
  """Where a JPEG's first APP1 segment holding "Exif\0\0" starts its payload; -1 without one."""
  exif = lambda marker, pos: tf.equal(marker, 0xE1) & tf.equal(_text(data, pos + 4, 6), b"Exif\x00\x00")  # noqa: E731
  return _after(_jpeg_segment(data, exif), 4)


def _jpeg_headers_whole(data):
  """`contract.jpeg_headers_whole`: a frame header, then a whole start-of-scan segment, walking the markers."""
  frames = tf.constant(contract.JPEG_FRAMES, tf.int64)
  frame = _jpeg_segment(data, lambda marker, pos: tf.reduce_any(tf.equal(marker, frames)))
  scan = _jpeg_segment(data, lambda marker, pos: tf.equal(marker, 0xDA))
  scan_end = scan + 2 + _uint(data, scan + 2, 2, False)
  whole = (frame >= 0) & (scan > frame) & (scan_end <= tf.cast(tf.strings.length(data), tf.int64))
  return whole


def _png_exif(data, start=8):
  """Where a PNG's eXIf chunk's data starts, walking the chunks from `start` (before or after the image data);
  -1 without one."""
  size = tf.cast(tf.strings.length(data), tf.int64)

  def step(pos):
    kind = _text(data, pos + 4, 4)
    exif = tf.equal(kind, b"eXIf")
    stop = tf.logical_or(tf.logical_or(exif, tf.equal(kind, b"IEND")), pos + 12 > size)
    return pos + 12 + _uint(data, pos, 4, False), tf.where(exif, pos + 8, tf.constant(-1, tf.int64)), stop

  return _walk(data, step, start)


def _png_one_exif(data):
  """`contract.png_exif_count(data) <= 1`: a second eXIf chunk after the first."""
  first = _png_exif(data)
  second = lambda: _png_exif(data, first + 4 + _uint(data, first - 8, 4, False))  # noqa: E731
  return tf.cond(first < 0, lambda: tf.constant(True), lambda: second() < 0)


def _exif_orientation(data, fmt):
  """The EXIF orientation (1-8) of a JPEG (APP1 segment) or PNG (eXIf chunk, with or without an "Exif\0\0" prefix).

  1 when it has none.

  Only EXIF is read: an orientation given in XMP alone is ignored, here and in `data.decode`.
  """
  start = tf.switch_case(
    tf.clip_by_value(fmt, 0, 2),
    [lambda: _after(_jpeg_exif(data), 6), lambda: _png_exif(data), lambda: tf.constant(-1, tf.int64)],
  )
  has_exif = start >= 0

  def read():
    tiff = tf.cast(start, tf.int32)
    # Some writers start a PNG's eXIf payload with JPEG's "Exif\0\0" too; Pillow skips it, and so must this.
    prefixed = tf.logical_and(tf.equal(fmt, _PNG), tf.equal(_text(data, tiff, 6), b"Exif\x00\x00"))
    tiff = tiff + tf.where(prefixed, 6, 0)
    little = tf.equal(_text(data, tiff, 2), b"II")
    ifd = tiff + tf.cast(
      tf.cond(little, lambda: _uint(data, tiff + 4, 4, True), lambda: _uint(data, tiff + 4, 4, False)), tf.int32
    )
    count = tf.minimum(
      tf.cast(tf.cond(little, lambda: _uint(data, ifd, 2, True), lambda: _uint(data, ifd, 2, False)), tf.int32), 64
    )
    entries = tf.reshape(_bytes(data, ifd + 2, 12 * 64), [64, 12])[:count]
    tags = tf.where(little, entries[:, 0] + 256 * entries[:, 1], 256 * entries[:, 0] + entries[:, 1])
    kinds = tf.where(little, entries[:, 2] + 256 * entries[:, 3], 256 * entries[:, 2] + entries[:, 3])
    word = tf.where(little, entries[:, 8] + 256 * entries[:, 9], 256 * entries[:, 8] + entries[:, 9])
    high = tf.where(little, entries[:, 10] + 256 * entries[:, 11], 256 * entries[:, 10] + entries[:, 11])
    # A LONG (type 4) holds 4 bytes: its low word is the first in little endian, the second in big endian.
    values = tf.where(tf.equal(kinds, 4), tf.where(little, word + 65536 * high, 65536 * word + high), word)
    found = tf.boolean_mask(values, tf.equal(tags, 0x0112))
    value = tf.cond(tf.size(found) > 0, lambda: found[0], lambda: tf.constant(1, tf.int64))
    return tf.where(tf.logical_and(value >= 1, value <= 8), value, 1)

  return tf.cond(has_exif, read, lambda: tf.constant(1, tf.int64))


def _orient(image, orientation):
  """Pillow's `ImageOps.exif_transpose` for orientations 1-8."""
  transpose = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731
  return tf.switch_case(
    tf.cast(orientation - 1, tf.int32),
    [
      lambda: image,
      lambda: tf.reverse(image, [1]),  # 2: mirror
      lambda: tf.reverse(image, [0, 1]),  # 3: rotate 180
      lambda: tf.reverse(image, [0]),  # 4: flip
      lambda: transpose(image),  # 5: transpose
      lambda: tf.image.rot90(image, 3),  # 6: rotate 270 (90 clockwise)
      lambda: tf.reverse(transpose(image), [0, 1]),  # 7: transverse
      lambda: tf.image.rot90(image, 1),  # 8: rotate 90
    ],
  )


def _jpeg(data, size, orientation):
  """A JPEG as Pillow decodes it for training: draft scale, native channels, EXIF orientation."""
  shape = tf.image.extract_jpeg_shape(data)
  not_cmyk = _require(shape[2] < 4, contract.CMYK_JPEG)
  ratio = tf.constant(1, tf.int32)
  if size:  # decode.DRAFT_MARGIN: the largest of 8, 4, 2 that keeps DRAFT_MARGIN x size per side
    scale = tf.minimum(shape[0] // (decode.DRAFT_MARGIN * size), shape[1] // (decode.DRAFT_MARGIN * size))
    ratio = tf.where(scale >= 8, 8, tf.where(scale >= 4, 4, tf.where(scale >= 2, 2, 1)))
  with tf.control_dependencies([not_cmyk]):
    branches = [
      lambda r=r: tf.io.decode_jpeg(data, channels=0, ratio=r, dct_method="INTEGER_ACCURATE") for r in (1, 2, 4, 8)
    ]
    image = tf.switch_case(
      tf.cast(tf.math.log(tf.cast(ratio, tf.float32)) / tf.math.log(2.0) + 0.5, tf.int32), branches
    )
  return _orient(image, orientation)


def _in_bands(fn, image, rows=256):
  """`fn` over bands of `rows` rows, one band after another: a band's int32 arithmetic is in memory, not the
  whole image's (a 25 Mpx RGB image is 300 MB as int32, one band 15 MB)."""
  count = (tf.shape(image)[0] + rows - 1) // rows
  parts = tf.TensorArray(tf.uint8, size=count, infer_shape=False)
  _, parts = tf.while_loop(
    lambda i, _: i < count,
    lambda i, parts: (i + 1, parts.write(i, fn(image[i * rows : (i + 1) * rows]))),
    (tf.constant(0), parts),
    parallel_iterations=1,
  )
  bands = parts.concat()
  bands.set_shape([None] * 3)  # (H, W, C), as every image here: ops such as rot90 branch on a known rank
  return bands


def _scale_bit_depth(image):
  """16-bit grey data scaled by the bit depth it uses (8, 10, 12, 14 or 16), as training does.

  Python's round(x * 255 / (2**bits - 1)) in integers: with an odd divisor no quotient ends in .5.
  """
  high = tf.cast(tf.reduce_max(image), tf.int32)
  bits = tf.reduce_min(
    tf.boolean_mask(tf.constant([8, 10, 12, 14, 16]), high < tf.constant([2**8, 2**10, 2**12, 2**14, 2**16]))
  )
  divisor = tf.bitwise.left_shift(1, bits) - 1
  return _in_bands(lambda band: tf.cast((510 * tf.cast(band, tf.int32) + divisor) // (2 * divisor), tf.uint8), image)


def _png(data):
  """16-bit colour is read at 8 bits by libpng (the high byte, as training's `// 256`), grey at 16 to be scaled."""
  sixteen = tf.equal(_uint(data, 24, 1, False), 16)
  grey = tf.equal(_uint(data, 25, 1, False), 0)
  deep_grey = lambda: _scale_bit_depth(tf.io.decode_png(data, channels=0, dtype=tf.uint16))  # noqa: E731
  return tf.cond(tf.logical_and(sixteen, grey), deep_grey, lambda: tf.io.decode_png(data, channels=0))


def _shift(x, bits):
  return tf.bitwise.right_shift(x, tf.constant(bits, x.dtype))


def _to_channels(image, channels):
  """Composites transparency on black (Pillow's integer alpha_composite), then grey or RGB as asked."""

  def convert(band):
    band = tf.cast(band, tf.int32)
    count = tf.shape(band)[-1]

    def composite():
      colour, alpha = band[..., :-1], band[..., -1:]
      t = colour * alpha * 128 + 0x4000
      return _shift(_shift(t, 8) + t, 15)

    band = tf.cond(tf.logical_or(tf.equal(count, 2), tf.equal(count, 4)), composite, lambda: band)
    if channels == 1:
      grey = lambda: _shift(band[..., 0:1] * 19595 + band[..., 1:2] * 38470 + band[..., 2:3] * 7471 + 0x8000, 16)  # noqa: E731
      band = tf.cond(tf.equal(tf.shape(band)[-1], 3), grey, lambda: band)
    else:
      band = tf.cond(tf.equal(tf.shape(band)[-1], 1), lambda: tf.tile(band, [1, 1, 3]), lambda: band)
    return tf.cast(band, tf.uint8)

  ready = tf.equal(tf.shape(image)[-1], channels)  # nothing to do: no int32 copy at all
  image = tf.cond(ready, lambda: image, lambda: _in_bands(convert, image))
  image.set_shape([None, None, channels])
  return image


def _gif_first_frame(data):
  """Walks a GIF's blocks to the end of its first frame, as Pillow reads it, without decoding.

  Returns `(complete, canvas (h, w), frame offset (top, left), fill RGB, descriptor, end)`: the canvas is the
  logical screen grown to hold the frame (Pillow's `image.size`), the fill is what Pillow puts
  around a frame that does not cover it (palette entry 0, or black through transparency),
  `descriptor` where the frame's image descriptor starts and `end` the byte after its last data block.
  """
  raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
  n = tf.size(raw)

  def byte(i):
    return tf.where(i < n, tf.gather(raw, tf.clip_by_value(i, 0, tf.maximum(n - 1, 0))), -1)

  def u16(i):
    return byte(i) + 256 * byte(i + 1)

  def table_size(flags):
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, flags % 8), 0)

  zero = tf.constant(0)
  # pos, in data sub-blocks, done, complete, transparent, frame seen, top, left, height, width, palette at,
  # descriptor at
  state = (
    13 + table_size(byte(10)),
    False,
    False,
    False,
    False,
    False,
    zero,
    zero,
    zero,
    zero,
    tf.where(byte(10) >= 128, 13, -1),
    zero,
  )

  def step(pos, in_blocks, done, complete, transparent, seen, top, left, height, width, palette, descriptor):
    b = byte(pos)
    # Inside data sub-blocks: a length byte, 0 ends them (and, after the frame, the walk).
    blocks_end = tf.logical_and(in_blocks, tf.equal(b, 0))
    next_in_blocks = tf.logical_and(in_blocks, b > 0)
    next_pos = tf.where(in_blocks, pos + tf.where(b > 0, b + 1, 1), pos)
    # Between blocks: an extension (0x21) or an image descriptor (0x2C); anything else is damage.
    extension = tf.logical_and(tf.logical_not(in_blocks), tf.equal(b, 0x21))
    frame = tf.logical_and(tf.logical_not(in_blocks), tf.equal(b, 0x2C))
    control = tf.logical_and(extension, tf.equal(byte(pos + 1), 0xF9))
    transparent = tf.where(control, tf.equal(byte(pos + 3) % 2, 1), transparent)
    flags = byte(pos + 9)
    top, left = tf.where(frame, u16(pos + 3), top), tf.where(frame, u16(pos + 1), left)
    height, width = tf.where(frame, u16(pos + 7), height), tf.where(frame, u16(pos + 5), width)
    palette = tf.where(tf.logical_and(frame, flags >= 128), pos + 10, palette)
    next_pos = tf.where(extension, pos + 2, tf.where(frame, pos + 11 + table_size(flags), next_pos))
    next_in_blocks = tf.logical_or(next_in_blocks, tf.logical_or(extension, frame))
    finished = tf.logical_and(blocks_end, seen)
    damaged = tf.logical_or(b < 0, tf.logical_not(tf.logical_or(in_blocks, tf.logical_or(extension, frame))))
    return (
      next_pos,
      next_in_blocks,
      tf.logical_or(finished, damaged),
      finished,
      transparent,
      tf.logical_or(seen, frame),
      top,
      left,
      height,
      width,
      palette,
      tf.where(frame, pos, descriptor),
    )

  pos, _, _, complete, transparent, _, top, left, height, width, palette, descriptor = tf.while_loop(
    lambda *state: tf.logical_not(state[2]), step, state, maximum_iterations=n + 1
  )
  canvas = (tf.maximum(top + height, u16(8)), tf.maximum(left + width, u16(6)))
  entry = tf.stack([byte(palette), byte(palette + 1), byte(palette + 2)])
  fill = tf.where(tf.logical_or(transparent, palette < 0), tf.zeros([3], tf.int32), tf.maximum(entry, 0))
  return complete, canvas, (top, left), fill, descriptor, pos


def _gif(data, first):
  """The first frame on its canvas, as Pillow decodes it: only that frame, moved to (0, 0) (TensorFlow
  would clip it to its own size at its offset), reaches the decoder."""
  _, (height, width), (top, left), fill, at, end = first
  alone = tf.strings.join(
    [tf.strings.substr(data, 0, at + 1), b"\0\0\0\0", tf.strings.substr(data, at + 5, end - at - 5), b";"]
  )
  frame = tf.io.decode_gif(alone)[0]
  shape = tf.shape(frame)
  paddings = [[top, height - top - shape[0]], [left, width - left - shape[1]]]
  fill = tf.cast(fill, tf.uint8)
  return tf.stack([tf.pad(frame[..., c], paddings, constant_values=fill[c]) for c in range(3)], -1)


def _has_end(data, fmt):
  """`contract.end_missing`'s rule, negated, for format code `fmt`: checked before any decoder runs."""
  if fmt == _BMP:
    return tf.cast(tf.strings.length(data), tf.int64) >= _bmp_end(data)
  marker = b"\xff\xd9" if fmt == _JPEG else contract.PNG_END
  ends = tf.equal(tf.size(tf.strings.split(data, marker, maxsplit=1)), 2)
  if fmt == _JPEG:  # and its headers whole
    ends = tf.logical_and(ends, _jpeg_headers_whole(data))
  return ends


def _bmp_end(data):
  """`contract.bmp_end`: the byte after a BMP's last pixel row, from its header."""
  height, width = _declared_size(data, tf.constant(_BMP))
  width, bits = tf.where(width >= 2**31, 2**32 - width, width), _uint(data, 28, 2, True)
  return _uint(data, 10, 4, True) + height * ((bits * width + 31) // 32) * 4


def _bmp_alpha_mask(data):
  """A BMP's alpha bit field where its header or compression declares one, else 0."""
  compression = _uint(data, 30, 4, True)
  declared = tf.logical_or(_uint(data, 14, 4, True) >= 56, tf.equal(compression, 6))
  return tf.where(declared, _bmp_mask(data, 66), 0)


def _bmp_mask(data, at):
  return _uint(data, at, 4, True)


def _bmp_alpha(data):
  """Whether a 32-bit BMP's bit fields declare an 8-bit alpha (Pillow then reads it as RGBA)."""
  fields = tf.logical_or(tf.equal(_uint(data, 30, 4, True), 3), tf.equal(_uint(data, 30, 4, True), 6))
  alpha = tf.equal(_bmp_alpha_mask(data), 0xFF000000)
  return tf.logical_and(tf.equal(_uint(data, 28, 2, True), 32), tf.logical_and(fields, alpha))


def _bmp(data):
  """A BMP as Pillow reads it: bytes after its last row ignored, an alpha from its bit fields kept."""
  end = tf.cast(_bmp_end(data), tf.int32)
  exact = tf.equal(tf.strings.length(data), end)
  rows = tf.cond(exact, lambda: data, lambda: tf.strings.substr(data, 0, end))  # a copy only with bytes after
  return tf.cond(
    _bmp_alpha(data), lambda: tf.io.decode_bmp(rows, channels=4), lambda: tf.io.decode_bmp(rows, channels=3)
  )


def _bmp_layout_ok(data):
  """`contract.bmp_layout_problem(data) == ""` in TensorFlow ops."""
  compression, bits = _uint(data, 30, 4, True), _uint(data, 28, 2, True)
  fields = tf.logical_or(tf.equal(compression, 3), tf.equal(compression, 6))
  alpha = _bmp_alpha_mask(data)
  masks = tf.stack([_bmp_mask(data, 54), _bmp_mask(data, 58), _bmp_mask(data, 62)])
  standard = tf.reduce_all(tf.equal(masks, tf.constant([0xFF0000, 0xFF00, 0xFF], tf.int64)))
  standard = tf.logical_and(standard, tf.logical_or(tf.equal(alpha, 0), tf.equal(alpha, 0xFF000000)))
  palette = tf.logical_not(tf.reduce_any(tf.equal(bits, tf.constant(contract.BMP_DEPTHS, tf.int64))))
  return tf.logical_or(
    tf.logical_or(tf.equal(compression, 0), palette),
    tf.logical_and(fields, tf.logical_and(standard, tf.equal(bits, 32))),
  )


def decode_one(data, channels, size=None):
  """One encoded image to `(H, W, channels)` uint8 and its full `(height, width)` for the square fit."""
  fmt = image_format(data)
  known = _require(fmt >= 0, f"unsupported image format: the serving signature accepts {ACCEPTED}")
  with tf.control_dependencies([known]):
    fmt = tf.maximum(fmt, 0)
  ends = [
    _require(
      tf.cond(tf.equal(fmt, code), lambda code=code: _has_end(data, code), lambda: tf.constant(True)),
      contract.cut_short(name),
    )
    for code, name in ((_JPEG, "JPEG"), (_PNG, "PNG"), (_BMP, "BMP"))
  ]
  with tf.control_dependencies(ends):  # first, as on the host: a cut file's header may be cut too
    layout_ok = _require(
      tf.cond(tf.equal(fmt, _BMP), lambda: _bmp_layout_ok(data), lambda: tf.constant(True)), contract.BMP_FIELDS
    )
  with tf.control_dependencies([layout_ok]):
    data = tf.identity(data)
  is_gif = tf.equal(fmt, _GIF)
  first = tf.cond(
    is_gif,
    lambda: _gif_first_frame(data),
    lambda: (tf.constant(True), (0, 0), (0, 0), tf.zeros([3], tf.int32), tf.constant(0), tf.constant(0)),
  )
  gif_ok = _require(first[0], contract.cut_short("GIF"))
  with tf.control_dependencies([gif_ok]):
    height, width = tf.cond(
      is_gif, lambda: tuple(tf.cast(x, tf.int64) for x in first[1]), lambda: _declared_size(data, fmt)
    )
  too_large = _require(height * width <= tf.constant(MAX_IMAGE_PIXELS, tf.int64), contract.TOO_LARGE)
  orientation = _exif_orientation(data, fmt)
  bmp_ok = _require(
    tf.logical_or(
      tf.not_equal(fmt, _BMP),
      tf.reduce_any(tf.equal(_uint(data, 28, 2, True), tf.constant(contract.BMP_DEPTHS, tf.int64))),
    ),
    contract.BMP_PALETTE,
  )
  with tf.control_dependencies([too_large, bmp_ok]):  # in the host decoder's order
    one_exif = _require(
      tf.cond(tf.equal(fmt, _PNG), lambda: _png_one_exif(data), lambda: tf.constant(True)), contract.PNG_EXIF_TWICE
    )
  with tf.control_dependencies([too_large, bmp_ok, one_exif]):  # checked before any decoder allocates
    image = tf.switch_case(
      fmt,
      [
        lambda: _jpeg(data, size, orientation),
        lambda: _orient(_png(data), orientation),
        lambda: _gif(data, first),
        lambda: _bmp(data),
      ],
    )
  image = _to_channels(image, channels)
  with tf.control_dependencies(_content_checks(image, tf.equal(fmt, _JPEG))):
    image = tf.identity(image)
  # A draft-scaled JPEG is planned on its full size, as Pillow's `image.size` before `draft`.
  full = tf.cast(tf.stack([height, width]), tf.int32)
  full = tf.where(orientation >= 5, tf.reverse(full, [0]), full)  # turned by 90 degrees
  return image, full


def _jpeg_fill_tail(image):
  """`contract._tail`: rows at the bottom of `(H, W, C)` `image` that are the JPEG fill throughout."""
  filled = tf.reduce_all(tf.equal(image, contract.JPEG_FILL), axis=[1, 2])
  reversed_ = tf.cast(tf.reverse(filled, [0]), tf.int32)
  return tf.where(tf.reduce_all(filled), tf.size(filled), tf.cast(tf.argmin(reversed_), tf.int32))


def _content_checks(image, is_jpeg):
  """`contract.problem` in TensorFlow ops (integer arithmetic, so both paths refuse the same images)."""
  rows = 256  # bands of rows, as `_in_bands`: no int32 copy of the whole image
  _, counts = tf.while_loop(
    lambda i, _: i * rows < tf.shape(image)[0],
    lambda i, counts: (
      i + 1,
      counts
      + tf.math.bincount(
        tf.cast(image[i * rows : (i + 1) * rows], tf.int32), minlength=256, maxlength=256, dtype=tf.int64
      ),
    ),
    (tf.constant(0), tf.zeros([256], tf.int64)),
    parallel_iterations=1,
  )
  band = contract.FLAT_BAND
  cumulative = tf.concat([tf.zeros([band + 1], tf.int64), tf.cumsum(counts), tf.fill([band], tf.reduce_sum(counts))], 0)
  window = cumulative[2 * band + 1 :] - cumulative[: -(2 * band + 1)]
  size = tf.cast(tf.size(image), tf.int64)
  structured = tf.logical_or(tf.equal(size, 0), tf.reduce_max(window) * 100 < contract.FLAT_PERCENT * size)

  def cut_short():
    turned = tf.transpose(image, [1, 0, 2])
    edges = []
    for view in (image, tf.reverse(image, [0]), turned, tf.reverse(turned, [0])):
      tail = _jpeg_fill_tail(view)
      edges.append(tf.logical_and(tail >= contract.TAIL_MIN, tail * 100 >= contract.TAIL_PERCENT * tf.shape(view)[0]))
    return tf.logical_and(size > 0, tf.reduce_any(tf.stack(edges)))

  whole = tf.logical_not(tf.cond(is_jpeg, cut_short, lambda: tf.constant(False)))
  return [_require(structured, contract.NO_STRUCTURE), _require(whole, contract.TRUNCATED)]


def _resize(image, height, width):
  # From uint8: the op converts each pixel as it reads it (the same floats as a float32 copy, without the copy).
  resized = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _round(x):
  """Python's round() on non-negative float tensors with ties to even, as `decode.fit_square` uses."""
  return tf.cast(tf.round(x), tf.int32)


def fit_square(image, size, resize_mode, full_shape=None):
  """`decode.fit_square` in TensorFlow ops, for one `(H, W, C)` uint8 image."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  full_h, full_w = (height, width) if full_shape is None else (full_shape[0], full_shape[1])
  top = left = tf.constant(0)
  crop_h, crop_w = full_h, full_w
  if resize_mode == "crop":
    side = tf.minimum(full_h, full_w)
    top, left = (full_h - side) // 2, (full_w - side) // 2
    crop_h = crop_w = side
    out_h = out_w = tf.constant(size)
  elif resize_mode == "pad":
    longest = tf.maximum(full_h, full_w)
    out_h = tf.maximum(1, (full_h * size + longest // 2) // longest)
    out_w = tf.maximum(1, (full_w * size + longest // 2) // longest)
  elif resize_mode == "squash":
    out_h = out_w = tf.constant(size)
  else:
    raise ValueError(f"Unknown resize_mode: {resize_mode!r}")
  sy = tf.cast(height, tf.float64) / tf.cast(full_h, tf.float64)
  sx = tf.cast(width, tf.float64) / tf.cast(full_w, tf.float64)
  top, left = _round(tf.cast(top, tf.float64) * sy), _round(tf.cast(left, tf.float64) * sx)
  crop_h = tf.minimum(_round(tf.cast(crop_h, tf.float64) * sy), height - top)
  crop_w = tf.minimum(_round(tf.cast(crop_w, tf.float64) * sx), width - left)
  image = image[top : top + crop_h, left : left + crop_w]
  same = tf.logical_and(tf.equal(crop_h, out_h), tf.equal(crop_w, out_w))
  image = tf.cond(same, lambda: image, lambda: _resize(image, out_h, out_w))
  if resize_mode == "pad":
    pad_top, pad_left = (size - out_h) // 2, (size - out_w) // 2
    image = tf.pad(image, [[pad_top, size - out_h - pad_top], [pad_left, size - out_w - pad_left], [0, 0]])
  return tf.ensure_shape(image, [size, size, None])


def decode_batch(encoded, size, channels, resize_mode):
  """Decodes a `[batch]` string tensor of encoded images to `[batch, size, size, channels]` uint8."""

  def one(data):
    image, full = decode_one(data, channels, size)
    return fit_square(image, size, resize_mode, full)

  return tf.map_fn(one, check_request(encoded), fn_output_signature=tf.TensorSpec([size, size, channels], tf.uint8))
