"""Strategies, multi-worker on loopback, kill -9 and resume, determinism, precision, JAX."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.conftest import REPO
from xray_keras import models
from xray_keras.config import TrainConfig
from xray_keras.training import checkpoint, distribution, run_dir, trainer

SMOKE = ["--flagfile=experiments/smoke.cfg", "--noreport"]  # the report has its own tests


def _cli(args, env=None, **kwargs):
  return subprocess.Popen(
    [sys.executable, "-m", "xray_keras.run", *args],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, **(env or {})},
    **kwargs,
  )


def _run(args, env=None, timeout=300):
  process = _cli(args, env)
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def _history_epochs(run_dir):
  with open(os.path.join(run_dir, "history.csv")) as f:
    return [int(row["epoch"]) for row in csv.DictReader(f)]


def _kill_after_epochs(process, run_dir, epochs=2, timeout=240):
  """SIGKILLs the training `process` once `run_dir`'s history holds `epochs` rows; returns how many it held."""
  history = os.path.join(run_dir, "history.csv")
  deadline = time.time() + timeout
  while time.time() < deadline and (not os.path.exists(history) or len(_history_epochs(run_dir)) < epochs):
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL
  return len(_history_epochs(run_dir))


# cpu (one device) and MirroredStrategy on one CPU replica change no number; auto, what every other CLI run uses, is
# checked the same way in test_deterministic_runs_give_identical_metrics.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["cpu", "mirrored"])
def test_strategies_that_run_here(tmp_path, strategy):
  out = tmp_path / strategy
  code, _, err = _run(SMOKE + [f"--distribution={strategy}", f"--output_dir={out}", "--batch_size=8"])
  assert code == 0, err[-3000:]
  timing = json.loads((out / "timing.json").read_text())
  assert timing["distribution"] == {"name": strategy, "replicas": 1, "workers": 1}
  assert "global batch 8 = 8 per replica x 1 replica(s)" in (out / "run.log").read_text()


def test_global_and_per_replica_batch():
  plan = distribution.Plan("mirrored", replicas=4)
  assert distribution.global_batch(plan, 32, 0) == 32
  assert distribution.global_batch(plan, 32, 16) == 64
  with pytest.raises(distribution.UserError, match="does not divide over 4 replicas"):
    distribution.global_batch(plan, 30, 0)


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


# SGD: Adam would hide a wrongly scaled gradient.
EXACT = SMOKE + [
  "--val_fraction=0",
  "--dropout=0",
  "--epochs=2",
  "--batch_size=16",
  "--deterministic",
  "--noclass_weights",
  "--optimizer=sgd",
  "--learning_rate=0.01",
]


def _check_two_workers_equal_single(tmp_path, processes):
  """Both worker processes exit 0, and the chief's model equals the single process's; returns its log."""
  for process in processes:
    _, err = process.communicate(timeout=400)
    assert process.returncode == 0, err[-3000:]
  log = (tmp_path / "multi" / "run.log").read_text()
  assert "global batch 16 = 8 per replica x 2 replica(s), 2 worker(s)" in log
  single = models.load_model(str(tmp_path / "single" / "model.keras")).get_weights()
  multi = models.load_model(str(tmp_path / "multi" / "model.keras")).get_weights()
  assert any(np.abs(a).sum() for a in single)
  for a, b in zip(single, multi):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not (tmp_path / "multi" / ".worker1" / "metrics.json").exists()
  return log


@pytest.mark.slow
def test_multiworker_on_loopback_equals_single_process(tmp_path):
  # The reference has no strategy: with one, Keras re-creates the iterator after its build step,
  # which draws another shuffle order (valid training, not the same batches).
  code, _, err = _run(EXACT + ["--distribution=auto", f"--output_dir={tmp_path / 'single'}"])
  assert code == 0, err[-3000:]
  workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
  processes = []
  for index in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    processes.append(
      _cli(
        EXACT + ["--distribution=multiworker", f"--output_dir={tmp_path / 'multi'}"],
        env={"TF_CONFIG": json.dumps(tf_config)},
      )
    )
  _check_two_workers_equal_single(tmp_path, processes)


@pytest.mark.slow
def test_jax_multiworker_on_loopback_equals_single_process(tmp_path):
  pytest.importorskip("jax")
  jax_env = {"KERAS_BACKEND": "jax"}
  exact = EXACT + ["--max_images_per_split=8"]  # 32 train images: two global batches of 16
  code, _, err = _run(exact + [f"--output_dir={tmp_path / 'single'}"], env=jax_env)
  assert code == 0, err[-3000:]
  address = f"127.0.0.1:{_free_ports(1)[0]}"
  processes = [
    _cli(
      exact + ["--distribution=multiworker", f"--output_dir={tmp_path / 'multi'}"],
      env={
        **jax_env,
        "KERAS_DISTRIBUTION_JOB_ADDRESSES": address,
        "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
        "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
      },
    )
    for index in range(2)
  ]
  log = _check_two_workers_equal_single(tmp_path, processes)
  assert "Feeder: the split on the JAX device" in log
  assert (tmp_path / "multi" / "metrics.json").exists()


