"""External validation (`python -m xray_keras.evaluate --model=... --data_dir=...`) on the shared tiny run."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import dicom_files
from xray_keras import external_validation


def _as_dicom(tree, out, invert=False):
  """The tree's test images written as DICOM (MONOCHROME2, 8 bits); `invert`: a negative without the MONOCHROME1 tag."""
  for class_name in ("NORMAL", "PNEUMONIA"):
    source = os.path.join(tree, "test", class_name)
    os.makedirs(os.path.join(out, "test", class_name))
    for name in sorted(os.listdir(source)):
      with Image.open(os.path.join(source, name)) as image:
        pixels = np.asarray(image.convert("L"))
      ds = dicom_files.dataset(255 - pixels if invert else pixels)
      with open(os.path.join(out, "test", class_name, os.path.splitext(name)[0] + ".dcm"), "wb") as f:
        f.write(dicom_files.to_bytes(ds))
  return out  # test/ alone: an external site has no training images


def test_external_validation_on_the_runs_own_test_images_gives_its_own_test_metrics(tiny_run, tmp_path):
  dicom_files.pydicom()
  base, tree, run_dir, _ = tiny_run
  own = json.loads((run_dir / "metrics.json").read_text())["test"]
  dicom_tree = _as_dicom(tree, str(tmp_path / "as_dicom"))
  folder, result = external_validation.validate(
    str(run_dir / "model.keras"), dicom_tree, cache_dir=str(tmp_path / "cache")
  )
  assert folder == os.path.join(str(run_dir), "external", "as_dicom")
  at = result["at_0.5"]
  assert at["n"] == own["n"] and at["auc"] == pytest.approx(own["auc"], abs=1e-9)
  assert at["accuracy"] == own["accuracy"] and at["sensitivity"] == own["recall"]
  assert result["difference_from_own_test"]["auc_difference"] == pytest.approx(0, abs=1e-3)
  youden = result["operating_points"]["youden"]["validation_chosen"]
  assert youden["threshold"] == pytest.approx(own["at_val_threshold"]["threshold"])
  assert youden["accuracy"] == own["at_val_threshold"]["accuracy"]
  for name in ("report.md", "report.html", "metrics.json", "predictions.csv", "reliability.png", "skipped_files.csv"):
    assert os.path.getsize(os.path.join(folder, name)) > 0, name
  assert len(open(os.path.join(folder, "predictions.csv")).read().splitlines()) == 1 + own["n"]
  report = open(os.path.join(folder, "report.md")).read()
  assert f"| ROC-AUC | {own['auc']:.3f}" in report and "## Operating points" in report

  # a shifted copy: the same images as negatives, tagged as if they were not
  shifted = _as_dicom(tree, str(tmp_path / "inverted"), invert=True)
  _, worse = external_validation.validate(str(run_dir), shifted, cache_dir=str(tmp_path / "cache"))
  assert worse["at_0.5"]["auc"] < own["auc"]
  assert worse["difference_from_own_test"]["auc_difference"] < 0


def test_external_validation_refuses_what_is_neither_a_run_nor_an_export(tmp_path):
  from xray_keras.errors import UserError

  with pytest.raises(UserError, match="is neither a run folder \\(with model.keras\\), a .keras file nor an export"):
    external_validation.open_model(str(tmp_path))


def test_evaluate_scores_every_image_of_flat_normal_and_pneumonia_folders(tiny_run, tmp_path):
  """The layout of keras.utils.image_dataset_from_directory: the run's own test images give its own test metrics."""
  import shutil

  _, tree, run_dir, _ = tiny_run
  own = json.loads((run_dir / "metrics.json").read_text())["test"]
  flat = tmp_path / "site"
  for class_name in ("NORMAL", "PNEUMONIA"):
    shutil.copytree(os.path.join(tree, "test", class_name), flat / class_name)
  folder, result = external_validation.validate(str(run_dir), str(flat), cache_dir=str(tmp_path / "cache"))
  assert folder == os.path.join(str(run_dir), "external", "site")
  assert result["at_0.5"]["n"] == own["n"] == len(os.listdir(flat / "NORMAL")) + len(os.listdir(flat / "PNEUMONIA"))
  assert result["at_0.5"]["auc"] == pytest.approx(own["auc"], abs=1e-9)


def test_an_unreadable_layout_names_the_layouts_that_are_read(tmp_path):
  from xray_keras.data import folder

  (tmp_path / "site" / "scans").mkdir(parents=True)
  with pytest.raises(folder.DataError) as error:
    folder.find_root(str(tmp_path / "site"))
  message = str(error.value)
  for layout in ("chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/", "NORMAL/ and PNEUMONIA/ without splits"):
    assert layout in message
  assert "labels.csv" in message and "MedMNIST .npz" in message
