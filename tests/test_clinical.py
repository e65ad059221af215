"""Clinical evaluation: calibration, operating points, subtypes, three classes, ensembles, TTA, --preprocess."""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, SHARED_DATA
from xray_keras.data import builtin, loader, patients, preprocess
from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, clinical, ensemble, metrics, multiclass, operating_points
from xray_keras.report import clinical as report_clinical
from xray_keras.report import collect
from xray_keras.serving import predict


def test_ece_and_brier_on_a_worked_example():
  labels, probabilities = [0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9]
  # Two bins: [0, 0.5) holds 0.1 and 0.3 (mean 0.2, no PNEUMONIA), [0.5, 1] holds 0.6 and 0.9 (mean 0.75, all).
  assert calibration.reliability(labels, probabilities, 2) == [
    (pytest.approx(0.2), 0.0, 2),
    (pytest.approx(0.75), 1.0, 2),
  ]
  assert calibration.expected_calibration_error(labels, probabilities, 2) == pytest.approx(0.5 * 0.2 + 0.5 * 0.25)
  assert calibration.brier_score(labels, probabilities) == pytest.approx((0.01 + 0.09 + 0.16 + 0.01) / 4)
  assert calibration.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0  # 1.0 falls in the last bin
  summary = calibration.summary(labels * 25, probabilities * 25, bins=2, resamples=200)
  assert summary["ece_ci"][0] <= summary["ece"] <= summary["ece_ci"][1]


def test_temperature_scaling_lowers_validation_log_loss_of_an_over_confident_model():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 3000)
  evidence = (2 * labels - 1) + rng.normal(0, 1, 3000)  # true log-odds: 2 x evidence
  planted = 1 / (1 + np.exp(-8 * evidence))  # four times too confident
  temperature = calibration.fit_temperature(labels[:1500], planted[:1500])
  assert temperature == pytest.approx(4.0, rel=0.15)
  for rows in (slice(0, 1500), slice(1500, None)):  # validation, and images it never saw
    scaled = calibration.apply_temperature(planted[rows], temperature)
    assert calibration.log_loss(labels[rows], scaled) < calibration.log_loss(labels[rows], planted[rows]) - 0.1
    assert calibration.expected_calibration_error(labels[rows], scaled) < calibration.expected_calibration_error(
      labels[rows], planted[rows]
    )
  # Scaling is monotone: AUC unchanged.
  assert metrics.roc_auc(labels, calibration.apply_temperature(planted, temperature)) == pytest.approx(
    metrics.roc_auc(labels, planted)
  )


def test_operating_points_meet_their_aim_on_validation():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 800)
  probabilities = 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, 1.2, 800))))
  sens_t = operating_points.threshold_for("sensitivity_95", labels, probabilities)
  m = metrics.binary_metrics(labels, probabilities, sens_t)
  assert m["recall"] >= 0.95
  higher = probabilities[probabilities > sens_t].min()  # the next threshold up misses the aim
  assert metrics.binary_metrics(labels, probabilities, higher)["recall"] < 0.95
  spec_t = operating_points.threshold_for("specificity_90", labels, probabilities)
  assert metrics.binary_metrics(labels, probabilities, spec_t)["specificity"] >= 0.90
  lower = probabilities[probabilities < spec_t].max()
  assert metrics.binary_metrics(labels, probabilities, lower)["specificity"] < 0.90
  assert sens_t < operating_points.threshold_for("youden", labels, probabilities) < spec_t
  rows = operating_points.operating_points(labels[:400], probabilities[:400], labels[400:], probabilities[400:], 200)
  assert [r["rule"] for r in rows] == list(operating_points.RULES)
  for r in rows:
    assert r["test_sensitivity_ci"][0] <= r["test_sensitivity"] <= r["test_sensitivity_ci"][1]


