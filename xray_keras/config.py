"""Frozen run configuration built from flags in `run.py`; the only thing passed down."""

import dataclasses

from xray_keras.data.loader import DataConfig


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  name: str = "vit_scratch"
  patch_size: int = 0  # 0: the model's default
  dropout: float = -1.0  # < 0: the model's default
  weights: str = ""  # imagenet | none | a path; empty: the model's default
  backbone_kwargs: tuple = ()  # (key, value) pairs for keras.applications constructors


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = 10  # phase 2 (or the only phase) epochs
  head_epochs: int = 0  # phase 1: frozen backbone, head only
  head_learning_rate: float = 1e-3
  feature_cache: bool = True
  unfreeze: str = "all"  # phase 2: all | none | top N backbone blocks
  batch_size: int = 32
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  schedule: str = "constant"
  warmup_epochs: int = 0
  ema_momentum: float = 0.0  # 0: off; else validation, test and model.keras use the weights' moving average
  early_stopping_patience: int = 0
  monitor: str = "val_auc"
  restore_best_weights: bool = True
  class_weights: bool = True
  augment: tuple = ()
  tensorboard: bool = False
  seed: int = 42
  device: str = "auto"
  jit_compile: str = "auto"
  compilation_cache: bool = True
  distribution: str = "auto"
  per_replica_batch_size: int = 0
  mixed_precision: str = "none"
  feeder: str = "auto"  # auto | device (JAX: data and augmentation on the accelerator) | host
  steps_per_execution: int = 1
  deterministic: bool = False


@dataclasses.dataclass(frozen=True)
class RunConfig:
  experiment: str
  output_dir: str
  overwrite: bool
  data: DataConfig
  model: ModelConfig
  train: TrainConfig
  flags_text: str = ""
  export: bool = False
  export_format: str = "saved_model"
  export_dir: str = "saved_models"
  report: bool = True
  calibrate: bool = False  # fit a temperature on validation (calibration.json)
  tta: int = 1  # test-time views at evaluation (1: none)
  ood: bool = True  # fit the out-of-distribution score on train/val (ood.json, ood.npz)

  def model_input(self):
    """`(spec, image size, channels)` of the run's model; `--image_size=0` means the model's default."""
    from xray_keras import models

    spec = models.get_spec(self.model.name)
    return spec, self.data.image_size or spec.default_image_size, self.data.channels
