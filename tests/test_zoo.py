"""The model zoo: registry, parameter table, pretrained backbones and --weights."""

import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.conftest import REPO, shared_weights
from xray_keras import models
from xray_keras.models import pretrained, table
from xray_keras.models import weights as weights_lib
from xray_keras.training import transfer

RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
MOBILENET_TOP = "mobilenet_v1_0.75_224_imagenet.weights.h5"
# A closed local port as the proxy: every download fails at once, with or without a network.
OFFLINE = {
  "https_proxy": "http://127.0.0.1:9",
  "HTTPS_PROXY": "http://127.0.0.1:9",
  "http_proxy": "http://127.0.0.1:9",
  "HTTP_PROXY": "http://127.0.0.1:9",
}


def _images(n=3, size=64, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 1)).astype(np.float32)


# The paper's table: layers, hidden, MLP, heads, params.
PAPER_TABLE = {
  "ViT-Tiny": (12, 192, 768, 3, 5.5e6),
  "ViT-Base": (12, 768, 3072, 12, 86e6),
  "ViT-Large": (24, 1024, 4096, 16, 307e6),
  "ViT-Huge": (32, 1280, 5120, 16, 632e6),
  "ViT_Base": (12, 768, 3072, 12, 86e6),
  "ViT_scratch": (4, 56, 224, 4, 155.7e3),
}


def _matches_the_paper(rows):
  for r in rows:
    assert set(r) == set(table.COLUMNS)
    if r["model"] in PAPER_TABLE:
      layers, hidden, mlp, heads, params = PAPER_TABLE[r["model"]]
      assert (r["layers"], r["hidden_size"], r["mlp_size"], r["heads"]) == (layers, hidden, mlp, heads), r["model"]
      tolerance = 0.04 if r["model"] == "ViT_scratch" else 0.02
      assert abs(r["params"] - params) / params < tolerance, (r["model"], r["params"])


def test_parameter_table_matches_the_paper_as_json():
  """The CLI's JSON; ViT-Large and ViT-Huge (940M weights to build) are checked in the slow set."""
  small = ["cnn_scratch", "vit_scratch", "resnet50", "vit_base", "vit_tiny_scratch", "vit_base_scratch"]
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.models", "--format=json", f"--only={','.join(small)}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {r["model"]: r for r in json.loads(result.stdout)}
  assert set(rows) == {"CNN_scratch", "ViT_scratch", "ResNet50", "ViT_Base", "ViT-Tiny", "ViT-Base"}
  _matches_the_paper(rows.values())
  assert abs(rows["ResNet50"]["params"] - 23.5e6) / 23.5e6 < 0.02 and rows["ResNet50"]["layers"] == 50
  assert abs(rows["CNN_scratch"]["params"] - 17.6e6) / 17.6e6 < 0.02


@pytest.mark.slow
def test_parameter_table_of_the_large_vits_matches_the_paper():
  rows = table.rows(["vit_large_scratch", "vit_huge_scratch"])
  assert [r["model"] for r in rows] == ["ViT-Large", "ViT-Huge"]
  _matches_the_paper(rows)


def test_text_table_lists_every_model():
  text = table.format_text(table.rows(["vit_scratch", "resnet50"]))
  assert "ViT_scratch" in text and "ResNet50" in text and "23,589,761" in text and "paper" in text


def test_the_registry_builds_exactly_the_names_the_flags_accept():
  from xray_keras import choices
  from xray_keras.models import vit_family

  assert tuple(models.REGISTRY) == choices.MODELS and tuple(vit_family.SIZES) == choices.VIT_SIZES
  assert choices.unknown_model("applications:EfficientNetV2B0") is None and choices.unknown_model("vit_giant")


def test_registry_takes_any_keras_application_and_names_the_valid_ones():
  model = models.build_model("applications:EfficientNetV2B0", (64, 64, 1), weights="none")
  assert model.predict(_images(), verbose=0).shape == (3, 1)
  assert pretrained.backbone_of(model).name.startswith("efficientnetv2")
  with pytest.raises(ValueError, match="EfficientNetV2B0.*ResNet50|ResNet50.*EfficientNetV2B0"):
    models.get_spec("applications:ResNet5O")
  with pytest.raises(ValueError, match="vit_base_patch16_224_imagenet21k"):
    models.get_spec("keras_hub:vit_bse")
  with pytest.raises(ValueError, match="resnet50, vit_base"):
    models.get_spec("resnet")
  assert models.get_spec("keras_hub:vit_base_patch16_224_imagenet21k").pretrained


