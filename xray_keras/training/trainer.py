"""Train and time one experiment into its run directory; `pipeline.py` drives the steps after it.

The run directory's files are listed in `run_dir.py`.
"""

import contextlib
import dataclasses
import functools
import logging as std_logging
import math
import os
import random
import re
import time

import keras
import numpy as np
from absl import logging

from xray_keras import choices, models
from xray_keras.data import device_feeder, feeder, loader
from xray_keras.errors import UserError
from xray_keras.models import fused_adam, schedules
from xray_keras.training import device, distribution, progress, room, transfer
from xray_keras.training import run_dir as run_dirs
from xray_keras.training.checkpoint import CHECKPOINT, HEAD_WEIGHTS, LastGoodCheckpoint
from xray_keras.training.timing import TimingCallback

OPTIMIZERS = choices.OPTIMIZERS
FEEDERS = choices.FEEDERS
SCHEDULES = choices.SCHEDULES


@contextlib.contextmanager
def log_to_file(path):
  """Copies every log record (absl, Keras, TF Python) into `path`, and the per-epoch detail that the
  console does not show (`progress.DETAIL`)."""
  handler = std_logging.FileHandler(path)
  handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  loggers = (std_logging.getLogger(), progress.DETAIL)
  for logger in loggers:
    logger.addHandler(handler)
  progress.DETAIL.setLevel(std_logging.INFO)
  previous = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeHandler(handler)
    handler.close()
    logging.set_verbosity(previous)


def make_optimizer(train, steps_per_epoch, learning_rate=None, epochs=None, warmup_epochs=None, ema_momentum=0.0):
  """The optimizer of `train`; phase 1 passes its own learning rate and epochs, the main phase its EMA."""
  peak = train.learning_rate if learning_rate is None else learning_rate
  epochs = train.epochs if epochs is None else epochs
  warmup_epochs = train.warmup_epochs if warmup_epochs is None else warmup_epochs
  lr = peak
  if train.schedule == "cosine":
    total = max(epochs * steps_per_epoch, 1)
    warmup = warmup_epochs * steps_per_epoch
    lr = schedules.WarmupCosine(peak, max(total - warmup, 1), warmup)
  elif train.schedule != "constant":
    raise UserError(f"Unknown schedule: {train.schedule!r}. Expected one of {SCHEDULES}.")
  ema = dict(use_ema=True, ema_momentum=ema_momentum) if ema_momentum else {}
  if train.optimizer == "adam":
    return fused_adam.FusedAdam(lr, **ema)
  if train.optimizer == "adamw":
    return fused_adam.FusedAdamW(lr, weight_decay=train.weight_decay, **ema)
  if train.optimizer == "sgd":
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **ema)
  raise UserError(f"Unknown optimizer: {train.optimizer!r}. Expected one of {OPTIMIZERS}.")


def resolve_jit(setting):
  """`--jit_compile`: auto means on for JAX (off would mean no jax.jit at all), off for TensorFlow."""
  if setting == "auto":
    return keras.backend.backend() == "jax"
  return setting == "true"


def num_classes(config):
  """Output units: 1 (sigmoid, PNEUMONIA) or 3 (softmax, NORMAL / BACTERIA / VIRUS)."""
  return 3 if config.data.task == "three_class" else 1


def build_model(config, weights=None):
  """The run's model at its input size; `weights` overrides `--weights`."""
  _, size, channels = config.model_input()
  return models.build_model(
    config.model.name,
    (size, size, channels),
    patch_size=config.model.patch_size or None,
    dropout=config.model.dropout if config.model.dropout >= 0 else None,
    weights=config.model.weights if weights is None else weights,
    backbone_kwargs=dict(config.model.backbone_kwargs),
    classes=num_classes(config),
  )


def compile_kwargs(optimizer, jit_compile, classes=1):
  """The loss, metrics and XLA setting every training phase compiles with."""
  if classes > 1:  # one-hot targets; "auc" is the macro one-vs-rest AUC
    return dict(
      optimizer=optimizer,
      loss="categorical_crossentropy",
      jit_compile=jit_compile,
      metrics=[
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.AUC(name="auc", multi_label=True, num_labels=classes),
      ],
    )
  return dict(
    optimizer=optimizer,
    loss="binary_crossentropy",
    metrics=[
      keras.metrics.BinaryAccuracy(name="accuracy"),
      keras.metrics.AUC(name="auc"),
      keras.metrics.Precision(name="precision"),
      keras.metrics.Recall(name="recall"),
    ],
    jit_compile=jit_compile,
  )


