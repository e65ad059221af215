"""The fused Adam/AdamW update is Keras' own arithmetic, in one kernel a variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from xray_keras.config import TrainConfig
from xray_keras.models import fused_adam, schedules
from xray_keras.training import trainer

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fused kernels are TensorFlow's")

PAIRS = {
  "adam": (keras.optimizers.Adam, fused_adam.FusedAdam),
  "adamw": (keras.optimizers.AdamW, fused_adam.FusedAdamW),
}


def _train(cls, shapes, steps, seed, **kwargs):
  """Variables after `steps` applies of seeded gradients, and the op types of the traced apply."""
  rng = np.random.default_rng(seed)
  start = [rng.standard_normal(s).astype("float32") for s in shapes]
  grads = [
    [rng.standard_normal(s).astype("float32") * 10.0 ** rng.integers(-4, 2) for s in shapes] for _ in range(steps)
  ]
  variables = [keras.Variable(w, name=f"w{i}") for i, w in enumerate(start)]
  optimizer = cls(**kwargs)
  if hasattr(optimizer, "exclude_from_weight_decay"):
    optimizer.exclude_from_weight_decay(var_names=["w0"])
  optimizer.build(variables)
  apply = tf.function(lambda g: optimizer.apply(g, variables))
  for g in grads:
    apply([tf.constant(x) for x in g])
  graph = apply.get_concrete_function([tf.constant(x) for x in grads[0]]).graph
  return [v.numpy() for v in variables], start, {op.type for op in graph.get_operations()}


@settings(max_examples=12, deadline=None)
@given(
  kind=st.sampled_from(sorted(PAIRS)),
  shapes=st.lists(st.lists(st.integers(1, 17), min_size=1, max_size=3).map(tuple), min_size=2, max_size=4),
  steps=st.integers(1, 6),
  seed=st.integers(0, 2**16),
  ema=st.booleans(),
  schedule=st.booleans(),
  amsgrad=st.booleans(),
)
def test_the_fused_update_matches_keras_adam_and_adamw(kind, shapes, steps, seed, ema, schedule, amsgrad):
  lr = schedules.WarmupCosine(3e-2, 5, 0) if schedule else 3e-2  # no warm-up: step 0 moves the weights
  kwargs = dict(learning_rate=lr, amsgrad=amsgrad, **(dict(use_ema=True, ema_momentum=0.9) if ema else {}))
  if kind == "adamw":
    kwargs["weight_decay"] = 0.3
  keras_cls, fused_cls = PAIRS[kind]
  expected, start, _ = _train(keras_cls, shapes, steps, seed, **kwargs)
  got, _, ops = _train(fused_cls, shapes, steps, seed, **kwargs)
  # AMSGrad has no fused kernel: Keras' own update, and nothing else, runs then.
  assert ("ResourceApplyAdam" in ops) is not amsgrad
  assert ("ResourceApplyGradientDescent" in ops) is (kind == "adamw" and not amsgrad)
  moved = max(float(np.max(np.abs(e - s))) for e, s in zip(expected, start))
  assert moved > 1e-3  # the steps changed the weights, so agreeing says something
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)
  if kind == "adamw":  # the excluded variable was not decayed: without decay it moves as Adam's would
    plain, _, _ = _train(
      keras.optimizers.Adam, shapes, steps, seed, **{k: v for k, v in kwargs.items() if k != "weight_decay"}
    )
    np.testing.assert_allclose(got[0], plain[0], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_fit_with_the_packages_optimizer_matches_keras_and_reloads(tmp_path, jit_compile):
  train = TrainConfig(
    optimizer="adamw", weight_decay=0.05, learning_rate=1e-2, schedule="cosine", epochs=2, warmup_epochs=1
  )
  x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
  y = (x[:, 0] > 0).astype("float32")
  weights = {}
  for name, optimizer in [("keras", keras.optimizers.AdamW), ("ours", None)]:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    made = trainer.make_optimizer(train, 8)
    if optimizer is not None:
      made = optimizer(made._learning_rate, weight_decay=0.05)
    model.compile(made, keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit_compile)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    weights[name] = model.get_weights()
  assert isinstance(made, fused_adam.FusedAdamW)
  for k, o in zip(weights["keras"], weights["ours"]):
    np.testing.assert_allclose(o, k, rtol=1e-4, atol=1e-6)
  path = str(tmp_path / "m.keras")
  model.save(path)
  from xray_keras import models

  restored = models.load_model(path)
  assert isinstance(restored.optimizer, fused_adam.FusedAdamW)
  assert restored.optimizer.get_config()["weight_decay"] == pytest.approx(0.05)


def _apply_in_graph(optimizer, gradient, variable):
  tf.function(lambda: optimizer.apply([gradient], [variable]))()


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_a_sparse_gradient_with_repeated_rows_is_updated_as_keras_does(kind):
  """Keras squares an embedding gradient's slices one by one, so repeated rows differ from the dense
  sum; the fused kernel would sum first. Such a gradient takes Keras' own update."""
  results = []
  for cls in PAIRS[kind]:
    variable = keras.Variable(np.zeros((4, 3), "float32"))
    optimizer = cls(learning_rate=0.1, **({"weight_decay": 0.1} if kind == "adamw" else {}))
    optimizer.build([variable])
    rows = tf.constant([1, 1, 1, 2])
    gradient = tf.IndexedSlices(tf.ones((4, 3)), rows, dense_shape=tf.constant([4, 3]))
    _apply_in_graph(optimizer, gradient, variable)
    results.append(variable.numpy())
  np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-7)
  assert results[0][1, 0] == pytest.approx(-0.1 * np.sqrt(3), rel=1e-4)  # Keras' arithmetic: sqrt(3 * 1^2)


def test_adamw_with_no_weight_decay_asked_decays_nothing():
  assert trainer.make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.0), 1).weight_decay == 0.0
