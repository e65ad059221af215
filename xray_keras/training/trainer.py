"""Train, evaluate and time one experiment; write the run directory.

The run directory's files are listed in `run_dir.py`.
"""

import contextlib
import csv
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

from xray_keras import atomic, models
from xray_keras.data import device_feeder, feeder, loader
from xray_keras.data.records import CLASS_NAMES, printable
from xray_keras.errors import UserError
from xray_keras.evaluation import clinical, metrics, multiclass, statistics
from xray_keras.training import device, distribution, progress, room, schedules, testbed, transfer
from xray_keras.training import run_dir as run_dirs
from xray_keras.training.checkpoint import CHECKPOINT, LastGoodCheckpoint
from xray_keras.training.timing import TimingCallback

OPTIMIZERS = ("adam", "adamw", "sgd")
FEEDERS = ("auto", "device", "host")
SCHEDULES = ("constant", "cosine")
HEAD_WEIGHTS = "head_phase.weights.h5"
BOOTSTRAP_RESAMPLES = 1000


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


def make_optimizer(train, steps_per_epoch, learning_rate=None, epochs=None, warmup_epochs=None):
  """The optimizer of `train`; phase 1 passes its own learning rate and epochs."""
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
  if train.optimizer == "adam":
    return keras.optimizers.Adam(lr)
  if train.optimizer == "adamw":
    return keras.optimizers.AdamW(lr, weight_decay=train.weight_decay or 1e-4)
  if train.optimizer == "sgd":
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
  raise UserError(f"Unknown optimizer: {train.optimizer!r}. Expected one of {OPTIMIZERS}.")


def resolve_jit(setting):
  """`--jit_compile`: auto means on for JAX (off would mean no jax.jit at all), off for TensorFlow."""
  if setting == "auto":
    return keras.backend.backend() == "jax"
  return setting == "true"


def resolve_input(config):
  """Fills the model's default image size when `--image_size` is 0."""
  spec = models.get_spec(config.model.name)
  size = config.data.image_size or spec.default_image_size
  return spec, size, config.data.channels


def num_classes(config):
  """Output units: 1 (sigmoid, PNEUMONIA) or 3 (softmax, NORMAL / BACTERIA / VIRUS)."""
  return 3 if config.data.task == "three_class" else 1


def build_model(config, weights=None):
  """The run's model at its input size; `weights` overrides `--weights`."""
  _, size, channels = resolve_input(config)
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


@contextlib.contextmanager
def without_training_state(model):
  """Saves of `model` within skip the optimizer and compile settings (one copy of the weights only)."""
  optimizer, compiled = getattr(model, "optimizer", None), model.compiled
  model.optimizer, model.compiled = None, False
  try:
    yield model
  finally:
    model.optimizer, model.compiled = optimizer, compiled


def _clean_up(run_dir):
  """Deletes what only an unfinished run needs: the last-good and phase-1 weights."""
  for name in (CHECKPOINT, HEAD_WEIGHTS):
    path = os.path.join(run_dir, name)
    if os.path.exists(path):
      os.remove(path)
  with contextlib.suppress(OSError):
    os.rmdir(os.path.join(run_dir, os.path.dirname(CHECKPOINT)))


def _callbacks(config, run_dir, timing, resuming, checkpoint):
  train = config.train
  callbacks = [
    room.RoomCheck(run_dir),
    timing,
    progress.ProgressLine(train.epochs),
    keras.callbacks.TerminateOnNaN(),
    checkpoint,
  ]
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


def _predict(model, images, batch_size):
  """The model's outputs, `(N, units)`."""
  if not len(images):
    return np.zeros((0, model.outputs[0].shape[-1]), np.float32)  # Keras cannot predict on zero images
  outputs = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
  return outputs.reshape(len(images), -1)


def targets(labels, classes):
  """Training targets: one-hot for a `classes`-way softmax, the 0/1 labels themselves for one unit."""
  return labels if classes == 1 else np.eye(classes, dtype=np.float32)[labels]


def _targets(split, classes):
  """`split` with the targets of `targets` as labels."""
  return split if classes == 1 else dataclasses.replace(split, labels=targets(split.labels, classes))


