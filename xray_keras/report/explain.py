"""Where a model looks: Grad-CAM for CNNs, attention rollout for the ViTs (ours and keras-hub's).

Both return one `(height, width)` map in [0, 1] per image, at the input size.
Grad-CAM needs gradients, so it runs on the TensorFlow backend.
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


def grad_cam(model, images):
  """Grad-CAM (Selvaraju et al. 2017) of the PNEUMONIA output for `(N, H, W, C)` images.

  The model's layers are applied one after another (every classifier here is a chain).
  """
  import tensorflow as tf

  target = feature_layer(model)
  x = tf.convert_to_tensor(np.asarray(images, np.float32))
  with tf.GradientTape() as tape:
    for layer in model.layers[1:]:
      x = layer(x, training=False)
      if layer is target:
        features = x
    score = tf.reduce_sum(x)
  grads = tape.gradient(score, features)
  weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
  cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
  return _upsample(cams, images.shape[1])


def _our_attention(model, images):
  """Head-averaged attention of each `TransformerBlock` (the from-scratch ViTs)."""
  blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
  inputs_of = keras.Model(model.inputs, [block.input for block in blocks])
  block_inputs = inputs_of(np.asarray(images, np.float32), training=False)
  return [keras.ops.convert_to_numpy(block.attention.attention_scores(block.norm1(tokens))).mean(axis=1)
          for block, tokens in zip(blocks, block_inputs)]


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


def explain(model, images):
  """Attention rollout for ViTs, Grad-CAM otherwise; None when neither applies."""
  if _attention_reader(model) is not None:
    return attention_rollout(model, images)
  try:
    return grad_cam(model, images)
  except ValueError:
    return None