def resolve_feeder(setting, images):
  """`--feeder`: device (JAX only: the split on the accelerator, augmentation in the step) or host."""
  backend = keras.backend.backend()
  if setting == "device" and backend != "jax":
    raise UserError(f"--feeder=device needs the JAX backend (KERAS_BACKEND=jax); this is {backend}.")
  if setting == "auto":
    if backend != "jax":
      return "host"
    if not device_feeder.fits_on_device(images):
      logging.info(
        "The train split (%.1f GiB) stays on the host: more than --feeder=auto puts on the device.",
        images.nbytes / 2**30,
      )
      return "host"
    return "device"
  return setting


def _feeders(kind, splits, batch_size, seed, augmenter, plan):
  """The train and validation feeders of phase 2 (validation None without validation images)."""
  train_split, val_split = splits
  multiple = plan.replicas if keras.backend.backend() == "jax" else 1
  if kind == "device":
    make = lambda split, training: device_feeder.DeviceFeeder(
      split.images, split.labels, batch_size, training, seed, plan.shard, multiple
    )
  else:
    make = lambda split, training: feeder.make_feeder(
      split.images, split.labels, batch_size, training, seed, augmenter if training else None, plan.shard, multiple
    )
  train_ds = make(train_split, True)
  val_ds = make(val_split, False) if len(val_split.labels) else None
  left_out = train_ds.left_out() if hasattr(train_ds, "left_out") else 0
  if left_out:
    logging.warning(
      "%d image(s) of each epoch's last batch are left out: it does not split over %d devices "
      "(a different %d each epoch, as the order is reshuffled).",
      left_out,
      multiple,
      left_out,
    )
  return train_ds, val_ds


def _callbacks(config, run_dir, timing, resuming, checkpoint):
  train = config.train
  callbacks = [
    room.RoomCheck(run_dir),
    timing,
    progress.ProgressLine(train.epochs),
    keras.callbacks.TerminateOnNaN(),
    checkpoint,
  ]
  if train.ema_momentum:  # validation sees the average; fit ends by assigning it to the model
    callbacks.insert(0, keras.callbacks.SwapEMAWeights())
  if train.early_stopping_patience:
    callbacks.append(
      keras.callbacks.EarlyStopping(
        monitor=train.monitor,
        mode="min" if "loss" in train.monitor else "max",
        patience=train.early_stopping_patience,
        restore_best_weights=train.restore_best_weights,
        verbose=1,
      )
    )
  callbacks.append(keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=resuming))
  if train.tensorboard:
    callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")))
  # Last, so an epoch's history row is written before its backup: a kill in between repeats the
  # epoch (trim_history drops the extra row) rather than losing its row.
  callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(run_dir, run_dirs.BACKUP_DIR), double_checkpoint=True))
  return callbacks


def targets(labels, classes):
  """Training targets: one-hot for a `classes`-way softmax, the 0/1 labels themselves for one unit."""
  return labels if classes == 1 else np.eye(classes, dtype=np.float32)[labels]


def _targets(split, classes):
  """`split` with the targets of `targets` as labels."""
  return split if classes == 1 else dataclasses.replace(split, labels=targets(split.labels, classes))


class _SyntheticTag(std_logging.Filter):
  """Prefixes every log record of a run on synthetic data with "[synthetic]"."""

  def filter(self, record):
    record.msg = f"[synthetic] {record.msg}"
    return True


@contextlib.contextmanager
def _tag_synthetic(enabled):
  if not enabled:
    yield
    return
  tag, loggers = _SyntheticTag(), (logging.get_absl_logger(), progress.DETAIL)
  for logger in loggers:
    logger.addFilter(tag)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(tag)


@dataclasses.dataclass
class Session:
  """Where one run trains: its folder (logging into its run.log), whether it resumes, the device plan."""

  run_dir: str
  resuming: bool
  plan: object
  device: str


@dataclasses.dataclass
class Trained:
  """A trained model and what the end of the run needs from its training."""

  run_dir: str
  model: object
  data: object
  weights: str  # the weights it started from: a name, or a local file
  batch_size: int
  timing: dict  # timing.json so far
  device: str
  start: float  # time.perf_counter() at the run's start


