"""The out-of-distribution flag on every path: predict (TSV, JSON, CSV, --strict), evaluate, the run's report.

On the shared tiny run. Its barely trained model does not flag a blank image, but uniform noise at
the model's 48 px is about twice its threshold; the run's own test X-rays are below it.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, real_files, real_path

# Runs `xray_keras.predict` with `import tensorflow` and `import keras` failing, as where they are not installed.
WITHOUT_TF = """
import importlib.abc, runpy, sys

class Missing(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("tensorflow", "keras"):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Missing())
sys.argv[0] = "predict"
runpy.run_module("xray_keras.predict", run_name="__main__")
"""


def _noise(path, seed=0):
  """Uniform noise at the model's input size, as a PNG."""
  pixels = np.random.default_rng(seed).uniform(0, 255, (48, 48)).astype(np.uint8)
  Image.fromarray(pixels, "L").save(path)
  return str(path)


def _files(tmp_path):
  """Two of the run's own test X-rays and a noise image."""
  xrays = [real_path("test", c, real_files("test", c, 1)[0]) for c in ("NORMAL", "PNEUMONIA")]
  return xrays, _noise(tmp_path / "noise.png")


def _predict(*args, code=None):
  command = [sys.executable, "-m", "xray_keras.predict"] if code is None else [sys.executable, "-c", code]
  return subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_predict_prints_the_ood_score_and_flag_in_tsv_json_and_csv(tiny_run, tmp_path):
  _, _, run_dir, export_dir = tiny_run
  xrays, noise = _files(tmp_path)
  out_csv = tmp_path / "preds.csv"
  result = _predict(f"--model={run_dir}", f"--output={out_csv}", *xrays, noise)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = {l.split("\t")[0]: l.split("\t") for l in result.stdout.strip().splitlines()}
  assert [lines[x][4] for x in xrays] == ["ok", "ok"] and lines[noise][4] == "flagged"
  assert float(lines[noise][3]) > max(float(lines[x][3]) for x in xrays)
  with open(out_csv) as f:
    rows = {r["file"]: r for r in csv.DictReader(f)}
  assert rows[noise]["ood"] == "flagged" and rows[xrays[0]]["ood"] == "ok"
  assert float(rows[noise]["ood_score"]) == pytest.approx(float(lines[noise][3]))

  # The SavedModel export, as JSON lines, gives the same flags.
  as_json = _predict(f"--model={export_dir / 'vit_scratch'}", "--format=json", *xrays, noise)
  assert as_json.returncode == 0, as_json.stderr[-2000:]
  objects = {o["file"]: o for o in map(json.loads, as_json.stdout.strip().splitlines())}
  assert {f: o["ood"] for f, o in objects.items()} == {x: "ok" for x in xrays} | {noise: "flagged"}
  assert objects[noise]["ood_score"] > objects[noise]["ood_threshold"]
  assert objects[noise]["ood_score"] == pytest.approx(float(lines[noise][3]), rel=1e-4)


def test_strict_refuses_the_flagged_files_with_exit_code_3(tiny_run, tmp_path):
  _, _, run_dir, _ = tiny_run
  xrays, noise = _files(tmp_path)
  result = _predict(f"--model={run_dir}", "--strict", *xrays, noise)
  assert result.returncode == 3, result.stderr[-2000:]
  printed = [l.split("\t")[0] for l in result.stdout.strip().splitlines()]
  assert printed == xrays and noise not in result.stdout
  refusal = [l for l in result.stderr.splitlines() if noise in l]
  assert len(refusal) == 1 and "not like the chest X-rays this model was trained on" in refusal[0]
  assert "OOD score" in refusal[0] and "Traceback" not in result.stderr


def test_a_model_without_an_ood_score_leaves_the_columns_blank_and_says_so_once(tiny_run, tmp_path):
  from xray_keras.evaluation import ood

  _, _, run_dir, _ = tiny_run
  plain = tmp_path / "run"
  shutil.copytree(run_dir, plain, ignore=shutil.ignore_patterns("external", ood.JSON, ood.NPZ))
  xrays, noise = _files(tmp_path)
  result = _predict(f"--model={plain}", *xrays, noise)
  assert result.returncode == 0, result.stderr[-2000:]
  assert all(l.split("\t")[3:] == ["", ""] for l in result.stdout.splitlines())
  assert result.stderr.count("no out-of-distribution score") == 1
  strict = _predict(f"--model={plain}", "--strict", *xrays)
  assert strict.returncode == 1 and "--strict needs an out-of-distribution score" in strict.stderr


