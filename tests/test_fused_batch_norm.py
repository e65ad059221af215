"""FusedBatchNormalization trains as keras.layers.BatchNormalization does: same outputs, gradients and
moving statistics for generated shapes, scales and precisions; a model saved with it reloads."""

import os

import keras
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xray_keras.models.fused_batch_norm import FusedBatchNormalization

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fused kernel is TensorFlow's")


def _train_step(layer, x):
  import tensorflow as tf

  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch([x, layer.gamma.value, layer.beta.value])  # watched even when the layer is frozen
    y = layer(x, training=True)
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.reshape(tf.range(tf.size(y), dtype=tf.float32), y.shape) / 1e3)
  grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
  return [np.asarray(tf.cast(t, tf.float32)) for t in (y, *grads, layer.moving_mean.value, layer.moving_variance.value)]


def _pair(channels, momentum, epsilon, dtype):
  pair = []
  for cls in (keras.layers.BatchNormalization, FusedBatchNormalization):
    layer = cls(momentum=momentum, epsilon=epsilon, dtype=dtype)
    layer.build((None, None, None, channels))
    rng = np.random.default_rng(1)
    layer.gamma.assign(rng.uniform(0.5, 2.0, channels))
    layer.beta.assign(rng.normal(0, 1, channels))
    layer.moving_mean.assign(rng.normal(0, 1, channels))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
    pair.append(layer)
  return pair


def _float64_reference(layer, x, shift=(0.0, 0.0)):
  """What a float32 training step approximates: outputs, gradients and moving statistics in float64,
  with the batch mean and variance moved by `shift` (to size what their rounding can cost)."""
  gamma, beta = np.float64(layer.gamma.numpy()), np.float64(layer.beta.numpy())
  x = np.float64(x)
  mean, var = x.mean((0, 1, 2)) + shift[0], x.var((0, 1, 2)) + shift[1]
  inv = 1 / np.sqrt(var + layer.epsilon)
  x_hat = (x - mean) * inv
  dy = np.arange(x.size, dtype=np.float64).reshape(x.shape) / 1e3
  dx = gamma * inv * (dy - dy.mean((0, 1, 2)) - x_hat * (dy * x_hat).mean((0, 1, 2)))
  m = layer.momentum
  moving = (
    np.float64(layer.moving_mean.numpy()) * m + mean * (1 - m),
    np.float64(layer.moving_variance.numpy()) * m + var * (1 - m),
  )
  return [x_hat * gamma + beta, dx, (dy * x_hat).sum((0, 1, 2)), dy.sum((0, 1, 2)), *moving]


def _statistics_rounding(layer, x):
  """Per output, what float32 rounding of the batch mean and variance can cost: each moved by twice a
  float32 sum's typical error (sqrt(n) units in the last place of its largest term). Kernels sum in
  different orders, so either may land anywhere within it."""
  n = x.size // x.shape[-1]
  ulp = np.finfo(np.float32).eps / 2 * np.sqrt(n) * 2
  x = np.float64(x)
  shift = (ulp * np.abs(x).max((0, 1, 2)), ulp * ((x - x.mean((0, 1, 2))) ** 2).max((0, 1, 2)))
  exact = _float64_reference(layer, x)
  moved = _float64_reference(layer, x, shift)
  return [np.abs(m - e).max() for m, e in zip(moved, exact)]


@settings(max_examples=int(os.environ.get("BN_EXAMPLES", 40)), deadline=None)
@given(
  shape=st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.integers(1, 12)),
  loc=st.floats(-50, 50),
  scale=st.floats(1e-2, 100),
  momentum=st.sampled_from([0.0, 0.9, 0.99]),
  epsilon=st.sampled_from([1e-3, 1.001e-5]),
  seed=st.integers(0, 2**16),
)
@example(shape=(4, 5, 7, 1), loc=0.2, scale=0.01, momentum=0.0, epsilon=1e-3, seed=0)  # mean 20x the spread
def test_float32_training_step_is_as_close_to_float64_as_keras(shape, loc, scale, momentum, epsilon, seed):
  """Against float64 arithmetic, the fused step errs at most twice as much as Keras' own layer, plus what
  float32 rounding of the batch statistics costs: both lose digits when a channel's mean dwarfs its
  spread, and the two kernels sum in different orders."""
  if shape[0] * shape[1] * shape[2] < 2:
    shape = (2, *shape[1:])
  x = np.random.default_rng(seed).normal(loc, scale, shape).astype("float32")
  reference, fused = _pair(shape[-1], momentum, epsilon, "float32")
  exact = _float64_reference(reference, x)
  rounding = _statistics_rounding(reference, x)
  names = ("y", "dx", "dgamma", "dbeta", "moving mean", "moving variance")
  steps = zip(exact, rounding, _train_step(reference, x), _train_step(fused, x), names)
  for want, floor, keras_got, fused_got, name in steps:
    keras_error, fused_error = np.abs(keras_got - want).max(), np.abs(fused_got - want).max()
    bound = 2 * keras_error + floor + 1e-5 * (1 + np.abs(want).max())
    assert fused_error <= bound, (name, fused_error, keras_error, floor)


