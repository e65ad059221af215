"""SavedModel export, TF Serving signatures and the prediction CLI, on a model trained on real images."""

import csv
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import PIL
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import REPO, make_tree, plant_junk, real_files, real_jpeg, real_path
from xray_keras.data import decode
from xray_keras.serving import export, graph


@pytest.fixture(scope="module")
def trained(tiny_run):
  """A ViT trained for one epoch on real images and exported with --export (the shared tiny run)."""
  _, _, run_dir, export_dir = tiny_run
  return run_dir, export_dir


def _jpegs(count=4):
  out = []
  for class_name in ("NORMAL", "PNEUMONIA"):
    for name in real_files("test", class_name, count // 2):
      out.append(real_jpeg("test", class_name, name))
  return out


def test_export_layout_model_card_and_versions(trained):
  run_dir, export_dir = trained
  base = export_dir / "vit_scratch"
  assert sorted(os.listdir(base)) == ["1"]
  card = json.loads((base / "1" / "assets.extra" / "model_card.json").read_text())
  assert card["class_names"] == ["NORMAL", "PNEUMONIA"]
  assert card["input"] == {"image_size": 48, "channels": 1, "resize_mode": "pad", "pixel_range": [0, 255]}
  assert 0 < card["decision_threshold"] < 1
  assert {"accuracy", "auc"} <= set(card["metrics"]["test"])
  assert card["data"]["counts"]["test"]["total"] > 0 and card["synthetic"] is False
  assert card["versions"]["tensorflow"] == tf.__version__
  assert card["flags"]["data_dir"] == "chest_xray"  # no local absolute paths
  assert str(run_dir.parent) not in json.dumps(card)
  pb = (base / "1" / "saved_model.pb").read_bytes()

  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.export", f"--run_dir={run_dir}", f"--export_dir={export_dir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith(os.path.join("vit_scratch", "2"))
  assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folders left behind
  assert (base / "1" / "saved_model.pb").read_bytes() == pb


def test_failed_export_leaves_no_visible_version(trained, tmp_path, monkeypatch):
  run_dir, _ = trained

  def broken(*args):
    raise OSError("disk full")

  monkeypatch.setattr(export, "write_warmup", broken)
  with pytest.raises(OSError, match="disk full"):
    export.export_run(str(run_dir), str(tmp_path))
  assert os.listdir(tmp_path / "vit_scratch") == []


def test_saved_model_cli_lists_both_signatures(trained):
  _, export_dir = trained
  out = subprocess.run(
    ["saved_model_cli", "show", "--all", "--dir", str(export_dir / "vit_scratch" / "1")],
    capture_output=True,
    text=True,
    timeout=120,
  ).stdout
  for text in (
    "signature_def['serving_default']",
    "inputs['images']",
    "dtype: DT_STRING",
    "signature_def['serving_pixels']",
    "inputs['pixels']",
    "shape: (-1, 48, 48, 1)",
    "outputs['pneumonia_probability']",
    "outputs['probabilities']",
    "outputs['label']",
  ):
    assert text in out, text


FRESH = """
import json, sys
import tensorflow as tf
paths = sys.argv[2:]
sig = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = sig(images=tf.constant([open(p, "rb").read() for p in paths]))
assert "xray_keras" not in sys.modules
print(json.dumps({k: v.numpy().tolist() for k, v in out.items() if k != "label"}
                 | {"label": [x.decode() for x in out["label"].numpy()]}))
"""


def test_fresh_process_matches_the_keras_model_on_real_jpegs(trained, tmp_path):
  run_dir, export_dir = trained
  paths = []
  for i, data in enumerate(_jpegs(6)):
    paths.append(str(tmp_path / f"{i}.jpeg"))
    with open(paths[-1], "wb") as f:
      f.write(data)
  result = subprocess.run(
    [sys.executable, "-c", FRESH, str(export_dir / "vit_scratch" / "1"), *paths],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  served = json.loads(result.stdout.strip().splitlines()[-1])

  model = keras.models.load_model(str(run_dir / "model.keras"), safe_mode=True)
  pixels = np.stack([decode.decode_image(open(p, "rb").read(), 48, 1, "pad") for p in paths]).astype(np.float32)
  expected = model.predict(pixels, verbose=0).reshape(-1)
  np.testing.assert_allclose(served["pneumonia_probability"], expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(served["probabilities"]).sum(1), 1.0, atol=1e-6)
  card = json.loads((export_dir / "vit_scratch" / "1" / "assets.extra" / "model_card.json").read_text())
  assert served["label"] == ["PNEUMONIA" if p >= card["decision_threshold"] else "NORMAL" for p in expected]


def test_bad_bytes_are_invalid_argument_and_empty_batch_is_empty(trained):
  _, export_dir = trained
  loaded = tf.saved_model.load(str(export_dir / "vit_scratch" / "1"))
  serve = loaded.signatures["serving_default"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported image format"):
    serve(images=tf.constant([b"this is not an image"]))
  empty = serve(images=tf.constant([], dtype=tf.string))
  assert empty["pneumonia_probability"].shape == (0,) and empty["probabilities"].shape == (0, 2)
  pixels = loaded.signatures["serving_pixels"](pixels=tf.zeros([2, 48, 48, 1]))
  assert pixels["pneumonia_probability"].shape == (2,)


def test_warmup_requests_are_prediction_logs_of_real_images(trained):
  from tensorflow_serving.apis import prediction_log_pb2

  _, export_dir = trained
  path = export_dir / "vit_scratch" / "1" / "assets.extra" / "tf_serving_warmup_requests"
  records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
  assert len(records) == 1
  log = prediction_log_pb2.PredictionLog.FromString(records[0])
  assert log.predict_log.request.model_spec.signature_name == "serving_default"
  images = tf.make_ndarray(log.predict_log.request.inputs["images"])
  assert len(images) == 5  # the 4 samples as PNG, the first again as JPEG
  for data in images:
    assert Image.open(io.BytesIO(data)).size == (48, 48)


@pytest.mark.parametrize("mode", decode.RESIZE_MODES)
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (48, 48), (31, 97)])
def test_graph_fit_square_is_bit_identical_to_training(mode, shape):
  array = decode.decode_image(_jpegs(2)[1], None, 1)
  array = np.asarray(Image.fromarray(array[..., 0]).resize(shape[::-1]))[..., None]
  expected = decode.fit_square(array, 48, mode)
  served = graph.fit_square(tf.constant(array), 48, mode).numpy()
  np.testing.assert_array_equal(served, expected)


def test_predict_cli_on_files_and_folders(trained, tmp_path):
  run_dir, export_dir = trained
  folder = make_tree(str(tmp_path / "imgs"), per_class=2, splits=("test",))
  plant_junk(make_tree(str(tmp_path / "junk"), per_class=1))
  out_csv = tmp_path / "preds.csv"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.predict",
      f"--model={export_dir / 'vit_scratch'}",
      f"--output={out_csv}",
      folder,
      str(tmp_path / "junk" / "test" / "NORMAL" / "notes.jpeg"),
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 3, result.stderr[-2000:]
  lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
  assert len(lines) == 4 and {l[1] for l in lines} <= {"NORMAL", "PNEUMONIA"}
  assert all(0.0 <= float(l[2]) <= 1.0 for l in lines)
  assert "skipped:" in result.stderr and "notes.jpeg" in result.stderr
  assert (
    f"notes.jpeg: refused by the model (unsupported image format: the serving signature accepts {graph.ACCEPTED})"
    in result.stderr
  )
  assert "assertion failed" not in result.stderr and "Traceback" not in result.stderr
  with open(out_csv) as f:
    rows = list(csv.DictReader(f))
  assert [r["file"] for r in rows] == [l[0] for l in lines]

  # The .keras file finds the run's resize mode and validation threshold beside it: same labels.
  keras_run = subprocess.run(
    [sys.executable, "-m", "xray_keras.predict", f"--model={run_dir / 'model.keras'}", folder],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert keras_run.returncode == 0, keras_run.stderr[-2000:]
  keras_lines = [line.split("\t") for line in keras_run.stdout.strip().splitlines()]
  np.testing.assert_allclose([float(l[2]) for l in keras_lines], [float(l[2]) for l in lines], atol=1e-5)
  assert [l[1] for l in keras_lines] == [l[1] for l in lines]


def test_predict_takes_a_run_folder_as_it_takes_its_model_keras(trained):
  from xray_keras.serving import predict, runtime

  run_dir, export_dir = trained
  files = [real_path("test", c, name) for c in ("NORMAL", "PNEUMONIA") for name in real_files("test", c, 2)]
  by_folder = predict.predict_files(predict.load_predictor(str(run_dir)), files)
  by_file = predict.predict_files(predict.load_predictor(str(run_dir / "model.keras")), files)
  assert len(by_folder[0]) == 4 and not by_folder[1]
  assert by_folder == by_file
  assert runtime.resolve_model(str(run_dir)) == ("keras", str(run_dir / "model.keras"))
  assert runtime.resolve_model(str(export_dir / "vit_scratch")) == ("export", str(export_dir / "vit_scratch"))


def test_readme_rest_request_round_trips_through_the_signature(trained, tmp_path):
  """The README's request.json, decoded as TF Serving decodes {"b64": ...}, classifies the image."""
  import base64

  _, export_dir = trained
  path = real_path("test", "PNEUMONIA", "person100_bacteria_475.jpeg")
  command = (
    'import base64, json, sys; print(json.dumps({"signature_name": "serving_default", '
    '"instances": [{"b64": base64.b64encode(open(sys.argv[1], "rb").read()).decode()}]}))'
  )
  request = json.loads(subprocess.run([sys.executable, "-c", command, path], capture_output=True, text=True).stdout)
  assert request["instances"][0]["b64"].startswith("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDA")  # a JPEG's base64
  payload = [base64.b64decode(instance["b64"]) for instance in request["instances"]]
  serve = tf.saved_model.load(str(export_dir / "vit_scratch" / "1")).signatures[request["signature_name"]]
  from_json = serve(images=tf.constant(payload))["pneumonia_probability"].numpy()
  direct = serve(images=tf.constant([open(path, "rb").read()]))["pneumonia_probability"].numpy()
  np.testing.assert_array_equal(from_json, direct)


def _encoded(image, fmt, **kwargs):
  out = io.BytesIO()
  image.save(out, fmt, **kwargs)
  return out.getvalue()


XMP_6 = (
  b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
  b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def _gif_frame_at(data, screen, offset, frame_size=None):
  """`data` (a one-frame GIF) with its logical screen `(w, h)`, its first frame moved to `offset`
  `(left, top)` and, if given, that frame's descriptor declaring `frame_size` `(w, h)`."""
  data = bytearray(data)
  data[6:10] = screen[0].to_bytes(2, "little") + screen[1].to_bytes(2, "little")
  table = 3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0
  at = data.index(b",", 13 + table)
  data[at + 1 : at + 5] = offset[0].to_bytes(2, "little") + offset[1].to_bytes(2, "little")
  if frame_size:
    data[at + 5 : at + 9] = frame_size[0].to_bytes(2, "little") + frame_size[1].to_bytes(2, "little")
  return bytes(data)


def unusual_corpus():
  """Real X-ray content in the encodings a user may send: {name: bytes}."""
  base = decode.decode_image(real_jpeg("test", "PNEUMONIA", real_files("test", "PNEUMONIA", 1)[0]), None, 1)[..., 0]
  rgb = np.stack([base, np.roll(base, 5, 0), 255 - base], -1)
  alpha = np.tile(np.linspace(0, 255, base.shape[1]).astype(np.uint8), (base.shape[0], 1))
  large = Image.fromarray(rgb).resize((1300, 1100), Image.BICUBIC)
  corpus = {
    "grey.jpeg": _encoded(Image.fromarray(base), "JPEG", quality=95),
    "colour.jpeg": _encoded(Image.fromarray(rgb), "JPEG", quality=95),
    "large_draft_scaled.jpeg": _encoded(large, "JPEG", quality=90),
    "progressive.jpeg": _encoded(Image.fromarray(rgb), "JPEG", quality=90, progressive=True),
    "large_progressive.jpeg": _encoded(large, "JPEG", quality=90, progressive=True),
    "grey.png": _encoded(Image.fromarray(base), "PNG"),
    "colour.png": _encoded(Image.fromarray(rgb), "PNG"),
    "sixteen_bit_12_bit_data.png": _encoded(Image.fromarray(base.astype(np.uint16) * 16), "PNG"),
    "sixteen_bit_full.png": _encoded(Image.fromarray(base.astype(np.uint16) * 257), "PNG"),
    "rgba_transparent.png": _encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"),
    "grey_alpha.png": _encoded(Image.fromarray(np.dstack([base, alpha]), "LA"), "PNG"),
    "palette.png": _encoded(Image.fromarray(rgb).convert("P"), "PNG"),
    "palette_transparent.png": _encoded(Image.fromarray(rgb).convert("P"), "PNG", transparency=0),
    "palette.gif": _encoded(Image.fromarray(rgb).convert("P"), "GIF"),
    "colour.bmp": _encoded(Image.fromarray(rgb), "BMP"),
  }
  palette = Image.fromarray(rgb).convert("P")
  corpus["gif_frame_inside_screen.gif"] = _gif_frame_at(_encoded(palette, "GIF"), (224, 224), (32, 32))
  corpus["gif_transparent_frame_inside_screen.gif"] = _gif_frame_at(
    _encoded(palette, "GIF", transparency=3), (224, 224), (32, 24)
  )
  corpus["gif_frame_beyond_screen.gif"] = _gif_frame_at(_encoded(palette, "GIF"), (60, 60), (20, 10))
  corpus["gif_animated.gif"] = _encoded(
    palette, "GIF", save_all=True, append_images=[Image.fromarray(255 - rgb).convert("P")]
  )
  turned = Image.Exif()
  turned[0x0112] = 6
  corpus["png_exif_chunk_6.png"] = _encoded(Image.fromarray(rgb[:, :48]), "PNG", exif=turned.tobytes())
  # Pillow writes eXIf without JPEG's "Exif\0\0" prefix; several other tools keep it.
  corpus["png_exif_chunk_prefixed_6.png"] = _png_with_chunk(
    _encoded(Image.fromarray(rgb[:, :48]), "PNG"), b"eXIf", turned.tobytes()
  )
  corpus["jpeg_xmp_orientation_6_only.jpeg"] = _encoded(Image.fromarray(rgb[:, :48]), "JPEG", quality=95, xmp=XMP_6)
  for orientation in range(1, 9):
    exif = Image.Exif()
    exif[0x0112] = orientation
    corpus[f"exif_{orientation}.jpeg"] = _encoded(Image.fromarray(rgb[:, :48]), "JPEG", quality=95, exif=exif.tobytes())
    corpus[f"exif_{orientation}_large.jpeg"] = _encoded(
      large.crop((0, 0, 1300, 900)), "JPEG", quality=90, exif=exif.tobytes()
    )
  return corpus


def _png_with_chunk(png, kind, payload):
  """`png` with a chunk of `kind` holding `payload` inserted before its first IDAT."""
  import struct
  import zlib

  chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
  at = png.index(b"IDAT") - 4
  return png[:at] + chunk + png[at:]


REFUSED = {
  "cmyk.jpeg": (
    lambda rgb: _encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95),
    "CMYK JPEGs are not accepted: convert the image to RGB or grey",
  ),
  "image.webp": (lambda rgb: _encoded(Image.fromarray(rgb), "WEBP"), "unsupported image format"),
  "image.tiff": (lambda rgb: _encoded(Image.fromarray(rgb), "TIFF"), "unsupported image format"),
}


@pytest.mark.parametrize("channels", [1, 3])
def test_serving_decodes_unusual_images_bit_for_bit_as_training_does(channels):
  for name, data in unusual_corpus().items():
    for mode in decode.RESIZE_MODES:
      expected = decode.decode_image(data, 48, channels, mode)
      image, full = graph.decode_one(tf.constant(data), channels, 48)
      np.testing.assert_array_equal(graph.fit_square(image, 48, mode, full).numpy(), expected, err_msg=f"{name} {mode}")
  # One orientation rule on both paths: EXIF in a JPEG or a PNG turns the image, XMP alone does not.
  corpus = unusual_corpus()
  height = decode.decode_image(corpus["grey.png"], None, 1).shape[0]
  assert decode.decode_image(corpus["png_exif_chunk_6.png"], None, 1).shape[:2] == (48, height)
  assert corpus["png_exif_chunk_prefixed_6.png"].count(b"eXIfExif\x00\x00") == 1
  assert decode.decode_image(corpus["png_exif_chunk_prefixed_6.png"], None, 1).shape[:2] == (48, height)
  assert decode.decode_image(corpus["jpeg_xmp_orientation_6_only.jpeg"], None, 1).shape[:2] == (height, 48)
  # The GIF frame sits on Pillow's canvas with its fill, not decoded bare.
  assert decode.decode_image(corpus["gif_frame_inside_screen.gif"], None, 1).shape[:2] == (224, 224)
  rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  for make, message in REFUSED.values():
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      graph.decode_one(tf.constant(make(rgb)), channels, 48)


def test_predict_agrees_between_the_export_and_the_keras_file_on_unusual_images(trained, tmp_path):
  run_dir, export_dir = trained
  folder = tmp_path / "unusual"
  folder.mkdir()
  for name, data in unusual_corpus().items():
    (folder / name).write_bytes(data)
  # What `python -m xray_keras.predict` does with each (its command line has its own tests).
  from xray_keras.serving import predict

  files, skipped = predict.list_inputs([str(folder)])
  assert not skipped and len(files) == len(unusual_corpus())
  outputs = {}
  for model in (export_dir / "vit_scratch", run_dir / "model.keras"):
    predictor = predict.load_predictor(str(model))
    rows, skipped = predict.predict_files(predictor, files)
    assert not skipped and len(rows) == len(files), skipped
    outputs[model.name] = rows, predictor.threshold
  (export_rows, export_threshold), (keras_rows, keras_threshold) = outputs["vit_scratch"], outputs["model.keras"]
  assert [r[1] for r in export_rows] == [r[1] for r in keras_rows]
  assert export_threshold == keras_threshold != 0.5
  np.testing.assert_allclose([r[2] for r in export_rows], [r[2] for r in keras_rows], atol=2e-6)


def _gif_bomb(side=16000):
  return (
    b"GIF89a"
    + side.to_bytes(2, "little") * 2
    + b"\x80\x00\x00"
    + b"\x00" * 6
    + b",\x00\x00\x00\x00"
    + side.to_bytes(2, "little") * 2
    + b"\x00\x02\x02\x44\x01\x00;"
  )


def jpeg_free_gif():
  """A real X-ray as a 224 x 224 GIF."""
  return _encoded(
    Image.open(io.BytesIO(real_jpeg("test", "NORMAL", real_files("test", "NORMAL", 1)[0]))).convert("P"), "GIF"
  )


def _bmp_bomb(side=16000):
  import struct

  header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
  info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 16, 2835, 2835, 0, 0)
  return header + info + b"\x00" * 16


def _webp_bomb(side=16000):
  """A real WebP whose VP8X canvas is patched to side x side."""
  data = bytearray(_encoded(Image.new("RGB", (16, 16)), "WEBP", lossless=True, exif=b"Exif\x00\x00II*\x00"))
  at = data.find(b"VP8X")
  data[at + 12 : at + 15] = (side - 1).to_bytes(3, "little")
  data[at + 15 : at + 18] = (side - 1).to_bytes(3, "little")
  return bytes(data)


BOMB_PROCESS = """
import json, resource, sys
import tensorflow as tf
sig = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
bombs = json.loads(open(sys.argv[2]).read())
normal = bytes.fromhex(bombs.pop("normal"))
sig(images=tf.constant([normal]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
errors = {}
for name, data in bombs.items():
  try:
    sig(images=tf.constant([bytes.fromhex(data)]))
    errors[name] = None
  except tf.errors.InvalidArgumentError as e:
    errors[name] = e.message
print(json.dumps({"errors": errors, "rss_mb_before": before,
                  "rss_mb_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_bombs_of_every_format_are_refused_before_decoding(trained, tmp_path):
  from tests.test_bad_inputs import jpeg_bomb, png_bomb

  _, export_dir = trained
  jpeg = real_jpeg("test", "NORMAL", real_files("test", "NORMAL", 1)[0])
  tiff = _encoded(Image.new("L", (16, 16)), "TIFF")
  bombs = {
    "normal": jpeg,
    "png": png_bomb(),
    "jpeg": jpeg_bomb(jpeg),
    "gif": _gif_bomb(),
    # A small screen, a 20000 x 20000 frame: the check reads every size a decoder allocates for.
    "gif_frame": _gif_frame_at(jpeg_free_gif(), (224, 224), (0, 0), (20000, 20000)),
    "bmp": _bmp_bomb(),
    "webp": _webp_bomb(),
    "tiff": tiff,
  }
  if int(PIL.__version__.split(".")[0]) >= 13:  # Pillow 12's WebP reader stops before reading the canvas size
    with pytest.raises(Image.DecompressionBombError, match="256000000 pixels"):  # what its header declares
      Image.open(io.BytesIO(bombs["webp"]))
  path = tmp_path / "bombs.json"
  path.write_text(json.dumps({k: v.hex() for k, v in bombs.items()}))
  result = subprocess.run(
    [sys.executable, "-c", BOMB_PROCESS, str(export_dir / "vit_scratch" / "1"), str(path)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for name in ("png", "jpeg", "gif", "gif_frame"):
    assert "larger than 25000000 pixels" in report["errors"][name], (name, report["errors"][name])
  # An uncompressed BMP's header cannot claim more than its bytes hold: the end check comes first.
  assert "truncated BMP file" in report["errors"]["bmp"], report["errors"]["bmp"]
  for name in ("webp", "tiff"):
    assert f"unsupported image format: the serving signature accepts {graph.ACCEPTED}" in report["errors"][name]
  # No decoder allocated a 16000 x 16000 (256 MB) or larger canvas.
  # (A TensorFlow process holding the model is already ~800 MB; the bombs must not add to it.)
  assert report["rss_mb_after"] - report["rss_mb_before"] < 64, report


def test_exports_and_run_folders_are_readable_by_another_user(trained, request):
  import shutil
  import stat
  import tempfile

  run_dir, _ = trained
  shared = tempfile.mkdtemp(prefix="xray_shared_")  # pytest's own folders are private to root
  request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
  os.chmod(shared, 0o755)
  code = (
    "import os, sys; os.umask(0o022); from xray_keras.serving import export; "
    "print(export.export_run(sys.argv[1], sys.argv[2]))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code, str(run_dir), os.path.join(shared, "saved_models")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  version = result.stdout.strip().splitlines()[-1]
  for top in (version, str(run_dir)):
    for folder, _, names in os.walk(top):
      assert stat.S_IMODE(os.stat(folder).st_mode) & 0o005 == 0o005, folder
      for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) & 0o004, os.path.join(folder, name)
  if os.geteuid() == 0 and shutil.which("runuser"):
    card = os.path.join(version, "assets.extra", "model_card.json")
    as_nobody = subprocess.run(
      ["runuser", "-u", "nobody", "--", "sh", "-c", f"ls '{version}' && head -c 1 '{card}'"],
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert as_nobody.returncode == 0 and "saved_model.pb" in as_nobody.stdout, as_nobody.stderr


def test_predict_skips_a_pipe_a_socket_and_a_dangling_link_instead_of_hanging(trained, tmp_path):
  import socket

  _, export_dir = trained
  folder = make_tree(str(tmp_path / "imgs"), per_class=1, splits=("test",))
  normal = os.path.join(folder, "test", "NORMAL")
  pipe = os.path.join(normal, "pipe.jpeg")
  os.mkfifo(pipe)
  server = socket.socket(socket.AF_UNIX)
  server.bind(os.path.join(normal, "socket.jpeg"))
  os.symlink("/nonexistent/scan.jpeg", os.path.join(normal, "dangling.jpeg"))
  try:
    result = subprocess.run(
      [sys.executable, "-m", "xray_keras.predict", f"--model={export_dir / 'vit_scratch'}", folder, pipe],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    server.close()
  assert result.returncode == 3, result.stderr[-2000:]
  assert len(result.stdout.strip().splitlines()) == 2
  assert result.stderr.count("pipe.jpeg: not a regular file") == 2
  assert "socket.jpeg: not a regular file" in result.stderr
  assert "dangling.jpeg: broken symbolic link" in result.stderr


def test_warmup_requests_cover_jpeg_and_png(trained):
  from tensorflow_serving.apis import prediction_log_pb2

  _, export_dir = trained
  path = export_dir / "vit_scratch" / "1" / "assets.extra" / "tf_serving_warmup_requests"
  (record,) = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
  log = prediction_log_pb2.PredictionLog.FromString(record)
  images = log.predict_log.request.inputs["images"].string_val
  assert any(i.startswith(b"\xff\xd8") for i in images) and any(i.startswith(b"\x89PNG") for i in images)
  serve = tf.saved_model.load(str(export_dir / "vit_scratch" / "1")).signatures["serving_default"]
  assert serve(images=tf.constant(list(images)))["label"].shape == (len(images),)


def test_predict_keeps_libjpeg_warnings_off_stderr(trained, tmp_path):
  _, export_dir = trained
  jpeg = real_jpeg("test", "NORMAL", real_files("test", "NORMAL", 1)[0])
  (tmp_path / "cut.jpeg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.predict", f"--model={export_dir / 'vit_scratch'}", str(tmp_path / "cut.jpeg")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode in (0, 3), result.stderr[-2000:]
  assert "Corrupt JPEG data" not in result.stderr and "Premature end of JPEG" not in result.stderr


def test_refusals_are_short_reasons_of_our_own_on_every_path(trained, tmp_path):
  """The export's refusals carry our one-line reason (not libjpeg's or giflib's); `predict` prints it,
  also with a `.keras` model, and names every entry of a folder it skips, link loops included."""
  from xray_keras.serving import predict

  run_dir, export_dir = trained
  jpeg = real_jpeg("test", "NORMAL", real_files("test", "NORMAL", 1)[0])
  gif = jpeg_free_gif()
  bad = {
    "truncated.jpeg": (jpeg[: len(jpeg) // 2], "truncated JPEG file", "truncated JPEG file"),
    "truncated.gif": (gif[: len(gif) // 2], "truncated GIF file", "truncated GIF file"),
    "notes.png": (b"these are notes, not an image", "unsupported image format", "not an image format the decoder"),
  }
  serve = tf.saved_model.load(str(export_dir / "vit_scratch" / "1")).signatures["serving_default"]
  for name, (data, served, _) in bad.items():
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
      serve(images=tf.constant([data]))
    assert f"assertion failed: [{served}" in error.value.message, (name, error.value.message)

  folder = tmp_path / "inputs"
  (folder / "sub").mkdir(parents=True)
  for name, (data, _, _) in bad.items():
    (folder / name).write_bytes(data)
  (folder / "sub" / "ok.jpeg").write_bytes(jpeg)
  os.symlink(folder, folder / "sub" / "loop")
  (folder / ".thumbnails").mkdir()
  files, skipped = predict.list_inputs([str(folder)])
  assert [os.path.basename(f) for f in files] == ["notes.png", "truncated.gif", "truncated.jpeg", "ok.jpeg"]
  reasons = {os.path.relpath(s.path, folder): s.reason for s in skipped}
  assert reasons == {
    ".thumbnails": "hidden or system folder",
    "sub/loop": "link to a folder already listed (a loop, or the same folder twice)",
  }
  for model, column in ((export_dir / "vit_scratch", 1), (run_dir / "model.keras", 2)):
    rows, refused = predict.predict_files(predict.load_predictor(str(model)), files)
    assert [os.path.basename(r[0]) for r in rows] == ["ok.jpeg"]
    said = {os.path.basename(s.path): s.reason for s in refused}
    for name, expected in bad.items():
      assert expected[column] in said[name] and "\n" not in said[name] and "BytesIO" not in said[name], said
