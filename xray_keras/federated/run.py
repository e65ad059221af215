"""The federated run: central data and split, sites, Flower's simulation runtime, the run folder.

The validation and test splits stay with the server, exactly as in the study; the train split
is dealt to sites by patient. Each finished round's global weights are scored on validation,
appended to history.csv and checkpointed, so a killed run resumes from its last finished round
when the same command is run again.
"""

import csv
import dataclasses
import os
import shutil
import threading
import time
import types

import keras
import numpy as np
from absl import logging

from xray_keras import models, pipeline
from xray_keras.data import feeder, loader
from xray_keras.errors import UserError
from xray_keras.federated import client, partition, server
from xray_keras.federated import flags as federated_flags
from xray_keras.federated import roster as federated_roster
from xray_keras.models import schedules
from xray_keras.training import device, trainer
from xray_keras.training import run_dir as run_dirs

STATE = os.path.join(run_dirs.BACKUP_DIR, "federated_state.npz")
SITE_MANIFEST = "site_manifest.csv"
_ONE_PROCESS = types.SimpleNamespace(num_workers=1, is_chief=True, worker_index=0)


def round_learning_rate(train, fed):
  """`f(round)`: the learning rate of a round, from the study's schedule over rounds x local epochs.

  A round trains at one rate: the schedule's value halfway through its local epochs (at its start,
  the first round of a warm-up would train at zero).
  """
  if train.schedule != "cosine":
    return lambda r: train.learning_rate
  total = fed.rounds * fed.local_epochs
  schedule = schedules.WarmupCosine(train.learning_rate, max(total - train.warmup_epochs, 1), train.warmup_epochs)
  return lambda r: float(keras.ops.convert_to_numpy(schedule((r - 0.5) * fed.local_epochs)))


def train_and_evaluate(config, fed, grid=None, context=None):
  """Runs one federated experiment end to end. Returns the run directory.

  Without `grid` the rounds run in Flower's simulation runtime; with the `grid` and `context` of a
  ServerApp (Flower's deployment runtime) they run on its SuperNodes.
  """
  federated_flags.check(config, fed)
  used_device = device.configure(config.train.device)
  synthetic = loader.resolve_source(config.data) == "synthetic"
  run_dir, resuming = run_dirs.prepare(config, _ONE_PROCESS, synthetic)
  with trainer.log_to_file(os.path.join(run_dir, "run.log")):
    return _run(config, fed, run_dir, resuming, used_device, grid, context)


def _write_sites(run_dir, train, site_of, class_names):
  """site_manifest.csv, sites/site_<k>.npz, and the per-site table."""
  partition.write_manifest(os.path.join(run_dir, SITE_MANIFEST), train.records, site_of)
  sites_dir = os.path.abspath(os.path.join(run_dir, "sites"))
  os.makedirs(sites_dir, exist_ok=True)
  for k in range(int(site_of.max()) + 1):
    idx = np.flatnonzero(site_of == k)
    client.write_site(
      os.path.join(sites_dir, f"site_{k}.npz"),
      train.images[idx],
      train.labels[idx],
      [str(train.records[i].path) for i in idx],
    )
  table = partition.describe(train.records, site_of, class_names)
  for row in table:
    logging.info(
      "Site %d: %d images of %d patients (%s)",
      row["site"],
      row["images"],
      row["patients"],
      ", ".join(f"{n} {row[n]}" for n in class_names),
    )
  return sites_dir, table


def _read_state(run_dir):
  with np.load(os.path.join(run_dir, STATE), allow_pickle=False) as f:
    return [f[f"w{i}"] for i in range(int(f["count"]))], int(f["round"])


def _write_state(run_dir, weights, done):
  path = os.path.join(run_dir, STATE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, count=len(weights), round=done, **{f"w{i}": w for i, w in enumerate(weights)})
  os.replace(tmp, path)


def _append_history(path, row):
  new = not os.path.exists(path)
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(row))
    if new:
      writer.writeheader()
    writer.writerow(row)


