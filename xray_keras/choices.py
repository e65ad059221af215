"""The names the command line accepts, importable without TensorFlow or Keras.

Flag definitions and their validators read these, so a mistyped flag fails in a second, before
the run imports the libraries that train.
"""

STUDY_MODELS = ("cnn_scratch", "vit_scratch", "resnet50", "vit_base")
PRETRAINED = ("resnet50", "vit_base")  # the registered models with a backbone --weights initialises
VIT_SIZES = ("vit_tiny_scratch", "vit_base_scratch", "vit_large_scratch", "vit_huge_scratch")
MODELS = STUDY_MODELS + VIT_SIZES
APPLICATIONS = "applications:"
KERAS_HUB = "keras_hub:"

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
FEEDERS = ("auto", "device", "host")
DEVICES = ("auto", "cpu", "gpu")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker")
AUGMENTATIONS = ("rotation", "zoom", "translation", "contrast", "brightness", "blur", "sharpness", "affine")


def unknown_model(name):
  """The one-line reason `name` is no model `--model` takes, or None (a prefixed name is checked when built)."""
  if name in MODELS or name.startswith((APPLICATIONS, KERAS_HUB)):
    return None
  return (
    f"Unknown model: {name!r}. Valid models: {', '.join(MODELS)}, "
    f"{APPLICATIONS}<keras.applications name> (e.g. {APPLICATIONS}EfficientNetV2B0), "
    f"{KERAS_HUB}<keras-hub image backbone preset or class>"
  )


def is_pretrained(name):
  """Whether `--model=name` wraps a pretrained backbone (what `models.get_spec(name).pretrained` says)."""
  return name in PRETRAINED or name.startswith((APPLICATIONS, KERAS_HUB))
