"""The study runner: every model into one folder on one split; finished runs are reused."""

import csv
import json
import os
import random
import subprocess
import sys

import pytest

from tests.conftest import REPO, make_tree
from tests.test_faults import _kill_at_random

MODELS = ("vit_scratch", "cnn_scratch")


def _study(tree, out, cache):
  return [
    sys.executable,
    "-m",
    "xray_keras.run",
    "--flagfile=experiments/study.cfg",
    f"--models={','.join(MODELS)}",
    f"--data_dir={tree}",
    f"--output_dir={out}",
    f"--cache_dir={cache}",
    "--epochs=1",
    "--image_size=32",
    "--batch_size=8",
    "--val_fraction=0.3",
    "--augment=",
    "--bootstrap_resamples=50",
    "--noreport",  # passed to each model's run, which then writes no report of its own; the study writes one
  ]


def _split(run_dir):
  with open(os.path.join(run_dir, "split_manifest.csv")) as f:
    return sorted((r["file"], r["split"]) for r in csv.DictReader(f))


@pytest.mark.slow  # about 170 s: two models through the study runner, killed twice on the way
def test_killed_study_keeps_finished_models_completes_and_reports(tmp_path):
  tree = make_tree(str(tmp_path / "chest_xray"), per_class=5)
  out = tmp_path / "study"
  # --unfreeze only fits pretrained backbones: left out of these runs (a scratch run refuses it).
  fitting = ["--unfreeze=2", "--override=cnn_scratch:batch_size=4"]
  args = _study(tree, out, tmp_path / "cache") + fitting
  rng = random.Random(3)
  stamps = {}
  for _ in range(2):
    _kill_at_random(args, rng, 20.0, 60.0, cwd=REPO, start_new_session=True, kill_group=True)
    for model in MODELS:
      marker = out / model / "metrics.json"
      if model in stamps:
        assert os.path.getmtime(marker) == stamps[model]  # a finished model is never redone
      elif marker.exists():
        stamps[model] = os.path.getmtime(marker)
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  for model, stamp in stamps.items():
    assert os.path.getmtime(out / model / "metrics.json") == stamp
  if "vit_scratch" not in stamps:  # a reused run is not started again, so its flags are not logged
    assert "--unfreeze=2 fit pretrained backbones only; not passed to vit_scratch" in result.stderr
  report = json.loads((out / "study.json").read_text())
  assert [report["runs"][m]["outcome"] for m in MODELS] == ["reused" if m in stamps else "finished" for m in MODELS]
  for model in MODELS:
    metrics = json.loads((out / model / "metrics.json").read_text())
    assert metrics["model"]["name"] == model
    flags_txt = (out / model / "flags.txt").read_text()
    assert "--epochs=1" in flags_txt and "--unfreeze=all" in flags_txt  # the study's flags override the cfg's
    assert f"--batch_size={4 if model == 'cnn_scratch' else 8}" in flags_txt
    assert not (out / model / "report.md").exists()
  assert _split(out / MODELS[0]) == _split(out / MODELS[1])

  report = (out / "report.md").read_text()
  for section in (
    "## Models parameters",
    "## Results on the test split",
    "## Time",
    "## Test beds",
    "## Validation versus test",
    "## Are the differences real?",
    "## Data",
    "ViT_scratch",
    "CNN_scratch",
    "DeLong",
    "McNemar",
  ):
    assert section in report, section
  assert "| ViT_scratch | 32x32x1 | random (from scratch) | 0 + 1 |" in report  # the Runs table
  for figure in (
    "training_curves.png",
    "roc_curves.png",
    "confusion_matrices.png",
    "epoch_time.png",
    "accuracy_vs_size_and_time.png",
    "explanations.png",
  ):
    assert (out / figure).stat().st_size > 5000 and f"]({figure})" in report
  with open(out / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == list(MODELS)
  results = json.loads((out / "results.json").read_text())
  for row in results["results"]:
    low, high = row["accuracy_ci"]
    assert low <= row["accuracy"] <= high
    val = json.loads((out / row["name"] / "metrics.json").read_text())["val"]
    assert (row["val_accuracy"], row["val_auc"]) == (val["accuracy"], val["auc"])
  assert [(p["a"], p["b"]) for p in results["pairwise"]] == [("ViT_scratch", "CNN_scratch")]
  assert [r["model"] for r in results["parameter_table"]] == ["CNN_scratch", "ViT_scratch"]

  # Two test beds merged (here the same study twice: a speed-up of exactly 1).
  compare = subprocess.run(
    [sys.executable, "-m", "xray_keras.report", f"--compare_runs={out},{out}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert compare.returncode == 0, compare.stderr[-3000:]
  rows = json.loads((out / "compare_test_beds.json").read_text())
  assert [r["model"] for r in rows] == ["ViT_scratch", "CNN_scratch"] and all(r["speedup_b_over_a"] == 1 for r in rows)
  assert "speed-up" in (out / "compare_test_beds.md").read_text()

  stamps = {m: os.path.getmtime(out / m / "metrics.json") for m in MODELS}
  again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert [json.loads((out / "study.json").read_text())["runs"][m]["outcome"] for m in MODELS] == ["reused", "reused"]
  assert {m: os.path.getmtime(out / m / "metrics.json") for m in MODELS} == stamps


def test_study_overrides_are_checked_before_any_run(monkeypatch):
  from absl import logging

  from xray_keras import study
  from xray_keras.errors import UserError

  known = {"batch_size", "head_epochs", "weights"}
  models = ["cnn_scratch", "resnet50", "applications:MobileNet"]
  assert study.parse_overrides(["resnet50:head_epochs=1", "applications:MobileNet:weights=/w/m.h5"], models, known) == {
    "resnet50": ["--head_epochs=1"],
    "applications:MobileNet": ["--weights=/w/m.h5"],
  }
  for bad, message in [
    ("resnet50", "expected <model>:<flag>=<value>"),
    ("vit_base:batch_size=4", "not one of --models"),
    ("resnet50:colour=red", "--colour is not a per-model flag"),
    ("resnet50:output_dir=x", "--output_dir is not a per-model flag"),
  ]:
    with pytest.raises(UserError, match=message):
      study.parse_overrides([bad], models, known | {"output_dir"})
  passed = [("epochs", "--epochs=1"), ("head_epochs", "--head_epochs=1"), ("weights", "--weights=none")]
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  assert study.model_flags("cnn_scratch", passed, {"cnn_scratch": ["--batch_size=4"]}) == [
    "--epochs=1",
    "--batch_size=4",
  ]
  assert lines == ["Study: --head_epochs=1 --weights=none fit pretrained backbones only; not passed to cnn_scratch."]
  assert study.model_flags("resnet50", passed) == ["--epochs=1", "--head_epochs=1", "--weights=none"]


def test_the_study_runner_holds_no_tensorflow_while_its_models_train():
  """Its process imports TensorFlow for the report only: a mismatched seed fails in a second, and the
  process waiting on each model's run does not hold TensorFlow's memory."""
  from xray_keras import choices, models

  for name in (*choices.MODELS, "applications:EfficientNetV2B0", "keras_hub:vit_base_patch16_224_imagenet"):
    assert choices.is_pretrained(name) == models.get_spec(name).pretrained, name
  code = "import sys, xray_keras.study; print(sorted({'tensorflow', 'keras', 'jax'} & set(sys.modules)))"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
