"""Every command-line flag, grouped; read only by `run.py`, which builds a `RunConfig`."""

import ast

from absl import flags

from xray_keras import choices, path_flags
from xray_keras.config import ModelConfig, RunConfig, TrainConfig
from xray_keras.data import decode, download, preprocess
from xray_keras.data.loader import SOURCES, DataConfig
from xray_keras.errors import UserError
from xray_keras.serving import runtime

# === Data ===
_DATA_SOURCE = flags.DEFINE_enum(
  "data_source",
  "auto",
  SOURCES,
  "Where images come from; auto: builtin (real X-rays at 64 px) without --data_dir, npz for a .npz file, else folder.",
)
_DATA_DIR = path_flags.DEFINE_path(
  "data_dir",
  "",
  "Dataset folder (any level of the Kermany archive), kaggle or mendeley (download the full-resolution data once), a MedMNIST .npz, or the TFDS manual_dir. Empty: the built-in real X-rays at 64 px.",
)
_MENDELEY_URL = flags.DEFINE_string(
  "mendeley_url",
  download.MENDELEY_URL,
  "Where --data_dir=mendeley (and kaggle, when Kaggle fails) downloads the Kermany archive from.",
)
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size", 0, "Square input size in pixels; 0: the model's default.", lower_bound=0
)
_CHANNELS = flags.DEFINE_enum("channels", "1", ["1", "3"], "Image channels: 1 (grayscale) or 3 (RGB).")
_RESIZE_MODE = flags.DEFINE_enum(
  "resize_mode", "squash", decode.RESIZE_MODES, "How images reach a square: squash, pad (letterbox) or crop (centre)."
)
_VAL_FRACTION = flags.DEFINE_float(
  "val_fraction",
  0.15,
  "Fraction of each class's train images carved out (whole patients) for validation.",
  lower_bound=0.0,
  upper_bound=0.9,
)
_SPLIT_SEED = flags.DEFINE_integer(
  "split_seed", 42, "Seed of the patient-grouped validation split and of --max_images_per_split."
)
_MERGE_OFFICIAL_VAL = flags.DEFINE_bool(
  "merge_official_val",
  True,
  "Merge the official 16-image val split into train before carving validation (else it is unused).",
)
_TASK = flags.DEFINE_enum(
  "task",
  "binary",
  ["binary", "three_class"],
  "binary: NORMAL / PNEUMONIA. three_class: NORMAL / BACTERIA / VIRUS from the file names (Kermany et al. 2018); the PNEUMONIA probability is then P(BACTERIA) + P(VIRUS).",
)
_PREPROCESS = flags.DEFINE_list(
  "preprocess",
  [],
  "Image transforms before the model, in order: downsample:N (through N x N pixels and back: no detail finer than N px, whatever the source resolution), equalize (histogram equalisation). Also applied by predict and the export.",
)
_MAX_IMAGES = flags.DEFINE_integer(
  "max_images_per_split", 0, "Cap per split and class, for quick runs; 0: no cap.", lower_bound=0
)
_CACHE_DIR = path_flags.DEFINE_path(
  "cache_dir", "", "Decode cache folder; empty: $XDG_CACHE_HOME/xray_keras or ~/.cache/xray_keras."
)
_SYNTHETIC_TRAIN = flags.DEFINE_integer(
  "synthetic_train_size", 800, "Synthetic train images (before validation is carved).", lower_bound=4
)
_SYNTHETIC_TEST = flags.DEFINE_integer("synthetic_test_size", 200, "Synthetic test images.", lower_bound=2)
_TFDS_DATA_DIR = path_flags.DEFINE_path(
  "tfds_data_dir", "", "TFDS data_dir for --data_source=tfds; empty: TFDS's default."
)

# === Model ===
_MODEL = flags.DEFINE_string(
  "model",
  "vit_scratch",
  f"Model to train: {', '.join(choices.MODELS)}, applications:<keras.applications name> or keras_hub:<image backbone preset or class>.",
)
_WEIGHTS = path_flags.DEFINE_path(
  "weights",
  "",
  "imagenet (download, cached by Keras/keras-hub), none (random), or a path: weights file, .keras model or keras-hub preset directory. Empty: imagenet for pretrained models, none otherwise.",
)
_BACKBONE_KWARGS = flags.DEFINE_list(
  "backbone_kwargs", [], "key=value arguments for applications:<name> constructors, e.g. alpha=0.75."
)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 0, "ViT patch size in pixels; 0: the model's default.", lower_bound=0)
_DROPOUT = flags.DEFINE_float("dropout", -1.0, "Dropout rate; negative: the model's default.", upper_bound=0.9)

