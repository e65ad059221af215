"""Batch normalization whose training step on TensorFlow is one fused kernel."""

import keras
from absl import logging
from keras import layers


@keras.saving.register_keras_serializable(package="xray_keras")
class FusedBatchNormalization(layers.BatchNormalization):
  """`keras.layers.BatchNormalization` with TensorFlow's fused kernel in training steps.

  On TensorFlow the Keras layer computes batch moments, normalisation and their
  gradients as separate float32 ops, even under mixed bfloat16: on a CPU that is
  a third to a half of a convolutional train step. This layer runs the same
  arithmetic (batch mean and biased variance, the layer's moving-average rule) as
  one `FusedBatchNormV3` op and its gradient; a frozen layer in a training step
  (fine-tuning) applies its moving statistics the same way. Inference (so saved
  and exported models), other backends, masks, renorm and synchronized statistics
  take the Keras layer's own code.
  """

  def call(self, inputs, training=None, mask=None):
    if not (training and mask is None and self._fusable(inputs)):
      return super().call(inputs, training=training, mask=mask)
    import tensorflow as tf

    x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
    gamma, beta = tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32)
    if not self.trainable:  # frozen inside a training step (fine-tuning): the moving statistics, one kernel
      y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, self.moving_mean, self.moving_variance, self.epsilon, "NHWC", is_training=False
      )
      return tf.cast(y, self.compute_dtype)
    y, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
      x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
    )
    # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    variance = unbiased_variance * (n - 1.0) / n
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    return tf.cast(y, self.compute_dtype)

  def _fusable(self, inputs):
    return (
      keras.backend.backend() == "tensorflow"
      and len(inputs.shape) == 4
      and self.axis in (-1, 3)
      and self.center
      and self.scale
      and not self.renorm
      and not self.synchronized
    )


def with_fused_batch_norm(model):
  """On TensorFlow, a copy of functional `model` with every `BatchNormalization` a `FusedBatchNormalization`, same weights."""

  def clone(layer):
    cls = FusedBatchNormalization if type(layer) is layers.BatchNormalization else type(layer)
    return cls.from_config(layer.get_config())

  if keras.backend.backend() != "tensorflow" or not any(
    type(layer) is layers.BatchNormalization for layer in model._flatten_layers(include_self=False)
  ):
    return model  # elsewhere the layer would run Keras' code anyway: no clone at start-up
  try:
    inputs = keras.tree.map_structure(
      lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t._keras_history[0].name), model.input
    )
    copy = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
  except Exception as error:  # a backbone Keras cannot clone still trains, with Keras' own layer
    logging.warning("%s keeps keras.layers.BatchNormalization (cannot clone: %s)", model.name, error)
    return model
  copy.set_weights(model.get_weights())
  return copy
