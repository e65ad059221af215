"""Grad-CAM and attention rollout point at the evidence."""

import os
import warnings

import keras
import numpy as np
import pytest

from xray_keras import models
from xray_keras.data import builtin
from xray_keras.evaluation import explain
from xray_keras.models.vit_scratch import vit_scratch


def _toy(n=64, size=32, seed=0):
  """Dark images; positives carry a bright square in the top-left quadrant."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 40, (n, size, size, 1)).astype(np.float32)
  labels = np.arange(n) % 2
  images[labels == 1, 2:12, 2:12] = 255
  return images, labels.astype(np.float32)


def _planted_share(maps):
  return maps[:, :16, :16].sum() / maps.sum()


def test_grad_cam_highlights_the_planted_square():
  keras.utils.set_random_seed(0)
  images, labels = _toy()
  inputs = keras.Input((32, 32, 1))
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(8, 3, padding="same")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.MaxPooling2D(2)(x)
  x = keras.layers.Conv2D(8, 3, padding="same")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
  model.compile("adam", "binary_crossentropy")
  model.fit(images, labels, epochs=15, batch_size=16, verbose=0)
  maps = explain.grad_cam(model, images[labels == 1][:8])
  assert maps.shape == (8, 32, 32) and 0 <= maps.min() and maps.max() <= 1
  assert _planted_share(maps) > 0.5  # a quarter of the image holds most of the heat


def test_attention_rollout_gives_one_map_per_image_from_the_class_token():
  images, labels = _toy(8)
  model = vit_scratch((32, 32, 1), patch_size=8)
  maps = explain.attention_rollout(model, images)
  assert maps.shape == (8, 32, 32) and np.isfinite(maps).all()
  assert explain.explain(model, images).shape == (8, 32, 32)


def test_attention_rollout_of_a_saved_model_warns_of_nothing(tmp_path):
  """A reloaded model's input is a one-element list; the block-input model must not be called otherwise."""
  vit_scratch((32, 32, 1), patch_size=8).save(tmp_path / "model.keras")
  model = keras.models.load_model(tmp_path / "model.keras")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    maps = explain.attention_rollout(model, _toy(4)[0])
  assert maps.shape == (4, 32, 32)


def test_attention_rollout_reads_every_block_of_a_keras_hub_vit():
  import keras_hub

  from xray_keras.models import adapters, pretrained

  backbone = keras_hub.models.ViTBackbone(
    image_shape=(32, 32, 3), patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32
  )
  model = pretrained.classifier((32, 32, 1), adapters.ApplicationPreprocessing("resnet50"), backbone, 0.0, "tiny_vit")
  images, _ = _toy(4)
  attention = explain._hub_vit_attention(model, images)
  assert len(attention) == 3 and all(a.shape == (4, 17, 17) for a in attention)  # 16 patches + class token
  assert np.allclose([a.sum(axis=-1) for a in attention], 1.0, atol=1e-4)  # softmax rows
  maps = explain.explain(model, images)
  assert maps.shape == (4, 32, 32) and np.isfinite(maps).all() and maps.max() == 1.0


def test_grad_cam_on_jax_equals_tensorflow_on_the_same_weights(tmp_path):
  pytest.importorskip("jax")
  import subprocess
  import sys

  from tests.conftest import REPO

  keras.utils.set_random_seed(0)  # the check below needs a map that is not flat, whatever ran before
  model = models.build_model("cnn_scratch", (64, 64, 1))
  model.save_weights(str(tmp_path / "cnn.weights.h5"))
  images = builtin.load()[0][:4].astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  code = (
    "import numpy as np; from xray_keras import models; from xray_keras.evaluation import explain; "
    "m = models.build_model('cnn_scratch', (64, 64, 1)); m.load_weights(r'{w}'); "
    "np.save(r'{out}', explain.grad_cam(m, np.load(r'{x}')))"
  ).format(w=tmp_path / "cnn.weights.h5", out=tmp_path / "jax.npy", x=tmp_path / "images.npy")
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "KERAS_BACKEND": "jax"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  ours = explain.grad_cam(model, images)
  theirs = np.load(tmp_path / "jax.npy")
  assert ours.shape == theirs.shape == (4, 64, 64) and ours.std() > 0.05
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