# TensorFlow's kill -9 and resume: tests/test_faults.py::test_training_killed_at_random_points_resumes_and_loses_nothing
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax"])
def test_kill_9_mid_epoch_then_resume(tmp_path, backend):
  pytest.importorskip("jax")
  env = {"KERAS_BACKEND": backend}  # the device feeder's training wrapper is what the backup holds
  out = tmp_path / "run"
  args = SMOKE + [
    "--epochs=6",
    "--data_source=synthetic",
    "--synthetic_train_size=800",
    "--max_images_per_split=0",
    "--image_size=32",
    "--augment=rotation,contrast",
    f"--output_dir={out}",
  ]
  done_before = _kill_after_epochs(_cli(args, env), out)  # somewhere in epoch 3
  assert 2 <= done_before < 6 and not (out / "metrics.json").exists()

  code, _, err = _run(args, env)
  assert code == 0, err[-3000:]
  assert _history_epochs(out) == list(range(6))
  log = (out / "run.log").read_text()
  assert "Resuming an interrupted run" in log
  assert ("Feeder: the split on the JAX device" in log) == (backend == "jax")
  assert json.loads((out / "timing.json").read_text())["resumed"] is True
  assert not (out / run_dir.BACKUP_DIR).exists()  # the backup goes once training finished


def test_interrupted_run_with_other_flags_is_refused(tmp_path):
  out = tmp_path / "run"
  (out / run_dir.BACKUP_DIR).mkdir(parents=True)
  (out / "flags.txt").write_text("--epochs=99\n")
  code, _, err = _run(SMOKE + [f"--output_dir={out}"])
  assert code == 1
  assert "holds an interrupted run with other flags" in err and "Traceback" not in err


@pytest.mark.slow
def test_deterministic_runs_give_identical_metrics(tmp_path):
  results = []
  for name in ("a", "b"):
    code, _, err = _run(
      SMOKE + ["--deterministic", "--epochs=2", "--augment=rotation,contrast", f"--output_dir={tmp_path / name}"]
    )
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    results.append({k: metrics[k] for k in ("val", "test")})
    timing = json.loads((tmp_path / name / "timing.json").read_text())
    assert timing["distribution"] == {"name": "auto", "replicas": 1, "workers": 1}
    assert "global batch 16 = 16 per replica x 1 replica(s)" in (tmp_path / name / "run.log").read_text()
  assert results[0] == results[1]


@pytest.mark.parametrize("name, size", [("cnn_scratch", 32), ("vit_scratch", 32)])
def test_mixed_bfloat16_keeps_float32_outputs(name, size):
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = models.build_model(name, (size, size, 1))
    model.compile("adam", "binary_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (4, size, size, 1)).astype("float32")
    loss = model.train_on_batch(x, np.array([0, 1, 0, 1], "float32"))
    assert model.layers[-2].compute_dtype == "bfloat16" or name == "vit_scratch"
    assert model(x).dtype == "float32" and np.isfinite(loss)
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_gets_loss_scaling_and_float32_outputs():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = models.build_model("vit_scratch", (32, 32, 1))
    model.compile(trainer.make_optimizer(TrainConfig(), 1), "binary_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 1)).astype("float32")
    model.train_on_batch(x, np.array([0, 1, 0, 1], "float32"))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("block1").compute_dtype == "float16" and model(x).dtype == "float32"
  finally:
    keras.mixed_precision.set_global_policy("float32")


class _Poisonable(keras.utils.PyDataset):
  """Finite data until `poisoned` is set, NaN after."""

  def __init__(self):
    super().__init__()
    self.poisoned = False

  def __len__(self):
    return 2

  def __getitem__(self, index):
    return np.full((4, 3), np.nan if self.poisoned else 1.0, "float32"), np.ones(4, "float32")


def test_nan_stops_training_and_keeps_the_last_good_weights(tmp_path):
  data = _Poisonable()
  poison = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(data, "poisoned", True))
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse")
  last_good = checkpoint.LastGoodCheckpoint(str(tmp_path / checkpoint.CHECKPOINT))
  model.fit(data, epochs=4, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN(), last_good, poison])
  assert last_good.epoch == 1 and len(model.history.history["loss"]) == 2
  assert np.isnan(model.history.history["loss"][1])
  restored = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
  restored.load_weights(str(tmp_path / checkpoint.CHECKPOINT))
  assert all(np.isfinite(w).all() for w in restored.get_weights())


WITHOUT_TF = """
import sys
class NoTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ModuleNotFoundError("No module named 'tensorflow'", name=name)
sys.meta_path.insert(0, NoTensorFlow())
from absl import app
from xray_keras import run
sys.argv = ["run"] + sys.argv[1:]
try:
  app.run(run.main)
finally:
  assert "tensorflow" not in sys.modules
"""


@pytest.mark.slow
def test_jax_backend_runs_without_tensorflow(tmp_path):
  pytest.importorskip("jax")
  out = tmp_path / "jax"
  compiled = tmp_path / "cache" / "jax_compilation"

  def run(out):
    result = subprocess.run(
      [
        sys.executable,
        "-c",
        WITHOUT_TF,
        *SMOKE,
        "--augment=rotation,zoom",
        f"--output_dir={out}",
        f"--cache_dir={tmp_path / 'cache'}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(p.name for p in compiled.iterdir())

  entries = run(out)
  timing = json.loads((out / "timing.json").read_text())
  assert timing["testbed"]["backend"] == "jax" and "tensorflow" not in timing["testbed"]["versions"]
  assert timing["jit_compile"] is True  # auto: jax.jit on
  assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 32
  # The compiled programs were kept, and the same run again compiles nothing new: it loads them.
  assert entries and run(tmp_path / "again") == entries
