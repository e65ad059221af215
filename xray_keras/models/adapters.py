"""Layers that adapt grayscale X-rays to pretrained backbones, written with `keras.ops`."""

import importlib

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="xray_keras")
class GrayscaleToRGB(layers.Layer):
  """Repeats a single channel three times; passes 3-channel images through."""

  def call(self, images):
    if images.shape[-1] == 3:
      return images
    return ops.repeat(images, 3, axis=-1)

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="xray_keras")
class ApplicationPreprocessing(layers.Layer):
  """Applies `keras.applications.<module>.preprocess_input` to 0..255 RGB pixels.

  Args:
    module: str. The `keras.applications` submodule, e.g. `"resnet50"`.
  """

  def __init__(self, module, **kwargs):
    super().__init__(**kwargs)
    self.module = module
    self._preprocess = importlib.import_module(f"keras.applications.{module}").preprocess_input

  def call(self, images):
    return self._preprocess(ops.cast(images, self.compute_dtype))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "module": self.module}


@keras.saving.register_keras_serializable(package="xray_keras")
class ClassTokenPooling(layers.Layer):
  """Takes the first (class) token of a `(batch, tokens, width)` sequence."""

  def call(self, tokens):
    return tokens[:, 0]

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[2])
