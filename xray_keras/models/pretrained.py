"""Classifiers on pretrained backbones from keras.applications and keras-hub.

  image (H, W, 1 or 3), raw 0..255 pixels
  GrayscaleToRGB ("to_rgb")           X-rays are single-channel; backbones want RGB
  the backbone's own preprocessing    preprocess_input, or keras-hub's image converter
  backbone                            a nested keras.Model
  pooling ("pool")                    global average (CNNs) or the class token (ViTs)
  Dropout ("head_dropout"), Dense(1, sigmoid) ("pneumonia")

Exported models therefore take raw pixels. Phase-1 transfer learning caches the
"pool" output (see `training/transfer.py`).
"""

import inspect
import os

import keras
from absl import logging

from xray_keras import choices
from xray_keras.models import weights as weights_lib
from xray_keras.models.adapters import ApplicationPreprocessing, ClassTokenPooling, GrayscaleToRGB
from xray_keras.models.fused_batch_norm import with_fused_batch_norm

APPLICATIONS = choices.APPLICATIONS
KERAS_HUB = choices.KERAS_HUB

VIT_BASE_PRESET = "vit_base_patch16_224_imagenet21k"
# ViT-B/16 as in keras-hub's presets, so `--weights=none` needs no download.
VIT_BASE_ARCHITECTURE = dict(
  patch_size=16,
  num_layers=12,
  num_heads=12,
  hidden_dim=768,
  mlp_dim=3072,
  dropout_rate=0.0,
  attention_dropout=0.0,
  layer_norm_epsilon=1e-6,
  use_mha_bias=True,
  use_mlp_bias=True,
  use_class_token=True,
)
# The usual ViT input range [-1, 1]; presets bring their own converter.
VIT_SCALE, VIT_OFFSET = 1.0 / 127.5, -1.0


def application_names():
  """Every model constructor in `keras.applications`."""
  return sorted(n for n, v in vars(keras.applications).items() if n[:1].isupper() and callable(v))


def application_module(name):
  """The `keras.applications` submodule holding `name` (for its `preprocess_input`)."""
  for module_name, module in vars(keras.applications).items():
    if inspect.ismodule(module) and getattr(module, name, None) is getattr(keras.applications, name):
      if hasattr(module, "preprocess_input"):
        return module_name
  raise ValueError(f"No preprocess_input found for keras.applications.{name}")


def check_application(name):
  if name not in application_names():
    raise ValueError(f"Unknown keras.applications model: {name!r}. Valid: {', '.join(application_names())}")


def hub_image_backbones():
  """keras-hub backbone classes used by its image classifiers, by class name."""
  import keras_hub

  classes = {}
  for task in weights_lib._all_subclasses(keras_hub.models.ImageClassifier):
    backbone = getattr(task, "backbone_cls", None)
    if backbone is not None:
      classes[backbone.__name__] = backbone
  return classes


def hub_presets():
  """Preset name -> backbone class, for every keras-hub image backbone."""
  return {p: cls for cls in hub_image_backbones().values() for p in getattr(cls, "presets", {})}


def check_hub(ref):
  if ref not in hub_presets() and ref not in hub_image_backbones():
    raise ValueError(
      f"Unknown keras-hub image backbone or preset: {ref!r}. Classes: {', '.join(sorted(hub_image_backbones()))}. "
      f"Presets: {', '.join(sorted(hub_presets()))}"
    )


def classifier(input_shape, preprocessing, backbone, dropout, name):
  """Wraps `backbone` into the NORMAL/PNEUMONIA classifier described in the module docstring."""
  inputs = keras.Input(shape=input_shape, name="image")
  x = GrayscaleToRGB(name="to_rgb")(inputs)
  x = preprocessing(x)
  x = backbone(x)
  if len(backbone.outputs[0].shape) == 3:
    x = ClassTokenPooling(name="pool")(x)
  else:
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  x = keras.layers.Dropout(dropout, name="head_dropout")(x)
  outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(x)
  return keras.Model(inputs, outputs, name=name)


def applications_classifier(name, input_shape=(224, 224, 1), weights="imagenet", dropout=0.2, backbone_kwargs=None):
  """A `keras.applications` backbone (no top) with the study's head.

  Args:
    name: str. Constructor name, e.g. `"ResNet50"`, `"EfficientNetV2B0"`.
    input_shape: tuple. `(height, width, channels)`; 1 channel is repeated to 3.
    weights: str. `imagenet`, `none` or a weights file (with or without the ImageNet top).
    dropout: float. Dropout before the output layer.
    backbone_kwargs: dict. Extra constructor arguments, e.g. `{"alpha": 0.75}`.
  """
  check_application(name)
  constructor = getattr(keras.applications, name)
  kwargs = dict(include_top=False, input_shape=(*input_shape[:2], 3), **(backbone_kwargs or {}))
  if weights == "imagenet":
    backbone = weights_lib.application_imagenet(constructor, name, **kwargs)
  elif weights_lib.is_path(weights) and not weights.endswith((".keras",)):
    backbone = _application_from_file(constructor, weights_lib.check_path(weights), kwargs)
  else:
    backbone = constructor(weights=None, **kwargs)
  return classifier(
    input_shape,
    ApplicationPreprocessing(application_module(name), name="preprocess"),
    with_fused_batch_norm(backbone),
    dropout,
    name,
  )


