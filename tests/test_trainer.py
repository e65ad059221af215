import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.conftest import REPO
from xray_keras.config import TrainConfig
from xray_keras.training import trainer
from xray_keras.training.timing import TimingCallback


def test_cosine_schedule_reaches_the_optimizer():
  optimizer = trainer.make_optimizer(TrainConfig(schedule="cosine", learning_rate=1e-2, epochs=2, warmup_epochs=1), 10)
  schedule = optimizer._learning_rate
  assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(10)) == pytest.approx(1e-2)  # end of warm-up
  assert float(schedule(20)) == pytest.approx(0.0, abs=1e-6)
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer, "mse")
  model.fit(np.ones((8, 2)), np.ones(8), batch_size=2, epochs=1, verbose=0)
  assert float(optimizer.learning_rate) == pytest.approx(float(schedule(4)))


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
    assert epoch["train_images_per_s"] == pytest.approx(64 / epoch["train_s"])
  assert "steady_images_per_s" in summary["epochs"][0]


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
