"""Model registry: study names -> builders with their default inputs.

`--model` takes a registered name, `applications:<keras.applications name>`
(e.g. `applications:EfficientNetV2B0`) or `keras_hub:<image backbone preset or class>`.
"""

import dataclasses
import functools

import keras
import numpy as np

from xray_keras import choices
from xray_keras.models import pretrained, vit_family
from xray_keras.models import weights as weights_lib
from xray_keras.models.cnn_scratch import cnn_scratch
from xray_keras.models.vit_scratch import vit_scratch


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A buildable model and the input it was designed for.

  `pretrained`: the model wraps a backbone that `--weights` initialises and that
  two-phase transfer learning freezes and unfreezes.
  """

  name: str
  display_name: str
  builder: object
  default_image_size: int
  default_channels: int = 1
  uses_patches: bool = False
  pretrained: bool = False


REGISTRY = {
  "cnn_scratch": ModelSpec("cnn_scratch", "CNN_scratch", cnn_scratch, 224),
  "vit_scratch": ModelSpec("vit_scratch", "ViT_scratch", vit_scratch, 64, uses_patches=True),
  "resnet50": ModelSpec("resnet50", "ResNet50", pretrained.resnet50, 224, pretrained=True),
  "vit_base": ModelSpec("vit_base", "ViT_Base", pretrained.vit_base, 224, pretrained=True),
  **{
    name: ModelSpec(name, size.display_name, vit_family.builder(name), 224, uses_patches=True)
    for name, size in vit_family.SIZES.items()
  },
}


def get_spec(name):
  """Returns the `ModelSpec` for `name`, or raises `ValueError` listing the valid names."""
  if name in REGISTRY:
    return REGISTRY[name]
  if name.startswith(pretrained.APPLICATIONS):
    app = name.removeprefix(pretrained.APPLICATIONS)
    pretrained.check_application(app)
    return ModelSpec(name, app, functools.partial(pretrained.applications_classifier, app), 224, pretrained=True)
  if name.startswith(pretrained.KERAS_HUB):
    ref = name.removeprefix(pretrained.KERAS_HUB)
    pretrained.check_hub(ref)
    return ModelSpec(name, ref, functools.partial(pretrained.hub_classifier, ref), 224, pretrained=True)
  raise ValueError(choices.unknown_model(name))


def default_weights(spec, weights=""):
  """`weights`, or the model's default: `imagenet` for pretrained models, `none` otherwise."""
  return weights or ("imagenet" if spec.pretrained else "none")


def with_classes(model, classes):
  """`model` with its one-unit sigmoid head replaced by a `classes`-way softmax of the same name."""
  if classes == 1:
    return model
  head = model.layers[-1]
  outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32", name=head.name)(head.input)
  return keras.Model(model.inputs, outputs, name=model.name)


def pneumonia_probability(outputs):
  """P(PNEUMONIA) from a model's `(N, 1)` sigmoid or `(N, 3)` NORMAL/BACTERIA/VIRUS softmax outputs."""
  outputs = np.asarray(outputs, dtype=np.float64)
  if outputs.ndim == 1:
    outputs = outputs[:, None]
  return outputs[:, 0] if outputs.shape[1] == 1 else 1.0 - outputs[:, 0]


def build_model(name, input_shape, patch_size=None, dropout=None, weights="", backbone_kwargs=None, classes=1):
  """Builds the model `name` for `input_shape`.

  Args:
    name: str. A registered name or an `applications:`/`keras_hub:` reference.
    input_shape: tuple. `(height, width, channels)` of raw 0..255 pixels.
    patch_size: int. ViT patch size; None for the model's default.
    dropout: float. Head dropout; None for the model's default.
    weights: str. `imagenet`, `none`, or a path (see `weights.py`); empty for the
      model's default (`imagenet` for pretrained models, `none` otherwise).
    backbone_kwargs: dict. Extra `keras.applications` constructor arguments.
    classes: int. 1: a PNEUMONIA probability; 3: NORMAL / BACTERIA / VIRUS softmax.
  """
  return with_classes(_build(name, input_shape, patch_size, dropout, weights, backbone_kwargs), classes)


def _build(name, input_shape, patch_size, dropout, weights, backbone_kwargs):
  spec = get_spec(name)
  weights = default_weights(spec, weights)
  kwargs = {"input_shape": tuple(input_shape)}
  if dropout is not None:
    kwargs["dropout"] = dropout
  if spec.uses_patches and patch_size:
    kwargs["patch_size"] = patch_size
  if backbone_kwargs:
    if not name.startswith(pretrained.APPLICATIONS):
      raise weights_lib.WeightsError("--backbone_kwargs applies to applications:<name> models only.")
    kwargs["backbone_kwargs"] = backbone_kwargs
  from_file = weights_lib.is_path(weights) and weights.endswith(".keras")
  if not spec.pretrained:
    if weights == "imagenet":
      raise weights_lib.WeightsError(
        f"{spec.display_name} is trained from scratch: it has no ImageNet weights (--weights=none or a file)."
      )
    model = spec.builder(**kwargs)
    if weights_lib.is_path(weights):
      weights_lib.load_into(model, weights)
    return model
  if weights_lib.is_path(weights) and weights.endswith(".weights.h5"):
    model = spec.builder(weights="none", **kwargs)
    try:
      model.load_weights(weights)  # saved from this whole classifier
      return model
    except Exception:  # a backbone's weights file: the builder loads it
      pass
  model = spec.builder(weights="none" if from_file else weights, **kwargs)
  if from_file:
    weights_lib.load_into(model, weights, backbone=pretrained.backbone_of(model))
  return model


def load_model(path, **kwargs):
  """Loads a `.keras` model saved by this package, with Keras `safe_mode` on."""
  import keras

  from xray_keras.models import (  # noqa: F401  (registers the custom layers)
    adapters,
    fused_adam,  # noqa: F401  (and the saved optimizer
    schedules,  # noqa: F401  and its learning-rate schedule)
    vit_layers,
  )

  try:
    import keras_hub  # noqa: F401  (registers keras-hub backbones, if a model holds one)
  except ImportError:
    pass
  try:
    return keras.models.load_model(path, safe_mode=True, **kwargs)
  except ValueError as e:
    if "safe_mode" in str(e) or "unsafe" in str(e).lower():
      raise weights_lib.WeightsError(
        f"Refusing to load {path}: it holds Python code (e.g. a Lambda layer), which Keras safe_mode "
        "does not run. Rebuild the model without it, or load it yourself only if you trust its source."
      ) from None
    raise weights_lib.WeightsError(f"Cannot load {path}: {weights_lib.first_line(e)}") from None
  except (OSError, TypeError, KeyError) as e:
    raise weights_lib.WeightsError(f"Cannot load {path}: {weights_lib.first_line(e)}") from None
