"""Two-phase transfer learning on real images: frozen phase 1, feature cache, phase 2, the cfgs."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.conftest import REPO, make_tree, real_files, real_jpeg, shared_weights
from tests.test_serving import FRESH
from tests.test_zoo import RESNET50_NOTOP
from xray_keras import models
from xray_keras.data import decode
from xray_keras.models.pretrained import backbone_of
from xray_keras.training import transfer

SIZE = 32


def _real(split="train", per_class=8):
  images, labels = [], []
  for label, class_name in enumerate(("NORMAL", "PNEUMONIA")):
    for name in real_files(split, class_name, per_class):
      images.append(decode.decode_image(real_jpeg(split, class_name, name), SIZE, 1, "squash"))
      labels.append(label)
  return np.stack(images), np.asarray(labels, np.float32)


def _compile_kwargs(lr=1e-2):
  return dict(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy", metrics=["accuracy"])


def _backbone_values(model):
  return [np.array(keras.ops.convert_to_numpy(w)) for w in backbone_of(model).weights]


def _pretrained_resnet(dropout=0.0):
  return models.build_model("resnet50", (SIZE, SIZE, 1), weights=shared_weights(RESNET50_NOTOP), dropout=dropout)


@pytest.mark.parametrize("use_cache", [True, False])
def test_phase1_leaves_every_backbone_weight_unchanged_and_phase2_changes_them(use_cache):
  train, val = _real("train"), _real("test", 4)
  model = _pretrained_resnet()
  before = _backbone_values(model)
  head_before = model.get_layer("pneumonia").kernel.numpy().copy()
  transfer.train_head(
    model, _compile_kwargs(), train, val, batch_size=8, epochs=2, seed=1, callbacks=[], use_cache=use_cache
  )
  for a, b in zip(before, _backbone_values(model)):  # kernels and BatchNorm moving statistics
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(head_before, model.get_layer("pneumonia").kernel.numpy())

  transfer.set_trainable(model, "1", freeze_batchnorm=True)
  model.compile(**_compile_kwargs(1e-3))
  model.fit(train[0], train[1], batch_size=8, epochs=1, verbose=0)
  backbone = backbone_of(model)
  changed = {w.path for w, a in zip(backbone.weights, before) if not np.array_equal(a, keras.ops.convert_to_numpy(w))}
  assert any("conv5_block3_3_conv" in p for p in changed)
  assert not any("conv5_block2" in p or "conv2_" in p for p in changed)  # below the unfrozen block
  assert not any("_bn" in p for p in changed)  # BatchNorm frozen, moving statistics included


def test_feature_cache_gives_the_same_head_as_training_through_the_backbone():
  train, val = _real("train"), _real("test", 4)
  heads = []
  for use_cache in (True, False):
    keras.utils.set_random_seed(0)
    model = _pretrained_resnet(dropout=0.0)
    if heads:
      model.get_layer("pneumonia").set_weights(heads[0][1])  # the same starting head
    start = [w.copy() for w in model.get_layer("pneumonia").get_weights()]
    transfer.train_head(
      model,
      _compile_kwargs(),
      train,
      val,
      batch_size=8,
      epochs=3,
      seed=7,
      callbacks=[],
      class_weight={0: 1.5, 1: 0.75},
      use_cache=use_cache,
    )
    heads.append((model.get_layer("pneumonia").get_weights(), start))
  (cached, start), (through, _) = heads
  assert not np.allclose(cached[0], start[0])  # it trained
  np.testing.assert_allclose(cached[0], through[0], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(cached[1], through[1], rtol=1e-3, atol=1e-4)


def _run(cfg, tree, out, *extra):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.run",
      f"--flagfile=experiments/{cfg}.cfg",
      f"--data_dir={tree}",
      f"--output_dir={out}",
      f"--cache_dir={out.parent / 'cache'}",
      "--weights=none",
      "--image_size=32",
      "--head_epochs=1",
      "--epochs=1",
      "--batch_size=8",
      "--val_fraction=0.3",
      "--noreport",
      *extra,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["resnet50", "vit_base"])
def test_one_epoch_cli_run_of_each_pretrained_cfg(cfg, tmp_path):
  tree = make_tree(str(tmp_path / "chest_xray"), per_class=5)
  out = tmp_path / "run"
  export_dir = tmp_path / "saved_models"
  _run(cfg, tree, out, "--export", f"--export_dir={export_dir}")
  m = json.loads((out / "metrics.json").read_text())
  assert m["model"]["name"] == cfg and m["model"]["weights"] == "none" and m["test"]["n"] == 10
  timing = json.loads((out / "timing.json").read_text())
  assert timing["head_phase"]["feature_cache"] and timing["head_phase"]["epochs_run"] == 1
  assert timing["epochs_run"] == 1
  assert (out / "history_head.csv").is_file() and (out / "history.csv").is_file()
  assert not (out / "head_phase.weights.h5").exists() and not (out / "checkpoints").exists()  # only model.keras

  # The SavedModel, in a fresh process without this package, gives the run's own test probabilities
  # (predictions.csv: the Keras model on the images the run decoded).
  with open(out / "predictions.csv") as f:
    expected = {row["file"]: float(row["probability"]) for row in csv.DictReader(f) if row["split"] == "test"}
  served = subprocess.run(
    [sys.executable, "-c", FRESH, str(export_dir / cfg / "1"), *[os.path.join(tree, p) for p in expected]],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert served.returncode == 0, served.stderr[-3000:]
  probabilities = json.loads(served.stdout.strip().splitlines()[-1])["pneumonia_probability"]
  np.testing.assert_allclose(probabilities, list(expected.values()), atol=1e-5)


@pytest.mark.slow
def test_keras_hub_vit_base_trains_on_jax_without_tensorflow(tmp_path):
  pytest.importorskip("jax")
  from tests.test_distribution import WITHOUT_TF

  result = subprocess.run(
    [
      sys.executable,
      "-c",
      WITHOUT_TF,
      "--flagfile=experiments/smoke.cfg",
      "--model=vit_base",
      "--weights=none",
      "--head_epochs=1",
      "--epochs=1",
      "--unfreeze=1",
      "--image_size=32",
      "--noreport",
      f"--output_dir={tmp_path / 'run'}",
      f"--cache_dir={tmp_path / 'cache'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "KERAS_BACKEND": "jax"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / "run" / "timing.json").read_text())["head_phase"]["feature_cache"]
