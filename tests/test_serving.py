"""SavedModel export, TF Serving signatures and the prediction CLI, on a model trained on real images."""

import csv
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import REPO, make_tree, plant_junk, real_files, real_jpeg, real_path
from xray_keras.data import decode
from xray_keras.serving import export, graph


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A ViT trained for one epoch on real images and exported with --export."""
  base = tmp_path_factory.mktemp("serving")
  tree = make_tree(str(base / "chest_xray"), per_class=6)
  run_dir, export_dir = base / "run", base / "saved_models"
  result = subprocess.run(
      [sys.executable, "-m", "xray_keras.run", "--flagfile=experiments/smoke.cfg", f"--data_dir={tree}",
       f"--cache_dir={base / 'cache'}", f"--output_dir={run_dir}", "--export", f"--export_dir={export_dir}",
       "--image_size=48", "--resize_mode=pad", "--val_fraction=0.3"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
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
      cwd=REPO, capture_output=True, text=True, timeout=300,
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
      capture_output=True, text=True, timeout=120,
  ).stdout
  for text in ("signature_def['serving_default']", "inputs['images']", "dtype: DT_STRING",
               "signature_def['serving_pixels']", "inputs['pixels']", "shape: (-1, 48, 48, 1)",
               "outputs['pneumonia_probability']", "outputs['probabilities']", "outputs['label']"):
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
      cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
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
  with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
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
  assert len(images) == 4
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
      [sys.executable, "-m", "xray_keras.predict", f"--model={export_dir / 'vit_scratch'}",
       f"--output={out_csv}", folder, str(tmp_path / "junk" / "test" / "NORMAL" / "notes.jpeg")],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )
  assert result.returncode == 3, result.stderr[-2000:]
  lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
  assert len(lines) == 4 and {l[1] for l in lines} <= {"NORMAL", "PNEUMONIA"}
  assert all(0.0 <= float(l[2]) <= 1.0 for l in lines)
  assert "skipped:" in result.stderr and "notes.jpeg" in result.stderr and "Unknown image file format" in result.stderr
  with open(out_csv) as f:
    rows = list(csv.DictReader(f))
  assert [r["file"] for r in rows] == [l[0] for l in lines]

  keras_run = subprocess.run(
      [sys.executable, "-m", "xray_keras.predict", f"--model={run_dir / 'model.keras'}", "--resize_mode=pad", folder],
      cwd=REPO, capture_output=True, text=True, timeout=300,
  )
  assert keras_run.returncode == 0, keras_run.stderr[-2000:]
  keras_probs = [float(line.split("\t")[2]) for line in keras_run.stdout.strip().splitlines()]
  np.testing.assert_allclose(keras_probs, [float(l[2]) for l in lines], atol=1e-5)


def test_readme_rest_request_round_trips_through_the_signature(trained, tmp_path):
  """The README's request.json, decoded as TF Serving decodes {"b64": ...}, classifies the image."""
  import base64

  _, export_dir = trained
  path = real_path("test", "PNEUMONIA", "person100_bacteria_475.jpeg")
  command = ("import base64, json, sys; print(json.dumps({\"signature_name\": \"serving_default\", "
             "\"instances\": [{\"b64\": base64.b64encode(open(sys.argv[1], \"rb\").read()).decode()}]}))")
  request = json.loads(subprocess.run([sys.executable, "-c", command, path], capture_output=True, text=True).stdout)
  assert request["instances"][0]["b64"].startswith("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDA")  # a JPEG's base64
  payload = [base64.b64decode(instance["b64"]) for instance in request["instances"]]
  serve = tf.saved_model.load(str(export_dir / "vit_scratch" / "1")).signatures[request["signature_name"]]
  from_json = serve(images=tf.constant(payload))["pneumonia_probability"].numpy()
  direct = serve(images=tf.constant([open(path, "rb").read()]))["pneumonia_probability"].numpy()
  np.testing.assert_array_equal(from_json, direct)
