"""CNN_scratch: the study's from-scratch CNN, written with the Keras functional API.

Layers (default 224x224x1 input, 17.5M parameters, the paper's 17.6M within 1%):

  Rescaling(1/255)                      raw 0..255 pixels in
  4 x [Conv2D 3x3 (32, 64, 128, 128 filters), BatchNorm, ReLU, MaxPool 2x2]
                                        (BatchNorm: Keras' layer, fused kernel on TensorFlow)
  Flatten                               14 x 14 x 128 = 25,088 features
  Dropout, Dense(dense_units) + ReLU    holds ~97% of the parameters
  Dropout, Dense(1, sigmoid)            PNEUMONIA probability

The flattened dense layer is what gives the paper's parameter count; its size
scales with the input, so smaller inputs give fewer parameters.
"""

import keras
from keras import layers

from xray_keras.models.fused_batch_norm import FusedBatchNormalization


def cnn_scratch(
  input_shape=(224, 224, 1),
  filters=(32, 64, 128, 128),
  dense_units=688,
  dropout=0.5,
  name="CNN_scratch",
):
  """Builds CNN_scratch.

  Args:
    input_shape: tuple. `(height, width, channels)` of raw 0..255 pixels.
    filters: tuple of int. Filters of each conv block. Defaults to (32, 64, 128, 128).
    dense_units: int. Width of the hidden dense layer. Defaults to 688.
    dropout: float. Dropout before each dense layer. Defaults to 0.5.
    name: str. Model name.

  Returns:
    A `keras.Model` mapping images to a `(batch, 1)` PNEUMONIA probability.
  """
  inputs = keras.Input(shape=input_shape, name="image")
  x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
  for i, n in enumerate(filters):
    x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv")(x)
    x = FusedBatchNormalization(momentum=0.9, name=f"block{i + 1}_bn")(x)
    x = layers.ReLU(name=f"block{i + 1}_relu")(x)
    x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
  x = layers.Flatten(name="flatten")(x)
  x = layers.Dropout(dropout, name="dropout1")(x)
  x = layers.Dense(dense_units, activation="relu", name="dense")(x)
  x = layers.Dropout(dropout, name="dropout2")(x)
  outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(x)
  return keras.Model(inputs, outputs, name=name)