@contextlib.contextmanager
def session(config):
  """Sets up the device and distribution plan and prepares the run folder; logs into its run.log within."""
  # jax.distributed must start before anything asks JAX for its devices; a TensorFlow strategy
  # after the visible devices are set but before any other TensorFlow op.
  jax_processes = keras.backend.backend() == "jax" and config.train.distribution == "multiworker"
  plan = distribution.setup(config.train.distribution) if jax_processes else None
  used_device = device.configure(config.train.device)
  if config.train.compilation_cache:
    device.compilation_cache(config.data.cache_dir)
  plan = plan or distribution.setup(config.train.distribution)
  synthetic = loader.resolve_source(config.data) == "synthetic"
  run_dir, resuming = run_dirs.prepare(config, plan, synthetic)
  with log_to_file(os.path.join(run_dir, "run.log")), _tag_synthetic(synthetic):
    yield Session(run_dir, resuming, plan, used_device)


def train(config, where):
  """Trains `config`'s model in `where` (a `Session`); returns `Trained`, or None on a worker that is not the chief."""
  return _run(config, where.run_dir, where.resuming, where.plan, where.device)


def set_precision_and_seeds(train, used_device="cpu"):
  """Sets the dtype policy (returns the `--mixed_precision` value it resolved to) and the seeds."""
  policy = device.mixed_precision_policy(train.mixed_precision, used_device)
  if policy != "none":
    keras.mixed_precision.set_global_policy(policy)
    logging.info("Mixed precision %s (model outputs stay float32)", policy)
  if keras.backend.backend() == "tensorflow":
    keras.utils.set_random_seed(train.seed)
  else:
    # keras.utils.set_random_seed imports TensorFlow whenever it is installed; Keras layers
    # without explicit seeds draw theirs from Python's generator.
    random.seed(train.seed)
    np.random.seed(train.seed)
  if train.deterministic:
    if keras.backend.backend() == "tensorflow":
      import tensorflow as tf

      tf.config.experimental.enable_op_determinism()
    logging.info("Deterministic ops on, seed %d", train.seed)
  return policy


def _train_head(
  config,
  run_dir,
  resuming,
  model,
  plan,
  train_split,
  val_split,
  batch_size,
  jit_compile,
  augmenter,
  class_weight,
  classes=1,
):
  """Phase 1 (head only, backbone frozen); skipped when resuming a run whose phase 1 finished."""
  done_path = os.path.join(run_dir, HEAD_WEIGHTS)
  if resuming and os.path.exists(done_path):
    model.load_weights(done_path)
    logging.info("Phase 1 already done: head weights from %s", done_path)
    return {"resumed": True}
  train = config.train
  steps = math.ceil(len(train_split.labels) / batch_size)
  timing = TimingCallback(len(train_split.labels), batch_size)
  logging.info(
    "Phase 1: %d epochs, backbone frozen, head only%s",
    train.head_epochs,
    ", on cached features" if train.feature_cache else "",
  )
  with plan.scope():
    optimizer = make_optimizer(
      train, steps, learning_rate=train.head_learning_rate, epochs=train.head_epochs, warmup_epochs=0
    )
    result = transfer.train_head(
      model,
      compile_kwargs(optimizer, jit_compile, classes),
      (train_split.images, train_split.labels),
      (val_split.images, val_split.labels) if len(val_split.labels) else None,
      batch_size,
      train.head_epochs,
      train.seed,
      callbacks=[
        timing,
        progress.ProgressLine(train.head_epochs),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history_head.csv")),
      ],
      class_weight=class_weight,
      use_cache=train.feature_cache,
      augmenter=augmenter,
    )
  result.update(timing.summary())
  room.check(run_dir, room.weights_bytes(model), "the phase-1 weights")
  model.save_weights(done_path)
  return result


