import os
import shutil

import pytest

from tests.conftest import make_tree, plant_junk
from xray_keras.data import folder


def _archive(tmp_path):
  """The real download's shape: top/chest_xray/{splits}, a nested duplicate, and __MACOSX."""
  top = tmp_path / "archive"
  root = make_tree(str(top / "chest_xray"), per_class=3)
  shutil.copytree(root, os.path.join(root, "chest_xray"), ignore=shutil.ignore_patterns("chest_xray"))
  macosx = top / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
  macosx.mkdir(parents=True)
  (macosx / "._IM-0001-0001.jpeg").write_bytes(b"\x00\x05\x16\x07junk")
  (top / "chest_xray" / ".DS_Store").write_bytes(b"Bud1")
  return str(top), root


@pytest.mark.parametrize("level", ["top", "chest_xray", "nested"])
def test_root_found_from_any_level(tmp_path, level):
  top, root = _archive(tmp_path)
  start = {"top": top, "chest_xray": root, "nested": os.path.join(root, "chest_xray")}[level]
  expected = os.path.join(root, "chest_xray") if level == "nested" else root
  assert folder.find_root(start) == os.path.normpath(expected)


def test_nested_duplicate_and_macosx_never_counted(tmp_path):
  top, _ = _archive(tmp_path)
  _, records, skipped = folder.list_records(top)
  assert len(records) == 3 * 2 * 3  # 3 splits x 2 classes x 3 images, once each
  assert len({r.path for r in records}) == len(records)
  assert not any("__MACOSX" in r.path or "chest_xray/" in r.path for r in records)
  assert not skipped


def test_junk_in_class_folders_is_skipped_with_reason(real_tree):
  planted = plant_junk(real_tree)
  _, records, skipped = folder.list_records(real_tree)
  reasons = {s.path: s.reason for s in skipped}
  for rel, reason in planted.items():
    if rel.endswith((".jpeg", ".jpg")) and not os.path.basename(rel).startswith("."):
      continue  # these pass the name checks; decoding rejects them (see test_loader)
    assert reason in reasons[rel]
  assert not any(os.path.basename(r.path).startswith(".") for r in records)


def test_official_val_is_marked(real_tree):
  _, records, _ = folder.list_records(real_tree)
  assert {r.split for r in records} == {"train", "official_val", "test"}


def test_missing_and_empty_dirs_say_what_was_expected(tmp_path):
  with pytest.raises(folder.DataError, match="does not exist.*chest_xray/"):
    folder.find_root(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(folder.DataError, match="is empty.*Kaggle"):
    folder.find_root(str(tmp_path / "empty"))
  (tmp_path / "other" / "stuff").mkdir(parents=True)
  with pytest.raises(folder.DataError, match="No train/ and test/"):
    folder.find_root(str(tmp_path / "other"))


def test_a_folder_with_one_split_is_found_and_a_needed_empty_split_is_named(tmp_path):
  from xray_keras.data import loader

  site = make_tree(str(tmp_path / "site" / "chest_xray"), per_class=2, splits=("test",))
  assert folder.find_root(str(tmp_path / "site")) == site
  config = loader.DataConfig(data_dir=str(tmp_path / "site"), image_size=16, cache_dir=str(tmp_path / "cache"))
  assert len(loader.load(config, need=("test",)).splits["test"].labels) == 4
  with pytest.raises(
    folder.DataError,
    match="^The train split is empty after loading chest_xray \\(a folder without train/ holds test images, for python",
  ):
    loader.load(config)
  full = make_tree(str(tmp_path / "both" / "a" / "b"), per_class=1)
  make_tree(str(tmp_path / "both" / "a"), per_class=1, splits=("test",))
  assert folder.find_root(str(tmp_path / "both")) == full  # a complete root deeper wins over a partial one
