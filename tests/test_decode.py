import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, real_files, real_path
from xray_keras.data import decode


def _encode(image, fmt="PNG", **kwargs):
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def _real_jpeg():
  name = real_files("train", "PNEUMONIA", 1)[0]
  with open(real_path("train", "PNEUMONIA", name), "rb") as f:
    return f.read()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_real_jpeg_decodes_to_requested_shape(channels, mode):
  array = decode.decode_image(_real_jpeg(), 48, channels, mode)
  assert array.shape == (48, 48, channels)
  assert array.dtype == np.uint8
  assert array.std() > 10  # a real radiograph, not a blank


def _ramp(mode, size):
  """A left-to-right ramp in `mode` (a blank image is refused: `contract.py`)."""
  width, height = size
  grey = Image.fromarray(np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1)), "L")
  return grey.convert(mode)


@pytest.mark.parametrize(
  "image",
  [
    _ramp("L", (300, 200)),
    _ramp("RGB", (90, 120)),
    _ramp("RGBA", (64, 64)),
    _ramp("P", (50, 70)),
  ],
  ids=["gray", "rgb", "rgba", "palette"],
)
def test_modes_and_sizes(image):
  array = decode.decode_image(_encode(image, "PNG"), 32, 1)
  assert array.shape == (32, 32, 1)


def test_a_cmyk_jpeg_is_refused_on_both_decoders_in_the_same_words():
  import tensorflow as tf

  from xray_keras.data import contract
  from xray_keras.serving import graph

  data = _encode(_ramp("CMYK", (40, 40)), "JPEG")
  with pytest.raises(decode.DecodeError, match=contract.CMYK_JPEG):
    decode.decode_image(data, 32, 1)
  with pytest.raises(tf.errors.InvalidArgumentError, match=contract.CMYK_JPEG):
    graph.decode_one(tf.constant(data), 1, 32)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_a_blank_image_is_refused_in_every_mode(mode):
  with pytest.raises(decode.DecodeError, match=r"^no structure: 95% of its pixels within 2 grey levels"):
    decode.decode_image(_encode(Image.new(mode, (60, 40), 90 if mode in ("L", "P") else (90,) * len(mode))), 32, 1)


def test_16bit_png_is_scaled_not_clipped():
  ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # up to 65520
  array = decode.decode_image(_encode(Image.fromarray(ramp)), 64, 1)
  assert array.max() == 255 and array.min() == 0
  assert len(np.unique(array)) > 200


def test_rgba_alpha_is_composited_on_black():
  image = _ramp("RGBA", (16, 16))
  image.paste((255, 255, 255, 0), (0, 0, 8, 16))  # the left half white and fully transparent
  assert decode.decode_image(_encode(image), 16, 1)[:, :8].max() == 0


def test_exif_rotation_is_applied():
  image = Image.new("L", (40, 20), 0)
  image.paste(255, (0, 0, 20, 20))  # left half white
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise on display
  array = decode.decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=100), 20, 1, "pad")
  assert array.shape == (20, 20, 1)
  top, bottom = array[:5, 5:15].mean(), array[-5:, 5:15].mean()
  assert top > 200 and bottom < 50  # the white half is now on top


@pytest.mark.parametrize(
  "data, reason",
  [
    (b"", "empty"),
    (
      b"not an image at all",
      r"^not an image format the decoder reads \(JPEG, PNG, GIF, BMP, TIFF, WebP, DICOM, ...\)$",
    ),
    (None, "^truncated (JPEG|image) file$"),
  ],
)
def test_bad_bytes_raise_decode_error(data, reason):
  if data is None:
    data = _real_jpeg()[:300]  # truncated JPEG
  with pytest.raises(decode.DecodeError, match=reason):
    decode.decode_image(data, 32, 1)


def test_resize_array_handles_npz_style_batches():
  batch = np.random.default_rng(0).integers(0, 255, (3, 28, 28), dtype=np.uint8)
  out = decode.resize_array(batch, 32, 3)
  assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
  assert np.array_equal(out[..., 0], out[..., 1])


def test_decoding_and_the_decode_cache_import_neither_tensorflow_nor_keras():
  """In a fresh process (the package's own imports are what is tested) that refuses both imports."""
  code = (
    "import sys\n"
    "class Refuse:\n"
    "  def find_spec(self, name, *args):\n"
    "    if name.split('.')[0] in ('tensorflow', 'keras', 'jax'):\n"
    "      raise ImportError('refused: ' + name)\n"
    "sys.meta_path.insert(0, Refuse())\n"
    "import io, numpy as np\n"
    "from PIL import Image\n"
    "from xray_keras.data import cache, decode\n"
    "out = io.BytesIO(); Image.fromarray(np.arange(100 * 80, dtype=np.uint8).reshape(100, 80)).save(out, 'PNG')\n"
    "print(decode.decode_image(out.getvalue(), 32, 1, 'pad').shape)\n"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "(32, 32, 1)", result.stderr[-2000:]


@pytest.mark.parametrize(
  "shape, size",
  [
    ((64, 64, 1), (32, 32)),
    ((64, 64, 3), (28, 28)),
    ((2010, 2400, 1), (224, 224)),
    ((37, 91, 3), (17, 64)),
    ((50, 40, 1), (64, 64)),
  ],
)
def test_numpy_resize_equals_tensorflows_bit_for_bit(shape, size):
  import tensorflow as tf

  from xray_keras.data import builtin, resize

  images, _ = builtin.load()
  real = np.asarray(Image.fromarray(images[7, :, :, 0]).resize(shape[1::-1], Image.BICUBIC))
  array = np.repeat(real[..., None], shape[2], -1) if shape[2] == 3 else real[..., None]
  ours = resize.resize(array, *size)
  theirs = tf.image.resize(array.astype(np.float32), size, "bilinear", antialias=True).numpy()
  np.testing.assert_array_equal(ours, theirs)
  batch = images[:40]
  np.testing.assert_array_equal(
    resize.resize(batch, 32, 32), tf.image.resize(batch.astype(np.float32), (32, 32), antialias=True).numpy()
  )


def test_jpeg_reduced_decoding_starts_at_8_times_the_target_size():
  """docs/data.md: 'JPEGs at least 8 times the target size decode at a reduced DCT scale'."""
  from xray_keras.data import builtin

  images, _ = builtin.load()
  used = {}
  for side in (8 * 32 - 8, 8 * 32):
    out = io.BytesIO()
    Image.fromarray(images[3, :, :, 0]).resize((side, side), Image.BICUBIC).save(out, "JPEG", quality=90)
    full = decode.decode_image(out.getvalue(), 32, 1, draft=False)
    used[side] = bool((decode.decode_image(out.getvalue(), 32, 1) != full).any())
  assert used == {248: False, 256: True} and decode.DRAFT_MARGIN == 4
