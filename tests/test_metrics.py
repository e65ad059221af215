import math

import numpy as np
import pytest

from xray_keras.evaluation import metrics


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
