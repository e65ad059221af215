"""Adam and AdamW whose update is one TensorFlow kernel a variable, not a dozen.

Keras' Adam runs its update as separate element-wise operations (subtract, multiply, add, square,
sqrt, divide), each a pass over every weight and its two moments; on a CPU a large model feels it
(ViT_Base's float32 step 1.16x faster fused, `benchmarks/results/cpu_vs_torch_xeon_fused_adam.json`).
On TensorFlow these classes hand the same arithmetic to `ResourceApplyAdam`, one pass, and AdamW's
decay to `ResourceApplyGradientDescent` (`w -= lr * wd * w`); elsewhere, with AMSGrad, under a
distribution strategy or for a sparse gradient (an embedding's `tf.IndexedSlices`, whose repeated
rows Keras squares one by one) they are Keras' own.
A model compiled with them and saved loads through `xray_keras.models.load_model` (run folders'
`model.keras` holds no optimizer, so plain Keras loads those).
"""

import keras


def _fusable(optimizer, variable, gradient=None):
  if keras.backend.backend() != "tensorflow" or optimizer.amsgrad:
    return False
  import tensorflow as tf

  return (
    not tf.distribute.has_strategy()
    and variable.dtype in (tf.float32, tf.float64)
    and hasattr(variable, "handle")
    and not isinstance(gradient, tf.IndexedSlices)
  )


class _Fused:
  def update_step(self, gradient, variable, learning_rate):
    if not _fusable(self, variable, gradient):
      return super().update_step(gradient, variable, learning_rate)
    import tensorflow as tf

    dtype = variable.dtype
    index = self._get_variable_index(variable)
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    tf.raw_ops.ResourceApplyAdam(
      var=variable.handle,
      m=self._momentums[index].value.handle,
      v=self._velocities[index].value.handle,
      beta1_power=tf.pow(beta_1, step),
      beta2_power=tf.pow(beta_2, step),
      lr=tf.cast(learning_rate, dtype),
      beta1=beta_1,
      beta2=beta_2,
      epsilon=tf.cast(self.epsilon, dtype),
      grad=tf.cast(gradient, dtype),
    )

  def _apply_weight_decay(self, variables):
    if not self.weight_decay:
      return None
    plain = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    if not all(_fusable(self, v) for v in plain):
      return super()._apply_weight_decay(variables)
    import tensorflow as tf

    for value in plain:
      if self._use_weight_decay(value):
        rate = tf.cast(self.learning_rate * self.weight_decay, value.dtype)
        tf.raw_ops.ResourceApplyGradientDescent(var=value.handle, alpha=rate, delta=value.read_value())
    return None


@keras.saving.register_keras_serializable(package="xray_keras")
class FusedAdam(_Fused, keras.optimizers.Adam):
  """`keras.optimizers.Adam`, updated in one kernel a variable on TensorFlow."""


@keras.saving.register_keras_serializable(package="xray_keras")
class FusedAdamW(_Fused, keras.optimizers.AdamW):
  """`keras.optimizers.AdamW`, updated (and decayed) in one kernel a variable on TensorFlow."""