def _application_from_file(constructor, path, kwargs):
  if os.path.isdir(path):
    raise weights_lib.WeightsError(f"--weights={path} is a directory; keras.applications models take a weights file.")
  try:
    return constructor(weights=path, **kwargs)
  except Exception as no_top_error:
    # Maybe a file with the ImageNet classification top: load it whole and cut the top off.
    try:
      full = constructor(weights=None, **{**kwargs, "include_top": True, "input_shape": None})
      full.load_weights(path)
    except Exception:
      raise weights_lib.WeightsError(
        f"--weights={path} does not fit this backbone: {weights_lib.first_line(no_top_error)}"
      ) from None
    backbone = weights_lib.without_top(full)
    if tuple(backbone.inputs[0].shape[1:3]) != tuple(kwargs["input_shape"][:2]):
      raise weights_lib.WeightsError(
        f"--weights={path} includes the ImageNet top, which fixes the input at "
        f"{backbone.inputs[0].shape[1]}px; pass --image_size={backbone.inputs[0].shape[1]}."
      ) from None
    return backbone


def hub_classifier(ref, input_shape=(224, 224, 1), weights="imagenet", dropout=0.2, display_name=None):
  """A keras-hub image backbone (by preset or class name) with the study's head.

  `weights`: `imagenet` (the preset `ref`, or `VIT_BASE_PRESET` for `ViTBackbone`), a keras-hub
  preset name, a local preset directory, `none` (ViT-B/16 architecture or the preset's config
  without its weights), or a `.keras`/`.weights.h5` file (applied after building).
  """
  import keras_hub

  check_hub(ref)
  classes, presets = hub_image_backbones(), hub_presets()
  cls = classes.get(ref) or presets[ref]
  preset = ref if ref in presets else None
  if weights not in ("imagenet", "none") and (os.path.isdir(weights) or weights in presets):
    preset = weights
  elif weights == "imagenet" and preset is None:
    preset = VIT_BASE_PRESET if cls is keras_hub.models.ViTBackbone else None
  what = display_name or ref
  height, width = input_shape[:2]
  if weights == "none" or (weights_lib.is_path(weights) and not os.path.isdir(weights) and weights not in presets):
    if cls is keras_hub.models.ViTBackbone:
      backbone = cls(image_shape=(height, width, 3), **VIT_BASE_ARCHITECTURE)
      converter = keras_hub.layers.ViTImageConverter(image_size=(height, width), scale=VIT_SCALE, offset=VIT_OFFSET)
    elif preset:
      backbone = weights_lib.hub_from_preset(cls, preset, what, load_weights=False)
      converter = weights_lib.hub_from_preset(keras_hub.layers.ImageConverter, preset, what)
    else:
      raise weights_lib.WeightsError(
        f"keras_hub:{ref} needs a preset for its architecture: use keras_hub:<preset> or --weights=<preset or directory>."
      )
  else:
    if preset is None:
      raise weights_lib.WeightsError(
        f"keras_hub:{ref} has no default ImageNet preset; pass --weights=<preset or directory>."
      )
    backbone = weights_lib.hub_from_preset(cls, preset, what)
    try:
      converter = weights_lib.hub_from_preset(keras_hub.layers.ImageConverter, preset, what)
    except weights_lib.WeightsError:
      if cls is not keras_hub.models.ViTBackbone:
        raise
      logging.warning("Preset %s has no image converter: scaling pixels to [-1, 1] as ViT presets do.", preset)
      converter = keras_hub.layers.ViTImageConverter(scale=VIT_SCALE, offset=VIT_OFFSET)
  converter.image_size = tuple(backbone.inputs[0].shape[1:3]) if backbone.inputs[0].shape[1] else None
  return classifier(input_shape, converter, backbone, dropout, display_name or ref)


def resnet50(input_shape=(224, 224, 1), weights="imagenet", dropout=0.2):
  """ResNet50 from `keras.applications` (23.6M parameters)."""
  return applications_classifier("ResNet50", input_shape, weights, dropout)


def vit_base(input_shape=(224, 224, 1), weights="imagenet", dropout=0.1):
  """ViT-B/16 from keras-hub (`ViTBackbone`, 85.8M parameters), preset `vit_base_patch16_224_imagenet21k`."""
  return hub_classifier("ViTBackbone", input_shape, weights, dropout, display_name="ViT_Base")


def backbone_of(model):
  """The nested backbone model of a classifier built here, or None for from-scratch models."""
  nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
  return nested[0] if len(nested) == 1 else None
