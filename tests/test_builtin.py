"""The built-in real data: contents, checksum, patients, pixels, and the size limit."""

import collections
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, shared_data
from xray_keras.data import builtin, decode, folder, loader

OFFICIAL = {
  ("train", 0): 1341,
  ("train", 1): 3875,
  ("official_val", 0): 8,
  ("official_val", 1): 8,
  ("test", 0): 234,
  ("test", 1): 390,
}


def test_archive_holds_the_5856_images_in_the_official_split():
  images, records = builtin.load()
  assert images.shape == (5856, 64, 64, 1) and images.dtype == np.uint8
  assert collections.Counter((r.split, r.label) for r in records) == OFFICIAL
  assert len({r.path for r in records}) == 5856
  assert os.path.getsize(builtin.ARCHIVE) <= 16 * 1024 * 1024
  assert images.std() > 30  # real X-rays, not a blank or constant image
  # Patient ids come from the Kermany names: no image falls back to its file stem.
  assert not [r.path for r in records if r.patient.startswith("file:")]
  assert len({r.patient for r in records}) == 3118


def test_patient_ids_and_names_match_the_originals():
  _, originals, _ = folder.list_records(shared_data())
  want = sorted((r.split, r.label, os.path.splitext(r.path)[0], r.patient) for r in originals)
  got = sorted((r.split, r.label, os.path.splitext(r.path)[0], r.patient) for r in builtin.records())
  assert got == want


def test_pixels_equal_the_folder_source_at_64_px():
  root = shared_data()
  images, records = builtin.load()
  for i in np.random.default_rng(0).choice(len(records), 24, replace=False):
    original = os.path.splitext(records[i].path)[0] + ".jpeg"
    with open(os.path.join(root, original), "rb") as f:
      np.testing.assert_array_equal(images[i], decode.decode_image(f.read(), 64, 1, "squash"))


def test_an_altered_or_missing_archive_is_refused_in_one_line(tmp_path):
  altered = tmp_path / "chest_xray_64.zip"
  shutil.copy(builtin.ARCHIVE, altered)
  with open(altered, "r+b") as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(builtin.BuiltinDataError, match="altered") as error:
    builtin.load(str(altered))
  assert "\n" not in str(error.value)
  with pytest.raises(builtin.BuiltinDataError, match="missing"):
    builtin.load(str(tmp_path / "nothing.zip"))


def test_loader_defaults_to_builtin_and_resizes_down(tmp_path):
  config = loader.DataConfig(image_size=32, channels=3, cache_dir=str(tmp_path), max_images_per_split=5)
  assert loader.resolve_source(config) == "builtin"
  data = loader.load(config)
  assert data.source == "builtin" and not data.synthetic
  assert data.splits["train"].images.shape[1:] == (32, 32, 3)
  assert {s: data.counts()[s]["total"] for s in ("train", "val", "test")} == {"train": 10, "val": 10, "test": 10}
  # Validation is carved from train by patient, as for a folder.
  val_patients = {r.patient for r in data.splits["val"].records}
  assert not val_patients & {r.patient for r in data.splits["train"].records}


def test_a_size_beyond_the_builtin_data_stops_in_one_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.run",
      "--flagfile=experiments/cnn_scratch.cfg",
      "--epochs=1",
      f"--output_dir={tmp_path / 'run'}",
      f"--cache_dir={tmp_path / 'cache'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
  assert "--image_size=128 is larger than the built-in data (64x64)" in errors[0]
  assert "--data_dir=kaggle" in errors[0] and "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "metrics.json").exists()
