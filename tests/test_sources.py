"""Every data source refuses malformed input in one line and never drops images silently."""

import contextlib
import io
import json
import logging as std_logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, make_tree, plant_junk, real_files
from xray_keras.data import builtin, decode, loader
from xray_keras.data.folder import DataError
from xray_keras.training.timing import TimingCallback


@pytest.fixture(scope="module")
def mnist_like(tmp_path_factory):
  """A PneumoniaMNIST-like npz of real X-rays at 28 px: 200 images per split."""
  cache = tmp_path_factory.mktemp("cache")
  data = loader.load(loader.DataConfig(image_size=28, max_images_per_split=100, cache_dir=str(cache)))
  arrays = {}
  for split in ("train", "val", "test"):
    arrays[f"{split}_images"] = data.splits[split].images[..., 0]
    arrays[f"{split}_labels"] = data.splits[split].labels.reshape(-1, 1).astype(np.uint8)
  return arrays


def _damaged(arrays, case):
  a = dict(arrays)
  if case == "labels_shorter":
    a["train_labels"] = a["train_labels"][:10]
  elif case == "label_outside":
    a["train_labels"] = a["train_labels"].copy()
    a["train_labels"][3] = 2
  elif case == "one_hot":
    a["test_labels"] = np.eye(2, dtype=np.uint8)[a["test_labels"][:, 0]]
  elif case == "multi_label":
    a["test_labels"] = np.concatenate([a["test_labels"]] * 3, axis=1)
  elif case == "images_rank":
    a["train_images"] = a["train_images"][:, 0, :]
  elif case == "images_dtype":
    a["train_images"] = a["train_images"].astype(np.complex64)
  elif case == "nan_pixels":
    a["val_images"] = a["val_images"].astype(np.float32)
    a["val_images"][0, 0, 0] = np.nan
  elif case == "negative_pixels":
    a["train_images"] = a["train_images"].astype(np.int16)
    a["train_images"][0, 0, 0] = -5
  return a


# case -> what the one line must say (the key and the shapes involved)
CASES = {
  "labels_shorter": "train_images (200, 28, 28) uint8 vs train_labels (10, 1): 200 images but 10 labels",
  "label_outside": "train_labels (200, 1) holds 1 label(s) other than 0 (NORMAL) or 1 (PNEUMONIA), e.g. 2",
  "one_hot": "test_images (200, 28, 28) uint8 vs test_labels (200, 2): expected one 0/1 label per image",
  "multi_label": "test_images (200, 28, 28) uint8 vs test_labels (200, 3): expected one 0/1 label per image",
  "images_rank": "train_images (200, 28) uint8: expected (N, H, W) or (N, H, W, 1 or 3) images",
  "images_dtype": "train_images (200, 28, 28) complex64: expected integer pixels in 0..255, or float pixels in 0..1",
  "nan_pixels": "val_images (200, 28, 28) float32: holds NaN or infinite pixels",
  "negative_pixels": "train_images (200, 28, 28) int16: pixels range from -5 to ",
  "truncated": "damaged or not an npz archive (BadZipFile",
}


def _write_case(arrays, case, folder):
  path = str(folder / f"{case}.npz")
  np.savez(path, **(arrays if case == "truncated" else _damaged(arrays, case)))
  if case == "truncated":
    with open(path, "rb") as f:
      head = f.read(300_000)
    with open(path, "wb") as f:
      f.write(head)
  return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_npz_is_one_line_naming_the_key_and_shapes(case, mnist_like, tmp_path):
  path = _write_case(mnist_like, case, tmp_path)
  with pytest.raises(DataError) as error:
    loader.load(loader.DataConfig(data_dir=path, image_size=28))
  message = str(error.value)
  assert "\n" not in message and CASES[case] in message and path in message


