"""A site's Flower client: local training of the study model on the site's own images only.

The server sends, with the global weights, the run's settings (`run_config`, JSON), the round's
learning rate, local epochs (whole, or a fraction: see `round_rows`), FedProx's `proximal_mu` and
whether the site keeps its optimizer state (AdamW's moments and step count) from one round to the
next in its Flower context, or starts every round with a fresh optimizer. A simulated site finds
its images as `<sites_dir>/site_<partition-id>.npz`; a SuperNode is told its file with
`--node-config site-data=PATH`.
"""

import dataclasses
import json
import math
import os
import re
import time

import keras
import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import ArrayRecord

from xray_keras.config import ModelConfig, RunConfig, TrainConfig
from xray_keras.data import feeder
from xray_keras.data.loader import DataConfig
from xray_keras.training import trainer

_MODELS = {}  # per process: the compiled model of a run configuration
_SITES = {}  # per process: a site's arrays by file
_OPTIMIZER_STATE = "optimizer"  # key of a site's optimizer variables in its Flower context


def encode_config(config):
  """`RunConfig` as JSON, for the fit instructions."""
  return json.dumps(dataclasses.asdict(config))


def decode_config(text):
  """The `RunConfig` of `encode_config`."""
  d = json.loads(text)
  tuples = lambda fields: {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  model = tuples(d["model"])
  model["backbone_kwargs"] = tuple(tuple(p) for p in model["backbone_kwargs"])
  return RunConfig(
    **{
      **d,
      "data": DataConfig(**tuples(d["data"])),
      "model": ModelConfig(**model),
      "train": TrainConfig(**tuples(d["train"])),
    }
  )


def write_site(path, images, labels, files):
  """A site's images (uint8), labels and file names as one .npz."""
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, images=images, labels=labels, files=np.asarray(files, dtype=str))
  os.replace(tmp, path)


def read_site(path):
  """`(images, labels)` of a site file, read once per process."""
  if path not in _SITES:
    with np.load(path, allow_pickle=False) as f:
      _SITES[path] = (f["images"], f["labels"])
  return _SITES[path]


def round_rows(count, local_epochs, round_, seed):
  """Indices of the site images that round `round_` (from 1) trains on, for fractional local epochs.

  The site reads one stream of epochs, each a seeded shuffle of its `count` images; a round takes the
  next `local_epochs * count` images of it, so 1/`local_epochs` rounds see every image once.
  """
  start = math.floor((round_ - 1) * local_epochs * count)
  end = max(math.floor(round_ * local_epochs * count), start + 1)
  first, last = start // count, (end - 1) // count
  stream = np.concatenate([np.random.default_rng([seed, e]).permutation(count) for e in range(first, last + 1)])
  return stream[start - first * count : end - first * count]


def _model(config):
  """The study model of `config`, compiled with a constant learning rate (set per round)."""
  key = encode_config(config)
  if key not in _MODELS:
    classes = trainer.num_classes(config)
    model = trainer.build_model(config, weights="none")  # the server sends the weights
    constant = dataclasses.replace(config.train, schedule="constant")
    model.compile(
      **trainer.compile_kwargs(
        trainer.make_optimizer(constant, 1), trainer.resolve_jit(config.train.jit_compile), classes
      )
    )
    augmenter = feeder.augmentation(config.train.augment, seed=config.train.seed)
    _MODELS[key] = (model, augmenter, classes)
  return _MODELS[key]