def _run(config, fed, run_dir, resuming, used_device, grid=None, context=None):
  start = time.perf_counter()
  with open(os.path.join(run_dir, "flags.txt"), "w") as f:
    f.write(config.flags_text)
  trainer.set_precision_and_seeds(config.train, used_device)
  spec, size, _ = config.model_input()
  classes = trainer.num_classes(config)
  weights_name = models.default_weights(spec, config.model.weights)
  model = trainer.build_model(config)
  data = loader.load(dataclasses.replace(config.data, image_size=size))
  loader.write_manifest(data, os.path.join(run_dir, "split_manifest.csv"))
  loader.write_skipped(data.skipped, os.path.join(run_dir, "skipped_files.csv"))
  train, val = data.splits["train"], data.splits["val"]
  site_of = partition.partition(train.records, fed.sites, fed.partition, fed.partition_alpha, fed.partition_seed)
  sites_dir, table = _write_sites(run_dir, train, site_of, data.class_names)

  batch_size = config.train.batch_size
  model.compile(
    **trainer.compile_kwargs(keras.optimizers.Adam(), trainer.resolve_jit(config.train.jit_compile), classes)
  )
  val_targets = trainer.targets(val.labels, classes)
  val_feed = feeder.make_feeder(val.images, val_targets, batch_size, False) if len(val.labels) else None
  history_path = os.path.join(run_dir, "history.csv")
  done = 0
  if resuming and os.path.exists(os.path.join(run_dir, STATE)):
    initial, done = _read_state(run_dir)
    run_dirs.trim_history(history_path, done)
    logging.info("Resuming an interrupted federated run: %d of %d rounds were complete.", done, fed.rounds)
  else:
    initial = model.get_weights()
    if os.path.exists(history_path):
      os.remove(history_path)
  learning_rate = round_learning_rate(config.train, fed)
  settings = client.encode_config(config)
  images = len(train.labels)

  def fit_config(r):
    return {
      "run_config": settings,
      "sites_dir": sites_dir,
      "learning_rate": learning_rate(r),
      "local_epochs": fed.local_epochs,
      "round": r,
      "proximal_mu": fed.proximal_mu,
      "keep_optimizer_state": fed.keep_optimizer_state,
      "bad_sites": fed.bad_sites,
      "bad_kind": fed.bad_kind,
      "bad_scale": fed.bad_scale,
    }

  rounds = []

  def on_round(r, weights, record):
    """Scores round `r`'s global weights on validation and records the round; returns why the run must stop, or ""."""
    model.set_weights(weights)
    scores = model.evaluate(val_feed, return_dict=True, verbose=0) if val_feed is not None else {}
    if not all(np.isfinite(float(v)) for v in scores.values()):
      return (
        f"Round {r}: the global model's validation loss is {float(scores.get('loss', float('nan'))):g}: it predicts "
        "NaN or infinity (finite weights too large?); the run stops before any report, from no round's metrics"
      )
    losses = record["site_train_loss"]
    row = {
      "epoch": r - 1,
      "round": r,
      "loss": float(np.mean(list(losses.values()))) if losses else float("nan"),
      **{f"val_{k}": float(v) for k, v in scores.items() if k in ("loss", "accuracy", "auc")},
      "round_s": record["round_s"],
      "bytes_sent": record["bytes_sent"],
      "bytes_received": record["bytes_received"],
      "replies": record["replies"],
      "learning_rate": learning_rate(r),
    }
    _append_history(history_path, row)
    _write_state(run_dir, weights, r)
    rounds.append(
      {
        **row,
        "failed_sites": record["failed_sites"],
        "refused_sites": record.get("refused_sites", []),
        "site_train_s": record["site_train_s"],
        "site_optimizer_steps": record["site_optimizer_steps"],
      }
    )
    received = f"{record['bytes_received'] / 1e6:.2f} MB" if record["bytes_received"] != "" else "(masked, not counted)"
    logging.info(
      "Round %d/%d: %.1fs, %d site(s) replied, %.2f MB sent, %s received; val AUC %.4f, loss %.4f",
      r,
      fed.rounds,
      record["round_s"],
      record["replies"],
      record["bytes_sent"] / 1e6,
      received,
      row.get("val_auc", float("nan")),
      row.get("val_loss", float("nan")),
    )
    return ""

  strategy = None
  if done < fed.rounds:
    roster = federated_roster.read(fed.roster, fed.sites) if fed.roster else None
    strategy = server.make_strategy(fed, initial, fit_config, on_round, first_round=done, roster=roster)
    if fed.bad_sites:
      logging.warning(
        "Fault injection: site_0..site_%d misbehave (%s%s).",
        fed.bad_sites - 1,
        fed.bad_kind,
        f" x{fed.bad_scale:g}" if fed.bad_kind == "scaled_update" else "",
      )
    logging.info(
      "Flower %s runtime: %d sites, %d round(s) of %g local epoch(s), %s%s",
      "simulation" if grid is None else "deployment",
      fed.sites,
      fed.rounds - done,
      fed.local_epochs,
      fed.strategy,
      "" if fed.privacy == "none" else f", privacy {fed.privacy}",
    )
    if grid is None:
      _simulate(fed, strategy, fed.rounds - done)
    else:
      server.run_rounds(grid, context, fed, strategy, fed.rounds - done)
  if strategy is not None and strategy.fatal:
    raise UserError(strategy.fatal + ".")
  if not os.path.exists(os.path.join(run_dir, STATE)):
    raise UserError(
      f"No federated round finished (see {os.path.join(run_dir, 'run.log')}); rerun the same command to retry."
    )
  final, finished = _read_state(run_dir)
  if finished < fed.rounds:
    raise UserError(
      f"Only {finished} of {fed.rounds} rounds finished (see {os.path.join(run_dir, 'run.log')}); "
      f"rerun the same command to resume from round {finished + 1}."
    )
  model.set_weights(final)
  history = _read_rows(history_path)
  round_s = [float(h["round_s"]) for h in history]
  per_round_images = images * fed.local_epochs
  steady = round_s[1:] or round_s  # the first round also starts the runtime and the sites
  timing_report = {
    "fit_s": float(sum(round_s)),
    "epochs_run": len(history),
    "first_round_s": round_s[0],
    "mean_epoch_s": float(np.mean(steady)),
    "train_images_per_s": float(np.median([per_round_images / s for s in steady])),
    "batch_size": batch_size,
    "train_images_per_epoch": per_round_images,
    "federated": {
      **dataclasses.asdict(fed),
      "site_table": table,
      "mean_round_s": float(np.mean(steady)),
      "bytes_sent_per_round": float(np.mean([float(h["bytes_sent"]) for h in history])),
      "bytes_received_per_round": (
        float(np.mean([float(h["bytes_received"]) for h in history])) if fed.privacy != "secagg" else None
      ),
      "rounds": rounds,
    },
    "resumed": resuming,
  }
  if fed.privacy == "dp":
    timing_report["federated"]["dp"] = server.privacy_spent(fed, finished)
    logging.info(
      "Differential privacy: noise multiplier %.3g, clipping norm %.3g: epsilon %.3g at delta %g after %d rounds.",
      fed.dp_noise_multiplier,
      fed.dp_clipping_norm,
      timing_report["federated"]["dp"]["epsilon"],
      timing_report["federated"]["dp"]["delta"],
      finished,
    )
  pipeline.finish(
    config, trainer.Trained(run_dir, model, data, weights_name, batch_size, timing_report, used_device, start)
  )
  shutil.rmtree(os.path.join(run_dir, run_dirs.BACKUP_DIR), ignore_errors=True)
  return run_dir