def _inference_timing(model, images, batch_size):
  """Throughput of batched prediction and latency of single-image calls."""
  images = images.astype(np.float32)
  model.predict(images[:batch_size], batch_size=batch_size, verbose=0)  # warm up
  start = time.perf_counter()
  model.predict(images, batch_size=batch_size, verbose=0)
  throughput = len(images) / (time.perf_counter() - start)
  single = images[:1]
  model.predict_on_batch(single)
  latencies = []
  for i in range(min(20, len(images))):
    start = time.perf_counter()
    model.predict_on_batch(images[i : i + 1])
    latencies.append(time.perf_counter() - start)
  return {
    "images_per_s": throughput,
    "batch_size": batch_size,
    "latency_ms_per_image": 1000 * float(np.median(latencies)),
  }


def _write_samples(folder, split, per_class=2):
  """A few images of each class as PNG, for the TF Serving warm-up file and examples."""
  from PIL import Image

  os.makedirs(folder, exist_ok=True)
  for label, name in enumerate(n.lower() for n in CLASS_NAMES):
    for k, i in enumerate(np.flatnonzero(split.labels == label)[:per_class]):
      image = split.images[i]
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(folder, f"{name}_{k}.png"))


def _write_predictions(path, data, probabilities, outputs):
  """file, split, 0/1 label, PNEUMONIA probability; with three classes also the class and each probability."""
  names = list(data.class_names) if len(data.class_names) > 2 else []
  with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(
      ["file", "split", "label", "probability"] + (["class"] + [f"p_{n}" for n in names] if names else [])
    )
    for split, probs in probabilities.items():
      arrays = data.splits[split]
      for i, (record, p) in enumerate(zip(arrays.records, probs)):
        extra = [names[arrays.labels[i]]] + [f"{q:.6f}" for q in outputs[split][i]] if names else []
        writer.writerow([printable(record.path), split, record.label, f"{p:.6f}"] + extra)


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


def train_and_evaluate(config):
  """Runs one experiment end to end. Returns the run directory."""
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
    return _run(config, run_dir, resuming, plan, used_device)


def set_precision_and_seeds(train):
  if train.mixed_precision != "none":
    keras.mixed_precision.set_global_policy(train.mixed_precision)
    logging.info("Mixed precision %s (model outputs stay float32)", train.mixed_precision)
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
  set_precision_and_seeds(config.train)
  spec, size, channels = resolve_input(config)
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
      **compile_kwargs(make_optimizer(config.train, steps), jit_compile, classes),
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
    return run_dir
  if plan.jax_processes or plan.strategy is not None:
    model = distribution.local_copy(plan, build, model)

  timing_report = timing.summary()
  if phase1:
    timing_report["head_phase"] = phase1
  timing_report["distribution"] = {"name": plan.name, "replicas": plan.replicas, "workers": plan.num_workers}
  timing_report["jit_compile"] = jit_compile
  timing_report["resumed"] = resuming
  return finish_run(config, run_dir, model, data, weights, batch_size, timing_report, used_device, start)


