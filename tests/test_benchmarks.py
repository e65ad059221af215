"""Quick modes of the benchmarks, so they cannot rot."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_distribution import WITHOUT_TF


def test_gpu_script_quick_mode_runs_on_jax_without_tensorflow(tmp_path):
  pytest.importorskip("jax")
  out = tmp_path / "gpu.json"
  script = WITHOUT_TF.split("from absl import app")[0] + (
      "import runpy\nsys.argv = ['gpu_jax_train.py', '--quick', '--output=%s']\n"
      "runpy.run_path('benchmarks/gpu_jax_train.py', run_name='__main__')\n"
      "assert 'tensorflow' not in sys.modules\n" % out
  )
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [r["model"] for r in report["rows"]] == ["ViT_scratch", "ResNet50"]
  assert all(r["train_images_per_s"] > 0 for r in report["rows"]) and report["tensorflow_imported"] is False


@pytest.mark.slow
def test_backend_epoch_time_quick_mode(tmp_path):
  pytest.importorskip("jax")
  out = tmp_path / "epoch.json"
  result = subprocess.run([sys.executable, "benchmarks/backend_epoch_time.py", "--quick", f"--output={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert [(r["backend"], r["jit_compile"]) for r in rows] == [
      ("tensorflow", False), ("tensorflow", True), ("jax", False), ("jax", True)]
  assert rows[0]["ratio_vs_tf_no_xla"] == 1.0 and all(r["epoch2_s"] > 0 for r in rows)


def test_feature_cache_quick_mode(tmp_path):
  out = tmp_path / "cache.json"
  result = subprocess.run([sys.executable, "benchmarks/feature_cache.py", "--quick", f"--output={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["feature_shape"] == [2048] and report["train_images"] > 0
  assert [r["head_epochs"] for r in report["rows"]] == [1, 5, 10]
  assert all(r["through_backbone_s"] > 0 and r["feature_cache_s"] > 0 for r in report["rows"])
