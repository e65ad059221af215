"""A label list (`--data_dir=labels.csv`) as a data source: every row used or skipped with its reason."""

import os
import shutil

import pytest

from tests.conftest import real_files, real_path
from xray_keras.data import loader
from xray_keras.data.folder import DataError


def _site(root):
  """A site's images in one flat folder (no class folders) and a labels.csv naming them."""
  os.makedirs(os.path.join(root, "images"))
  rows = ["path,label,patient_id,split,subtype"]
  for split in ("train", "test"):
    for class_name, spellings in (("NORMAL", ("NORMAL", "0")), ("PNEUMONIA", ("pneumonia", "1"))):
      for index, name in enumerate(real_files(split, class_name, 6)):
        target = f"{split}_{class_name}_{index}.jpeg"
        shutil.copy(real_path(split, class_name, name), os.path.join(root, "images", target))
        subtype = "" if class_name == "NORMAL" else ("bacteria", "virus")[index % 2]
        rows.append(f"images/{target},{spellings[index % 2]},MRN{split}{class_name}{index // 2},{split},{subtype}")
  rows.append("images/missing.jpeg,NORMAL,MRN9,train,")
  with open(os.path.join(root, "images", "readme.txt"), "w") as f:
    f.write("not an image")
  rows.append("images/readme.txt,1,MRN9,test,")
  path = os.path.join(root, "labels.csv")
  with open(path, "w") as f:
    f.write("\n".join(rows) + "\n")
  return path


def test_a_label_list_loads_every_row_or_skips_it_with_its_reason(tmp_path):
  path = _site(str(tmp_path / "site"))
  data = loader.load(loader.DataConfig(data_dir=path, image_size=32, cache_dir=str(tmp_path / "cache")))
  counts = data.counts()
  assert data.source == "csv" and data.name == "labels.csv"
  assert counts["train"]["total"] + counts["val"]["total"] == 12 and counts["test"] == {
    "NORMAL": 6,
    "PNEUMONIA": 6,
    "total": 12,
  }
  assert {(s.path, s.reason) for s in data.skipped} == {
    (os.path.join("images", "missing.jpeg"), "no such file"),
    (os.path.join("images", "readme.txt"), "not an image file extension"),
  }
  records = [r for arrays in data.splits.values() for r in arrays.records]
  assert all(r.patient.startswith("csv:") and "MRN" not in r.patient for r in records)
  sides = {}
  for r in records:
    sides.setdefault(r.patient, set()).add(r.split)
  assert all(len(s) == 1 for s in sides.values())  # a patient's two images stay on one side
  assert {r.subtype for r in data.splits["test"].records} == {"", "BACTERIA", "VIRUS"}
  manifest = tmp_path / "manifest.csv"
  loader.write_manifest(data, manifest)
  assert "MRN" not in manifest.read_text()


def test_without_a_split_column_every_row_is_a_test_image_and_training_says_so(tmp_path):
  path = _site(str(tmp_path / "site"))
  lines = open(path).read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(",".join(line.split(",")[:3]) for line in lines) + "\n")
  config = loader.DataConfig(data_dir=path, image_size=32, cache_dir=str(tmp_path / "cache"))
  data = loader.load(config, need=("test",))
  assert data.counts()["test"]["total"] == 24 and data.counts()["train"]["total"] == 0
  with pytest.raises(DataError, match=r"^The train split is empty after loading labels.csv \(a label list without"):
    loader.load(config)


@pytest.mark.parametrize(
  "header, row, message",
  [
    ("file,label", "a.jpeg,NORMAL", "has no 'path' column (its first row: file, label); expected a header row"),
    ("a.jpeg,NORMAL,PATIENT0042", "b.jpeg,1,x", "its first row: normal, 2 other(s) not shown); expected a header"),
    ("path,diagnosis", "a.jpeg,NORMAL", "has no 'label' column"),
    ("path,label", "a.jpeg,COVID", "labels.csv row 2: unknown label 'COVID' (expected NORMAL, PNEUMONIA, 0 or 1)."),
    (
      "path,label,split",
      "a.jpeg,1,holdout",
      "labels.csv row 2: unknown split 'holdout' (expected train, val or test).",
    ),
    ("path,label", "a.jpeg,1\n./a.jpeg,0", "labels.csv row 3: './a.jpeg' is listed twice (first on row 2)."),
    ("path,label", "a.jpeg,1\n{root}/a.jpeg,0", "labels.csv row 3: '{root}/a.jpeg' is listed twice (first on row 2)."),
    ("path,label", "sub/../a.jpeg,1\nlink.jpeg,0", "labels.csv row 3: 'link.jpeg' is listed twice (first on row 2)."),
  ],
)
def test_a_bad_label_list_stops_with_one_line(tmp_path, header, row, message):
  shutil.copy(real_path("test", "NORMAL", real_files("test", "NORMAL", 1)[0]), tmp_path / "a.jpeg")
  (tmp_path / "sub").mkdir()
  os.symlink(tmp_path / "a.jpeg", tmp_path / "link.jpeg")
  path = tmp_path / "labels.csv"
  path.write_text(f"{header}\n{row}\n".replace("{root}", str(tmp_path)))
  with pytest.raises(DataError) as raised:
    loader.load(loader.DataConfig(data_dir=str(path), image_size=32, cache_dir=str(tmp_path / "cache")))
  assert message.replace("{root}", str(tmp_path)) in str(raised.value) and "\n" not in str(raised.value)
  assert "PATIENT0042" not in str(raised.value) and "a.jpeg,NORMAL" not in str(raised.value)
