"""Security: safe_mode loading, no pickle, no local paths in outputs, bounded serving requests."""

import getpass
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.conftest import REPO, SHARED_DATA, make_tree, real_files, real_jpeg, real_path, smoke_run_command
from tests.test_bad_inputs import jpeg_bomb, png_bomb
from xray_keras import models
from xray_keras.serving import graph

EVIL = """
import keras, sys
marker = sys.argv[2]
payload = lambda x: (open(marker, "w").write("code ran"), x)[1]
inputs = keras.Input((8, 8, 1))
model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(keras.layers.Lambda(payload)(inputs))))
model.save(sys.argv[1])
"""


def test_a_keras_file_with_code_is_refused_in_one_line(tmp_path):
  evil, marker = tmp_path / "evil.keras", tmp_path / "marker"
  subprocess.run([sys.executable, "-c", EVIL, str(evil), str(marker)], check=True, capture_output=True, timeout=120)
  marker.unlink()  # saving traced the Lambda once
  image = real_path("test", "NORMAL", real_files("test", "NORMAL", 1)[0])
  for args in (
    ["-m", "xray_keras.predict", f"--model={evil}", image],
    [
      "-m",
      "xray_keras.run",
      "--model=cnn_scratch",
      f"--weights={evil}",
      "--image_size=16",
      f"--output_dir={tmp_path / 'run'}",
    ],
  ):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "Python code" in errors[0] and "Traceback" not in result.stderr
    assert not marker.exists()


def test_no_pickle_anywhere_in_the_package():
  offenders = []
  for folder, _, files in os.walk(os.path.join(REPO, "xray_keras")):
    for name in files:
      if not name.endswith(".py"):
        continue
      text = open(os.path.join(folder, name)).read()
      for pattern in (r"\bimport (c?pickle|dill|joblib|cloudpickle)\b", r"allow_pickle\s*=\s*True", r"torch\.load\("):
        offenders += [f"{name}: {m.group(0)}" for m in re.finditer(pattern, text)]
      offenders += [
        f"{name}: {line.strip()}"
        for line in text.splitlines()
        if "np.load(" in line and "allow_pickle=False" not in line
      ]
  assert not offenders


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  base = tmp_path_factory.mktemp("security")
  tree = make_tree(str(base / "chest_xray"), per_class=6)
  run_dir, export_dir = base / "run", base / "saved_models"
  initial = base / "initial.weights.h5"  # a local weights path, which outputs must not reveal
  models.build_model("vit_scratch", (32, 32, 1), patch_size=8).save_weights(str(initial))
  result = subprocess.run(
    smoke_run_command(
      tree,
      base / "cache",
      run_dir,
      "--export",
      f"--export_dir={export_dir}",
      "--val_fraction=0.3",
      f"--weights={initial}",
    ),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return base, run_dir, export_dir / "vit_scratch" / "1"


def test_exports_and_reports_hold_no_local_paths_or_user_names(exported):
  base, run_dir, version = exported
  secrets = {str(base), REPO, os.path.expanduser("~"), os.path.dirname(SHARED_DATA)}
  user = getpass.getuser()
  files = [os.path.join(f, n) for f, _, names in os.walk(version) for n in names]
  files += [str(run_dir / n) for n in ("metrics.json", "timing.json")]
  for path in files:
    data = open(path, "rb").read()
    for secret in secrets:
      assert secret.encode() not in data, (path, secret)
    if user not in ("root",):  # "root" is also an ordinary word in binary files
      assert user.encode() not in data, (path, user)


def test_serving_rejects_oversized_requests_cleanly(exported):
  _, _, version = exported
  serve = tf.saved_model.load(str(version)).signatures["serving_default"]
  jpeg = real_jpeg("test", "NORMAL", real_files("test", "NORMAL", 1)[0])
  assert serve(images=tf.constant([jpeg] * graph.MAX_BATCH))["label"].shape == (graph.MAX_BATCH,)
  cases = {
    "batch larger": [jpeg] * (graph.MAX_BATCH + 1),
    "file too large": [jpeg + b"\0" * (graph.MAX_IMAGE_BYTES + 1)],
    "pixels": [png_bomb()],
  }
  cases["pixels "] = [jpeg_bomb(jpeg)]
  for needle, batch in cases.items():
    with pytest.raises(tf.errors.InvalidArgumentError, match=needle.strip()):
      serve(images=tf.constant(batch))
