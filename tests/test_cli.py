"""The command line as a user runs it: real subprocesses, real images, real output files."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, plant_junk
from xray_keras import models

RUN_FILES = (
  "flags.txt",
  "split_manifest.csv",
  "skipped_files.csv",
  "history.csv",
  "timing.json",
  "metrics.json",
  "run.log",
  "model.keras",
  "predictions.csv",
)
METRIC_KEYS = {"accuracy", "precision", "recall", "specificity", "f1", "auc", "confusion_matrix", "threshold", "n"}


def run_cli(*args, env=None, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", "xray_keras.run", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, **(env or {})},
  )


def _error_lines(result):
  return [line for line in result.stderr.splitlines() if line.startswith(("error:", "FATAL"))]


def test_one_epoch_run_on_real_images(real_tree, tmp_path):
  plant_junk(real_tree)
  out = tmp_path / "run"
  result = run_cli(
    "--flagfile=experiments/vit_scratch.cfg",
    f"--data_dir={real_tree}",
    f"--output_dir={out}",
    f"--cache_dir={tmp_path / 'cache'}",
    "--epochs=1",
    "--image_size=32",
    "--batch_size=8",
    "--val_fraction=0.3",
    "--noreport",  # the report's own tests: the next one and the shared tiny run's
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for name in RUN_FILES:
    assert (out / name).is_file(), name
  m = json.loads((out / "metrics.json").read_text())
  for split in ("val", "test"):
    assert METRIC_KEYS <= set(m[split]) and METRIC_KEYS <= set(m[split]["at_val_threshold"])
  assert m["test"]["n"] == 12
  assert m["synthetic"] is False and m["data"]["synthetic"] is False
  assert m["data"]["counts"]["test"] == {"NORMAL": 6, "PNEUMONIA": 6, "total": 12}
  assert m["model"]["display_name"] == "ViT_scratch" and m["model"]["params"] > 100_000
  timing = json.loads((out / "timing.json").read_text())
  assert timing["epochs_run"] == 1 and timing["first_step_s"] > 0
  assert timing["optimizer"] in ("FusedAdam", "FusedAdamW")  # models/fused_adam.py, recorded with the run
  assert timing["eval"]["images_per_s"] > 0 and timing["eval"]["latency_ms_per_image"] > 0
  assert timing["testbed"]["cpu_cores"] >= 1 and timing["testbed"]["versions"]["keras"]
  with open(out / "skipped_files.csv") as f:
    assert len(list(csv.DictReader(f))) == 6
  with open(out / "history.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and "val_auc" in rows[0] and "epoch_time_s" in rows[0]
  log = (out / "run.log").read_text()
  assert "Skipped 6 files" in log and "Done" in log
  flags_txt = (out / "flags.txt").read_text()
  assert "--epochs=1" in flags_txt and "--model=vit_scratch" in flags_txt
  # One copy of the weights: no optimizer state in model.keras, no last-good checkpoint left.
  assert not (out / "checkpoints").exists() and not (out / "backup").exists()
  saved = models.load_model(str(out / "model.keras"))
  assert getattr(saved, "optimizer", None) is None and not saved.compiled
  assert (out / "model.keras").stat().st_size < 1.2 * 4 * saved.count_params() + 200_000

  # flags.txt is a usable flagfile, and a finished run is never overwritten.
  again = run_cli(f"--flagfile={out / 'flags.txt'}")
  assert again.returncode == 1
  assert _error_lines(again) == [f"error: {out} holds a finished run; choose another --output_dir or pass --overwrite."]


def test_default_data_is_the_builtin_real_xrays_and_the_run_ends_with_its_report(tmp_path):
  out = tmp_path / "smoke"
  result = run_cli("--flagfile=experiments/smoke.cfg", f"--output_dir={out}", f"--cache_dir={tmp_path / 'cache'}")
  assert result.returncode == 0, result.stderr[-3000:]
  m = json.loads((out / "metrics.json").read_text())
  assert m["synthetic"] is False and m["data"]["source"] == "builtin" and m["data"]["name"] == "builtin:chest_xray_64"
  assert m["data"]["counts"]["test"] == {"NORMAL": 16, "PNEUMONIA": 16, "total": 32}
  low, high = m["test"]["ci95"]["auc"]
  assert low <= m["test"]["auc"] <= high
  with open(out / "split_manifest.csv") as f:
    rows = list(csv.DictReader(f))
  assert all(r["file"].endswith(".png") and not r["patient"].startswith("file:") for r in rows)
  assert "[synthetic]" not in (out / "run.log").read_text()
  # The last lines: the run folder, test accuracy and AUC with their CIs, and how to open the report.
  last = [line.split(" ", 1)[-1] for line in result.stderr.strip().splitlines()[-3:]]  # after HH:MM:SS
  assert last[0] == f"Run folder: {out}"
  assert (
    last[1].startswith("Test (32 images, threshold 0.5): accuracy ") and "[95% CI " in last[1] and "ROC-AUC" in last[1]
  )
  assert last[2] == f"Figures and tables: python -m webbrowser -t {out / 'report.html'}"
  report = (out / "report.md").read_text()
  assert report.startswith("# Run report: ViT_scratch") and "builtin:chest_xray_64" in report
  html = (out / "report.html").read_text()
  assert "<table>" in html and '<img alt="roc_curves.png" src="roc_curves.png">' in html
  for figure in ("roc_curves.png", "training_curves.png", "confusion_matrices.png", "explanations.png"):
    assert (out / figure).stat().st_size > 1000, figure


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["--device=tpu"], "value should be one of <auto|cpu|gpu>"),
    (["--epochs=0"], "--epochs=0"),
    (["--augment=flip"], "--augment takes a comma-separated list"),
    (["--preprocess=sharpen"], "--preprocess=sharpen: unknown step; expected downsample:N or equalize"),
    (["--preprocess=downsample:2"], "expected downsample:N with N >= 4 pixels"),
    (["--seeds=42,x"], "--seeds takes integers"),
    (["--task=four_class"], "value should be one of <binary|three_class>"),
    (["--tta=0"], "--tta=0"),
    (["--ema_momentum=0.99", "--early_stopping_patience=3"], "--ema_momentum with early stopping"),
    (["--model=vit_giant"], "Unknown model: 'vit_giant'. Valid models: cnn_scratch, vit_scratch"),
  ],
)
def test_bad_flags_fail_at_parse_time_with_one_line(args, expected):
  result = run_cli(*args)
  assert result.returncode != 0
  lines = _error_lines(result)
  assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def _run_without_libraries(*args):
  """`python -m xray_keras.run *args` in a fresh process that refuses to import TensorFlow, Keras or JAX."""
  code = (
    "import runpy, sys\n"
    "class Refuse:\n"
    "  def find_spec(self, name, *args):\n"
    "    if name.split('.')[0] in ('tensorflow', 'keras', 'jax'):\n"
    "      raise ImportError('refused: ' + name)\n"
    "sys.meta_path.insert(0, Refuse())\n"
    "sys.argv = ['run'] + sys.argv[1:]\n"
    "runpy.run_module('xray_keras.run', run_name='__main__')\n"
  )
  result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and "refused" not in result.stderr, result.stderr[-2000:]
  return result


def test_flags_are_parsed_before_tensorflow_or_keras_is_imported():
  """A fresh process that refuses both imports still parses every flag and names a bad one."""
  result = _run_without_libraries("--flagfile=experiments/vit_scratch.cfg", "--model=vit_giant")
  (line,) = _error_lines(result)
  assert "Unknown model: 'vit_giant'" in line


def test_missing_data_dir_says_what_to_get(tmp_path):
  """Before TensorFlow is imported: a second, not ten."""
  result = _run_without_libraries(f"--data_dir={tmp_path / 'nothing'}", f"--output_dir={tmp_path / 'out'}")
  (line,) = _error_lines(result)
  assert "does not exist" in line and "chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}" in line and "Kaggle" in line
  assert "Traceback" not in result.stderr


def test_gpu_device_without_gpu_is_one_clear_line(tmp_path):
  result = run_cli("--flagfile=experiments/smoke.cfg", "--device=gpu", f"--output_dir={tmp_path / 'out'}")
  assert result.returncode == 1
  (line,) = _error_lines(result)
  assert line.startswith("error: --device=gpu, but TensorFlow sees no GPU")


def test_path_flags_expand_a_tilde_and_environment_variables(monkeypatch):
  """Bash leaves `--data_dir=~/x` alone and a flagfile is never expanded: the flags do it."""
  from absl import flags

  from xray_keras import flags as run_flags  # noqa: F401  (defines the run's flags)
  from xray_keras import path_flags

  monkeypatch.setenv("HOME", "/home/reader")
  monkeypatch.setenv("XRAY_DATA", "/data/xrays")
  values = flags.FlagValues()
  path_flags.DEFINE_path("data_dir", "", "a path", flag_values=values)
  values(["prog", "--data_dir=~/Downloads/archive"])
  assert values.data_dir == "/home/reader/Downloads/archive"
  values(["prog", "--data_dir=$XRAY_DATA/chest_xray"])
  assert values.data_dir == "/data/xrays/chest_xray"
  values(["prog", "--data_dir=kaggle"])
  assert values.data_dir == "kaggle"
  for name in ("data_dir", "cache_dir", "tfds_data_dir", "weights", "output_dir", "export_dir"):
    assert isinstance(flags.FLAGS[name].parser, path_flags._PathParser), name
  assert {"data_dir", "output_dir"} <= {f.name for f in flags.FLAGS.get_flags_for_module("xray_keras.flags")}