def _simulate(fed, strategy, rounds, grace_s=30.0):
  """Flower's simulation runtime, with site processes still busy after the last round stopped.

  A site that never answered still holds one of the runtime's workers, and the runtime waits for
  it before returning; `grace_s` after the server's last round such site processes are killed.
  """
  from flwr.simulation import run_simulation

  server_done, returned = threading.Event(), threading.Event()

  def stop_stuck_sites():
    server_done.wait()
    if not returned.wait(grace_s):
      stuck = _site_processes()
      logging.warning(
        "Flower's simulation runtime still waits for a site %.0fs after the last round; stopping %d site process(es).",
        grace_s,
        len(stuck),
      )
      for process in stuck:
        process.kill()

  threading.Thread(target=stop_stuck_sites, daemon=True).start()
  if os.environ.get("RAY_AUTH_MODE") != "token":
    logging.warning(
      "The simulation's Ray cluster listens on every interface without token authentication (Ray was imported "
      "before the run); python -m xray_keras.federated turns it on."
    )
  try:
    run_simulation(
      server.server_app(fed, strategy, rounds, on_done=server_done.set),
      client.client_app(fed.privacy),
      num_supernodes=fed.sites,
      backend_config={"client_resources": {"num_cpus": fed.client_cpus, "num_gpus": 0.0}},
    )
  finally:
    returned.set()


def _site_processes():
  """The simulated sites' processes (Ray actors started by this process)."""
  import psutil

  found = []
  for process in psutil.Process().children(recursive=True):
    try:
      if "ClientAppActor" in " ".join(process.cmdline()):
        found.append(process)
    except psutil.Error:
      pass
  return found


def _read_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))
