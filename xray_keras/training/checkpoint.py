"""Keep the last weights whose loss was finite, so a NaN never costs a finished epoch."""

import math
import os

import keras

CHECKPOINT = os.path.join("checkpoints", "last_good.weights.h5")
HEAD_WEIGHTS = "head_phase.weights.h5"  # phase 1 of a pretrained model, kept until the run ends


class LastGoodCheckpoint(keras.callbacks.Callback):
  """Saves the weights at each epoch end whose loss is finite (atomically)."""

  def __init__(self, path, target=None):
    """`target`: the model whose weights to save, when fit() trains a wrapper around it."""
    super().__init__()
    self.path, self.target = path, target
    self.epoch = None

  def on_epoch_end(self, epoch, logs=None):
    if not all(math.isfinite(v) for v in (logs or {}).values() if isinstance(v, float)):
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = self.path.replace(".weights.h5", ".tmp.weights.h5")
    (self.target or self.model).save_weights(tmp, overwrite=True)
    os.replace(tmp, self.path)
    self.epoch = epoch + 1
