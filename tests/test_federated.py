"""Federated training with Flower: patient-disjoint sites, the simulation runtime, DP and SecAgg+."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.conftest import REPO
from xray_keras import models
from xray_keras.config import ModelConfig, RunConfig, TrainConfig
from xray_keras.data import loader
from xray_keras.errors import UserError
from xray_keras.federated import client, partition, server
from xray_keras.federated import flags as federated_flags
from xray_keras.federated import run as federated_run
from xray_keras.report import collect, write
from xray_keras.training import trainer


@pytest.fixture(scope="module")
def train_records():
  data = loader.load(loader.DataConfig(image_size=32, max_images_per_split=300))  # the built-in real X-rays
  return data.splits["train"].records


def _pneumonia_share(records, site_of):
  labels = np.array([r.label for r in records])
  return np.array([labels[site_of == k].mean() for k in range(site_of.max() + 1)])


@pytest.mark.parametrize("scheme", partition.SCHEMES)
def test_partitions_are_patient_disjoint_and_cover_the_train_split_once(tmp_path, train_records, scheme):
  site_of = partition.partition(train_records, 4, scheme, alpha=0.5, seed=0)
  assert site_of.shape == (len(train_records),) and set(site_of) == {0, 1, 2, 3}
  sites_of_patient = {}
  for r, k in zip(train_records, site_of):
    sites_of_patient.setdefault(r.patient, set()).add(int(k))
  assert all(len(s) == 1 for s in sites_of_patient.values())
  path = tmp_path / "site_manifest.csv"
  partition.write_manifest(path, train_records, site_of)
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["file"] for r in rows) == sorted(str(r.path) for r in train_records)
  sizes = np.bincount(site_of)
  if scheme == "iid":
    assert sizes.max() - sizes.min() <= 4  # near-equal image counts
  elif scheme == "size_skew":
    assert sizes.max() > 2 * sizes.min()
  else:
    iid = partition.partition(train_records, 4, "iid", seed=0)
    assert np.ptp(_pneumonia_share(train_records, site_of)) > 2 * np.ptp(_pneumonia_share(train_records, iid))
  assert (partition.partition(train_records, 4, scheme, alpha=0.5, seed=0) == site_of).all()  # reproducible


def test_partition_refuses_what_cannot_be_split(train_records):
  with pytest.raises(UserError, match="patients cannot fill"):
    partition.partition(train_records[:3], 4)
  with pytest.raises(UserError, match="partition_alpha"):
    partition.partition(train_records, 4, "label_skew", alpha=0.0)
  with pytest.raises(UserError, match="Unknown partition"):
    partition.partition(train_records, 4, "by_hospital")


def test_run_settings_travel_to_the_sites_unchanged():
  config = RunConfig(
    experiment="e",
    output_dir="o",
    overwrite=False,
    data=loader.DataConfig(preprocess=("equalize",)),
    model=ModelConfig(name="applications:MobileNet", backbone_kwargs=(("alpha", 0.75),)),
    train=TrainConfig(augment=("rotation", "zoom")),
  )
  assert client.decode_config(client.encode_config(config)) == config


def test_fedprox_step_pulls_each_weight_towards_the_global_model():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.set_weights([np.ones((2, 1)), np.ones(1)])
  step = client._proximal(model, [np.zeros((2, 1)), np.full(1, 3.0)], mu=10.0, learning_rate=0.05)
  step.on_train_batch_end(0)
  kernel, bias = model.get_weights()
  np.testing.assert_allclose(kernel, 0.5)  # 1 - 0.05 * 10 * (1 - 0)
  np.testing.assert_allclose(bias, 2.0)  # 1 - 0.05 * 10 * (1 - 3)


def test_each_round_trains_at_the_schedules_rate_halfway_through_its_epochs():
  train = TrainConfig(learning_rate=1e-3, schedule="cosine", warmup_epochs=2)
  rate = federated_run.round_learning_rate(train, federated_flags.FederatedConfig(rounds=20, local_epochs=1))
  rates = [rate(r) for r in range(1, 21)]
  assert rates[0] == pytest.approx(0.25e-3) and rates[1] == pytest.approx(0.75e-3)  # warm-up, never zero
  assert rates[1] < rates[2] and all(a > b for a, b in zip(rates[2:], rates[3:]))  # then cosine decay
  assert 0 < rates[-1] < 1e-5
  two = federated_run.round_learning_rate(train, federated_flags.FederatedConfig(rounds=10, local_epochs=2))
  assert two(1) == pytest.approx(rates[0] * 2)  # halfway through 2 local epochs: 1 epoch of warm-up


def _one_site(tmp_path, batch_size):
  """`(train split, site file, RunConfig)`: one site holding a small real train split, and a ViT_scratch run."""
  data = loader.load(loader.DataConfig(image_size=32, max_images_per_split=16)).splits["train"]
  path = str(tmp_path / "site_0.npz")
  client.write_site(path, data.images, data.labels, [str(r.path) for r in data.records])
  config = RunConfig(
    experiment="e",
    output_dir="o",
    overwrite=False,
    data=loader.DataConfig(image_size=32),
    model=ModelConfig(name="vit_scratch", patch_size=8),
    train=TrainConfig(batch_size=batch_size, augment=()),
  )
  return data, path, config


@pytest.mark.parametrize("keep", [True, False])
def test_a_site_keeps_its_optimizer_state_across_rounds_only_when_asked(tmp_path, keep):
  from flwr.common import RecordDict

  data, path, config = _one_site(tmp_path, batch_size=8)
  state = RecordDict()  # the site's Flower context state, which the runtime keeps between rounds
  site = client.SiteClient({"site-data": path}, state)
  weights = trainer.build_model(config, weights="none").get_weights()
  steps = -(-len(data.labels) // 8)
  for r in (1, 2):
    fit = {
      "run_config": client.encode_config(config),
      "learning_rate": 1e-3,
      "local_epochs": 1,
      "round": r,
      "keep_optimizer_state": keep,
    }
    weights, n, metrics = site.fit(weights, fit)
    assert n == len(data.labels) and metrics["optimizer_steps"] == (r if keep else 1) * steps
  assert ("optimizer" in state) == keep
  if keep:
    moments = state["optimizer"].to_numpy_ndarrays()
    assert any(m.dtype.kind == "f" and np.abs(m).sum() > 0 for m in moments)


def test_fractional_local_epochs_feed_each_site_image_once_per_epoch(tmp_path):
  quarters = [client.round_rows(10, 0.25, r, seed=3) for r in range(1, 9)]
  assert [len(q) for q in quarters] == [2, 3, 2, 3] * 2
  first, second = np.concatenate(quarters[:4]), np.concatenate(quarters[4:])
  assert sorted(first) == sorted(second) == list(range(10)) and list(first) != list(second)  # reshuffled
  assert np.bincount(np.concatenate([client.round_rows(10, 1.5, r, seed=3) for r in (1, 2)])).tolist() == [3] * 10

  data, path, config = _one_site(tmp_path, batch_size=4)
  fit = {"run_config": client.encode_config(config), "learning_rate": 1e-3, "local_epochs": 0.5, "round": 1}
  weights = trainer.build_model(config, weights="none").get_weights()
  _, n, metrics = client.SiteClient({"site-data": path}, {}).fit(weights, fit)
  assert n == len(data.labels) and metrics["optimizer_steps"] == -(-(len(data.labels) // 2) // 4)


def test_a_federated_run_is_measured_against_the_central_run_with_its_epochs_and_seed(tmp_path):
  from xray_keras.report import federated as report_federated

  def run(name, seed, epochs, rounds=None, local_epochs=1):
    (tmp_path / name).mkdir()
    (tmp_path / name / "flags.txt").write_text(f"--model=vit_scratch\n--seed={seed}\n")
    timing = {"epochs_run": epochs}
    if rounds:
      timing["federated"] = {"rounds": [{}] * rounds, "local_epochs": local_epochs}
    return collect.RunResult(
      name=name,
      run_dir=str(tmp_path / name),
      metrics={"model": {"name": "vit_scratch"}},
      timing=timing,
      history=[],
      test_labels=np.zeros(2, int),
      test_probabilities=np.zeros(2),
      test_files=[],
    )

  central = [run("central", 42, 20), run("central_seed7", 7, 20), run("central100", 42, 100)]
  pick = lambda fed: report_federated.baseline(fed, central + [fed]).name
  assert pick(run("fed_seed7", 7, 0, rounds=20)) == "central_seed7"
  assert pick(run("fed", 42, 0, rounds=20)) == "central"
  assert pick(run("fed_seed1", 1, 0, rounds=20)) == "central"  # no central run with its seed: the first
  assert pick(run("fed100", 7, 0, rounds=100)) == "central100"  # the epochs come first
  assert pick(run("fed50", 42, 0, rounds=50)) == "central100"  # no run with its epochs: the longest
  assert pick(run("fed_tenths", 7, 0, rounds=200, local_epochs=0.1)) == "central_seed7"  # 200 x 0.1 epochs: 20
  assert write._run_row(run("fed_quarters", 42, 0, rounds=80, local_epochs=0.25))[3] == "0 + 20"  # the Runs table


SMALL = ["-m", "xray_keras.federated", "--flagfile=experiments/smoke.cfg", "--max_images_per_split=40", "--sites=3"]
# Each site on two cores: on a 2-core machine one Ray worker trains the three sites in turn, so a
# site's state (its optimizer's, with --keep_optimizer_state) must be its own and not its process's,
# and one process imports TensorFlow and traces the step instead of two.
ONE_SITE_PROCESS = "--client_cpus=2"


def _federated(args, timeout=900):
  result = subprocess.run([sys.executable, *SMALL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.mark.slow
def test_simulation_runtime_runs_two_rounds_on_three_sites_into_a_normal_run_folder(tmp_path):
  out = tmp_path / "fedavg"
  _federated([f"--output_dir={out}", "--rounds=2", "--keep_optimizer_state", ONE_SITE_PROCESS])
  metrics = json.loads((out / "metrics.json").read_text())
  assert {"val", "test"} <= set(metrics) and 0 <= metrics["test"]["auc"] <= 1
  with open(out / "history.csv", newline="") as f:
    history = list(csv.DictReader(f))
  assert [int(h["round"]) for h in history] == [1, 2]
  model = models.load_model(str(out / "model.keras"))
  weight_bytes = sum(w.nbytes for w in model.get_weights())
  for h in history:  # the global weights to 3 sites and back, plus Flower's per-array headers
    assert 3 * weight_bytes <= int(h["bytes_sent"]) < 3 * weight_bytes * 1.05
    assert int(h["bytes_received"]) == int(h["bytes_sent"]) and int(h["replies"]) == 3
    assert float(h["round_s"]) > 0 and 0 <= float(h["val_auc"]) <= 1
  with open(out / "site_manifest.csv", newline="") as f:
    sites = list(csv.DictReader(f))
  with open(out / "split_manifest.csv", newline="") as f:
    train = [r["file"] for r in csv.DictReader(f) if r["split"] == "train"]
  assert sorted(r["file"] for r in sites) == sorted(train) and {r["site"] for r in sites} == {"0", "1", "2"}
  timing = json.loads((out / "timing.json").read_text())
  assert timing["federated"]["sites"] == 3 and len(timing["federated"]["rounds"]) == 2
  first, second = (r["site_optimizer_steps"] for r in timing["federated"]["rounds"])
  assert len(first) == 3 and all(second[site] == 2 * first[site] > 0 for site in first)  # kept by Flower's context
  run = collect.read_run(str(out))  # the report reads it like any run
  assert len(run.test_labels) == metrics["test"]["n"] and (out / "report.md").exists()

  # Beside a central run of the same model and total epochs, the report measures one against the other.
  central = [
    sys.executable,
    "-m",
    "xray_keras.run",
    *SMALL[2:4],
    "--epochs=2",
    "--noreport",
    f"--output_dir={tmp_path / 'central'}",
  ]
  subprocess.run(central, cwd=REPO, capture_output=True, text=True, timeout=900, check=True)
  write.write_report(str(tmp_path), resamples=50, parameter_table=None)
  results = json.loads((tmp_path / "results.json").read_text())["federated"]
  (row,) = results["runs"]
  assert (row["run"], row["central"], row["rounds"], row["central_epochs"]) == ("fedavg", "central", 2, 2)
  assert 0 <= row["delong_p"] <= 1
  assert row["mb_sent_per_round"] == pytest.approx(np.mean([float(h["bytes_sent"]) for h in history]) / 1e6)
  assert [s["images"] for s in results["sites"]] == [timing["federated"]["site_table"][k]["images"] for k in range(3)]
  report = (tmp_path / "report.md").read_text()
  assert "## Federated training against central training" in report and (tmp_path / "federated_curves.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("privacy,strategy", [("dp", "fedprox"), ("secagg", "fedavg")])
def test_privacy_options_end_with_finite_weights(tmp_path, privacy, strategy):
  out = tmp_path / privacy
  result = _federated(
    [
      f"--output_dir={out}",
      "--rounds=1",
      f"--privacy={privacy}",
      f"--strategy={strategy}",
      "--noreport",
      ONE_SITE_PROCESS,
    ]
  )
  weights = models.load_model(str(out / "model.keras")).get_weights()
  assert all(np.isfinite(w).all() for w in weights)
  timing = json.loads((out / "timing.json").read_text())
  assert timing["federated"]["privacy"] == privacy
  if privacy == "dp":
    dp = timing["federated"]["dp"]
    assert (dp["noise_multiplier"], dp["clipping_norm"], dp["rounds"]) == (0.1, 1.0, 1) and dp["epsilon"] > 0
  else:
    assert "Secure aggregation completed" in result.stderr  # Flower's SecAgg+ workflow, in its own words


def test_bad_federated_settings_fail_in_one_line(tmp_path):
  for args, message in (
    (["--min_fit_clients=5"], "exceeds --sites=3"),
    (["--head_epochs=1"], "--head_epochs is not available"),
    (["--local_epochs=0"], "--local_epochs must be above 0"),
  ):
    result = subprocess.run(
      [sys.executable, *SMALL, f"--output_dir={tmp_path / 'bad'}", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_weight_averaging_is_refused_in_federated_training():
  import types

  config = types.SimpleNamespace(train=TrainConfig(ema_momentum=0.99))
  with pytest.raises(UserError, match="--ema_momentum is not available in federated training"):
    federated_flags.check(config, federated_flags.FederatedConfig())


def test_epsilon_from_flowers_accountant_grows_with_rounds_and_shrinks_with_noise():
  fed = federated_flags.FederatedConfig(sites=4, privacy="dp", dp_noise_multiplier=1.0)
  ten = server.privacy_spent(fed, 10)
  assert ten["epsilon"] == pytest.approx(19.05, rel=0.01) and ten["delta"] == 1e-5  # RDP, 10 Gaussian releases
  assert server.privacy_spent(fed, 20)["epsilon"] > ten["epsilon"]
  noisier = federated_flags.FederatedConfig(sites=4, privacy="dp", dp_noise_multiplier=2.0)
  assert server.privacy_spent(noisier, 10)["epsilon"] < ten["epsilon"]


def _wait_for(check, process, timeout=600):
  """Polls `check()` until true (True), the process ends (False) or `timeout`."""
  start = time.monotonic()
  while time.monotonic() - start < timeout:
    if check():
      return True
    if process.poll() is not None:
      return False
    time.sleep(0.2)
  raise AssertionError(f"still waiting after {timeout}s")


def _logged(path, text):
  return lambda: os.path.exists(path) and text in open(path, errors="replace").read()


def _rounds(path):
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return [row for row in csv.DictReader(f) if row.get("learning_rate")]  # whole rows only


@pytest.mark.slow
def test_a_killed_site_does_not_stop_the_run_and_a_killed_server_resumes(tmp_path):
  out = tmp_path / "faults"
  args = [sys.executable, *SMALL, f"--output_dir={out}", "--rounds=6", "--local_epochs=2", "--noreport"]
  run = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    assert _wait_for(_logged(out / "run.log", "Round 1/6"), run), "the run ended before its first round"
    actors = _site_actors(run)
    assert actors, "no simulated site process found"
    os.kill(actors[0], signal.SIGKILL)  # a site dies mid-run
    assert _wait_for(_logged(out / "run.log", "did not reply (site_"), run), "the run stopped after a site was killed"
    assert _wait_for(lambda: any(int(h["replies"]) < 3 for h in _rounds(out / "history.csv")), run), (
      "the round without the site was not recorded"
    )
    assert run.poll() is None, "the run finished before its server could be killed"
    os.killpg(run.pid, signal.SIGKILL)  # then the server, and every site with it
    run.wait(60)
  finally:
    if run.poll() is None:
      os.killpg(run.pid, signal.SIGKILL)
  done = [int(h["round"]) for h in _rounds(out / "history.csv")]
  assert 1 <= len(done) < 6 and not (out / "metrics.json").exists()
  subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900, check=True)  # the same command
  history = _rounds(out / "history.csv")
  assert [int(h["round"]) for h in history] == [1, 2, 3, 4, 5, 6] and (out / "metrics.json").exists()
  assert min(int(h["replies"]) for h in history) < 3  # the round that lost its site went on with the others
  log = (out / "run.log").read_text()
  assert f"Resuming an interrupted federated run: {len(done)} of 6 rounds were complete." in log


def _site_actors(run):
  listing = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True).stdout.splitlines()
  return [int(line.split()[0]) for line in listing if "ClientAppActor" in line and int(line.split()[1]) == run.pid]


@pytest.mark.slow
def test_a_site_that_never_answers_is_left_behind_after_the_round_timeout(tmp_path):
  out = tmp_path / "silent"
  args = [
    sys.executable,
    *SMALL,
    f"--output_dir={out}",
    "--rounds=2",
    "--round_timeout=90",
    "--noreport",
  ]  # round 1 starts the sites' processes: 90 s leaves room for that on a loaded machine
  run = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  frozen = []
  try:
    assert _wait_for(_logged(out / "run.log", "Round 1/2"), run), "the run ended before its first round"
    frozen = _site_actors(run)[:1]
    assert frozen, "no simulated site process found"
    os.kill(frozen[0], signal.SIGSTOP)  # alive, connected, and silent from now on
    assert run.wait(900) == 0, (out / "run.log").read_text()[-3000:]
  finally:
    for pid in frozen:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass  # the run stopped it
    if run.poll() is None:
      os.killpg(run.pid, signal.SIGKILL)
  history = _rounds(out / "history.csv")
  assert [int(h["round"]) for h in history] == [1, 2] and (out / "metrics.json").exists()
  assert int(history[0]["replies"]) == 3 and int(history[1]["replies"]) < 3  # round 2 went on without it
  assert float(history[1]["round_s"]) >= 90
  log = (out / "run.log").read_text()
  assert re.search(r"WARNING Round 2: [12] of 3 sites did not reply \(site_\d", log), log[-3000:]
  assert "still waits for a site" in log  # the silent site process, stopped after the last round


@pytest.mark.slow
def test_deployment_runtime_runs_a_round_on_a_superlink_and_three_supernodes(tmp_path):
  out = tmp_path / "deployment"
  _federated([f"--output_dir={out}", "--rounds=1", "--runtime=deployment", "--noreport"])
  history = _rounds(out / "history.csv")
  assert [(int(h["round"]), int(h["replies"])) for h in history] == [(1, 3)] and (out / "metrics.json").exists()
  assert "Flower deployment runtime: 3 sites" in (out / "run.log").read_text()  # the ServerApp's own log
  logs = sorted(p.name for p in (out / "flower").glob("*.log"))
  assert logs == [
    "flwr_run.log",
    "gateway.log",
    "register.log",
    "superlink.log",
    "supernode_0.log",
    "supernode_1.log",
    "supernode_2.log",
  ]
  superlink = (out / "flower" / "superlink.log").read_text()
  assert "Uvicorn running on https://127.0.0.1" in superlink and superlink.count("Activated node_id") == 3
  assert (out / "flower" / "register.log").read_text().count("registered successfully") == 3
  assert sorted(os.listdir(out / "flower" / "federation")) == ["ca", "site_0", "site_1", "site_2", "superlink"]
  assert not list(out.rglob("ca.key"))  # the CA signs the run's certificates and is not kept
  roster = json.loads((out / "flower" / "roster.json").read_text())
  assert sorted(roster.values()) == ["site_0", "site_1", "site_2"]
  listing = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
  assert str(out) not in listing  # SuperLink and SuperNodes stopped