def test_subtypes_and_three_class_labels_come_from_the_real_file_names():
  assert patients.subtype("train/PNEUMONIA/person1000_bacteria_2931.jpeg", 1) == "BACTERIA"
  assert patients.subtype("test/PNEUMONIA/person1_virus_6.jpeg", 1) == "VIRUS"
  assert patients.subtype("test/NORMAL/IM-0115-0001.jpeg", 0) == "NORMAL"
  assert patients.subtype("x/PNEUMONIA/scan.jpeg", 1) == "UNKNOWN"
  data = loader.load(loader.DataConfig(image_size=32, task="three_class"))
  assert data.class_names == ("NORMAL", "BACTERIA", "VIRUS")
  seen = {0: 0, 1: 0, 2: 0}
  for split in ("train", "val", "test"):
    arrays = data.splits[split]
    for record, label in zip(arrays.records, arrays.labels):
      name = os.path.basename(record.path).lower()
      assert label == (0 if record.label == 0 else 1 if "_bacteria_" in name else 2)
      seen[int(label)] += 1
  # Kermany et al.'s counts over all 5,856 images: 1,583 normal, 2,780 bacterial, 1,493 viral.
  assert seen == {0: 1583, 1: 2780, 2: 1493}
  assert data.counts()["test"] == {"NORMAL": 234, "BACTERIA": 242, "VIRUS": 148, "total": 624}


def test_three_class_metrics():
  labels = np.array([0, 0, 1, 1, 2, 2])
  probabilities = np.array(
    [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]
  )
  m = multiclass.three_class_metrics(labels, probabilities, ("NORMAL", "BACTERIA", "VIRUS"))
  assert m["accuracy"] == pytest.approx(5 / 6)
  assert (m["recall_NORMAL"], m["recall_BACTERIA"], m["recall_VIRUS"]) == (0.5, 1.0, 1.0)
  assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
  assert m["macro_auc"] == pytest.approx(np.mean([m["auc_NORMAL"], m["auc_BACTERIA"], m["auc_VIRUS"]]))


def _fake_run(name, val_labels, val_p, test_labels, test_p):
  files = [f"f{i}" for i in range(len(test_labels))]
  return collect.RunResult(
    name=name,
    run_dir="/nonexistent",
    metrics={"model": {"display_name": name}, "test": {}},
    timing={},
    history=[],
    test_labels=np.asarray(test_labels),
    test_probabilities=np.asarray(test_p),
    test_files=files,
    val_labels=np.asarray(val_labels),
    val_probabilities=np.asarray(val_p),
    val_files=[f"v{i}" for i in range(len(val_labels))],
  )


def _write_tta(run_dir, views, val, test):
  run_dir.mkdir()
  (run_dir / clinical.TTA).write_text(json.dumps({"views": views}))
  with open(run_dir / clinical.TTA_PREDICTIONS, "w", newline="") as f:
    f.write("split,file,label,probability\n")
    for split, (files, labels, probabilities) in (("val", val), ("test", test)):
      for file, label, p in zip(files, labels, probabilities):
        f.write(f"{split},{file},{label},{clinical.written(p)}\n")


