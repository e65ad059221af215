"""Fault suite: SIGKILL at random points of cache writing and export, and failing writes."""

import csv
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO, make_tree, smoke_run_command
from xray_keras import atomic
from xray_keras.data import cache, folder

DECODE = """
import sys
from xray_keras.data import cache, folder
root, records, _ = folder.list_records(sys.argv[1])
cache.load_or_decode(root, [r.path for r in records], int(sys.argv[3]), 1, "squash", sys.argv[2])
print("done", flush=True)
"""


def _kill_at_random(args, rng, low, high, kill_group=False, **kwargs):
  """Starts `args`, SIGKILLs it (or its process group) after a random delay in [low, high) s.

  Returns True if it finished first.
  """
  process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
  return _wait_or_kill(process, rng.uniform(low, high), kill_group)


def _wait_or_kill(process, seconds, kill_group=False):
  """Waits `seconds` for `process`, then SIGKILLs it (or its process group); True if it finished first."""
  try:
    process.wait(timeout=seconds)
    return True
  except subprocess.TimeoutExpired:
    if kill_group:
      os.killpg(process.pid, signal.SIGKILL)  # the study and the run it is waiting for
    else:
      process.send_signal(signal.SIGKILL)
    process.wait()
    return False


def _kill_while_writing(args, folder, rng, **kwargs):
  """Starts `args` and SIGKILLs it a random 0-3 s after its hidden temporary folder appears in `folder`,
  while the export writes (about 7 s on 2 cores; TensorFlow's import before it is not what is tested).

  Returns True if it finished first.
  """
  process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
  mine = f"{atomic.PREFIX}{process.pid}-"
  while process.poll() is None:
    if os.path.isdir(folder) and any(name.startswith(mine) for name in os.listdir(folder)):
      return _wait_or_kill(process, rng.uniform(0.0, 3.0))
    time.sleep(0.05)
  return True


@pytest.mark.slow
def test_killed_cache_writes_are_never_read(tmp_path):
  root = make_tree(str(tmp_path / "chest_xray"), per_class=25, splits=("train", "test"))
  cache_dir = str(tmp_path / "cache")
  rng = random.Random(0)
  _, records, _ = folder.list_records(root)
  paths = [r.path for r in records]
  expected, kept, _, _ = cache.decode_files(root, paths, 64, 1, "squash")
  # Decoding imports no TensorFlow, so a process lasts well under a second: time an uncached one and
  # kill inside that span, mostly late, while the entry is being written.
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", DECODE, root, str(tmp_path / "timing_cache"), "64"], cwd=REPO, check=True)
  took = time.perf_counter() - start
  kills = finished = 0
  for trial in range(6):
    size = 64 if trial % 2 else 48  # alternate keys so most trials write a new entry
    for entry in os.listdir(cache_dir) if os.path.isdir(cache_dir) else []:
      if not entry.startswith(atomic.PREFIX):
        shutil.rmtree(os.path.join(cache_dir, entry))
    done = _kill_at_random([sys.executable, "-c", DECODE, root, cache_dir, str(size)], rng, 0.4 * took, took, cwd=REPO)
    finished += done
    kills += not done
    # Whatever is visible is complete: an entry either loads and checks out or does not exist.
    for entry in os.listdir(cache_dir) if os.path.isdir(cache_dir) else []:
      if entry.startswith(atomic.PREFIX):
        continue
      with open(os.path.join(cache_dir, entry, "index.json")) as f:
        assert len(json.load(f)["kept"]) == len(paths)
  assert kills >= 2, (kills, finished)
  images, got, _, _ = cache.load_or_decode(root, paths, 64, 1, "squash", cache_dir)
  assert got == kept
  np.testing.assert_array_equal(images, expected)
  # The next write removed every temporary folder left by the killed processes.
  cache.load_or_decode(root, paths, 40, 1, "squash", cache_dir)
  assert not [n for n in os.listdir(cache_dir) if n.startswith(atomic.PREFIX)]


def test_damaged_cache_entry_is_detected_and_rebuilt(tmp_path):
  root = make_tree(str(tmp_path / "chest_xray"), per_class=3, splits=("train", "test"))
  _, records, _ = folder.list_records(root)
  paths = [r.path for r in records]
  cache_dir = str(tmp_path / "cache")
  clean, _, _, _ = cache.load_or_decode(root, paths, 32, 1, "squash", cache_dir)
  (entry,) = os.listdir(cache_dir)
  npy = os.path.join(cache_dir, entry, "images.npy")
  with open(npy, "r+b") as f:  # flip bytes inside the pixel data, keeping the file valid
    f.seek(-100, os.SEEK_END)
    f.write(bytes(b ^ 0xFF for b in f.read(10)))
  again, _, _, _ = cache.load_or_decode(root, paths, 32, 1, "squash", cache_dir)
  np.testing.assert_array_equal(again, clean)


@pytest.fixture(scope="module")
def finished_run(tiny_run):
  base, tree, run_dir, _ = tiny_run
  return base, tree, run_dir


