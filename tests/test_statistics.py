"""Bootstrap intervals, DeLong and McNemar against independent computations."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats

from xray_keras.evaluation import calibration, metrics, statistics


def _psi_auc_components(labels, scores):
  """The DeLong components from their definition: psi over every positive/negative pair."""
  labels = np.asarray(labels).astype(bool)
  pos, neg = scores[labels], scores[~labels]
  psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
  return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)


def _delong_by_definition(labels, a, b):
  (auc_a, x_a, y_a), (auc_b, x_b, y_b) = _psi_auc_components(labels, a), _psi_auc_components(labels, b)
  m, n = len(x_a), len(y_a)
  s10 = [[np.sum((p - p.mean()) * (q - q.mean())) / (m - 1) for q in (x_a, x_b)] for p in (x_a, x_b)]
  s01 = [[np.sum((p - p.mean()) * (q - q.mean())) / (n - 1) for q in (y_a, y_b)] for p in (y_a, y_b)]
  var = sum(s10[i][j] * w / m + s01[i][j] * w / n for (i, j), w in (((0, 0), 1), ((1, 1), 1), ((0, 1), -2)))
  z = (auc_a - auc_b) / math.sqrt(var)
  return auc_a, auc_b, 2 * stats.norm.sf(abs(z))


def test_delong_equals_its_definition_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  a = np.round(labels * 0.8 + rng.normal(0, 0.6, 300), 1)  # rounded: many ties
  b = np.round(labels * 0.4 + rng.normal(0, 0.6, 300), 1)
  got = statistics.delong_test(labels, a, b)
  auc_a, auc_b, p = _delong_by_definition(labels, a, b)
  assert got["auc_a"] == pytest.approx(auc_a) and got["auc_b"] == pytest.approx(auc_b)
  assert got["auc_a"] == pytest.approx(metrics.roc_auc(labels, a))
  assert got["p_value"] == pytest.approx(p, rel=1e-9)
  assert got["p_value"] < 0.01
  assert statistics.delong_test(labels, a, a)["p_value"] == 1.0


def test_delong_worked_example():
  # 3 positives, 3 negatives, every component by hand: A ranks all pairs right but one, B is random-ish.
  labels = np.array([1, 1, 1, 0, 0, 0])
  a = np.array([0.9, 0.8, 0.4, 0.5, 0.2, 0.1])
  b = np.array([0.6, 0.3, 0.5, 0.7, 0.4, 0.2])
  auc, v10, v01 = statistics.delong_components(labels, a)
  assert auc == pytest.approx(8 / 9)
  np.testing.assert_allclose(v10, [1, 1, 2 / 3])
  np.testing.assert_allclose(v01, [2 / 3, 1, 1])  # share of positives above each negative
  assert statistics.delong_components(labels, b)[0] == pytest.approx(5 / 9)
  assert statistics.delong_test(labels, a, b)["p_value"] == pytest.approx(_delong_by_definition(labels, a, b)[2])


def test_mcnemar_matches_the_binomial_test():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 200)
  a = np.where(rng.random(200) < 0.9, labels, 1 - labels)
  b = np.where(rng.random(200) < 0.8, labels, 1 - labels)
  got = statistics.mcnemar_test(labels, a, b)
  assert got["p_value"] == pytest.approx(stats.binomtest(got["a_only"], got["a_only"] + got["b_only"]).pvalue)
  assert statistics.mcnemar_test(labels, a, a)["p_value"] == 1.0


def test_bootstrap_interval_is_seeded_and_matches_the_normal_approximation():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 2000)
  probabilities = np.clip(labels * 0.3 + rng.random(2000) * 0.7, 0, 1)
  ci = statistics.bootstrap_ci(labels, probabilities, resamples=300, seed=5)
  assert ci == statistics.bootstrap_ci(labels, probabilities, resamples=300, seed=5)
  accuracy = metrics.binary_metrics(labels, probabilities)["accuracy"]
  half = 1.96 * math.sqrt(accuracy * (1 - accuracy) / len(labels))
  low, high = ci["accuracy"]
  assert low < accuracy < high
  assert (high - low) / 2 == pytest.approx(half, rel=0.25)


@st.composite
def _scored_sets(draw):
  """Finite 0/1 labels with both classes, and probabilities: any, tied, constant, separated or calibrated."""
  kind = draw(st.sampled_from(["any", "tied", "constant", "separated", "calibrated"]))
  if kind == "calibrated":  # groups of ten at probability k/10 holding k positives: ECE 0
    ks = draw(st.lists(st.integers(1, 9), min_size=1, max_size=10))
    labels = np.concatenate([np.arange(10) < k for k in ks]).astype(int)
    return labels, np.repeat(np.array(ks) / 10, 10)
  n = draw(st.integers(2, 60) | st.sampled_from([200, 1000]))
  labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
  labels[:2] = draw(st.permutations([0, 1]))
  if kind == "any":
    probabilities = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
  elif kind == "tied":
    probabilities = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=n, max_size=n))
  elif kind == "constant":
    probabilities = [draw(st.floats(0, 1))] * n
  else:
    gap = draw(st.floats(0, 0.5))
    probabilities = np.where(labels == 1, 0.5 + gap, 0.5 - gap)
  return labels, np.asarray(probabilities, dtype=np.float64)


@settings(max_examples=60, deadline=None)
@given(_scored_sets(), st.sampled_from([0.5, 0.3, 0.9]), st.integers(0, 2**16))
@example(  # calibrated, ECE 0: 98% of resamples have a larger ECE; the percentile interval was [0.015, 0.195]
  (np.r_[1, [0] * 9, 1, 1, [0] * 8], np.repeat([0.1, 0.2], 10)), 0.5, 0
)
def test_every_bootstrap_interval_contains_its_estimate(scored, threshold, seed):
  labels, probabilities = scored
  resamples = 200
  point = metrics.binary_metrics(labels, probabilities, threshold)
  for key, (low, high) in statistics.bootstrap_ci(labels, probabilities, threshold, resamples, seed).items():
    assert low <= point[key] <= high, key
  summary = statistics.accuracy_auc(labels, probabilities, threshold, resamples, seed)
  for key in ("accuracy", "auc"):
    low, high = summary[f"{key}_ci"]
    assert low <= summary[key] <= high, key
  summary = calibration.summary(labels, probabilities, resamples=resamples, seed=seed)
  for key in ("ece", "brier", "log_loss"):
    low, high = summary[f"{key}_ci"]
    assert low <= summary[key] <= high, key
