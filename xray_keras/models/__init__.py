"""Model registry: study names -> builders with their default inputs."""

import dataclasses

from xray_keras.models.cnn_scratch import cnn_scratch
from xray_keras.models.vit_scratch import vit_scratch


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A buildable model and the input it was designed for."""

  name: str
  display_name: str
  builder: object
  default_image_size: int
  default_channels: int = 1
  uses_patches: bool = False


REGISTRY = {
    "cnn_scratch": ModelSpec("cnn_scratch", "CNN_scratch", cnn_scratch, 224),
    "vit_scratch": ModelSpec("vit_scratch", "ViT_scratch", vit_scratch, 64, uses_patches=True),
}


def get_spec(name):
  """Returns the `ModelSpec` for `name`, or raises listing the valid names."""
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(f"Unknown model: {name!r}. Valid models: {', '.join(sorted(REGISTRY))}") from None


def build_model(name, input_shape, patch_size=None, dropout=None):
  """Builds the registered model `name` for `input_shape`."""
  spec = get_spec(name)
  kwargs = {"input_shape": tuple(input_shape)}
  if dropout is not None:
    kwargs["dropout"] = dropout
  if spec.uses_patches and patch_size:
    kwargs["patch_size"] = patch_size
  return spec.builder(**kwargs)


def load_model(path):
  """Loads a `.keras` model saved by this package, with Keras `safe_mode` on."""
  import keras

  from xray_keras.models import vit_layers  # noqa: F401  (registers the custom layers)

  return keras.models.load_model(path, safe_mode=True)