# === Training ===
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs (phase 2 for pretrained models).", lower_bound=0)
_HEAD_EPOCHS = flags.DEFINE_integer(
  "head_epochs", 0, "Phase 1 epochs: backbone frozen, head only (pretrained models). 0: no phase 1.", lower_bound=0
)
_HEAD_LEARNING_RATE = flags.DEFINE_float("head_learning_rate", 1e-3, "Phase 1 learning rate.", lower_bound=0.0)
_FEATURE_CACHE = flags.DEFINE_bool(
  "feature_cache",
  True,
  "Phase 1 runs the backbone once and trains the head on cached features (no augmentation in phase 1).",
)
_UNFREEZE = flags.DEFINE_string(
  "unfreeze",
  "all",
  "Phase 2 trainable backbone part: all, none, or N (the top N blocks). BatchNorm stays frozen with pretrained weights.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Global batch size (all replicas together).", lower_bound=1)
_PER_REPLICA_BATCH = flags.DEFINE_integer(
  "per_replica_batch_size", 0, "If set, the global batch is this times the replica count.", lower_bound=0
)
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", choices.OPTIMIZERS, "Optimizer.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.", lower_bound=0.0)
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0, "Weight decay (adamw; 0: none).", lower_bound=0.0)
_SCHEDULE = flags.DEFINE_enum("schedule", "constant", choices.SCHEDULES, "Learning-rate schedule.")
_WARMUP_EPOCHS = flags.DEFINE_integer("warmup_epochs", 0, "Linear warm-up epochs (cosine schedule).", lower_bound=0)
_EMA_MOMENTUM = flags.DEFINE_float(
  "ema_momentum",
  0.0,
  "Keep an exponential moving average of the weights (e.g. 0.99 per step); validation, test and the saved "
  "model use the average. 0: off.",
  lower_bound=0.0,
  upper_bound=0.9999,
)
_PATIENCE = flags.DEFINE_integer(
  "early_stopping_patience", 0, "Stop after this many epochs without --monitor improving; 0: off.", lower_bound=0
)
_MONITOR = flags.DEFINE_enum(
  "monitor", "val_auc", ["val_auc", "val_loss", "val_accuracy"], "Validation metric for early stopping."
)
_RESTORE_BEST = flags.DEFINE_bool("restore_best_weights", True, "With early stopping, keep the best epoch's weights.")
_CLASS_WEIGHTS = flags.DEFINE_bool(
  "class_weights", True, "Weight the loss by inverse class frequency of the train split."
)
_AUGMENT = flags.DEFINE_list(
  "augment", [], f"Comma-separated augmentations from {','.join(choices.AUGMENTATIONS)}; default none."
)
_TENSORBOARD = flags.DEFINE_bool("tensorboard", False, "Write TensorBoard logs into the run directory.")
_SEED = flags.DEFINE_integer("seed", 42, "Seed for weights, shuffling and augmentation.")
_DEVICE = flags.DEFINE_enum(
  "device", "auto", choices.DEVICES, "auto: GPU if present; cpu: never a GPU; gpu: fail if none."
)
_JIT_COMPILE = flags.DEFINE_enum(
  "jit_compile",
  "auto",
  ["auto", "true", "false"],
  "XLA-compile the train step. auto: on for JAX (off there means no jax.jit at all), off for TensorFlow (measured slower on small CPUs).",
)
_COMPILATION_CACHE = flags.DEFINE_bool(
  "compilation_cache",
  True,
  "JAX: keep compiled XLA programs in <cache_dir>/jax_compilation, so a rerun skips compiling (TensorFlow has no such cache).",
)
_DISTRIBUTION = flags.DEFINE_enum(
  "distribution",
  "auto",
  choices.STRATEGIES,
  "auto, cpu, gpu (one device), mirrored (all local devices), multiworker (processes named by TF_CONFIG, or on JAX by KERAS_DISTRIBUTION_JOB_ADDRESSES/_NUM_PROCESSES/_PROCESS_ID).",
)
_FEEDER = flags.DEFINE_enum(
  "feeder",
  "auto",
  choices.FEEDERS,
  "device (JAX): the split on the accelerator, batches gathered there, cast and augmentation inside the compiled train step; host: tf.data (TensorFlow) or NumPy batches. auto: device on JAX, host otherwise.",
)
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
  "steps_per_execution",
  1,
  "Train steps per compiled call (Keras compile); fewer callbacks and host round trips between steps.",
  lower_bound=1,
)
_MIXED_PRECISION = flags.DEFINE_enum(
  "mixed_precision",
  "none",
  ["none", "mixed_float16", "mixed_bfloat16", "auto"],
  "Compute dtype policy: mixed_float16 (GPU, with loss scaling), mixed_bfloat16 (CPU, JAX), or auto: "
  "mixed_bfloat16 on a CPU with native bfloat16 arithmetic (AVX-512 BF16, AMX, Arm BF16), else float32.",
)
_DETERMINISTIC = flags.DEFINE_bool(
  "deterministic", False, "Deterministic ops (with --seed, repeat runs give identical metrics)."
)

