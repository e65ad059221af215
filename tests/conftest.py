"""Shared fixtures: small real-image trees from the package's built-in data (no ../shared needed).

The built-in archive holds the 5,856 Kermany X-rays at 64x64 as PNG. Trees written here hold them
as JPEG (quality 95) under their original `.jpeg` names, as in the real download. Tests that need
the 224 px copy or the ImageNet weights in ../shared skip with a reason where those are absent.
"""

import atexit
import functools
import io
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from xray_keras.data import builtin

# The xdist workers share the cores: one TensorFlow compute thread in each (and in the processes they
# start), where a pool per core in every process would spin against the others.
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
# Ray starts the simulated sites at nice 15, where another worker's test would starve them.
os.environ.setdefault("RAY_worker_niceness", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get(
  "XRAY_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data", "chest_xray_224")
)
# Beside the shared data: ../shared/weights, or XRAY_SHARED_WEIGHTS.
SHARED_WEIGHTS = os.environ.get(
  "XRAY_SHARED_WEIGHTS", os.path.join(os.path.dirname(os.path.dirname(SHARED_DATA)), "weights")
)


def shared_data():
  """The 224 px dataset in ../shared; skips the test where it is absent (a user's clone)."""
  if not os.path.isdir(os.path.join(SHARED_DATA, "train")):
    pytest.skip(f"needs the 224 px dataset at {SHARED_DATA} (set XRAY_SHARED_DATA)")
  return SHARED_DATA


def shared_weights(name):
  """A file of ../shared/weights; skips the test where it is absent."""
  path = os.path.join(SHARED_WEIGHTS, name)
  if not os.path.isfile(path):
    pytest.skip(f"needs the ImageNet weights file {name} (set XRAY_SHARED_WEIGHTS to its folder)")
  return path


@functools.cache
def _builtin():
  """{(split, class): {name.jpeg: 64x64 uint8 image}} from the built-in archive, names sorted."""
  out = {}
  for name, split, label, data in builtin.files():
    stem = os.path.splitext(os.path.basename(name))[0]
    with Image.open(io.BytesIO(data)) as image:
      out.setdefault((split, ("NORMAL", "PNEUMONIA")[label]), {})[stem + ".jpeg"] = np.asarray(image.convert("L"))
  return {key: dict(sorted(group.items())) for key, group in out.items()}


def real_files(split, class_name, count):
  """The first `count` real file names of a split/class, sorted (stable across runs)."""
  return list(_builtin()[(split, class_name)])[:count]


def real_jpeg(split, class_name, name):
  """A real X-ray (64x64 grey) as JPEG bytes."""
  out = io.BytesIO()
  Image.fromarray(_builtin()[(split, class_name)][name], "L").save(out, "JPEG", quality=95)
  return out.getvalue()


@functools.cache
def _real_dir():
  path = tempfile.mkdtemp(prefix="xray_real_")
  atexit.register(shutil.rmtree, path, True)
  return path


