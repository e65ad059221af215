"""Timing as a Keras callback: first step, per-epoch wall time, training images/s.

Train img/s has one meaning everywhere (epoch lines, history.csv, timing.json, metrics.json, the
report): training images over training seconds, validation excluded, and in the first epoch the
first step (graph build and compile) excluded too. A run's figure is the median over its epochs.
"""

import time

import keras
from absl import logging

from xray_keras.training import progress


class TimingCallback(keras.callbacks.Callback):
  """Records fit timing; validation time inside an epoch is excluded from training speed.

  Adds `epoch_time_s` and `train_images_per_s` to each epoch's logs, so a
  `CSVLogger` placed after it writes them to history.csv.

  Args:
    train_images: int. Images seen per epoch.
    batch_size: int. Training batch size.
  """

  def __init__(self, train_images, batch_size):
    super().__init__()
    self.train_images = train_images
    self.batch_size = batch_size
    self.epochs = []
    self.first_step_s = None
    self.fit_s = None

  def on_train_begin(self, logs=None):
    self._fit_start = time.perf_counter()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = time.perf_counter()
    self._eval_s = 0.0

  def on_train_batch_end(self, batch, logs=None):
    if self.first_step_s is None:
      self.first_step_s = time.perf_counter() - self._fit_start
      logging.info("First training step done after %.2fs (includes graph build/compile)", self.first_step_s)

  def on_test_begin(self, logs=None):
    self._eval_start = time.perf_counter()

  def on_test_end(self, logs=None):
    self._eval_s += time.perf_counter() - self._eval_start

  def on_epoch_end(self, epoch, logs=None):
    wall = time.perf_counter() - self._epoch_start
    train_s = max(wall - self._eval_s, 1e-9)
    record = {
      "epoch": epoch + 1,
      "wall_s": wall,
      "train_s": train_s,
      "val_s": self._eval_s,
      "train_images_per_s": self.train_images / train_s,
    }
    if (
      not self.epochs
      and self.first_step_s is not None
      and train_s > self.first_step_s
      and self.train_images > self.batch_size
    ):
      record["with_first_step_images_per_s"] = record["train_images_per_s"]
      record["train_images_per_s"] = (self.train_images - self.batch_size) / (train_s - self.first_step_s)
    self.epochs.append(record)
    if logs is not None:
      logs["epoch_time_s"] = wall
      logs["train_images_per_s"] = record["train_images_per_s"]
    summary = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()) if isinstance(v, float))
    progress.DETAIL.info(
      "epoch %d: %.1fs, %.1f img/s train; %s", epoch + 1, wall, record["train_images_per_s"], summary
    )

  def on_train_end(self, logs=None):
    self.fit_s = time.perf_counter() - self._fit_start

  def summary(self):
    """Timing figures for timing.json."""
    steady = sorted(e["train_images_per_s"] for e in self.epochs)
    return {
      "first_step_s": self.first_step_s,
      "fit_s": self.fit_s,
      "epochs_run": len(self.epochs),
      "mean_epoch_s": sum(e["wall_s"] for e in self.epochs) / max(len(self.epochs), 1),
      "train_images_per_s": steady[len(steady) // 2] if steady else None,
      "batch_size": self.batch_size,
      "train_images_per_epoch": self.train_images,
      "epochs": self.epochs,
    }