def finish_run(config, run_dir, model, data, weights, batch_size, timing_report, used_device, start):
  """Evaluates a trained model on val and test and writes the rest of the run folder.

  predictions.csv, calibration/TTA files when asked, samples/, model.keras, timing.json
  (`timing_report` plus inference timing and the test bed), then metrics.json (the finished
  marker), the export and the report. Shared by central and federated training.
  """
  spec, size, channels = resolve_input(config)
  classes = len(data.class_names) if len(data.class_names) > 2 else 1
  val_split, test_split = data.splits["val"], data.splits["test"]

  outputs = {s: _predict(model, data.splits[s].images, batch_size) for s in ("val", "test")}
  probabilities = {s: models.pneumonia_probability(o) for s, o in outputs.items()}
  binary = {s: (data.splits[s].labels > 0).astype(int) for s in ("val", "test")}  # PNEUMONIA = any subtype
  if len(val_split.labels):
    threshold = metrics.choose_threshold(binary["val"], probabilities["val"])
  else:
    threshold = 0.5
  result = {
    split: metrics.evaluate_split(binary[split], probabilities[split], threshold)
    for split in ("val", "test")
    if len(data.splits[split].labels)
  }
  for split in ("val", "test"):
    if split in result:
      result[split]["ci95"] = {
        k: list(v)
        for k, v in statistics.bootstrap_ci(binary[split], probabilities[split], 0.5, BOOTSTRAP_RESAMPLES).items()
      }
      if classes > 1:
        labels = data.splits[split].labels
        result[split]["three_class"] = multiclass.three_class_metrics(labels, outputs[split], data.class_names)
        result[split]["three_class"]["ci95"] = multiclass.bootstrap_ci(
          labels, outputs[split], data.class_names, BOOTSTRAP_RESAMPLES
        )
  result["synthetic"] = data.synthetic
  result["data"] = data.summary()
  result["model"] = {
    "name": config.model.name,
    "display_name": spec.display_name,
    "params": int(model.count_params()),
    "input_shape": [size, size, channels],
    "weights": os.path.basename(os.path.normpath(weights)),  # a file name, not a local path
  }
  _write_predictions(os.path.join(run_dir, "predictions.csv"), data, probabilities, outputs)
  if config.calibrate and len(val_split.labels):
    fitted = clinical.write_calibration(run_dir, binary["val"], probabilities["val"])
    logging.info(
      "Temperature scaling: T = %.3f, validation log loss %.4f -> %.4f",
      fitted["temperature"],
      fitted["val_log_loss_before"],
      fitted["val_log_loss_after"],
    )
  if config.tta > 1:
    clinical.write_tta(
      run_dir,
      model,
      {
        s: ([printable(r.path) for r in data.splits[s].records], binary[s], data.splits[s].images)
        for s in ("val", "test")
      },
      config.train.augment,
      config.tta,
      batch_size,
    )
    logging.info("Test-time augmentation: %d views of each val/test image in %s", config.tta, clinical.TTA_PREDICTIONS)
  _write_samples(os.path.join(run_dir, "samples"), test_split)
  room.check(run_dir, 2 * room.weights_bytes(model), "model.keras")
  with without_training_state(model):
    model.save(os.path.join(run_dir, "model.keras"))

  timing_report["eval"] = _inference_timing(model, test_split.images, batch_size)
  timing_report["total_run_s"] = time.perf_counter() - start
  timing_report["device"] = used_device
  timing_report["mixed_precision"] = config.train.mixed_precision
  timing_report["testbed"] = testbed.describe()
  timing_report["synthetic"] = data.synthetic
  atomic.write_json(os.path.join(run_dir, "timing.json"), timing_report)
  # metrics.json is written last: its presence marks a finished run.
  atomic.write_json(os.path.join(run_dir, run_dirs.FINISHED_MARKER), result)
  _clean_up(run_dir)
  if config.export:
    from xray_keras.serving import export  # TensorFlow-only

    export.export_run(run_dir, config.export_dir)
  report = _write_run_report(run_dir) if config.report else None
  synthetic = " on SYNTHETIC data" if data.synthetic else ""
  test = result["test"]
  ci = test["ci95"]
  logging.info(
    "Done%s: test accuracy %.4f, AUC %.4f (threshold 0.5); accuracy %.4f at validation threshold %.3f. "
    "%.1f train img/s, %.1fs in all.",
    synthetic,
    test["accuracy"],
    test["auc"],
    test["at_val_threshold"]["accuracy"],
    threshold,
    timing_report["train_images_per_s"] or 0.0,
    timing_report["total_run_s"],
  )
  logging.info("Run folder: %s", run_dir)
  logging.info(
    "Test (%d images, threshold 0.5): accuracy %.3f [95%% CI %.3f, %.3f], ROC-AUC %.3f [95%% CI %.3f, %.3f]",
    test["n"],
    test["accuracy"],
    *ci.get("accuracy", (math.nan, math.nan)),
    test["auc"],
    *ci.get("auc", (math.nan, math.nan)),
  )
  if report:
    logging.info("Figures and tables: python -m webbrowser -t %s", report)
  return run_dir


def _write_run_report(run_dir):
  """The run's report.md/report.html with figures; a failure is logged, never fatal (the run is done)."""
  from xray_keras.report import write  # matplotlib, only at the end

  try:
    write.write_report(run_dir, BOOTSTRAP_RESAMPLES)
  except Exception as e:
    logging.warning("Report not written (%s: %s); the run itself is complete.", type(e).__name__, e)
    return None
  return os.path.abspath(os.path.join(run_dir, "report.html"))