def test_ensembles_take_each_run_as_validation_chose_it(tmp_path, monkeypatch):
  """A member whose views lower validation log loss enters with its views; one whose views do not, or whose
  views are of other images or labels, with its single view; the TTA table skips the latter, saying so."""
  rng = np.random.default_rng(5)
  val_labels, test_labels = rng.integers(0, 2, 200), rng.integers(0, 2, 150)

  def probabilities(labels, noise):
    return clinical.as_written(1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, noise, len(labels))))))

  runs, expected = [], []
  cases = (("helped", 0.5), ("hurt", 4.0), ("other_images", 0.5), ("other_labels", 0.5), ("none", None))
  for name, views_noise in cases:
    run = _fake_run(name, val_labels, probabilities(val_labels, 2.0), test_labels, probabilities(test_labels, 2.0))
    run = dataclasses.replace(run, run_dir=str(tmp_path / name))
    if views_noise is None:
      expected.append((name, run.val_probabilities, run.test_probabilities))
    else:
      val_tta, test_tta = probabilities(val_labels, views_noise), probabilities(test_labels, views_noise)
      files = run.test_files if name != "other_images" else [f"x{i}" for i in range(len(test_labels))]
      labels = test_labels if name != "other_labels" else np.roll(test_labels, 1)
      assert name != "other_labels" or not np.array_equal(labels, test_labels)
      _write_tta(tmp_path / name, 8, (run.val_files, val_labels, val_tta), (files, labels, test_tta))
      lower = calibration.log_loss(val_labels, val_tta) < calibration.log_loss(val_labels, run.val_probabilities)
      assert lower == (name != "hurt")
      if name == "helped":
        expected.append((f"{name} (TTA x8)", val_tta, test_tta))
      else:
        expected.append((name, run.val_probabilities, run.test_probabilities))
    runs.append(run)
  for run, (name, val, test) in zip(runs, expected):
    got = report_clinical.chosen_prediction(run)
    assert got[0] == name
    np.testing.assert_array_equal(got[1], val)
    np.testing.assert_array_equal(got[2], test)
  equal = next(e for e in report_clinical.ensemble_rows(runs, 20, 0) if e["ensemble"].endswith("equal weights"))
  assert equal["members"] == [e[0] for e in expected]
  mean_val, mean_test = np.mean([e[1] for e in expected], axis=0), np.mean([e[2] for e in expected], axis=0)
  assert equal["val_log_loss"] == pytest.approx(calibration.log_loss(val_labels, mean_val), abs=1e-12)
  assert equal["test"]["auc"] == pytest.approx(metrics.roc_auc(test_labels, mean_test), abs=1e-12)
  best = min(expected, key=lambda e: calibration.log_loss(val_labels, e[1]))
  assert equal["best_single"] == best[0] == "helped (TTA x8)"
  assert equal["best_single_auc"] == pytest.approx(metrics.roc_auc(test_labels, best[2]), abs=1e-12)
  warnings = []
  monkeypatch.setattr(report_clinical.logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
  rows = report_clinical.tta_rows(runs, 20, 0)
  assert [r["model"] for r in rows] == ["helped", "hurt"]
  assert [r["validation_chooses"] for r in rows] == ["TTA", "single view"]
  assert len(warnings) == 1 and "2 run(s) skipped" in warnings[0] and "other_images, other_labels" in warnings[0]


def test_a_tampered_predictions_file_or_tta_record_is_refused_in_one_line_naming_it(tmp_path):
  """Every single-cell or single-row change that no run writes (a label not 0/1, a probability outside [0, 1],
  an image twice, a split other than val/test, bytes that are not UTF-8) and every malformed tta.json is a
  `UserError` naming the file (and the line), never a number computed from it."""
  rng = np.random.default_rng(11)
  rows = [("val" if i < 12 else "test", f"img{i}.jpeg", int(rng.integers(0, 2)), rng.random()) for i in range(20)]
  header = "file,split,label,probability"

  def text(rows):
    return "\n".join([header] + [f"{f},{s},{label},{p}" for s, f, label, p in rows]) + "\n"

  run = tmp_path / "run"
  run.mkdir()
  (run / clinical.PREDICTIONS).write_text(text(rows))
  assert sorted(clinical.read_predictions(str(run))) == ["test", "val"]
  mutations = {
    "label": lambda r: (r[0], r[1], int(rng.choice([-1, 2, 7])), r[3]),
    "probability": lambda r: (r[0], r[1], r[2], float(rng.choice([-0.3, 1.000001, 1.5, -1e-9]))),
    "split": lambda r: (str(rng.choice(["train", "external", "VAL", ""])), r[1], r[2], r[3]),
  }
  for trial in range(24):
    i = int(rng.integers(len(rows)))
    kind = ["label", "probability", "split", "twice", "bytes"][trial % 5]
    changed = list(rows)
    if kind in mutations:
      changed[i] = mutations[kind](rows[i])
      content = text(changed).encode()
    elif kind == "twice":
      changed.insert(i + 1, rows[i])
      content = text(changed).encode()
    else:
      content = text(rows).encode()
      at = int(rng.integers(len(header) + 1, len(content)))
      content = content[:at] + b"\xff" + content[at:]
    (run / clinical.PREDICTIONS).write_bytes(content)
    with pytest.raises(UserError, match=r"predictions\.csv") as raised:
      clinical.read_predictions(str(run))
    assert "\n" not in str(raised.value), (kind, str(raised.value))
  for content in ("[3]", '{"views": 0}', '{"views": 1}', '{"views": 2.5}', '{"views": true}', "{views: 3}", "\xff"):
    (run / clinical.TTA).write_text(content, encoding="latin-1")
    with pytest.raises(UserError, match=r"tta\.json"):
      clinical.tta_views(str(run))
  (run / clinical.TTA).write_text('{"views": 8}')
  assert clinical.tta_views(str(run)) == 8


def test_ensemble_weights_are_chosen_on_validation_only():
  rng = np.random.default_rng(2)
  val_labels, test_labels = rng.integers(0, 2, 300), rng.integers(0, 2, 200)
  noise = {"good": 0.8, "fair": 1.5, "poor": 3.0}
  runs = [
    _fake_run(
      n,
      val_labels,
      1 / (1 + np.exp(-(2 * val_labels - 1 + rng.normal(0, s, 300)))),
      test_labels,
      1 / (1 + np.exp(-(2 * test_labels - 1 + rng.normal(0, s, 200)))),
    )
    for n, s in noise.items()
  ]
  rows = report_clinical.ensemble_rows(runs, resamples=100, seed=0)
  chosen = rows[0]["weights"]
  assert rows[0]["ensemble"] == "all models, validation-chosen weights" and sum(chosen) == pytest.approx(1)
  assert chosen[0] > chosen[2] and rows[0]["best_single"] == "good"
  assert 0 <= rows[0]["delong_vs_best_single"] <= 1
  for seed in range(3):  # shuffled (or reversed) test labels: the same weights
    shuffled = np.random.default_rng(seed).permutation(test_labels)
    again = [_fake_run(r.name, val_labels, r.val_probabilities, shuffled, r.test_probabilities) for r in runs]
    assert report_clinical.ensemble_rows(again, resamples=10, seed=0)[0]["weights"] == chosen
  assert ensemble.choose_weights(val_labels, np.stack([r.val_probabilities for r in runs])) == chosen
  both = np.stack([[0.2, 0.9], [0.4, 0.7]])
  np.testing.assert_allclose(ensemble.combine(both, [1, 1]), [0.3, 0.8])
  assert len(list(ensemble.simplex_grid(3, 0.1))) == 66


def test_preprocess_steps_match_between_numpy_and_the_serving_graph():
  import tensorflow as tf

  from xray_keras.serving import preprocess_tf

  images = builtin.load()[0][:6, :, :, None] if builtin.load()[0].ndim == 3 else builtin.load()[0][:6]
  for spec in ("downsample:16", "equalize", "equalize,downsample:24"):
    steps = preprocess.parse(spec)
    ours = preprocess.apply(images, steps)
    graph = np.stack([preprocess_tf.apply(tf.constant(image), steps).numpy() for image in images])
    np.testing.assert_array_equal(ours, graph)
    assert ours.shape == images.shape and ours.dtype == np.uint8
  blurred = preprocess.apply(images, preprocess.parse("downsample:16")).astype(float)
  detail = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
  assert detail(blurred) < 0.6 * detail(images.astype(float))
  equalized = preprocess.apply(images, preprocess.parse("equalize"))
  assert equalized.min() == 0 and equalized.max() == 255
  for bad in ("downsample", "downsample:2", "sharpen", "equalize:3"):
    with pytest.raises(UserError, match="--preprocess"):
      preprocess.parse(bad)


def _run(args, timeout=600):
  result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_calibrated_three_class_run_with_tta_and_preprocess_exports_and_predicts_the_same(tmp_path):
  run_dir, export_dir = tmp_path / "run", tmp_path / "saved_models"
  trained = _run(
    [
      "-m",
      "xray_keras.run",
      "--model=cnn_scratch",
      "--epochs=1",
      "--image_size=32",
      "--max_images_per_split=24",
      "--batch_size=16",
      "--augment=rotation,zoom",
      "--task=three_class",
      "--calibrate",
      "--tta=3",
      "--preprocess=downsample:16",
      f"--output_dir={run_dir}",
      f"--cache_dir={tmp_path / 'cache'}",
      "--bootstrap_resamples=50",
      "--export",
      f"--export_dir={export_dir}",
    ]
  )
  metrics_json = json.loads((run_dir / "metrics.json").read_text())
  three = metrics_json["test"]["three_class"]
  assert three["class_names"] == ["NORMAL", "BACTERIA", "VIRUS"] and 0 <= three["macro_auc"] <= 1
  assert sum(map(sum, three["confusion_matrix"])) == metrics_json["test"]["n"]
  with open(run_dir / "predictions.csv") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    p = [float(row[f"p_{c}"]) for c in ("NORMAL", "BACTERIA", "VIRUS")]
    assert float(row["probability"]) == pytest.approx(1 - p[0], abs=2e-6)
    assert row["label"] == ("0" if row["class"] == "NORMAL" else "1")
  fitted = json.loads((run_dir / "calibration.json").read_text())
  assert fitted["fitted_on"] == "val" and fitted["val_log_loss_after"] <= fitted["val_log_loss_before"] + 1e-12
  tta = clinical.read_predictions(str(run_dir), clinical.TTA_PREDICTIONS)
  made = json.loads((run_dir / "tta.json").read_text())
  assert set(tta) == {"val", "test"} and made["views"] == 3 and made["made_by"] == "xray_keras.run"
  assert made["seconds"] == json.loads((run_dir / "timing.json").read_text())["tta_s"] > 0
  # metrics.json and the closing lines say which of one view and TTA validation's log loss chooses.
  single, chosen = clinical.read_predictions(str(run_dir)), metrics_json["tta"]
  val_labels = single["val"][1]
  # Computed from the probabilities as the files hold them, so the report's figures are the same.
  assert chosen["val_log_loss"] == pytest.approx(calibration.log_loss(val_labels, tta["val"][2]), abs=1e-12)
  assert chosen["val_log_loss_single_view"] == pytest.approx(
    calibration.log_loss(val_labels, single["val"][2]), abs=1e-12
  )
  assert chosen["validation_chooses"] == clinical.tta_choice(
    calibration.log_loss(val_labels, single["val"][2]), calibration.log_loss(val_labels, tta["val"][2])
  )
  assert chosen["test"]["auc"] == pytest.approx(metrics.roc_auc(tta["test"][1], tta["test"][2]), abs=1e-12)
  assert "Test with 3-view TTA, " in trained.stderr

  # The same TTA predictions and validation's choice again from the finished run (reloading its
  # model and images), as a run trained without --tta gets them.
  shutil.copy(run_dir / clinical.TTA_PREDICTIONS, tmp_path / "first.csv")
  (run_dir / clinical.TTA_PREDICTIONS).unlink()
  (run_dir / "metrics.json").write_text(json.dumps({k: v for k, v in metrics_json.items() if k != "tta"}))
  evaluated = _run(["-m", "xray_keras.evaluate", f"--run_dir={run_dir}", "--tta=3"])
  assert (run_dir / clinical.TTA_PREDICTIONS).read_text() == (tmp_path / "first.csv").read_text()
  assert json.loads((run_dir / "metrics.json").read_text())["tta"] == chosen
  assert json.loads((run_dir / "tta.json").read_text())["made_by"] == "xray_keras.evaluate"
  assert "Test with 3-view TTA, " in evaluated.stderr

  card = json.loads(next(export_dir.glob("*/1/assets.extra/model_card.json")).read_text())
  assert card["calibration"]["temperature"] == pytest.approx(fitted["temperature"])
  assert card["preprocess"] == ["downsample:16"] and card["task_classes"] == ["NORMAL", "BACTERIA", "VIRUS"]
  assert set(card["operating_points"]) == set(operating_points.RULES)
  images = tmp_path / "images"
  images.mkdir()
  for i, image in enumerate(builtin.load()[0][:4]):
    from PIL import Image

    Image.fromarray(np.squeeze(image)).save(images / f"x{i}.png")
  outputs = {}
  for name, model in (("export", export_dir / "cnn_scratch"), ("keras", run_dir / "model.keras")):
    predictor = predict.load_predictor(str(model), operating_point="specificity_90")
    rows, skipped = predict.predict_files(predictor, predict.list_inputs([str(images)])[0])
    assert len(rows) == 4 and not skipped
    outputs[name] = [(label, probability, predictor.threshold) for _, label, probability in rows]
  for a, b in zip(outputs["export"], outputs["keras"]):  # calibrated and preprocessed alike, one threshold
    assert a[1] == pytest.approx(b[1], abs=1e-5)
    assert a[2] == pytest.approx(card["operating_points"]["specificity_90"]["threshold"]) and b[2] == pytest.approx(
      a[2]
    )
    assert a[0] == ("PNEUMONIA" if a[1] >= a[2] else "NORMAL") == b[0]
  with pytest.raises(UserError, match="needs a run's model.keras"):
    predict.load_predictor(str(export_dir / "cnn_scratch"), tta=2)

  report = (run_dir / "report.md").read_text()
  for section in (
    "## Calibration",
    "## Operating points",
    "## Pneumonia subtypes",
    "## Three classes",
    "## Test-time augmentation",
    "reliability.png",
  ):
    assert section in report, section


@pytest.mark.slow
def test_study_seeds_reuse_finished_runs_and_add_ensembles(tmp_path):
  out = tmp_path / "study"
  args = [
    "-m",
    "xray_keras.run",
    "--flagfile=experiments/study.cfg",
    "--models=cnn_scratch",
    "--seeds=42,7",
    "--epochs=1",
    "--image_size=32",
    "--max_images_per_split=20",
    "--batch_size=16",
    "--bootstrap_resamples=50",
    "--noreport",  # the runs' own reports; the study's is written
    f"--output_dir={out}",
    f"--cache_dir={tmp_path / 'cache'}",
  ]
  _run(args, timeout=900)
  study = json.loads((out / "study.json").read_text())
  assert study["models"] == ["cnn_scratch", "cnn_scratch_seed7"]
  assert "--seed=7" in (out / "cnn_scratch_seed7" / "flags.txt").read_text()
  assert "--seed=42" in (out / "cnn_scratch" / "flags.txt").read_text()
  results = json.loads((out / "results.json").read_text())["clinical"]
  assert [e["ensemble"] for e in results["ensembles"]] == [
    "all models, validation-chosen weights",
    "all models, equal weights",
  ]
  assert "## Ensembles" in (out / "report.md").read_text()
  from xray_keras.report import write

  write.write_report(str(out), resamples=20)  # rewritten from the finished runs, as the runner wrote it
  assert "## Ensembles" in (out / "report.md").read_text()
  stamps = [os.path.getmtime(out / r / "metrics.json") for r in study["models"]]
  _run(args + ["--seeds=42,7"])
  assert [os.path.getmtime(out / r / "metrics.json") for r in study["models"]] == stamps
  assert set(s["outcome"] for s in json.loads((out / "study.json").read_text())["runs"].values()) == {"reused"}
  wrong = subprocess.run([sys.executable, *args, "--seeds=7,42"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert wrong.returncode == 1 and "holds a finished run with --seed=42, not 7" in wrong.stderr
  report = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.report",
      f"--study_dir={out}",
      "--ensemble",
      "--resamples=20",
      "--noparameter_table",
      "--ensemble_space=logit",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert report.returncode == 0, report.stderr[-2000:]
  assert "Weighted means of the models' PNEUMONIA logits" in (out / "report.md").read_text()


def test_three_class_counts_on_the_224px_copy():
  if not os.path.isdir(os.path.join(SHARED_DATA, "train")):
    pytest.skip(f"needs the 224 px dataset at {SHARED_DATA} (set XRAY_SHARED_DATA)")
  names = [n for _, _, files in os.walk(SHARED_DATA) for n in files if n.lower().endswith((".jpeg", ".jpg"))]
  kinds = [patients.subtype(n, 0 if n.startswith(("IM-", "NORMAL2")) else 1) for n in names]
  assert {k: kinds.count(k) for k in patients.SUBTYPES} == {"NORMAL": 1583, "BACTERIA": 2780, "VIRUS": 1493}


def _refused_before_views_where_immutable(run, tta_after_run, monkeypatch):
  """An immutable run folder or metrics.json (chattr +i: root writes through plain permissions) is refused before
  any view is computed."""
  chattr = shutil.which("chattr")
  if not chattr or subprocess.run([chattr, "+i", str(run)], capture_output=True).returncode:
    return  # no chattr, or a file system without the flag: the rest of the test still runs
  try:
    with monkeypatch.context() as m:
      m.setattr(clinical, "tta_by_split", lambda *a, **k: pytest.fail("views computed for a folder it cannot write"))
      for target in (run, run / "metrics.json"):
        subprocess.run([chattr, "-i", str(run)], check=True)
        subprocess.run([chattr, "+i", str(target)], check=True)
        with pytest.raises(UserError, match=f"Cannot write into {run}: Operation not permitted"):
          tta_after_run.add_tta(str(run), 2)
  finally:
    for target in (run, run / "metrics.json"):
      subprocess.run([chattr, "-i", str(target)], check=True)


def test_evaluate_tta_refuses_bad_prediction_files_and_a_failed_write_leaves_no_disagreeing_entry(
  tiny_run, tmp_path, monkeypatch
):
  from xray_keras.errors import UserError
  from xray_keras.report import run_files, tta_after_run

  run = tmp_path / "run"
  shutil.copytree(tiny_run[2], run)
  flags_txt = (run / "flags.txt").read_text()
  (run / "flags.txt").write_text(flags_txt.replace("--augment=\n", "--augment=rotation\n"))
  good = (run / "predictions.csv").read_text()
  header, first, *rest = good.splitlines()
  columns = header.split(",")

  def with_cell(column, value):
    cells = first.split(",")
    cells[columns.index(column)] = value
    return "\n".join([header, ",".join(cells), *rest]) + "\n"

  cases = {
    "an empty probability": with_cell("probability", ""),
    "a label that is not a number": with_cell("label", "x"),
    "no probability column": "\n".join(",".join(r.split(",")[:-1]) for r in good.splitlines()) + "\n",
    "a NaN": with_cell("probability", "nan"),
    "a probability above 1": with_cell("probability", "1.5"),
    "a label swapped": with_cell("label", str(1 - int(first.split(",")[columns.index("label")]))),
    "a row twice": "\n".join([header, first, first, *rest]) + "\n",
  }
  assert columns[-1] == "probability"
  for what, text in cases.items():
    (run / "predictions.csv").write_text(text)
    with pytest.raises(UserError, match=r"predictions\.csv"):
      tta_after_run.add_tta(str(run), 2)
    assert not (run / clinical.TTA_PREDICTIONS).exists(), what
  (run / "predictions.csv").unlink()
  with pytest.raises(UserError, match="no validation and test predictions"):
    tta_after_run.add_tta(str(run), 2)

  (run / "predictions.csv").write_text(good)
  _refused_before_views_where_immutable(run, tta_after_run, monkeypatch)
  tta_after_run.add_tta(str(run), 3)
  assert json.loads((run / "metrics.json").read_text())["tta"]["views"] == 3

  def full_disk(run_dir, *args, **kwargs):
    raise OSError(28, "No space left on device", os.path.join(run_dir, clinical.TTA_PREDICTIONS))

  monkeypatch.setattr(run_files, "write_tta", full_disk)
  with pytest.raises(OSError, match="No space left"):
    tta_after_run.add_tta(str(run), 2)
  assert "tta" not in json.loads((run / "metrics.json").read_text())  # no entry for views the files do not hold
  assert not list(run.glob("*.tmp"))