def _proximal(model, global_weights, mu, learning_rate):
  """FedProx's proximal term mu/2 |w - w_global|^2, as a decoupled step after each batch.

  w <- w - lr * mu * (w - w_global): the term's gradient, applied beside the optimizer's step the
  way AdamW applies weight decay, so any optimizer and backend can train with it.
  """

  class Proximal(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
      for w, g in zip(model.weights, global_weights):
        if w.trainable:
          w.assign(w - learning_rate * mu * (w - g))

  return Proximal()


class SiteClient(NumPyClient):
  """Trains the global model for a few local epochs on one site's images."""

  def __init__(self, node_config, state):
    self.node_config = dict(node_config)
    self.state = state  # the site's Flower context state: kept across rounds of a run

  def _site_path(self, config):
    if "site-data" in self.node_config:
      return str(self.node_config["site-data"])
    return os.path.join(str(config["sites_dir"]), f"site_{int(self.node_config['partition-id'])}.npz")

  def get_parameters(self, config):
    return []  # the server starts from its own initial weights

  def fit(self, parameters, config):
    run = decode_config(str(config["run_config"]))
    path = self._site_path(config)
    images, labels = read_site(path)
    model, augmenter, classes = _model(run)
    model.set_weights(parameters)
    bad = _bad_kind(path, config)
    if bad == "label_flip":
      labels = (np.asarray(labels) + 1) % max(classes, 2)
    keep = bool(config.get("keep_optimizer_state", False))
    self._restore_optimizer(model, keep)
    learning_rate = float(config["learning_rate"])
    model.optimizer.learning_rate = learning_rate
    targets = trainer.targets(labels, classes)
    weights = feeder.class_weights(labels, classes) if run.train.class_weights else None
    mu = float(config.get("proximal_mu", 0.0))
    callbacks = [_proximal(model, [np.array(p) for p in parameters], mu, learning_rate)] if mu > 0 else []
    local_epochs, round_ = float(config["local_epochs"]), int(config["round"])
    epochs, trained = int(local_epochs), len(labels) * local_epochs
    if not local_epochs.is_integer():  # one pass over this round's share of the site's stream of epochs
      rows = round_rows(len(labels), local_epochs, round_, run.train.seed)
      images, targets, epochs, trained = images[rows], targets[rows], 1, len(rows)
    data = feeder.make_feeder(
      images, targets, run.train.batch_size, True, seed=run.train.seed + round_, augmenter=augmenter
    )
    start = time.perf_counter()
    history = model.fit(data, epochs=epochs, class_weight=weights, callbacks=callbacks, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    if keep:
      self.state[_OPTIMIZER_STATE] = ArrayRecord(
        numpy_ndarrays=[keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
      )
    loss = float(history.history["loss"][-1])
    weights_out = model.get_weights()
    if bad in ("scaled_update", "noise", "huge"):
      weights_out = misbehave(
        weights_out, parameters, bad, float(config.get("bad_scale", 10.0)), run.train.seed + round_
      )
    metrics = {
      "site": os.path.basename(path),
      "train_loss": loss,
      "train_s": seconds,
      "train_images_per_s": trained / seconds,
      "optimizer_steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
    }
    if bad:
      metrics["bad_kind"] = bad
    return weights_out, int(len(labels)), metrics

  def _restore_optimizer(self, model, keep):
    """The site's optimizer state of its last round when `keep` and there is one, else a fresh one."""
    optimizer = model.optimizer
    if not optimizer.built:  # this process has not trained this model yet
      optimizer.build(model.trainable_variables)
    saved = self.state.get(_OPTIMIZER_STATE) if keep else None
    saved = saved.to_numpy_ndarrays() if saved is not None else None
    if saved is not None and [s.shape for s in saved] != [tuple(v.shape) for v in optimizer.variables]:
      raise ValueError("The site's saved optimizer state does not match the model's optimizer.")
    for i, v in enumerate(optimizer.variables):
      v.assign(saved[i] if saved is not None else np.zeros(v.shape, v.dtype))

  def evaluate(self, parameters, config):
    return 0.0, 0, {}  # evaluation is central (validation and test stay with the server)


def _bad_kind(path, config):
  """The fault this site injects (`--bad_sites`: sites 0..N-1), or ""."""
  match = re.fullmatch(r"site_(\d+)\.npz", os.path.basename(path))
  return str(config.get("bad_kind", "")) if match and int(match.group(1)) < int(config.get("bad_sites", 0)) else ""


def misbehave(weights, global_weights, kind, scale, seed):
  """A bad site's reply: global + scale x its update, global + Gaussian noise of its update's norm, or all 1e30."""
  if kind == "huge":
    return [np.full_like(w, 1e30) for w in weights]
  rng = np.random.default_rng(seed)
  out = []
  for w, g in zip(weights, global_weights):
    update = w.astype(np.float64) - g
    if kind == "noise":
      noise = rng.normal(size=update.shape)
      update = noise * (np.linalg.norm(update) / max(np.linalg.norm(noise), 1e-12))
    else:
      update = scale * update
    out.append((g + update).astype(w.dtype))
  return out


def client_fn(context):
  return SiteClient(context.node_config, context.state).to_client()


def client_app(privacy="none"):
  """The ClientApp, with Flower's mod for `privacy`: none, dp (fixed clipping) or secagg (SecAgg+)."""
  mods = {"none": [], "dp": [fixedclipping_mod], "secagg": [secaggplus_mod]}[privacy]
  return ClientApp(client_fn=client_fn, mods=mods)


# For Flower's deployment runtime (SuperNodes): one ClientApp per --privacy setting.
app = client_app()
app_dp = client_app("dp")
app_secagg = client_app("secagg")