def _complete_version(path):
  return all(
    os.path.isfile(os.path.join(path, p))
    for p in (
      "saved_model.pb",
      os.path.join("variables", "variables.index"),
      os.path.join("assets.extra", "model_card.json"),
      os.path.join("assets.extra", "tf_serving_warmup_requests"),
    )
  )


@pytest.mark.slow
def test_killed_exports_never_leave_a_visible_half_written_version(finished_run):
  base, _, run_dir = finished_run
  export_dir = base / "killed_exports"
  rng = random.Random(1)
  kills = 0
  models_dir = export_dir / "vit_scratch"
  for _ in range(3):
    done = _kill_while_writing(
      [sys.executable, "-m", "xray_keras.export", f"--run_dir={run_dir}", f"--export_dir={export_dir}"],
      models_dir,
      rng,
      cwd=REPO,
    )
    kills += not done
    if models_dir.is_dir():
      for name in os.listdir(models_dir):
        assert name.isdigit() or name.startswith(atomic.PREFIX), name
        if name.isdigit():
          assert _complete_version(models_dir / name), name
  assert kills >= 2
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.export", f"--run_dir={run_dir}", f"--export_dir={export_dir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  names = os.listdir(export_dir / "vit_scratch")
  assert not [n for n in names if n.startswith(atomic.PREFIX)]  # leftovers of killed exports removed
  assert all(_complete_version(export_dir / "vit_scratch" / n) for n in names)


def _limit_file_size(limit):
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  return apply


def test_a_failing_write_is_one_clear_error_and_earlier_runs_stay_intact(finished_run):
  base, tree, run_dir = finished_run
  before = {p: (run_dir / p).read_bytes() for p in ("metrics.json", "model.keras", "history.csv")}
  result = subprocess.run(
    smoke_run_command(tree, base / "cache", base / "full_disk", "--val_fraction=0.3"),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    preexec_fn=_limit_file_size(200_000),
  )
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "File too large" in errors[0] and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert {p: (run_dir / p).read_bytes() for p in before} == before
  assert not (base / "full_disk" / "metrics.json").exists()

  blocked = base / "a_file"
  blocked.write_text("not a folder")
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.run", "--flagfile=experiments/smoke.cfg", f"--output_dir={blocked / 'run'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize(
  "options, message", [("size=400k", "No space left on device"), ("ro,size=1m", "Read-only file system")]
)
def test_a_full_or_read_only_disk_is_one_clear_error(tmp_path, options, message):
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the file-size-limit test covers it")
  try:
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "xray_keras.run",
        "--flagfile=experiments/smoke.cfg",
        f"--output_dir={mount / 'run'}",
        f"--cache_dir={tmp_path / 'cache'}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
  finally:
    subprocess.run(["umount", str(mount)], capture_output=True)
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
  assert message in errors[0] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_training_killed_at_random_points_resumes_and_loses_nothing(tmp_path):
  from tests.test_distribution import _history_epochs, _kill_after_epochs
  from xray_keras.training import run_dir

  out = tmp_path / "run"
  args = [
    sys.executable,
    "-m",
    "xray_keras.run",
    "--flagfile=experiments/smoke.cfg",
    "--epochs=12",
    "--data_source=synthetic",
    "--synthetic_train_size=800",
    "--max_images_per_split=0",
    "--image_size=32",
    "--augment=rotation,contrast",
    "--noreport",
    f"--output_dir={out}",
    f"--cache_dir={tmp_path / 'cache'}",
  ]
  # First kill -9 once two epochs are written, so every later start resumes from a backup.
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert 2 <= _kill_after_epochs(process, out) < 12 and not (out / "metrics.json").exists()
  rng = random.Random(2)
  kills = 1
  for _ in range(2):
    kills += not _kill_at_random(args, rng, 6.0, 14.0, cwd=REPO)  # a whole run takes about 25 s
    epochs = _history_epochs(out)
    assert epochs == sorted(set(epochs))  # never a repeated or reordered epoch row
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 or "holds a finished run" in result.stderr, result.stderr[-3000:]
  assert kills >= 2
  assert _history_epochs(out) == list(range(12))
  assert (out / "metrics.json").is_file() and (out / "model.keras").is_file()
  log = (out / "run.log").read_text()
  assert "Resuming an interrupted run" in log
  assert json.loads((out / "timing.json").read_text())["resumed"] is True
  # Synthetic data says so in its results and in every log line of every start.
  m = json.loads((out / "metrics.json").read_text())
  assert m["synthetic"] is True and m["data"]["source"] == "synthetic"
  for line in log.splitlines():
    if " INFO " in line or " WARNING " in line:
      assert "synthetic" in line.lower(), line
  with open(out / "split_manifest.csv") as f:
    assert all(row["file"].startswith("synthetic/") for row in csv.DictReader(f))
  assert not (out / run_dir.BACKUP_DIR).exists()  # the backup goes once training finished
