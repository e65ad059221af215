import csv
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.conftest import REPO
from xray_keras.errors import UserError
from xray_keras.evaluation import calibration, metrics, multiclass, statistics


def test_binary_metrics_against_hand_computed_values():
  labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
  probs = [0.9, 0.8, 0.4, 0.6, 0.3, 0.7, 0.1, 0.2, 0.5, 0.95]
  m = metrics.binary_metrics(labels, probs, 0.5)
  # predicted: 1 1 0 1 0 1 0 0 1 1 -> TP=4 FN=1 FP=2 TN=3
  assert m["confusion_matrix"] == [[3, 2], [1, 4]]
  assert m["accuracy"] == pytest.approx(0.7)
  assert m["precision"] == pytest.approx(4 / 6)
  assert m["recall"] == pytest.approx(0.8)
  assert m["specificity"] == pytest.approx(0.6)
  assert m["f1"] == pytest.approx(2 * (4 / 6) * 0.8 / (4 / 6 + 0.8))
  # AUC: of the 25 positive/negative pairs, positives outrank negatives in 22.
  assert m["auc"] == pytest.approx(22 / 25)
  assert m["n"] == 10 and m["threshold"] == 0.5


def test_auc_counts_ties_as_half_and_matches_pairwise_definition():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  scores = np.round(rng.random(300), 1)  # many ties
  pos, neg = scores[labels == 1], scores[labels == 0]
  expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
  assert metrics.roc_auc(labels, scores) == pytest.approx(expected)
  assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
  assert math.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_midranks_share_the_mean_rank_among_ties():
  assert metrics.midranks([3.0, 1.0, 3.0, 2.0, 3.0, 1.0]).tolist() == [5.0, 1.5, 5.0, 3.0, 5.0, 1.5]
  assert metrics.midranks([0.7]).tolist() == [1.0]
  assert metrics.midranks([]).tolist() == []


def test_threshold_is_chosen_on_validation():
  labels = [0, 0, 0, 1, 1, 1]
  probs = [0.6, 0.65, 0.7, 0.8, 0.85, 0.9]  # everything above 0.5: a shifted model
  t = metrics.choose_threshold(labels, probs)
  assert 0.7 < t <= 0.8
  assert metrics.binary_metrics(labels, probs, t)["accuracy"] == 1.0


def test_evaluate_split_reports_both_thresholds():
  out = metrics.evaluate_split([0, 1, 1], [0.2, 0.4, 0.9], 0.3)
  assert out["threshold"] == 0.5 and out["accuracy"] == pytest.approx(2 / 3)
  assert out["at_val_threshold"]["threshold"] == 0.3 and out["at_val_threshold"]["accuracy"] == 1.0


@pytest.mark.parametrize(
  "probabilities, count",
  [([0.1, math.nan, 0.7, 0.9], 1), ([0.1, 0.4, math.inf, 0.9], 1), ([math.nan] * 4, 4)],
  ids=["one NaN", "one inf", "all NaN"],
)
def test_no_metric_is_computed_from_nan_or_infinite_predictions(probabilities, count):
  labels = [0, 0, 1, 1]
  message = f"^{count} of 4 predictions are NaN or infinite: no metric computed"
  for compute in (
    lambda: metrics.binary_metrics(labels, probabilities),
    lambda: metrics.evaluate_split(labels, probabilities, 0.5),
    lambda: metrics.roc_auc(labels, probabilities),
    lambda: metrics.choose_threshold(labels, probabilities),
    lambda: statistics.bootstrap_ci(labels, probabilities, resamples=20),
    lambda: statistics.accuracy_auc(labels, probabilities, resamples=20),
    lambda: calibration.summary(labels, probabilities, resamples=20),
    lambda: multiclass.three_class_metrics(labels, np.stack([probabilities] * 3, axis=1), ["A", "B", "C"]),
  ):
    with pytest.raises(UserError, match=message):
      compute()
  with pytest.raises(UserError, match="^1 of 4 labels of the test predictions are NaN or infinite"):
    metrics.require_finite([0, math.nan, 1, 1], [0.1, 0.2, 0.3, 0.4], "test predictions")


def test_a_run_with_nan_predictions_stops_before_writing_anything(tmp_path):
  from xray_keras import pipeline
  from xray_keras.training import trainer

  def split(n):
    return types.SimpleNamespace(images=np.zeros((n, 8, 8, 1), np.uint8), labels=np.arange(n) % 2, records=[])

  model = types.SimpleNamespace(predict_on_batch=lambda batch: np.full((len(batch), 1), np.nan, np.float32))
  data = types.SimpleNamespace(class_names=("NORMAL", "PNEUMONIA"), splits={"val": split(6), "test": split(12)})
  config = types.SimpleNamespace(model_input=lambda: (None, 8, 1))
  with pytest.raises(UserError, match=r"^6 of 6 val predictions are NaN or infinite: no metric computed \(the model"):
    pipeline.finish(config, trainer.Trained(str(tmp_path), model, data, "", 4, {}, "cpu", 0.0))
  assert os.listdir(tmp_path) == []


def _nan_copy(run_dir, tmp_path, predictions=False, weights=False):
  """A copy of the run with every probability in predictions.csv written as `nan`, or every weight NaN."""
  copy = str(tmp_path / "run")
  shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("external"))
  if predictions:
    path = os.path.join(copy, "predictions.csv")
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows({**row, "probability": "nan"} for row in rows)
  if weights:
    from xray_keras import models

    model = models.load_model(os.path.join(copy, "model.keras"))
    model.set_weights([np.full_like(w, np.nan) if w.dtype.kind == "f" else w for w in model.get_weights()])
    model.save(os.path.join(copy, "model.keras"))
  return copy


def _evaluate(copy, tree, tmp_path):
  return subprocess.run(
    [sys.executable, "-m", "xray_keras.evaluate", f"--model={copy}", f"--data_dir={tree}", f"--cache_dir={tmp_path}/c"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _one_error_line(result):
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return errors[0]


def test_evaluate_refuses_a_run_whose_predictions_file_holds_nan(tiny_run, tmp_path):
  _, tree, run_dir, _ = tiny_run
  copy = _nan_copy(run_dir, tmp_path, predictions=True)
  val = sum(line.split(",")[1] == "val" for line in open(os.path.join(copy, "predictions.csv")).read().splitlines())
  error = _one_error_line(_evaluate(copy, tree, tmp_path))
  assert error == (
    f"error: {val} of {val} val predictions in {os.path.join(copy, 'predictions.csv')} are NaN or infinite: "
    "no metric computed (the model's weights are probably not finite)"
  )
  assert not os.path.exists(os.path.join(copy, "external"))


def test_evaluate_refuses_a_model_whose_weights_are_nan(tiny_run, tmp_path):
  _, tree, run_dir, _ = tiny_run
  copy = _nan_copy(run_dir, tmp_path, weights=True)
  test = len(os.listdir(os.path.join(tree, "test", "NORMAL"))) + len(
    os.listdir(os.path.join(tree, "test", "PNEUMONIA"))
  )
  error = _one_error_line(_evaluate(copy, tree, tmp_path))
  assert error.startswith(f"error: {test} of {test} test predictions of the run `run` on ")
  assert error.endswith(" are NaN or infinite: no metric computed (the model's weights are probably not finite)")
  assert not os.path.exists(os.path.join(copy, "external"))
