import collections
import csv
import os

import numpy as np
import pytest
from absl import logging

from tests.conftest import plant_junk
from xray_keras.data import cache, loader, patients, synthetic
from xray_keras.data.folder import DataError


def _config(data_dir, tmp_path, **kwargs):
  kwargs.setdefault("image_size", 32)
  return loader.DataConfig(data_dir=data_dir, cache_dir=str(tmp_path / "cache"), **kwargs)


def test_folder_with_planted_junk(real_tree, tmp_path):
  planted = plant_junk(real_tree)
  data = loader.load(_config(real_tree, tmp_path, val_fraction=0.3))
  counts = data.counts()
  # 6 real images per class and split; official val (6+6) merged into train, then carved.
  assert counts["test"] == {"NORMAL": 6, "PNEUMONIA": 6, "total": 12}
  assert counts["train"]["total"] + counts["val"]["total"] == 24
  assert counts["val"]["total"] > 0
  skipped = {s.path: s.reason for s in data.skipped}
  assert set(skipped) == set(planted)
  for rel, reason in planted.items():
    assert reason in skipped[rel]
  used = [r.path for split in data.splits.values() for r in split.records]
  assert len(used) == len(set(used)) == 36
  assert not set(used) & set(planted)
  assert data.splits["train"].images.shape[1:] == (32, 32, 1)
  assert data.splits["train"].images.std() > 10


def test_manifest_and_skipped_files(real_tree, tmp_path):
  plant_junk(real_tree)
  data = loader.load(_config(real_tree, tmp_path))
  loader.write_manifest(data, str(tmp_path / "m.csv"))
  loader.write_skipped(data.skipped, str(tmp_path / "s.csv"))
  with open(tmp_path / "m.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["file", "class", "split", "patient"]
  assert len(rows) == 36
  by_patient = collections.defaultdict(set)
  for row in rows:
    if row["split"] != "test":
      by_patient[row["patient"]].add(row["split"])
  assert all(len(s) == 1 for s in by_patient.values())
  with open(tmp_path / "s.csv") as f:
    assert len(list(csv.DictReader(f))) == 6


def test_cache_hit_skips_decoding(real_tree, tmp_path, monkeypatch):
  config = _config(real_tree, tmp_path)
  first = loader.load(config)
  messages = []
  monkeypatch.setattr(logging, "info", lambda msg, *a: messages.append(msg % a))

  def fail(*args, **kwargs):
    raise AssertionError("decoded although the cache should hit")

  monkeypatch.setattr(cache, "decode_files", fail)
  second = loader.load(config)
  assert any("cache hit" in m for m in messages)
  for split in ("train", "val", "test"):
    np.testing.assert_array_equal(first.splits[split].images, second.splits[split].images)
    assert first.splits[split].records == second.splits[split].records


def test_cache_misses_when_settings_or_files_change(real_tree, tmp_path, monkeypatch):
  loader.load(_config(real_tree, tmp_path))
  calls = []
  real_decode = cache.decode_files
  monkeypatch.setattr(cache, "decode_files", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
  loader.load(_config(real_tree, tmp_path, resize_mode="pad"))
  assert len(calls) == 1
  victim = os.path.join(real_tree, "test", "NORMAL", sorted(os.listdir(os.path.join(real_tree, "test", "NORMAL")))[0])
  os.utime(victim, ns=(1, 1))
  loader.load(_config(real_tree, tmp_path, resize_mode="pad"))
  assert len(calls) == 2


def test_corrupt_cache_entry_is_rebuilt(real_tree, tmp_path):
  config = _config(real_tree, tmp_path)
  loader.load(config)
  (entry,) = [p for p in (tmp_path / "cache").iterdir()]
  (entry / "images.npy").write_bytes(b"truncated")
  data = loader.load(config)
  assert data.splits["train"].images.std() > 10


def test_cap_per_split_and_class(real_tree, tmp_path):
  data = loader.load(_config(real_tree, tmp_path, max_images_per_split=2, val_fraction=0.3))
  for split in ("train", "val", "test"):
    for n in data.counts()[split].values():
      assert n <= 4


def test_npz_source(tmp_path, real_tree):
  data = loader.load(_config(real_tree, tmp_path, image_size=28))
  arrays = {}
  for split in ("train", "val", "test"):
    arrays[f"{split}_images"] = data.splits[split].images[..., 0]
    arrays[f"{split}_labels"] = data.splits[split].labels.reshape(-1, 1)
  path = str(tmp_path / "pneumoniamnist.npz")
  np.savez(path, **arrays)
  npz = loader.load(loader.DataConfig(data_dir=path, image_size=32, channels=3))
  assert npz.source == "npz"
  for split in ("train", "val", "test"):
    assert npz.counts()[split] == data.counts()[split]
    assert npz.splits[split].images.shape[1:] == (32, 32, 3)


def test_npz_missing_keys_is_one_clear_error(tmp_path):
  path = str(tmp_path / "bad.npz")
  np.savez(path, x=np.zeros(3))
  with pytest.raises(DataError, match="lacks keys.*train_images"):
    loader.load(loader.DataConfig(data_dir=path))


def test_synthetic_is_deterministic_and_labelled_synthetic():
  config = loader.DataConfig(source="synthetic", image_size=32, synthetic_train_size=40, synthetic_test_size=20)
  a, b = loader.load(config), loader.load(config)
  assert a.synthetic and a.source == "synthetic"
  np.testing.assert_array_equal(a.splits["train"].images, b.splits["train"].images)
  assert all(r.path.startswith("synthetic/") for s in a.splits.values() for r in s.records)
  assert a.counts()["test"] == {"NORMAL": 10, "PNEUMONIA": 10, "total": 20}


def test_synthetic_classes_differ_in_the_lungs():
  images, labels, _ = synthetic.generate("train", 200, 64, 1, seed=3)
  lungs = images[:, 20:44, 12:26, 0].reshape(200, -1).mean(1)
  normal, pneumonia = lungs[labels == 0], lungs[labels == 1]
  assert pneumonia.mean() - normal.mean() > 2 * normal.std()


def test_missing_data_dir_is_one_clear_error(tmp_path):
  with pytest.raises(DataError, match="does not exist.*Kaggle"):
    loader.load(loader.DataConfig(data_dir=str(tmp_path / "missing")))


def test_tfds_builder_on_real_images(tmp_path, real_tree):
  import tensorflow_datasets as tfds

  from xray_keras.data import tfds_builder  # noqa: F401  (registers the builder)

  plant_junk(real_tree)
  ds = tfds.load(
    "chest_xray_pneumonia",
    data_dir=str(tmp_path / "tfds"),
    split="test",
    download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=real_tree)},
  )
  examples = list(tfds.as_numpy(ds))
  assert len(examples) == 12  # 12 real test images; notes.jpeg and readme.txt skipped
  for e in examples:
    name = e["file_name"].decode()
    assert int(e["label"]) == (1 if "/PNEUMONIA/" in name else 0)
    assert e["patient"].decode() == patients.patient_id(name)
    assert e["image"].shape == (64, 64, 1)
  data = loader.load(
    loader.DataConfig(source="tfds", data_dir=real_tree, tfds_data_dir=str(tmp_path / "tfds"), image_size=32)
  )
  assert data.counts()["test"]["total"] == 12
  assert data.counts()["train"]["total"] + data.counts()["val"]["total"] == 24