def test_cli_rejects_an_unknown_model_in_one_line(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.run", "--model=applications:Nope", "--epochs=1"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if "Unknown keras.applications model" in l]
  assert len(errors) == 1 and "ResNet50" in errors[0] and "Traceback" not in result.stderr


def test_grayscale_is_repeated_and_preprocessing_is_inside_the_model():
  model = models.build_model("resnet50", (32, 32, 1), weights="none")
  gray = _images(2, 32)
  rgb = np.repeat(gray, 3, axis=-1)
  inner = keras.Model(model.inputs, model.get_layer("preprocess").output)
  expected = keras.applications.resnet50.preprocess_input(rgb.copy())
  np.testing.assert_allclose(keras.ops.convert_to_numpy(inner(gray)), expected, rtol=1e-6, atol=1e-4)
  rgb_model = models.build_model("resnet50", (32, 32, 3), weights="none")
  rgb_model.set_weights(model.get_weights())
  np.testing.assert_allclose(rgb_model.predict(rgb, verbose=0), model.predict(gray, verbose=0), atol=1e-6)


def test_real_imagenet_resnet50_weights_from_a_local_file():
  path = shared_weights(RESNET50_NOTOP)
  model = models.build_model("resnet50", (64, 64, 1), weights=path)
  reference = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
  reference.load_weights(path)
  for got, want in zip(pretrained.backbone_of(model).weights, reference.weights):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
  random = models.build_model("resnet50", (64, 64, 1), weights="none")
  assert not np.allclose(random.get_layer(index=3).weights[0].numpy(), model.get_layer(index=3).weights[0].numpy())


def test_a_weights_file_with_the_imagenet_top_loads_without_it():
  path = shared_weights(MOBILENET_TOP)
  model = models.build_model("applications:MobileNet", (224, 224, 1), weights=path, backbone_kwargs={"alpha": 0.75})
  full = keras.applications.MobileNet(alpha=0.75, weights=None)
  full.load_weights(path)
  conv = pretrained.backbone_of(model).get_layer("conv_pw_13")
  np.testing.assert_array_equal(conv.kernel.numpy(), full.get_layer("conv_pw_13").kernel.numpy())
  small = models.build_model("applications:MobileNet", (64, 64, 1), weights=path, backbone_kwargs={"alpha": 0.75})
  np.testing.assert_array_equal(
    pretrained.backbone_of(small).get_layer("conv_pw_13").kernel.numpy(), conv.kernel.numpy()
  )
  with pytest.raises(weights_lib.WeightsError, match="does not fit this backbone") as error:
    models.build_model("applications:EfficientNetV2B0", (64, 64, 1), weights=path)
  assert len(str(error.value)) < 500


@pytest.mark.parametrize(
  "name, suffix",
  [
    ("resnet50", ".keras"),
    ("resnet50", ".weights.h5"),
    ("vit_base", ".keras"),
    pytest.param(
      "vit_base", ".weights.h5", marks=pytest.mark.slow
    ),  # 86M weights; the .keras twin runs in the fast set
  ],
)
def test_weights_saved_locally_give_identical_outputs(name, suffix, tmp_path):
  source = models.build_model(name, (32, 32, 1), weights="none")
  path = str(tmp_path / f"saved{suffix}")
  source.save(path) if suffix == ".keras" else source.save_weights(path)
  loaded = models.build_model(name, (32, 32, 1), weights=path)
  np.testing.assert_array_equal(loaded.predict(_images(2, 32), verbose=0), source.predict(_images(2, 32), verbose=0))


@pytest.mark.slow  # builds and saves ViT-Base (86M weights) and ResNet50 twice each
def test_backbone_only_keras_file_and_local_keras_hub_preset(tmp_path):
  source = models.build_model("vit_base", (32, 32, 1), weights="none")
  preset = str(tmp_path / "my_vit_preset")
  pretrained.backbone_of(source).save_to_preset(preset)
  loaded = models.build_model("vit_base", (32, 32, 1), weights=preset)
  for got, want in zip(pretrained.backbone_of(loaded).weights, pretrained.backbone_of(source).weights):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
  backbone_file = str(tmp_path / "backbone.keras")
  rn = models.build_model("resnet50", (32, 32, 1), weights="none")
  pretrained.backbone_of(rn).save(backbone_file)
  again = models.build_model("resnet50", (32, 32, 1), weights=backbone_file)
  np.testing.assert_array_equal(
    pretrained.backbone_of(again).weights[0].numpy(), pretrained.backbone_of(rn).weights[0].numpy()
  )
  with pytest.raises(weights_lib.WeightsError, match="match neither"):
    models.build_model("cnn_scratch", (32, 32, 1), weights=backbone_file)
  with pytest.raises(weights_lib.WeightsError, match="no such file"):
    models.build_model("resnet50", (32, 32, 1), weights=str(tmp_path / "missing.h5"))


@pytest.mark.slow  # two CLI runs in their own processes
def test_offline_imagenet_fails_fast_naming_the_file(tmp_path):
  env = {**os.environ, **OFFLINE, "KERAS_HOME": str(tmp_path / "keras_home"), "KAGGLEHUB_CACHE": str(tmp_path / "kh")}
  cases = (
    ("resnet50", ["resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", str(tmp_path / "keras_home" / "models")]),
    ("vit_base", ["vit_base_patch16_224_imagenet21k", str(tmp_path / "kh" / "models" / "keras" / "vit")]),
  )
  for model, needles in cases:
    start = time.perf_counter()
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "xray_keras.run",
        f"--model={model}",
        "--weights=imagenet",
        "--epochs=1",
        f"--output_dir={tmp_path / model}",
        f"--cache_dir={tmp_path / 'cache'}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=180,
      env=env,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "--weights=" in errors[0], result.stderr[-2000:]
    assert all(n in errors[0] for n in needles), errors[0]
    assert "Traceback" not in result.stderr
    assert elapsed < 120, elapsed  # process start and TensorFlow import included

  # A file of that name that is not Keras' (a converted copy, or a link to one): Keras tries a fresh download
  # and deletes it when that fails. Offline, it is put back unchanged and the error names it; the second
  # name a killed run left behind is removed.
  cached = tmp_path / "keras_home" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
  cached.parent.mkdir(parents=True, exist_ok=True)
  content = b"a converted copy " * 1000
  (tmp_path / "converted.h5").write_bytes(content)
  ended = subprocess.Popen([sys.executable, "-c", "pass"])
  ended.wait()
  for kind in ("file", "link"):
    (cached.parent / f".{cached.name}.kept-{ended.pid}").write_bytes(b"left by a killed run")
    cached.write_bytes(content) if kind == "file" else cached.symlink_to(tmp_path / "converted.h5")
    result = subprocess.run(
      [sys.executable, "-m", "xray_keras.run", "--model=resnet50", "--weights=imagenet", "--epochs=1",
       f"--output_dir={tmp_path / kind}", f"--cache_dir={tmp_path / 'cache'}"],
      cwd=REPO, capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"--weights={cached}" in errors[0] and "is kept" in errors[0], result.stderr[-2000:]
    assert cached.is_symlink() == (kind == "link") and cached.read_bytes() == content, kind
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]  # no second name left behind
    cached.unlink()


def test_scratch_models_have_no_imagenet_weights():
  with pytest.raises(weights_lib.WeightsError, match="from scratch"):
    models.build_model("vit_scratch", (64, 64, 1), weights="imagenet")


def test_blocks_and_top_n_unfreezing():
  rn = models.build_model("resnet50", (32, 32, 1), weights="none")
  names = transfer.blocks(pretrained.backbone_of(rn))
  assert len(names) == 16 and names[0] == "conv2_block1" and names[-1] == "conv5_block3"
  transfer.set_trainable(rn, "3", freeze_batchnorm=True)
  backbone = pretrained.backbone_of(rn)
  assert backbone.get_layer("conv5_block1_1_conv").trainable and not backbone.get_layer("conv4_block6_3_conv").trainable
  assert not backbone.get_layer("conv5_block3_3_bn").trainable
  vit = models.build_model("vit_base", (32, 32, 1), weights="none")
  names = transfer.blocks(pretrained.backbone_of(vit))
  assert len(names) == 12 and names[-1].endswith("12"), names
  trainable = transfer.set_trainable(vit, "2", freeze_batchnorm=True)
  assert trainable == 2 * 7_087_872 + 2 * 768  # two transformer blocks and the final LayerNorm
  with pytest.raises(Exception, match="has 12 blocks"):
    transfer.set_trainable(vit, "13", freeze_batchnorm=True)
