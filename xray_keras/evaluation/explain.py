"""Where a model looks: Grad-CAM for CNNs, attention rollout for the ViTs (ours and keras-hub's).

Both return one `(height, width)` map in [0, 1] per image, at the input size.
Grad-CAM takes its gradient from the backend's own autodiff (`jax.grad`,
`tf.GradientTape` or torch autograd), so a study on any backend gets its figures.
"""

import keras
import numpy as np

from xray_keras.models.pretrained import backbone_of
from xray_keras.models.vit_layers import TransformerBlock


def _upsample(maps, size):
  maps = np.asarray(maps, np.float32)[..., None]
  resized = keras.ops.convert_to_numpy(keras.ops.image.resize(maps, (size, size), interpolation="bilinear"))[..., 0]
  low = resized.min(axis=(1, 2), keepdims=True)
  span = resized.max(axis=(1, 2), keepdims=True) - low
  return (resized - low) / np.where(span > 0, span, 1)


def feature_layer(model):
  """The layer whose output is the last convolutional feature map: the backbone, or the last 4-D ReLU."""
  backbone = backbone_of(model)
  if backbone is not None and len(backbone.outputs[0].shape) == 4:
    return backbone
  candidates = [l for l in model.layers if len(l.output.shape) == 4]
  relus = [l for l in candidates if isinstance(l, keras.layers.ReLU)]
  if not (relus or candidates):
    raise ValueError(f"{model.name} has no convolutional feature map for Grad-CAM")
  return (relus or candidates)[-1]


def input_gradient(fn, x):
  """The gradient of `sum(fn(x))` with respect to `x`, by the active backend's autodiff."""
  backend = keras.backend.backend()
  if backend == "jax":
    import jax

    return jax.grad(lambda v: keras.ops.sum(keras.ops.cast(fn(v), "float32")))(x)
  if backend == "tensorflow":
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
      tape.watch(x)
      total = tf.reduce_sum(tf.cast(fn(x), tf.float32))
    return tape.gradient(total, x)
  if backend == "torch":
    x = x.detach().requires_grad_(True)
    fn(x).float().sum().backward()
    return x.grad
  raise ValueError(f"No gradient for Grad-CAM on the {backend} backend")


def grad_cam(model, images):
  """Grad-CAM (Selvaraju et al. 2017) of the PNEUMONIA probability for `(N, H, W, C)` images.

  The model's layers are applied one after another (every classifier here is a chain).
  """
  layers = model.layers[1:]
  cut = layers.index(feature_layer(model)) + 1
  features = keras.ops.convert_to_tensor(np.asarray(images, np.float32))
  for layer in layers[:cut]:
    features = layer(features, training=False)

  def head(x):
    for layer in layers[cut:]:
      x = layer(x, training=False)
    return x if x.shape[-1] == 1 else 1.0 - x[..., 0]  # three classes: P(BACTERIA) + P(VIRUS)

  grads = keras.ops.convert_to_numpy(keras.ops.cast(input_gradient(head, features), "float32"))
  features = keras.ops.convert_to_numpy(keras.ops.cast(features, "float32"))
  weights = grads.mean(axis=(1, 2), keepdims=True)
  cams = np.maximum((weights * features).sum(axis=-1), 0.0)
  return _upsample(cams, np.asarray(images).shape[1])


def _our_attention(model, images):
  """Head-averaged attention of each `TransformerBlock` (the from-scratch ViTs)."""
  blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
  inputs_of = keras.Model(model.inputs[0], [block.input for block in blocks])
  block_inputs = inputs_of(np.asarray(images, np.float32), training=False)
  return [
    keras.ops.convert_to_numpy(block.attention.attention_scores(block.norm1(tokens))).mean(axis=1)
    for block, tokens in zip(blocks, block_inputs)
  ]


def _hub_vit_encoder(model):
  """The keras-hub `ViTEncoder` inside a classifier's backbone, or None."""
  backbone = backbone_of(model)
  layers = backbone.layers if backbone is not None else []
  return next((l for l in layers if type(l).__name__ == "ViTEncoder" and hasattr(l, "encoder_layers")), None)


def _hub_vit_attention(model, images):
  """Head-averaged attention of each keras-hub `ViTEncoderBlock`, read from its `MultiHeadAttention`."""
  backbone, encoder = backbone_of(model), _hub_vit_encoder(model)
  x = keras.ops.convert_to_tensor(np.asarray(images, np.float32))
  for layer in model.layers[1:]:  # up to the backbone: grey to RGB, the preset's preprocessing
    if layer is backbone:
      break
    x = layer(x, training=False)
  for layer in backbone.layers[1:]:  # patch + position embedding, up to the encoder
    if layer is encoder:
      break
    x = layer(x, training=False)
  maps = []
  for block in encoder.encoder_layers:
    normed = block.layer_norm_1(x)
    _, scores = block.mha(normed, normed, return_attention_scores=True, training=False)
    maps.append(keras.ops.convert_to_numpy(keras.ops.cast(scores, "float32")).mean(axis=1))
    x = block(x, training=False)
  return maps


def _attention_reader(model):
  """The function that reads `model`'s per-block attention, or None for a model without transformer blocks."""
  if any(isinstance(layer, TransformerBlock) for layer in model.layers):
    return _our_attention
  return _hub_vit_attention if _hub_vit_encoder(model) is not None else None


def attention_rollout(model, images):
  """Attention rollout (Abnar & Zuidema 2020) from the class token to the patches.

  For the from-scratch ViTs (`TransformerBlock`) and keras-hub ViT backbones (ViT_Base).
  """
  read_attention = _attention_reader(model)
  if read_attention is None:
    raise ValueError(f"{model.name} has no transformer blocks for attention rollout")
  rollout = None
  for attention in read_attention(model, images):
    attention = 0.5 * attention + 0.5 * np.eye(attention.shape[-1])[None]
    attention /= attention.sum(axis=-1, keepdims=True)
    rollout = attention if rollout is None else attention @ rollout
  patches = rollout[:, 0, 1:]
  side = int(round(np.sqrt(patches.shape[-1])))
  return _upsample(patches.reshape(-1, side, side), np.asarray(images).shape[1])


def method(model):
  """The name of what `explain` computes for `model`."""
  return "attention rollout" if _attention_reader(model) is not None else "Grad-CAM"


def explain(model, images):
  """Attention rollout for ViTs, Grad-CAM otherwise; None when neither applies."""
  if _attention_reader(model) is not None:
    return attention_rollout(model, images)
  try:
    return grad_cam(model, images)
  except ValueError:
    return None
