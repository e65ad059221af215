"""`--distribution`: tf.distribute strategies on TensorFlow, `keras.distribution` on JAX.

TensorFlow: `auto` (TensorFlow's default: one device, the GPU if present), `cpu`
and `gpu` (`OneDeviceStrategy`), `mirrored` (all local GPUs) and `multiworker`
(`MultiWorkerMirroredStrategy`, cluster from `TF_CONFIG`). JAX: `auto` and
`mirrored` use `keras.distribution.DataParallel` over the local devices when
there are several; `multiworker` starts `jax.distributed` through
`keras.distribution.initialize` (cluster from Keras' `KERAS_DISTRIBUTION_*`
variables, or from the same `TF_CONFIG`) and runs `DataParallel` over every
process's devices, each process feeding its share of every global batch.
Strategies must be created before any other TensorFlow op.
"""

import contextlib
import dataclasses
import json
import os

import keras
from absl import logging

from xray_keras import choices
from xray_keras.errors import UserError

STRATEGIES = choices.STRATEGIES


@dataclasses.dataclass
class Plan:
  """How training is spread: the scope to build the model in and who writes outputs."""

  name: str
  replicas: int
  strategy: object = None
  worker_index: int = 0
  num_workers: int = 1
  jax_processes: bool = False  # multi-process JAX: each process feeds its share of every batch

  @property
  def shard(self):
    """`(index, count)` of this process's share of every batch fed to fit()."""
    return (self.worker_index, self.num_workers) if self.jax_processes else (0, 1)

  @property
  def is_chief(self):
    return self.worker_index == 0

  def scope(self):
    return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def _tf_config_task():
  config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
  cluster = config.get("cluster", {})
  task = config.get("task", {})
  workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
  index = task.get("index", 0)
  if task.get("type") == "worker" and "chief" in cluster:
    index += 1
  return workers, index


def setup(name):
  """Creates the strategy for `name` on the active backend. Returns a `Plan`."""
  if name not in STRATEGIES:
    raise UserError(f"Unknown distribution: {name!r}. Expected one of {STRATEGIES}.")
  backend = keras.backend.backend()
  if backend == "tensorflow":
    return _setup_tensorflow(name)
  if backend == "jax":
    return _setup_jax(name)
  if name not in ("auto", "cpu"):
    raise UserError(f"--distribution={name} is not supported on the {backend} backend.")
  return Plan(name, 1)


def _setup_tensorflow(name):
  import tensorflow as tf

  if name == "multiworker":
    workers, index = _tf_config_task()
    if workers < 1:
      raise UserError("--distribution=multiworker needs TF_CONFIG with a cluster of workers.")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Plan(name, strategy.num_replicas_in_sync, strategy, index, workers)
  gpus = tf.config.get_visible_devices("GPU")
  if name == "mirrored":
    strategy = tf.distribute.MirroredStrategy()
    return Plan(name, strategy.num_replicas_in_sync, strategy)
  if name == "gpu":
    if not gpus:
      raise UserError("--distribution=gpu, but TensorFlow sees no GPU.")
    return Plan(name, 1, tf.distribute.OneDeviceStrategy("/gpu:0"))
  if name == "cpu":
    return Plan(name, 1, tf.distribute.OneDeviceStrategy("/cpu:0"))
  return Plan(name, 1)


def _jax_cluster():
  """(coordinator address, processes, this process's id) from KERAS_DISTRIBUTION_* or TF_CONFIG."""
  env = os.environ
  if env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
    try:
      return (
        env["KERAS_DISTRIBUTION_JOB_ADDRESSES"].split(",")[0],
        int(env["KERAS_DISTRIBUTION_NUM_PROCESSES"]),
        int(env["KERAS_DISTRIBUTION_PROCESS_ID"]),
      )
    except (KeyError, ValueError):
      raise UserError(
        "KERAS_DISTRIBUTION_JOB_ADDRESSES needs KERAS_DISTRIBUTION_NUM_PROCESSES and "
        "KERAS_DISTRIBUTION_PROCESS_ID (integers)."
      ) from None
  workers, index = _tf_config_task()
  if workers < 1:
    raise UserError(
      "--distribution=multiworker needs KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and "
      "_PROCESS_ID (or TF_CONFIG) naming the processes."
    )
  cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
  return (cluster.get("chief") or cluster["worker"])[0], workers, index


def _setup_jax_processes(name):
  import jax

  coordinator, processes, index = _jax_cluster()
  # CPU processes need a collectives backend (GPUs use NCCL); harmless where unused.
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # a JAX that has no such option uses its own default
    logging.info("JAX has no jax_cpu_collectives_implementation option; using its default CPU collectives.")
  keras.distribution.initialize(coordinator, processes, index)
  # initialize() sets Keras' global seed to a sum of random ones; clear it, so `--seed` alone decides
  # the initial weights, as in one process.
  from keras.src.backend.common import global_state
  from keras.src.random import seed_generator
  from keras.src.utils import rng_utils

  global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, None)
  global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
  parallel = keras.distribution.DataParallel(devices=jax.devices())
  parallel.auto_shard_dataset = False  # each process feeds its own share (Plan.shard)
  keras.distribution.set_distribution(parallel)
  return Plan(
    name, len(jax.devices()), worker_index=jax.process_index(), num_workers=jax.process_count(), jax_processes=True
  )


def _setup_jax(name):
  import jax

  if name == "multiworker":
    return _setup_jax_processes(name)
  if name == "gpu" and not any(d.platform == "gpu" for d in jax.devices()):
    raise UserError("--distribution=gpu, but JAX sees no GPU.")
  devices = jax.devices()
  if name in ("auto", "mirrored") and len(devices) > 1:
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Plan(name, len(devices))
  return Plan(name, 1)


def global_batch(plan, batch_size, per_replica_batch_size):
  """The global batch from the flags; logs how it splits over replicas."""
  if per_replica_batch_size:
    batch_size = per_replica_batch_size * plan.replicas
  if batch_size % plan.replicas:
    raise UserError(
      f"--batch_size={batch_size} (global) does not divide over {plan.replicas} replicas; "
      "use a multiple or --per_replica_batch_size."
    )
  logging.info(
    "Distribution %s: global batch %d = %d per replica x %d replica(s), %d worker(s)",
    plan.name,
    batch_size,
    batch_size // plan.replicas,
    plan.replicas,
    plan.num_workers,
  )
  return batch_size


def local_copy(plan, build, trained):
  """A plain model with `trained`'s weights, to evaluate and save after distributed training:
  distributed variables would shard predictions over workers. Every process holds the weights whole."""
  weights = trained.get_weights()
  if plan.jax_processes:
    keras.distribution.set_distribution(None)  # build on this process's devices only
  model = build(weights="none")
  model.set_weights(weights)
  return model


def build_for_multiworker(model, plan, images, labels):
  """Works around keras-team/keras#20585 (open): under MultiWorkerMirroredStrategy, Keras 3's
  fit() builds its metrics from the first data batch reduced across workers, which fails. The
  build needs only shapes, so it is done here from a local batch and fit() skips its own."""
  import numpy as np
  from keras.src.backend.tensorflow import trainer as tf_trainer

  with plan.scope():
    model._symbolic_build(data_batch=(images[:1].astype(np.float32), labels[:1].astype(np.float32)))
  model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
  # The same path averages scalar logs with axis=0, which fails on scalars; average them whole.
  reduce = tf_trainer.reduce_per_replica

  def reduce_logs(values, strategy, reduction):
    if reduction in ("auto", "mean"):
      return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None), values)
    return reduce(values, strategy, reduction)

  tf_trainer.reduce_per_replica = reduce_logs
