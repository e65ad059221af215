import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from xray_keras.config import TrainConfig
from xray_keras.models import schedules
from xray_keras.training import device, trainer, transfer
from xray_keras.training.timing import TimingCallback


def test_cosine_schedule_reaches_the_optimizer():
  optimizer = trainer.make_optimizer(TrainConfig(schedule="cosine", learning_rate=1e-2, epochs=2, warmup_epochs=1), 10)
  schedule = optimizer._learning_rate
  assert isinstance(schedule, schedules.WarmupCosine)
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(10)) == pytest.approx(1e-2)  # end of warm-up
  assert float(schedule(20)) == pytest.approx(0.0, abs=1e-6)
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer, "mse")
  model.fit(np.ones((8, 2)), np.ones(8), batch_size=2, epochs=1, verbose=0)
  assert float(optimizer.learning_rate) == pytest.approx(float(schedule(4)))


@pytest.mark.parametrize("warmup", [0, 7])
def test_warmup_cosine_matches_keras_cosine_decay(warmup):
  ours = schedules.WarmupCosine(3e-3, 50, warmup)
  keras_schedule = (
    keras.optimizers.schedules.CosineDecay(0.0, 50, warmup_target=3e-3, warmup_steps=warmup)
    if warmup
    else keras.optimizers.schedules.CosineDecay(3e-3, 50)
  )
  for step in [0, 1, 3, 6, 7, 8, 20, 56, 57, 80]:
    assert float(ours(step)) == pytest.approx(float(keras_schedule(step)), rel=1e-5, abs=1e-9), step
  restored = keras.optimizers.AdamW.from_config(keras.optimizers.AdamW(ours).get_config())
  assert float(restored.learning_rate) == pytest.approx(float(ours(0)), abs=1e-9)


def test_bad_optimizer_and_schedule_names():
  with pytest.raises(trainer.UserError, match="Unknown optimizer: 'rmsprop'"):
    trainer.make_optimizer(TrainConfig(optimizer="rmsprop"), 1)
  with pytest.raises(trainer.UserError, match="Unknown schedule: 'step'"):
    trainer.make_optimizer(TrainConfig(schedule="step"), 1)


def test_timing_callback_records_each_epoch_and_excludes_validation():
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
  model.compile("adam", "binary_crossentropy")
  timing = TimingCallback(train_images=64, batch_size=16)
  x, y = np.random.default_rng(0).normal(size=(64, 4)), np.arange(64) % 2
  model.fit(x, y, batch_size=16, epochs=3, validation_data=(x, y), callbacks=[timing], verbose=0)
  summary = timing.summary()
  assert summary["epochs_run"] == 3 and len(summary["epochs"]) == 3
  assert 0 < summary["first_step_s"] <= summary["fit_s"]
  for epoch in summary["epochs"]:
    assert epoch["val_s"] > 0 and epoch["train_s"] + epoch["val_s"] == pytest.approx(epoch["wall_s"])
  for epoch in summary["epochs"][1:]:
    assert epoch["train_images_per_s"] == pytest.approx(64 / epoch["train_s"])
  # One definition: the first epoch's figure leaves out the first (compiling) step, and the run's is
  # the median of the epochs' figures.
  first = summary["epochs"][0]
  assert first["with_first_step_images_per_s"] == pytest.approx(64 / first["train_s"])
  assert first["train_images_per_s"] == pytest.approx(48 / (first["train_s"] - summary["first_step_s"]))
  rates = sorted(e["train_images_per_s"] for e in summary["epochs"])
  assert summary["train_images_per_s"] == rates[1]


def test_cpu_device_hides_every_gpu_in_a_fresh_process():
  code = (
    "from xray_keras.training import device; import tensorflow as tf;"
    "assert device.configure('cpu') == 'cpu';"
    "assert tf.config.get_visible_devices('GPU') == [];"
    "x = tf.matmul(tf.ones((2, 2)), tf.ones((2, 2)));"
    "assert 'CPU' in x.device, x.device; print('ok')"
  )
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_jit_auto_is_off_for_tensorflow_and_explicit_values_win():
  assert keras.backend.backend() == "tensorflow"
  assert trainer.resolve_jit("auto") is False
  assert trainer.resolve_jit("true") is True and trainer.resolve_jit("false") is False