# Every case's message is tested in process above; through the CLI, one damaged archive and one whose
# arrays load but fail a check: the same path from the loader's DataError to exit 1 (each process imports
# TensorFlow, about 8 s of CPU).
CLI_CASES = ("truncated", "nan_pixels")


@pytest.mark.slow
def test_malformed_npz_runs_exit_1_with_one_line_and_no_finished_run(mnist_like, tmp_path):
  runs = {}
  for case in CLI_CASES:
    path = _write_case(mnist_like, case, tmp_path)
    out = tmp_path / f"run_{case}"
    runs[case] = (
      out,
      subprocess.Popen(
        [
          sys.executable,
          "-m",
          "xray_keras.run",
          "--flagfile=experiments/smoke.cfg",
          f"--data_dir={path}",
          "--image_size=28",
          "--patch_size=7",
          f"--output_dir={out}",
          f"--cache_dir={tmp_path / 'cache'}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
  for case, (out, process) in runs.items():
    _, stderr = process.communicate(timeout=600)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert process.returncode == 1 and len(errors) == 1, (case, stderr[-2000:])
    assert CASES[case] in errors[0] and "Traceback" not in stderr, (case, errors)
    assert not (out / "metrics.json").exists()


def test_a_file_that_is_not_an_npz_archive_is_one_line(tmp_path):
  path = tmp_path / "notes.npz"
  path.write_text("hello")
  with pytest.raises(DataError, match="is not an npz archive .no zip header.") as error:
    loader.load(loader.DataConfig(data_dir=str(path)))
  assert "pickle" not in str(error.value)


def test_a_valid_npz_without_val_carves_validation_from_train(mnist_like, tmp_path):
  arrays = {k: v for k, v in mnist_like.items() if not k.startswith("val_")}
  empty = {**arrays, "val_images": np.zeros((0, 28, 28), np.uint8), "val_labels": np.zeros((0, 1), np.uint8)}
  for name, content, why in (("no_val", arrays, "no val_images"), ("empty_val", empty, "empty val_images")):
    path = str(tmp_path / f"{name}.npz")
    np.savez(path, **content)
    with absltest_logs() as logs:
      data = loader.load(loader.DataConfig(data_dir=path, image_size=28, val_fraction=0.2))
    counts = data.counts()
    assert counts["train"]["total"] + counts["val"]["total"] == 200 and counts["val"]["total"] >= 40
    # Said plainly in the log and in the run's data record (metrics.json, report): per image, and why.
    said = f"{name}.npz has {why}: validation is carved from train per image: the source has no patient ids"
    assert any(said in line for line in logs), logs
    assert data.summary()["validation"] == "image" and any(said in note for note in data.summary()["notes"])
  path = str(tmp_path / "with_val.npz")
  np.savez(path, **mnist_like)
  assert loader.load(loader.DataConfig(data_dir=path, image_size=28)).summary()["validation"] == "file"
  assert loader.load(loader.DataConfig(image_size=28, max_images_per_split=4)).summary()["validation"] == "patient"
  np.savez(path, **{**arrays, "val_labels": mnist_like["val_labels"]})
  with pytest.raises(DataError, match="only one of val_images and val_labels"):
    loader.load(loader.DataConfig(data_dir=path, image_size=28))


@contextlib.contextmanager
def absltest_logs():
  """The messages absl logs inside the block."""
  lines = []
  handler = std_logging.Handler()
  handler.emit = lambda record: lines.append(record.getMessage())
  logger = std_logging.getLogger("absl")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(std_logging.INFO)
  try:
    yield lines
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_float_npz_pixels_in_0_1_are_scaled_and_rounded_not_truncated(mnist_like, tmp_path):
  """PneumoniaMNIST saved as float 0..1 reads as its uint8 twin (also when resized); float 0..255 is rounded."""
  twin = str(tmp_path / "uint8.npz")
  np.savez(twin, **mnist_like)
  unit = {k: (v.astype(np.float32) / 255.0 if k.endswith("_images") else v) for k, v in mnist_like.items()}
  path = str(tmp_path / "float01.npz")
  np.savez(path, **unit)
  for size in (28, 40):  # 40: the resize that used to end in "Invalid mode for data type"
    expected = loader.load(loader.DataConfig(data_dir=twin, image_size=size))
    with absltest_logs() as logs:
      data = loader.load(loader.DataConfig(data_dir=path, image_size=size))
    for split in ("train", "val", "test"):
      np.testing.assert_array_equal(data.splits[split].images, expected.splits[split].images)
    assert any("float pixels in 0..1, read as intensities: scaled by 255" in line for line in logs)
    assert any("scaled by 255" in note for note in data.summary()["notes"])
  # Resized with a bicubic filter: a few pixels overshoot 1 (and 0); still 0..1 intensities, never 0..255.
  overshoot = {k: v.copy() for k, v in unit.items()}
  overshoot["train_images"][0, 0, :2] = [1.0116, -0.004]
  path = str(tmp_path / "float01_overshoot.npz")
  np.savez(path, **overshoot)
  with absltest_logs() as logs:
    data = loader.load(loader.DataConfig(data_dir=path, image_size=28))
  expected = loader.load(loader.DataConfig(data_dir=twin, image_size=28))
  np.testing.assert_array_equal(data.splits["test"].images, expected.splits["test"].images)
  assert any("scaled by 255 and rounded to 0..255; 2 of " in line and "outside 0..1 clipped" in line for line in logs)
  noisy = {k: (v + 0.4 * (v < 255) if k.endswith("_images") else v) for k, v in mnist_like.items()}
  noisy["train_images"][0, 0, 0] = 200.6  # rounds to 201, truncation would give 200
  path = str(tmp_path / "float255.npz")
  np.savez(path, **noisy)
  data = loader.load(loader.DataConfig(data_dir=path, image_size=28, max_images_per_split=0))
  np.testing.assert_array_equal(np.sort(data.splits["test"].images.ravel()), np.sort(mnist_like["test_images"].ravel()))
  assert 201 in data.splits["train"].images and "rounded to the nearest integer" in " ".join(data.notes)


def test_an_npz_with_object_arrays_says_pickled_arrays_are_not_read(mnist_like, tmp_path):
  path = str(tmp_path / "objects.npz")
  np.savez(path, **{**mnist_like, "train_labels": np.array(["NORMAL"] * 200, dtype=object)})
  with pytest.raises(DataError) as error:
    loader.load(loader.DataConfig(data_dir=path, image_size=28))
  message = str(error.value)
  assert "holds object (pickled) arrays, which are not read: unpickling can run any code" in message
  assert "damaged" not in message and "\n" not in message


def _files_in_class_folders(root):
  return sum(
    len(os.listdir(os.path.join(root, split, c)))
    for split in ("train", "val", "test")
    for c in ("NORMAL", "PNEUMONIA")
    if os.path.isdir(os.path.join(root, split, c))
  )


@pytest.mark.parametrize("source", ["folder", "tfds"])
def test_every_file_read_is_used_or_listed_as_skipped(source, tmp_path):
  root = make_tree(str(tmp_path / "chest_xray"), per_class=4)
  plant_junk(root)
  found = _files_in_class_folders(root)
  config = loader.DataConfig(
    source=source,
    data_dir=root,
    image_size=32,
    cache_dir=str(tmp_path / "cache"),
    tfds_data_dir=str(tmp_path / "tfds"),
    val_fraction=0.3,
  )
  data = loader.load(config)
  used = sum(c["total"] for c in data.counts().values())
  assert used == 24 and used + len(data.skipped) == found
  assert all(s.reason for s in data.skipped)
  # A file added after TFDS prepared its copy is not silently missing either.
  if source == "tfds":
    extra = os.path.join(root, "test", "NORMAL", "IM-9999-0001.jpeg")
    with open(extra, "wb") as f:
      f.write(open(os.path.join(root, "test", "NORMAL", real_files("test", "NORMAL", 1)[0]), "rb").read())
    again = loader.load(config)
    assert "test/NORMAL/IM-9999-0001.jpeg" in {s.path for s in again.skipped}


def test_npz_and_builtin_use_every_image(mnist_like, tmp_path):
  path = str(tmp_path / "ok.npz")
  np.savez(path, **mnist_like)
  data = loader.load(loader.DataConfig(data_dir=path, image_size=28))
  assert sum(c["total"] for c in data.counts().values()) == 600 and not data.skipped
  data = loader.load(loader.DataConfig(image_size=16, cache_dir=str(tmp_path / "cache")))
  assert sum(c["total"] for c in data.counts().values()) == 5856 and not data.skipped


def test_tfds_manual_dir_empty_or_without_test_is_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for manual_dir, expected in (
    (empty, "is empty"),
    (make_tree(str(tmp_path / "no_test"), 2, ("train", "val")), "No train/ and test/ splits"),
  ):
    with pytest.raises(DataError, match=expected) as error:
      loader.load(loader.DataConfig(source="tfds", data_dir=str(manual_dir), tfds_data_dir=str(tmp_path / "tfds")))
    assert "\n" not in str(error.value)


def test_throughput_is_never_negative_when_an_epoch_is_one_batch():
  timing = TimingCallback(train_images=10, batch_size=32)
  timing.on_train_begin()
  timing.on_epoch_begin(0)
  timing.on_train_batch_end(0)
  timing.on_epoch_end(0, {})
  timing.on_train_end()
  summary = timing.summary()
  assert summary["train_images_per_s"] > 0 and "with_first_step_images_per_s" not in summary["epochs"][0]


def _large_jpeg(seed, width, height):
  """A real X-ray enlarged to an original's size, with film-like grain, as a JPEG."""
  rng = np.random.default_rng(seed)
  images, _ = builtin.load()
  small = Image.fromarray(images[seed * 101, :, :, 0])
  pixels = np.asarray(small.resize((width, height), Image.BICUBIC), np.float32) + rng.normal(0, 4, (height, width))
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
  return out.getvalue()


def test_jpeg_draft_mode_stays_within_the_stated_tolerance():
  diffs = []
  for seed, (width, height) in enumerate(((1900, 1500), (1234, 1077), (2400, 2010))):
    data = _large_jpeg(seed, width, height)
    for size in (64, 128):
      for mode in decode.RESIZE_MODES:
        full = decode.decode_image(data, size, 1, mode, draft=False)
        fast = decode.decode_image(data, size, 1, mode)
        assert fast.shape == full.shape == (size, size, 1)
        diffs.append(np.abs(full.astype(int) - fast.astype(int)).ravel())
  diffs = np.concatenate(diffs)
  assert diffs.mean() < 0.5 and np.percentile(diffs, 99) <= 2, (diffs.mean(), np.percentile(diffs, 99))
  assert diffs.any()  # draft mode was really used


def test_the_report_says_how_validation_was_made_from_the_runs_data_record(tiny_run, tmp_path):
  from xray_keras.report import write

  _, _, run_dir, _ = tiny_run
  report = (run_dir / "report.md").read_text()
  assert "validation carved from train by patient (all of a patient's images on one side)" in report
  copy = tmp_path / "npz_run"
  shutil.copytree(run_dir, copy)
  metrics = json.loads((copy / "metrics.json").read_text())
  metrics["data"].update(source="npz", name="pneumoniamnist.npz", validation="image")
  (copy / "metrics.json").write_text(json.dumps(metrics))
  write.write_report(str(copy), resamples=20)
  report = (copy / "report.md").read_text()
  assert "validation carved from train per image: the source has no patient ids" in report
  assert "by patient" not in report and "patient-grouped" not in report