# === Study ===
_BOOTSTRAP = flags.DEFINE_integer(
  "bootstrap_resamples", 1000, "Bootstrap resamples of the study report's confidence intervals.", lower_bound=10
)
_MODELS = flags.DEFINE_list(
  "models",
  [],
  "Run a study of these models (each with experiments/<model>.cfg) into one study folder, instead of one --model.",
)
_SEEDS = flags.DEFINE_list(
  "seeds",
  [],
  "Study: train each model once per seed (the first into <model>/, the others into <model>_seed<N>/, finished runs reused); the report adds each model's seed ensemble.",
)
flags.register_validator(
  "seeds", lambda values: all(v.lstrip("-").isdigit() for v in values), message="--seeds takes integers, e.g. 42,7,1"
)
_OVERRIDE = flags.DEFINE_multi_string(
  "override",
  [],
  "Study: a flag for one model only, <model>:<flag>=<value> (repeatable), e.g. resnet50:head_epochs=1. Study-wide flags of pretrained fine-tuning (--head_epochs, --unfreeze, ...) go to the pretrained models only.",
)

# === Output ===
_EXPERIMENT = flags.DEFINE_string("experiment", "", "Experiment name; empty: the model name.")
_OUTPUT_DIR = path_flags.DEFINE_path(
  "output_dir",
  "",
  "Run directory; empty: runs/<experiment>/<UTC timestamp>/. With --models: the study folder, default runs/<experiment>/.",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Allow writing into a directory that holds a finished run.")
_CALIBRATE = flags.DEFINE_bool(
  "calibrate",
  False,
  "Fit temperature scaling on validation (calibration.json in the run folder); predict and the export apply it.",
)
_TTA = flags.DEFINE_integer(
  "tta",
  1,
  "Test-time augmentation: also evaluate the mean of N views (the image and N-1 copies through --augment) into predictions_tta.csv; 1: off.",
  lower_bound=1,
  upper_bound=64,
)
_OOD = flags.DEFINE_bool(
  "ood",
  True,
  "Fit an out-of-distribution score at the end of the run (Mahalanobis distance of the penultimate features to "
  "the train split's; threshold: validation's 99th percentile) into ood.json/ood.npz; every export carries it.",
)
_EXPORT = flags.DEFINE_bool("export", False, "Export the model at the end of the run (--export_format).")
_EXPORT_FORMAT = flags.DEFINE_enum(
  "export_format",
  "saved_model",
  list(runtime.FORMATS),
  "--export's format: a SavedModel for TF Serving, or a file for ONNX Runtime, LiteRT or OpenVINO (docs/serving.md).",
)
_REPORT = flags.DEFINE_bool(
  "report", True, "Write report.md / report.html with figures into the run folder at the end."
)
_EXPORT_DIR = path_flags.DEFINE_path(
  "export_dir", "saved_models", "Base folder of exports: <export_dir>/<model>/<version>/."
)


flags.register_validator(
  "unfreeze",
  lambda v: v in ("all", "none") or (v.isdigit() and int(v) > 0),
  message="--unfreeze takes all, none or a positive number of top blocks",
)


def _validator(check, errors):
  """A flag validator that passes when `check(value)` raises none of `errors`, with its message if it does."""

  def validate(value):
    try:
      check(value)
    except errors as e:
      raise flags.ValidationError(str(e)) from None
    return True

  return validate


def _known_model(name):
  """A registered name passes at once; an `applications:`/`keras_hub:` name is checked by building its spec."""
  reason = choices.unknown_model(name)
  if reason:
    raise flags.ValidationError(reason)
  if name not in choices.MODELS:
    from xray_keras import models

    _validator(models.get_spec, ValueError)(name)
  return True


_valid_preprocess = _validator(preprocess.parse, UserError)


flags.register_validator("preprocess", _valid_preprocess)
flags.register_validator("model", _known_model)
flags.register_validator("models", lambda names: all(_known_model(n) for n in names))
flags.register_validator(
  "backbone_kwargs", lambda kv: all("=" in x for x in kv), message="--backbone_kwargs takes key=value pairs"
)
flags.register_multi_flags_validator(
  ["epochs", "head_epochs"],
  lambda f: f["epochs"] + f["head_epochs"] > 0,
  message="--epochs=0 and --head_epochs=0: nothing to train",
)
flags.register_multi_flags_validator(
  ["ema_momentum", "early_stopping_patience", "restore_best_weights"],
  lambda f: not (f["ema_momentum"] and f["early_stopping_patience"] and f["restore_best_weights"]),
  message="--ema_momentum with early stopping: pass --norestore_best_weights (the run ends on the average)",
)


def _literal(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


flags.register_validator(
  "augment",
  lambda names: set(names) <= set(choices.AUGMENTATIONS),
  message=f"--augment takes a comma-separated list from: {', '.join(choices.AUGMENTATIONS)}",
)


def flags_text():
  """The effective value of every flag defined here, as a reusable flagfile."""
  lines = [flag.serialize() for flag in flags.FLAGS.get_flags_for_module(__name__)]
  return "\n".join(line for line in lines if line) + "\n"


def study_models():
  """The models of a study run (`--models`), or an empty list for a single run."""
  return list(_MODELS.value)


def overrides():
  return list(_OVERRIDE.value)


def seeds():
  return [int(v) for v in _SEEDS.value]


def bootstrap_resamples():
  return _BOOTSTRAP.value


def study_name():
  return _EXPERIMENT.value or "study"


def run_config():
  """Builds the frozen `RunConfig` from the parsed flags."""
  data = DataConfig(
    source=_DATA_SOURCE.value,
    data_dir=_DATA_DIR.value,
    image_size=_IMAGE_SIZE.value,
    channels=int(_CHANNELS.value),
    resize_mode=_RESIZE_MODE.value,
    val_fraction=_VAL_FRACTION.value,
    split_seed=_SPLIT_SEED.value,
    merge_official_val=_MERGE_OFFICIAL_VAL.value,
    max_images_per_split=_MAX_IMAGES.value,
    cache_dir=_CACHE_DIR.value,
    synthetic_train_size=_SYNTHETIC_TRAIN.value,
    synthetic_test_size=_SYNTHETIC_TEST.value,
    tfds_data_dir=_TFDS_DATA_DIR.value,
    mendeley_url=_MENDELEY_URL.value,
    task=_TASK.value,
    preprocess=tuple(_PREPROCESS.value),
  )
  model = ModelConfig(
    name=_MODEL.value,
    patch_size=_PATCH_SIZE.value,
    dropout=_DROPOUT.value,
    weights=_WEIGHTS.value,
    backbone_kwargs=tuple((k, _literal(v)) for k, v in (x.split("=", 1) for x in _BACKBONE_KWARGS.value)),
  )
  train = TrainConfig(
    epochs=_EPOCHS.value,
    head_epochs=_HEAD_EPOCHS.value,
    head_learning_rate=_HEAD_LEARNING_RATE.value,
    feature_cache=_FEATURE_CACHE.value,
    unfreeze=_UNFREEZE.value,
    batch_size=_BATCH_SIZE.value,
    optimizer=_OPTIMIZER.value,
    learning_rate=_LEARNING_RATE.value,
    weight_decay=_WEIGHT_DECAY.value,
    schedule=_SCHEDULE.value,
    warmup_epochs=_WARMUP_EPOCHS.value,
    ema_momentum=_EMA_MOMENTUM.value,
    early_stopping_patience=_PATIENCE.value,
    monitor=_MONITOR.value,
    restore_best_weights=_RESTORE_BEST.value,
    class_weights=_CLASS_WEIGHTS.value,
    augment=tuple(_AUGMENT.value),
    tensorboard=_TENSORBOARD.value,
    seed=_SEED.value,
    device=_DEVICE.value,
    jit_compile=_JIT_COMPILE.value,
    compilation_cache=_COMPILATION_CACHE.value,
    distribution=_DISTRIBUTION.value,
    per_replica_batch_size=_PER_REPLICA_BATCH.value,
    mixed_precision=_MIXED_PRECISION.value,
    feeder=_FEEDER.value,
    steps_per_execution=_STEPS_PER_EXECUTION.value,
    deterministic=_DETERMINISTIC.value,
  )
  return RunConfig(
    experiment=_EXPERIMENT.value or _MODEL.value,
    output_dir=_OUTPUT_DIR.value,
    overwrite=_OVERWRITE.value,
    data=data,
    model=model,
    train=train,
    flags_text=flags_text(),
    export=_EXPORT.value,
    export_format=_EXPORT_FORMAT.value,
    report=_REPORT.value,
    export_dir=_EXPORT_DIR.value,
    calibrate=_CALIBRATE.value,
    tta=_TTA.value,
    ood=_OOD.value,
  )
