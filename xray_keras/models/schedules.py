"""Learning-rate schedules that stay cheap to trace."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="xray_keras")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0 over `decay_steps`.

  The values of `keras.optimizers.schedules.CosineDecay(0, decay_steps, warmup_target=peak,
  warmup_steps=warmup_steps)` (or `CosineDecay(peak, decay_steps)` without warm-up), computed with
  `ops.where` instead of a conditional. AdamW evaluates the schedule once per variable in its
  TensorFlow train step; each `ops.cond` there is a traced pair of graph functions, which cost
  ViT_scratch 1.5 s of its first step on 2 CPU cores.
  """

  def __init__(self, peak, decay_steps, warmup_steps=0, name="warmup_cosine"):
    super().__init__()
    self.peak, self.decay_steps, self.warmup_steps, self.name = peak, decay_steps, warmup_steps, name

  def __call__(self, step):
    step = ops.cast(step, "float32")
    warmup = float(max(self.warmup_steps, 1))
    progress = ops.clip((step - self.warmup_steps) / float(self.decay_steps), 0.0, 1.0)
    decayed = self.peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
    if not self.warmup_steps:
      return decayed
    return ops.where(step < self.warmup_steps, self.peak * step / warmup, decayed)

  def get_config(self):
    return {"peak": self.peak, "decay_steps": self.decay_steps, "warmup_steps": self.warmup_steps, "name": self.name}