_NATIVE_BFLOAT16 = {"avx512_bf16", "amx_bf16", "bf16"}
_OTHER_FLAGS = ["avx2", "avx512f", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_int8", "avx_vnni", "sve", "i8mm"]


@settings(max_examples=60, deadline=None)
@given(
  flags=st.lists(st.sampled_from(sorted(_NATIVE_BFLOAT16) + _OTHER_FLAGS), unique=True),
  arm=st.booleans(),
  processors=st.integers(1, 3),
)
def test_mixed_precision_auto_is_bfloat16_exactly_where_the_cpu_has_it(tmp_path_factory, flags, arm, processors):
  """/proc/cpuinfo as x86 Linux writes it (a `flags` line per processor) or as Arm's does (`Features`)."""
  key = "Features\t" if arm else "flags\t\t"
  block = f"processor\t: {{}}\nmodel name\t: some cpu bf16-ready\n{key}: {' '.join(flags)}\n\n"
  path = tmp_path_factory.mktemp("cpu") / "cpuinfo"
  path.write_text("".join(block.format(i) for i in range(processors)))
  native = bool(_NATIVE_BFLOAT16 & set(flags))
  assert device.cpu_has_bfloat16(str(path)) is native
  assert device.mixed_precision_policy("auto", "cpu", str(path)) == ("mixed_bfloat16" if native else "none")
  assert device.mixed_precision_policy("auto", "gpu x1", str(path)) == "none"
  for explicit in ("none", "mixed_float16", "mixed_bfloat16"):
    assert device.mixed_precision_policy(explicit, "cpu", str(path)) == explicit


def test_mixed_precision_auto_is_float32_where_the_cpu_cannot_be_read(tmp_path):
  assert device.mixed_precision_policy("auto", "cpu", str(tmp_path / "no-cpuinfo")) == "none"


def test_set_precision_returns_and_sets_the_policy_it_resolved():
  try:
    assert trainer.set_precision_and_seeds(TrainConfig(mixed_precision="mixed_bfloat16")) == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_building_the_optimizer_first_changes_no_result():
  """`build_optimizer` only moves slot creation out of the traced step: same weights after training."""
  rng = np.random.default_rng(0)
  images, labels = rng.uniform(0, 255, (32, 16, 16, 1)).astype("float32"), rng.integers(0, 2, (32, 1)).astype("float32")
  trained = []
  for build_first in (False, True):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
      [
        keras.Input((16, 16, 1)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Flatten(),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
      ]
    )
    model.compile(
      **trainer.compile_kwargs(
        trainer.make_optimizer(TrainConfig(optimizer="adamw", schedule="cosine", epochs=2, warmup_epochs=1), 4), False
      )
    )
    if build_first:
      transfer.build_optimizer(model)
      assert model.optimizer.built and len(model.optimizer.variables) > 1
    model.fit(images, labels, batch_size=8, epochs=2, shuffle=False, verbose=0)
    trained.append([w.numpy() for w in model.weights])
  for a, b in zip(*trained):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_progress_line_shows_epoch_k_of_n_elapsed_and_eta_from_the_steady_epochs(monkeypatch):
  from absl import logging

  from xray_keras.training import progress

  assert progress.eta([30.0], 9) == 270.0  # only the first (compiling) epoch so far
  assert progress.eta([30.0, 10.0, 12.0, 11.0], 6) == 66.0  # the median of the steady ones
  assert progress.clock(3725) == "1:02:05" and progress.clock(65) == "1:05"
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
  model.compile("adam", "binary_crossentropy", metrics=[keras.metrics.AUC(name="auc")])
  x, y = np.random.default_rng(0).normal(size=(32, 4)), np.arange(32) % 2
  model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), callbacks=[progress.ProgressLine(3)], verbose=0)
  assert len(lines) == 3
  assert lines[0].startswith("epoch 1/3: ") and " elapsed, ETA " in lines[0]
  assert lines[2].startswith("epoch 3/3: ") and "ETA 0:00 |" in lines[2]
  assert "loss " in lines[2] and "val_auc " in lines[2] and "precision" not in lines[2]

  lines.clear()
  monkeypatch.setenv(progress.STUDY_ENV, '{"index": 2, "count": 4, "name": "vit_scratch"}')
  model.fit(x, y, batch_size=8, epochs=1, callbacks=[progress.ProgressLine(1)], verbose=0)
  assert (
    lines[0].startswith("model 2/4 vit_scratch, epoch 1/1: ") and "(then 2 more models; 2 not yet timed)" in lines[0]
  )
  # Later runs of a model the study has already timed (another seed) give the study's ETA.
  study = {"index": 3, "count": 5, "name": "vit_scratch_seed7"}
  assert progress.study_eta({**study, "later_s": 600.0, "later_untimed": 0}, 65.0) == ", study ETA 11:05"
  assert progress.study_eta({**study, "later_s": 600.0, "later_untimed": 1}, 65.0) == (
    " (then 2 more models, 10:00 for 1 timed; 1 not yet timed)"
  )
  assert progress.study_eta({"index": 5, "count": 5}, 65.0) == ""


