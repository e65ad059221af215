"""Where a model looks: Grad-CAM for CNNs, attention rollout for the from-scratch ViTs.

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


def attention_rollout(model, images):
  """Attention rollout (Abnar & Zuidema 2020) from the class token to the patches."""
  blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
  if not blocks:
    raise ValueError(f"{model.name} has no TransformerBlock layers for attention rollout")
  inputs_of = keras.Model(model.inputs, [block.input for block in blocks])
  block_inputs = inputs_of(np.asarray(images, np.float32), training=False)
  rollout = None
  for block, tokens in zip(blocks, block_inputs):
    attention = keras.ops.convert_to_numpy(block.attention.attention_scores(block.norm1(tokens))).mean(axis=1)
    attention = 0.5 * attention + 0.5 * np.eye(attention.shape[-1])[None]
    attention /= attention.sum(axis=-1, keepdims=True)
    rollout = attention if rollout is None else attention @ rollout
  patches = rollout[:, 0, 1:]
  side = int(round(np.sqrt(patches.shape[-1])))
  return _upsample(patches.reshape(-1, side, side), np.asarray(images).shape[1])


def explain(model, images):
  """Attention rollout for from-scratch ViTs, Grad-CAM otherwise; None when neither applies."""
  if any(isinstance(layer, TransformerBlock) for layer in model.layers):
    return attention_rollout(model, images)
  try:
    return grad_cam(model, images)
  except ValueError:
    return None