def _run(config, run_dir, resuming, plan, used_device):
  start = time.perf_counter()
  with open(os.path.join(run_dir, "flags.txt"), "w") as f:
    f.write(config.flags_text)
  precision = set_precision_and_seeds(config.train, used_device)
  spec, size, channels = config.model_input()
  classes = num_classes(config)

  # === Model ===
  build = functools.partial(build_model, config)

  weights = models.default_weights(spec, config.model.weights)
  if not spec.pretrained and (config.train.head_epochs or config.train.unfreeze != "all"):
    raise UserError(f"--head_epochs and --unfreeze need a pretrained-backbone model; {spec.display_name} has none.")
  with plan.scope():
    try:
      model = build()  # before loading data: missing weights fail fast
    except ValueError as e:
      reason = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split()))[:300]
      raise UserError(f"Cannot build {spec.display_name} for {size}x{size}x{channels} inputs: {reason}") from None
  logging.info("Model %s: %d parameters, weights %s", spec.display_name, model.count_params(), weights)

  data_config = dataclasses.replace(config.data, image_size=size)
  data = loader.load(data_config)
  synthetic = " on SYNTHETIC data" if data.synthetic else ""
  logging.info(
    "Run %s: %s%s, %dpx x %d channel(s), device %s, backend %s, output %s",
    config.experiment,
    spec.display_name,
    synthetic,
    size,
    channels,
    used_device,
    keras.backend.backend(),
    run_dir,
  )
  loader.write_manifest(data, os.path.join(run_dir, "split_manifest.csv"))
  loader.write_skipped(data.skipped, os.path.join(run_dir, "skipped_files.csv"))

  train_split, val_split, test_split = (data.splits[s] for s in ("train", "val", "test"))
  batch_size = distribution.global_batch(plan, config.train.batch_size, config.train.per_replica_batch_size)
  steps = math.ceil(len(train_split.labels) / batch_size)
  jit_compile = resolve_jit(config.train.jit_compile)

  # === Training ===
  augmenter = feeder.augmentation(config.train.augment, seed=config.train.seed)
  class_weight = feeder.class_weights(train_split.labels, classes) if config.train.class_weights else None
  fit_train, fit_val = _targets(train_split, classes), _targets(val_split, classes)
  phase1 = None
  if config.train.head_epochs:
    phase1 = _train_head(
      config,
      run_dir,
      resuming,
      model,
      plan,
      fit_train,
      fit_val,
      batch_size,
      jit_compile,
      augmenter,
      class_weight,
      classes,
    )
  if spec.pretrained:
    trainable = transfer.set_trainable(model, config.train.unfreeze, freeze_batchnorm=weights != "none")
    logging.info("Phase 2: %s backbone parameters trainable (--unfreeze=%s)", f"{trainable:,}", config.train.unfreeze)
  kind = resolve_feeder(config.train.feeder, train_split.images)
  trainee = device_feeder.in_step_model(model, augmenter) if kind == "device" else model
  with plan.scope():
    trainee.compile(
      **compile_kwargs(
        make_optimizer(config.train, steps, ema_momentum=config.train.ema_momentum), jit_compile, classes
      ),
      steps_per_execution=config.train.steps_per_execution,
    )
    transfer.build_optimizer(trainee)
  train_ds, val_ds = _feeders(kind, (fit_train, fit_val), batch_size, config.train.seed, augmenter, plan)
  logging.info(
    "Feeder: %s",
    "the split on the JAX device, cast and augmentation inside the train step"
    if kind == "device"
    else "host (tf.data on TensorFlow, NumPy batches otherwise)",
  )
  if class_weight:
    logging.info("Class weights: %s", class_weight)
  if resuming:
    done = run_dirs.completed_epochs(run_dir)
    run_dirs.trim_history(os.path.join(run_dir, "history.csv"), done)
    logging.info(
      "Resuming an interrupted run: %d of %d epochs were complete (BackupAndRestore).", done, config.train.epochs
    )
  if plan.name == "multiworker" and plan.strategy is not None:
    distribution.build_for_multiworker(trainee, plan, fit_train.images, fit_train.labels)
  timing = TimingCallback(len(train_split.labels), batch_size)
  checkpoint = LastGoodCheckpoint(os.path.join(run_dir, CHECKPOINT), target=model)
  losses = []
  if config.train.epochs:
    history = trainee.fit(
      train_ds,
      validation_data=val_ds,
      epochs=config.train.epochs,
      class_weight=class_weight,
      callbacks=_callbacks(config, run_dir, timing, resuming, checkpoint),
      verbose=0,
      shuffle=False,
    )
    losses = history.history.get("loss", [])
  if any(not math.isfinite(e) for e in losses):
    kept = (
      f"the last good weights (epoch {checkpoint.epoch}) are in {os.path.join(run_dir, CHECKPOINT)}"
      if checkpoint.epoch
      else "no epoch finished with a finite loss"
    )
    raise UserError(f"Training stopped: the loss became NaN; {kept}. Lower --learning_rate.")
  if not plan.is_chief:
    logging.info("Worker %d done; the chief writes the outputs.", plan.worker_index)
    return None
  if plan.jax_processes or plan.strategy is not None:
    model = distribution.local_copy(plan, build, model)

  timing_report = timing.summary()
  if phase1:
    timing_report["head_phase"] = phase1
  timing_report["distribution"] = {"name": plan.name, "replicas": plan.replicas, "workers": plan.num_workers}
  timing_report["jit_compile"] = jit_compile
  timing_report["mixed_precision"] = precision
  timing_report["optimizer"] = type(trainee.optimizer).__name__
  timing_report["resumed"] = resuming
  return Trained(run_dir, model, data, weights, batch_size, timing_report, used_device, start)
