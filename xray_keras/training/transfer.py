"""Two-phase transfer learning for classifiers on pretrained backbones.

Phase 1 trains the head on a frozen backbone; with the feature cache (default)
the backbone runs once over the data and the head trains on its pooled
features. Phase 2 unfreezes the top N backbone blocks, or all of it, at a
lower learning rate. With pretrained weights, BatchNorm layers stay frozen
(inference mode) in both phases, as in the Keras transfer-learning guide.
"""

import re
import time

import keras
import numpy as np
from absl import logging

from xray_keras.data import feeder
from xray_keras.errors import UserError
from xray_keras.evaluation import prediction
from xray_keras.models.pretrained import backbone_of

# A block is the group of layers sharing one of these name prefixes.
_BLOCK_NAME = re.compile(
  r"^(conv\d+_block\d+|block\d+[a-z]?|stage_?\d+_block_?\d+|transformer_(?:block|layer)_\d+|[a-z_]+?_\d+)(?:_|$)"
)


def build_optimizer(model):
  """Creates the optimizer's slots before the first step.

  Left to the first step, TensorFlow creates them inside the traced train function and then
  traces it a second time: ViT_scratch's first step took 7.8 s instead of 3.9 s on 2 CPU cores.
  """
  model.optimizer.build(model.trainable_variables)


def _units(backbone):
  """Backbone layers in order, with encoder layers opened into their blocks."""
  units = []
  for layer in backbone.layers:
    inner = list(layer._flatten_layers(include_self=False, recursive=False))
    if type(layer).__name__.endswith("Encoder") and inner:
      units.extend(inner)
    else:
      units.append(layer)
  return units


def blocks(backbone):
  """Names of the backbone's blocks, bottom to top (e.g. conv2_block1 ... conv5_block3)."""
  names = []
  for unit in _units(backbone):
    match = _BLOCK_NAME.match(unit.name)
    if match and unit.weights and (not names or names[-1] != match.group(1)):
      names.append(match.group(1))
  return names


def set_trainable(model, unfreeze, freeze_batchnorm):
  """Makes the head and the backbone's top `unfreeze` blocks trainable.

  Args:
    model: a classifier from `models/pretrained.py`.
    unfreeze: str. `all`, `none` or a number of top blocks.
    freeze_batchnorm: bool. Keep BatchNorm layers frozen (inference mode).

  Returns:
    The number of trainable backbone parameters.
  """
  backbone = backbone_of(model)
  backbone.trainable = True
  units = _units(backbone)
  if unfreeze == "none":
    start = len(units)
  elif unfreeze == "all":
    start = 0
  else:
    n = int(unfreeze)
    names = blocks(backbone)
    if not 0 < n <= len(names):
      raise UserError(f"--unfreeze={n}: {backbone.name} has {len(names)} blocks ({names[0]} ... {names[-1]}).")
    first = names[-n]
    start = next(
      i for i, u in enumerate(units) if _BLOCK_NAME.match(u.name) and _BLOCK_NAME.match(u.name).group(1) == first
    )
  for i, unit in enumerate(units):
    unit.trainable = i >= start
  if freeze_batchnorm:
    for layer in backbone._flatten_layers(include_self=False):
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False
  return sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)


def freeze_backbone(model):
  backbone_of(model).trainable = False


def feature_extractor(model):
  """The classifier up to its pooled backbone features (shares the classifier's layers)."""
  return keras.Model(model.inputs, model.get_layer("pool").output, name="features")


def head(model):
  """The classifier's head as a model on pooled features (shares the classifier's layers)."""
  features = keras.Input(shape=model.get_layer("pool").output.shape[1:], name="features")
  x = model.get_layer("head_dropout")(features)
  return keras.Model(features, model.get_layer("pneumonia")(x), name="head")


def extract_features(model, images, batch_size):
  """Pooled backbone features of `images`, computed once in inference mode."""
  if not len(images):
    return np.zeros((0, *model.get_layer("pool").output.shape[1:]), np.float32)
  return prediction.predict(feature_extractor(model), images, batch_size)


def train_head(
  model,
  compile_kwargs,
  train,
  val,
  batch_size,
  epochs,
  seed,
  callbacks,
  class_weight=None,
  use_cache=True,
  augmenter=None,
):
  """Phase 1: trains the head with the backbone frozen; returns a timing dict.

  Args:
    model: a classifier from `models/pretrained.py`.
    compile_kwargs: dict for `compile` (optimizer, loss, metrics, jit_compile).
    train, val: `(images, labels)` tuples; `val` may be None.
    batch_size, epochs, seed: as in phase 2.
    callbacks: Keras callbacks for `fit`.
    class_weight: dict or None.
    use_cache: bool. Train on cached features (augmentation cannot apply) or
      through the frozen backbone.
    augmenter: augmentation layers, used only without the cache.
  """
  freeze_backbone(model)
  start = time.perf_counter()
  if use_cache:
    if augmenter is not None:
      logging.info("Phase 1 trains on cached features: augmentation applies in phase 2 only.")
    train = (extract_features(model, train[0], batch_size), train[1])
    if val is not None:
      val = (extract_features(model, val[0], batch_size), val[1])
    extraction_s = time.perf_counter() - start
    logging.info(
      "Phase 1: backbone features of %d images in %.1fs (%.1f img/s)",
      len(train[0]) + (len(val[0]) if val is not None else 0),
      extraction_s,
      (len(train[0]) + (len(val[0]) if val is not None else 0)) / max(extraction_s, 1e-9),
    )
    trainee, augmenter = head(model), None
  else:
    extraction_s = 0.0
    trainee = model
  trainee.compile(**compile_kwargs)
  build_optimizer(trainee)
  train_ds = feeder.make_feeder(train[0], train[1], batch_size, True, seed, augmenter)
  val_ds = feeder.make_feeder(val[0], val[1], batch_size, False) if val is not None and len(val[1]) else None
  trainee.fit(
    train_ds,
    validation_data=val_ds,
    epochs=epochs,
    class_weight=class_weight,
    callbacks=callbacks,
    verbose=0,
    shuffle=False,
  )
  return {
    "epochs": epochs,
    "feature_cache": use_cache,
    "feature_extraction_s": extraction_s,
    "total_s": time.perf_counter() - start,
  }