def test_the_export_and_the_run_folder_flag_the_same_files(tiny_run, tmp_path):
  from xray_keras.serving import predict

  _, _, run_dir, export_dir = tiny_run
  xrays = [real_path("test", c, name) for c in ("NORMAL", "PNEUMONIA") for name in real_files("test", c, 4)]
  files = xrays + [_noise(tmp_path / f"noise{i}.png", i) for i in range(3)]
  by_run = predict.assess_files(predict.load_predictor(str(run_dir)), files)[0]
  by_export = predict.assess_files(predict.load_predictor(str(export_dir / "vit_scratch")), files)[0]
  assert [r[4] for r in by_run] == [r[4] for r in by_export] == [False] * len(xrays) + [True] * 3
  np.testing.assert_allclose([r[3] for r in by_run], [r[3] for r in by_export], rtol=1e-4)
  # The .keras path's probabilities are those it gave before the OOD score.
  assert [r[:3] for r in by_run] == predict.predict_files(predict.load_predictor(str(run_dir)), files)[0]


@pytest.mark.parametrize("model", ["run", "model.keras", "saved_model"])
def test_predict_without_tensorflow_is_one_line_naming_what_to_install(tiny_run, tmp_path, model):
  _, _, run_dir, export_dir = tiny_run
  path = {"run": run_dir, "model.keras": run_dir / "model.keras", "saved_model": export_dir / "vit_scratch"}[model]
  result = _predict(f"--model={path}", _noise(tmp_path / "noise.png"), code=WITHOUT_TF)
  assert result.returncode == 1
  assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
  assert result.stderr.startswith("error: Running a ") and "needs TensorFlow: pip install tensorflow" in result.stderr
  assert "ONNX, LiteRT or OpenVINO export" in result.stderr


def test_evaluate_counts_the_flagged_images_and_gives_the_metrics_with_and_without_them(tiny_run, tmp_path):
  _, tree, run_dir, export_dir = tiny_run
  site = tmp_path / "site"
  for class_name in ("NORMAL", "PNEUMONIA"):
    shutil.copytree(os.path.join(tree, "test", class_name), site / class_name)
  _noise(site / "NORMAL" / "noise0.png", 0)
  _noise(site / "PNEUMONIA" / "noise1.png", 1)
  output = tmp_path / "out"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.evaluate",
      f"--model={run_dir}",
      f"--data_dir={site}",
      f"--output_dir={output}",
      f"--cache_dir={tmp_path / 'cache'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  found = json.loads((output / "metrics.json").read_text())["ood"]
  n = found["n"]
  assert found["flagged"] == 2 and found["without_flagged"]["n"] == n - 2 and found["all"]["n"] == n
  threshold = json.loads((run_dir / "ood.json").read_text())["threshold"]
  assert found["threshold"] == threshold and "ood.json" in found["source"]
  for key in ("auc", "accuracy"):
    assert 0 <= found["all"][key] <= 1 and 0 <= found["without_flagged"][key] <= 1
  console = [l for l in result.stderr.splitlines() if "Out of distribution" in l]
  assert len(console) == 1 and f"2 of {n} images flagged" in console[0]
  assert f"{threshold:.4g}" in console[0] and "without the flagged: ROC-AUC" in console[0]
  with open(output / "predictions.csv") as f:
    words = {os.path.basename(r["file"]): r["ood"] for r in csv.DictReader(f)}
  assert words["noise0.png"] == words["noise1.png"] == "flagged" and list(words.values()).count("flagged") == 2
  report = (output / "report.md").read_text()
  assert f"2 of {n} images flagged" in report and "| without the flagged | " in report

  # The SavedModel export: the same count, its threshold from the model card.
  from xray_keras import external_validation

  _, by_export = external_validation.validate(
    str(export_dir / "vit_scratch"), str(site), output_dir=str(tmp_path / "export"), cache_dir=str(tmp_path / "c2")
  )
  assert by_export["ood"]["flagged"] == 2 and "model card" in by_export["ood"]["source"]
  assert by_export["ood"]["threshold"] == pytest.approx(threshold)


def test_the_run_report_says_how_many_test_images_were_flagged(tiny_run, tmp_path):
  from xray_keras.report import write

  _, _, run_dir, _ = tiny_run
  ood = json.loads((run_dir / "metrics.json").read_text())["ood"]
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("external"))
  write.write_report(str(copy), resamples=10)
  report = (copy / "report.md").read_text()
  results = report.split("## Results on the test split")[1].split("\n## ")[0]
  line = [l for l in results.splitlines() if l.startswith("Out of distribution")]
  assert len(line) == 1 and f"{ood['test_flagged']} of {ood['test_n']}" in line[0]
  assert f"{ood['threshold']:.4g}" in line[0]