def test_ema_validates_on_the_average_and_ends_with_it_in_the_model(tmp_path):
  import types

  from xray_keras.training.checkpoint import LastGoodCheckpoint

  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(64, 4)).astype("float32"), (np.arange(64) % 2).astype("float32")
  train = TrainConfig(optimizer="adamw", learning_rate=5e-2, epochs=3, ema_momentum=0.9)

  def compiled():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(**trainer.compile_kwargs(trainer.make_optimizer(train, 8, ema_momentum=train.ema_momentum), False))
    return model

  keras.utils.set_random_seed(0)
  model = compiled()
  callbacks = trainer._callbacks(
    types.SimpleNamespace(train=train),
    str(tmp_path),
    TimingCallback(64, 8),
    False,
    LastGoodCheckpoint(str(tmp_path / "last.weights.h5")),
  )
  history = model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), callbacks=callbacks, verbose=0)
  average = [v.numpy() for v in model.optimizer._model_variables_moving_average]
  for weight, mean in zip(model.trainable_weights, average):
    np.testing.assert_array_equal(weight.numpy(), mean)  # fit's last act: the average into the model
  assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-5)
  assert not trainer.make_optimizer(train, 8).use_ema  # phase 1 and federated sites: no average
  # A resumed run starts from BackupAndRestore's weights file: the average comes back with it.
  model.save_weights(str(tmp_path / "backup.weights.h5"))
  resumed = compiled()
  transfer.build_optimizer(resumed)
  resumed.load_weights(str(tmp_path / "backup.weights.h5"))
  for kept, mean in zip(resumed.optimizer._model_variables_moving_average, average):
    np.testing.assert_array_equal(kept.numpy(), mean)


def test_end_of_run_predictions_use_whole_batches_only(monkeypatch):
  from xray_keras import models
  from xray_keras.evaluation import prediction, run_eval

  model = models.build_model("cnn_scratch", (32, 32, 1), weights="none")
  images = np.random.default_rng(0).integers(0, 255, (23, 32, 32, 1)).astype(np.uint8)
  expected = model.predict(images.astype(np.float32), batch_size=8, verbose=0)
  shapes, predict, predict_on_batch = [], model.predict, model.predict_on_batch
  predicted = []
  monkeypatch.setattr(model, "predict", lambda x, **kw: predicted.append(len(x)) or predict(x, **kw))
  monkeypatch.setattr(model, "predict_on_batch", lambda x: shapes.append(x.shape[0]) or predict_on_batch(x))
  for count in (23, 7, 8):  # the validation and test splits, and a split of exactly one batch
    np.testing.assert_allclose(prediction.predict(model, images[:count], 8), expected[:count], atol=1e-6)
  monkeypatch.setattr(model, "predict_on_batch", predict_on_batch)  # its latency figure times single images
  run_eval.inference_timing(model, images, 8)
  assert shapes and set(shapes) == {8}, shapes  # one batch shape: the step is traced once
  assert not predicted  # not model.predict, whose autotuned tf.data pipeline held the end of each call
