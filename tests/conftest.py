"""Shared fixtures: small real-image trees built from ../shared/data/chest_xray_224."""

import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get(
    "XRAY_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data", "chest_xray_224")
)


def shared_data():
  if not os.path.isdir(os.path.join(SHARED_DATA, "train")):
    pytest.fail(f"Real test images not found at {SHARED_DATA} (set XRAY_SHARED_DATA).")
  return SHARED_DATA


def real_files(split, class_name, count):
  """The first `count` real file names of a split/class, sorted (stable across runs)."""
  folder = os.path.join(shared_data(), split, class_name)
  return sorted(os.listdir(folder))[:count]


def make_tree(root, per_class=6, splits=("train", "val", "test")):
  """Copies `per_class` real images per split and class into `root/{split}/{class}/`."""
  for split in splits:
    for class_name in ("NORMAL", "PNEUMONIA"):
      os.makedirs(os.path.join(root, split, class_name), exist_ok=True)
      for name in real_files(split, class_name, per_class):
        shutil.copy(os.path.join(shared_data(), split, class_name, name), os.path.join(root, split, class_name, name))
  return root


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
      "train/PNEUMONIA/truncated.jpeg": "not a decodable image",
      "train/PNEUMONIA/empty.jpeg": "empty",
      "test/NORMAL/notes.jpeg": "not a decodable image",
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