def test_mixed_bfloat16_training_step_matches_keras_to_bfloat16_precision():
  x = np.random.default_rng(0).normal(3, 2, (8, 16, 16, 32)).astype("float32")
  reference, fused = _pair(32, 0.9, 1e-3, "mixed_bfloat16")
  want, got = _train_step(reference, x), _train_step(fused, x)
  for w, g, name in zip(want, got, ("y", "dx", "dgamma", "dbeta", "mean", "var")):
    np.testing.assert_allclose(g, w, rtol=3e-2, atol=3e-2 * (1 + np.abs(w).max()), err_msg=name)


def test_inference_takes_keras_code():
  x = np.random.default_rng(0).normal(1, 2, (4, 5, 5, 3)).astype("float32")
  reference, fused = _pair(3, 0.9, 1e-3, "float32")
  np.testing.assert_array_equal(fused(x, training=False), reference(x, training=False))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 3e-2)])
def test_frozen_layer_in_a_training_step_matches_keras(dtype, tolerance):
  x = np.random.default_rng(0).normal(1, 2, (4, 6, 6, 8)).astype("float32")
  reference, fused = _pair(8, 0.9, 1e-3, dtype)
  reference.trainable = fused.trainable = False
  names = ("y", "dx", "dgamma", "dbeta", "mean", "var")
  for w, g, name in zip(_train_step(reference, x), _train_step(fused, x), names):
    np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance * (1 + np.abs(w).max()), err_msg=name)


def test_model_with_the_layer_saves_and_reloads(tmp_path):
  inputs = keras.Input((8, 8, 2))
  model = keras.Model(inputs, FusedBatchNormalization(momentum=0.5)(inputs))
  x = np.random.default_rng(0).normal(5, 3, (16, 8, 8, 2)).astype("float32")
  model.compile("sgd", "mse")
  model.fit(x, x, epochs=1, verbose=0)
  path = os.path.join(tmp_path, "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded.layers[-1], FusedBatchNormalization)
  np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_training_step_runs_one_fused_kernel(dtype):
  import tensorflow as tf

  _, fused = _pair(4, 0.9, 1e-3, dtype)
  graph = tf.function(lambda x: fused(x, training=True)).get_concrete_function(tf.TensorSpec((2, 3, 3, 4))).graph
  ops = [op.type for op in graph.get_operations()]
  assert ops.count("FusedBatchNormV3") == 1
  assert "Mean" not in ops
  fused.trainable = False
  graph = tf.function(lambda x: fused(x, training=True)).get_concrete_function(tf.TensorSpec((2, 3, 3, 4))).graph
  assert [op.type for op in graph.get_operations()].count("FusedBatchNormV3") == 1


@pytest.mark.parametrize("name", ["ResNet50", "MobileNetV2", "EfficientNetB0"])
def test_applications_backbones_get_the_fused_layer_and_keep_their_outputs(name):
  from xray_keras.models import fused_batch_norm

  backbone = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(32, 32, 3))
  fused = fused_batch_norm.with_fused_batch_norm(backbone)
  kinds = {type(layer) for layer in fused._flatten_layers(include_self=False)}
  assert FusedBatchNormalization in kinds and keras.layers.BatchNormalization not in kinds
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
  np.testing.assert_array_equal(fused.predict(x, verbose=0), backbone.predict(x, verbose=0))
  assert [layer.name for layer in fused.layers] == [layer.name for layer in backbone.layers]