def real_path(split, class_name, name):
  """A file holding `real_jpeg(split, class_name, name)`."""
  path = os.path.join(_real_dir(), split, class_name, name)
  if not os.path.isfile(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(real_jpeg(split, class_name, name))
  return path


def make_tree(root, per_class=6, splits=("train", "val", "test")):
  """Writes `per_class` real images per split and class into `root/{split}/{class}/`."""
  for split in splits:
    for class_name in ("NORMAL", "PNEUMONIA"):
      os.makedirs(os.path.join(root, split, class_name), exist_ok=True)
      for name in real_files(split, class_name, per_class):
        shutil.copy(real_path(split, class_name, name), os.path.join(root, split, class_name, name))
  return root


def smoke_run_command(tree, cache_dir, output_dir, *extra):
  """`python -m xray_keras.run` with experiments/smoke.cfg on `tree`, and `extra` flags."""
  return [
    sys.executable,
    "-m",
    "xray_keras.run",
    "--flagfile=experiments/smoke.cfg",
    f"--data_dir={tree}",
    f"--cache_dir={cache_dir}",
    f"--output_dir={output_dir}",
    *extra,
  ]


@pytest.fixture
def real_tree(tmp_path):
  """A clean Kermany-layout folder with 6 real images per split and class."""
  return make_tree(str(tmp_path / "chest_xray"))


def plant_junk(root):
  """Adds the real archive's junk and broken files; returns {relative path: expected reason part}."""
  normal = os.path.join(root, "train", "NORMAL")
  real = sorted(os.listdir(normal))[0]
  with open(os.path.join(normal, real), "rb") as f:
    jpeg = f.read()
  planted = {
    "train/NORMAL/._" + real: "AppleDouble",
    "train/NORMAL/.DS_Store": "hidden",
    "train/PNEUMONIA/truncated.jpeg": "truncated",
    "train/PNEUMONIA/empty.jpeg": "empty",
    "test/NORMAL/notes.jpeg": "not an image format the decoder reads",
    "test/NORMAL/readme.txt": "extension",
  }
  contents = {
    "train/NORMAL/._" + real: b"\x00\x05\x16\x07" + b"\x00" * 60,
    "train/NORMAL/.DS_Store": b"\x00\x00\x00\x01Bud1",
    "train/PNEUMONIA/truncated.jpeg": jpeg[:200],
    "train/PNEUMONIA/empty.jpeg": b"",
    "test/NORMAL/notes.jpeg": b"this is a text file, not a jpeg\n",
    "test/NORMAL/readme.txt": b"hello\n",
  }
  for rel, data in contents.items():
    with open(os.path.join(root, rel), "wb") as f:
      f.write(data)
  return planted


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """One finished CLI run shared by the tests that read, export, serve, explain or break a run folder.

  experiments/smoke.cfg on 6 real images per split and class at 48 px (letterboxed), exported with
  --export. Returns `(base, tree, run_dir, export_dir)`, the run's stderr in base/console.txt; tests copy
  what they change.
  """
  import subprocess

  base = tmp_path_factory.mktemp("tiny_run")
  tree = make_tree(str(base / "chest_xray"), per_class=6)
  run_dir, export_dir = base / "run", base / "saved_models"
  result = subprocess.run(
    smoke_run_command(
      tree,
      base / "cache",
      run_dir,
      "--export",
      f"--export_dir={export_dir}",
      "--image_size=48",
      "--resize_mode=pad",
      "--val_fraction=0.3",
    ),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    # as from a user's shell: TensorFlow, imported by this process, has set TF_CPP_MIN_LOG_LEVEL=1 here
    env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (base / "console.txt").write_text(result.stderr)  # what the run printed, for tests of the console
  return base, tree, run_dir, export_dir


# The slow set's longest tests (1.5 to 3 min each on 2 cores), longest first: started first, so that the
# last minutes are not one long test on one core while the other waits.
LONGEST_FIRST = (
  "test_killed_study_keeps_finished_models_completes_and_reports",
  "test_a_site_that_never_answers_is_left_behind_after_the_round_timeout",
  "test_int8_exports_agree_with_the_float_model_on_the_builtin_test_images",
  "test_training_killed_at_random_points_resumes_and_loses_nothing",
  "test_one_epoch_cli_run_of_each_pretrained_cfg",
  "test_simulation_runtime_runs_two_rounds_on_three_sites_into_a_normal_run_folder",
  "test_deployment_runtime_runs_a_round_on_a_superlink_and_three_supernodes",
  "test_study_seeds_reuse_finished_runs_and_add_ensembles",
  "test_a_killed_site_does_not_stop_the_run_and_a_killed_server_resumes",
  "test_gpu_study_quick_mode_runs_the_study_on_jax_and_writes_its_report",
  "test_federated_attacks_quick_mode_compares_strategies_under_a_bad_site",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """Under xdist's loadgroup, one worker runs every test of a costly shared fixture, so it is built once.

  The tests of the shared tiny run go to one worker; a module's tests that share a module-scoped
  fixture go to one worker each. Without xdist the marks change nothing. `LONGEST_FIRST` leads.
  """
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(getattr(item, "originalname", item.name), len(rank)))
  for item in items:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
      continue
    if "tiny_run" in info.names_closure:
      item.add_marker(pytest.mark.xdist_group("tiny_run"))
    elif any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
