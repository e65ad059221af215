"""ONNX, LiteRT and OpenVINO exports (float32 and int8), run without TensorFlow, against the Keras model."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, make_tree, smoke_run_command
from xray_keras.data import decode
from xray_keras.evaluation import metrics
from xray_keras.serving import formats

FORMATS = ("onnx", "litert", "openvino")
TEMPERATURE = 1.7
# Labels an int8 file shares with the float model on the 624 test images; over three trainings the
# lowest were ONNX 99.5%, LiteRT 99.5%, OpenVINO 99.4%. LiteRT's integer-only file also quantizes
# the layer norms, softmax and GELU: 98.7-99.0% (docs/serving.md).
# Full int8 also quantizes the output (steps of 1/256 in probability), so images within a step or two of the
# threshold can flip: 0.979 on one training of this (not bitwise repeatable) model; docs/serving.md has 0.973.
# Labels near the threshold may flip (the tiny run puts many there): 98.1-99.7% agreed on the documented runs,
# 98.9-100% on tiny runs. Away from it, none may: int8 moved a probability by at most 0.08 on the tiny runs
# (integer-only LiteRT 0.2 on ResNet50), and a file whose mean error is that large is broken, not rounded.
MIN_INT8_AGREEMENT = {("onnx", "int8"): 0.98, ("litert", "int8"): 0.98, ("litert", "int8_full"): 0.97}
MIN_INT8_AGREEMENT["openvino", "int8"] = 0.98
INT8_FLIP_BAND = {"int8": 0.1, "int8_full": 0.2}  # no label flips farther than this from the threshold
MAX_INT8_MEAN_ERROR = 0.02
MAX_INT8_AUC_CHANGE = 0.005


def _no_tensorflow(tmp_path):
  """An environment whose `import tensorflow`, `import keras` and `import jax` raise ImportError."""
  blocker = tmp_path / "no_tensorflow"
  for name in ("tensorflow", "keras", "jax"):
    (blocker / name).mkdir(parents=True, exist_ok=True)
    (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), REPO])}


def _predict(model, inputs, env):
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.predict", f"--model={model}", "--format=json", *inputs],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  rows = {}
  for line in result.stdout.splitlines():
    row = json.loads(line)
    rows[row["file"]] = row
  return result, rows


def _keras_probabilities(run_dir, images, temperature=None):
  from xray_keras import models
  from xray_keras.evaluation import calibration

  model = models.load_model(os.path.join(run_dir, "model.keras"))
  p = models.pneumonia_probability(model.predict(images.astype(np.float32), 64, verbose=0))
  return calibration.apply_temperature(p, temperature) if temperature else p


def _builtin_test(size, cache_dir, resize_mode="squash"):
  from xray_keras.data import loader

  config = loader.DataConfig(image_size=size, resize_mode=resize_mode, cache_dir=str(cache_dir))
  return loader.load(config, need=("test",)).splits["test"]


@pytest.fixture(scope="module")
def float_exports(tiny_run, tmp_path_factory):
  """The tiny run given a temperature, exported in each float32 format."""
  _, tree, run_dir, _ = tiny_run
  out = tmp_path_factory.mktemp("formats")
  run = out / "run"
  shutil.copytree(run_dir, run)
  (run / "calibration.json").write_text(json.dumps({"temperature": TEMPERATURE}))
  exports = {fmt: formats.export(str(run), fmt, export_dir=str(out / "exports")) for fmt in FORMATS}
  return tree, str(run), exports, out


def test_each_float_export_matches_the_keras_model_with_its_temperature_and_card(float_exports):
  from xray_keras.evaluation import clinical
  from xray_keras.serving import runtime

  _, run, exports, out = float_exports
  test = _builtin_test(48, out / "cache", "pad")
  expected = _keras_probabilities(run, test.images, TEMPERATURE)
  for fmt, folder in exports.items():
    assert os.path.basename(os.path.dirname(folder)) == f"vit_scratch-{fmt}" and os.path.basename(folder) == "1"
    model = runtime.Runtime(folder)
    got = model.probabilities(test.images)
    assert np.abs(got - expected).max() < 1e-4, fmt
    card = model.card
    assert card["format"] == fmt and card["quantization"] is None and card["calibration"]["temperature"] == TEMPERATURE
    assert card["input"] == {"image_size": 48, "channels": 1, "resize_mode": "pad", "pixel_range": [0, 255]}
    thresholds = clinical.decision_thresholds(run)
    assert {rule: p["threshold"] for rule, p in card["operating_points"].items()} == thresholds
    assert card["decision_threshold"] == thresholds["youden"]
    assert card["runtime"] in card["versions"] or fmt == "litert"


def test_predict_runs_each_export_where_tensorflow_and_keras_cannot_be_imported(float_exports, tmp_path):
  from xray_keras.serving import predict

  tree, run, exports, _ = float_exports
  inputs = os.path.join(tree, "test")
  (tmp_path / "notes.jpeg").write_text("a text file, not a JPEG\n")
  keras_predictor = predict.KerasPredictor(os.path.join(run, "model.keras"))
  files, _ = predict.list_inputs([inputs])
  expected, _ = predict.predict_files(keras_predictor, files)
  _, refused = predict.predict_files(keras_predictor, [str(tmp_path / "notes.jpeg")])
  env = _no_tensorflow(tmp_path)
  for fmt, folder in exports.items():
    result, rows = _predict(folder, [inputs, str(tmp_path / "notes.jpeg")], env)
    assert result.returncode == 3, result.stderr[-2000:]  # one file skipped
    assert f"skipped: {tmp_path / 'notes.jpeg'}: {refused[0].reason}" in result.stderr
    assert len(rows) == len(expected) == 12
    for path, label, probability in expected:
      assert rows[path]["pneumonia_probability"] == pytest.approx(probability, abs=1e-4), fmt
      assert rows[path]["label"] == label and rows[path]["threshold"] == keras_predictor.threshold
  assert (
    "not installed here"
    in subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True).stderr
  )  # the check can fail: the environment does refuse TensorFlow


def test_an_export_is_evaluated_on_a_labelled_set_like_its_run(float_exports, tmp_path):
  from xray_keras import external_validation

  tree, run, exports, _ = float_exports
  _, own = external_validation.validate(run, tree, output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
  folder, result = external_validation.validate(
    exports["onnx"], tree, output_dir=str(tmp_path / "onnx"), cache_dir=str(tmp_path / "cache")
  )
  assert result["n"] == own["n"] == 12
  assert result["at_0.5"]["auc"] == pytest.approx(own["at_0.5"]["auc"], abs=1e-6)
  for rule, point in own["operating_points"].items():
    assert result["operating_points"][rule]["validation_chosen"]["threshold"] == point["validation_chosen"]["threshold"]
    assert result["operating_points"][rule]["validation_chosen"]["accuracy"] == point["validation_chosen"]["accuracy"]
  assert result["own_test"]["auc"] == own["own_test"]["auc"]
  assert result["difference_from_own_test"]["resampled"] == "this set only (own test AUC held fixed)"
  report = open(os.path.join(folder, "report.md")).read()
  assert "Model: the onnx export of `vit_scratch`" in report


def test_an_export_needs_a_model_card_and_a_known_format(float_exports, tmp_path):
  from xray_keras.errors import UserError
  from xray_keras.serving import runtime

  _, run, exports, _ = float_exports
  lone = tmp_path / "model.onnx"
  shutil.copy(os.path.join(exports["onnx"], "model.onnx"), lone)
  with pytest.raises(UserError, match="No model_card.json at .*holds its input size, resize and thresholds"):
    runtime.Runtime(str(lone))
  with pytest.raises(UserError, match="is not an exported model"):
    runtime.Runtime(os.path.join(run, "metrics.json"))
  with pytest.raises(UserError, match="--quantize applies to onnx, litert and openvino"):
    formats.export(run, "saved_model", "int8")
  with pytest.raises(UserError, match="int8_full is LiteRT's integer-only file; onnx and openvino take"):
    formats.export(run, "onnx", "int8_full")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """ViT_scratch's recipe at 32 px (8 px patches, 6 epochs, batch 128) on the built-in data: test ROC-AUC
  about 0.9, probabilities spread over 0..1 (the tiny run's sit within 0.01 of each other, too close for
  int8). Batch and learning rate are pinned: the agreement bounds below were measured on this run."""
  base = tmp_path_factory.mktemp("trained")
  command = smoke_run_command("", base / "cache", base / "run")
  command = [a for a in command if not a.startswith(("--flagfile", "--data_dir"))]
  command += ["--flagfile=experiments/vit_scratch.cfg", "--image_size=32", "--patch_size=8", "--epochs=6"]
  command += ["--batch_size=128", "--learning_rate=2e-3", "--tta=1"]
  command += ["--export", "--export_format=onnx", f"--export_dir={base / 'exports'}", "--noreport"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return base


@pytest.mark.slow
def test_int8_exports_agree_with_the_float_model_on_the_builtin_test_images(trained_run, tmp_path):
  from xray_keras.serving import runtime

  run = str(trained_run / "run")
  test = _builtin_test(32, trained_run / "cache")
  expected = _keras_probabilities(run, test.images)
  labels = (test.labels > 0).astype(int)
  env = _no_tensorflow(tmp_path)
  tree = make_tree(str(tmp_path / "tree"), per_class=2)
  run_onnx = trained_run / "exports" / "vit_scratch-onnx"  # the run's --export_format
  at_the_end = runtime.Runtime(str(run_onnx))
  assert at_the_end.card["format"] == "onnx" and at_the_end.card["quantization"] is None
  assert np.abs(at_the_end.probabilities(test.images) - expected).max() < 1e-4
  import importlib.util

  missing_nncf = importlib.util.find_spec("nncf") is None
  # An int8 file is smaller than the model's float32 weights alone (a float export holds them and its graph).
  float32_bytes = 4 * json.loads((trained_run / "run" / "metrics.json").read_text())["model"]["params"]
  for fmt, quantize in [k for k in MIN_INT8_AGREEMENT if k[0] != "openvino" or not missing_nncf]:
    folder = formats.export(run, fmt, quantize, str(tmp_path / "exports"))
    model = runtime.Runtime(folder)
    threshold = model.card["decision_threshold"]
    got = model.probabilities(test.images)
    agree = np.mean((got >= threshold) == (expected >= threshold))
    auc_change = metrics.roc_auc(labels, got) - metrics.roc_auc(labels, expected)
    flipped = np.abs(expected[(got >= threshold) != (expected >= threshold)] - threshold)
    assert agree >= MIN_INT8_AGREEMENT[fmt, quantize], (fmt, quantize, agree, auc_change)
    assert flipped.max(initial=0) < INT8_FLIP_BAND[quantize], (fmt, quantize, np.sort(flipped))
    assert np.abs(got - expected).mean() < MAX_INT8_MEAN_ERROR, (fmt, quantize, np.abs(got - expected).mean())
    assert abs(auc_change) < MAX_INT8_AUC_CHANGE, (fmt, quantize, agree, auc_change)
    calibrated = (fmt, quantize) != ("litert", "int8")
    assert model.card["quantization"]["calibration"].startswith("256 validation" if calibrated else "none"), fmt
    if quantize == "int8_full":
      continue
    assert _bytes(folder) < float32_bytes, fmt
    result, rows = _predict(folder, [tree], env)  # a fresh process without TensorFlow gives the same numbers
    assert result.returncode == 0 and len(rows) == 12, result.stderr[-2000:]
    for path, row in rows.items():
      with open(path, "rb") as f:
        pixels = decode.decode_image(f.read(), 32)
      assert row["pneumonia_probability"] == pytest.approx(model.probabilities(pixels[None])[0], abs=1e-6)
  if missing_nncf:
    pytest.skip("OpenVINO int8 not checked: it needs NNCF (pip install -e '.[openvino]'); ONNX and LiteRT passed")


def _bytes(folder):
  return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n != "model_card.json")
