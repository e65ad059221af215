"""The demo page: what it shows for a run and for an export, and the page itself in headless Chromium."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests import browser
from tests.conftest import REPO
from xray_keras.errors import UserError
from xray_keras.serving import predict
from xray_keras.serving.demo_model import NOT_A_DEVICE, DemoModel


@pytest.fixture(scope="module")
def onnx_export(tiny_run, tmp_path_factory):
  from xray_keras.serving import formats

  pytest.importorskip("tf2onnx")
  return formats.export(str(tiny_run[2]), "onnx", export_dir=str(tmp_path_factory.mktemp("demo") / "exports"))


def _inputs(tree, folder):
  """A real JPEG of each class, a text file named .jpeg and a truncated JPEG."""
  images = [
    os.path.join(tree, "test", c, sorted(os.listdir(os.path.join(tree, "test", c)))[0]) for c in ("NORMAL", "PNEUMONIA")
  ]
  with open(images[0], "rb") as f:
    jpeg = f.read()
  bad = {"notes.jpeg": b"this is a text file, not a jpeg\n", "truncated.jpeg": jpeg[:200]}
  for name, data in bad.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  return images, [os.path.join(folder, name) for name in bad]


def _predict_reference(model_path, paths):
  """What `xray_keras.predict` gives for `paths`: `({path: probability}, {path: reason})`."""
  predictor = predict.load_predictor(model_path)
  rows, skipped = predict.predict_files(predictor, paths)
  return {p: q for p, _, q in rows}, {s.path: s.reason for s in skipped}


def test_demo_model_scores_like_predict_and_explains_a_run_and_an_export(tiny_run, onnx_export, tmp_path):
  _, tree, run_dir, _ = tiny_run
  images, bad = _inputs(tree, tmp_path)
  for path, reference, method in [
    (str(run_dir), str(run_dir / "model.keras"), "attention rollout"),
    (onnx_export, onnx_export, "occlusion (8 x 8 squares)"),
  ]:
    model = DemoModel(path)
    scored = model.score(images + bad)
    probabilities, reasons = _predict_reference(reference, images + bad)
    assert [s.probability for s in scored[:2]] == pytest.approx([probabilities[p] for p in images], abs=1e-6)
    assert [s.refused for s in scored[2:]] == [reasons[p] for p in bad] and all(reasons.values())
    assert set(scored[0].labels) == {"youden", "sensitivity_95", "specificity_90"}
    for s in scored[:2]:
      assert s.labels["youden"] == ("PNEUMONIA" if s.probability >= model.card["decision_threshold"] else "NORMAL")
    overlay, named = model.overlay(images[1])
    assert named == method and overlay.shape == (320, 320, 3) and overlay.dtype == np.uint8
    colour = overlay[..., 0].astype(int) - overlay[..., 2]
    assert colour.max() > 40, "the overlay shows no heat"
    card = model.card_markdown()
    assert NOT_A_DEVICE in card and f"ROC-AUC {model.card['metrics']['test']['auc']:.3f} [95% CI" in card
  with pytest.raises(UserError, match="is neither a run"):
    DemoModel(str(tmp_path))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _serve(model, port):
  env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
  command = [sys.executable, "-m", "xray_keras.demo", f"--model={model}", f"--port={port}"]
  server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 180
  while time.time() < deadline:
    if server.poll() is not None:
      raise AssertionError(f"the demo stopped: {server.stdout.read()[-3000:]}")
    try:
      urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
      return server
    except OSError:
      time.sleep(1)
  server.kill()
  raise AssertionError("the demo page did not answer within 180 s")


def _shown(page, text):
  page.wait_for_function(f"document.querySelector('#result').innerText.includes({text!r})", timeout=60000)
  return page.inner_text("#result")


@pytest.mark.slow
def test_the_page_in_headless_chromium_shows_predicts_probability_and_refusals(tiny_run, onnx_export, tmp_path):
  pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
  sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")
  executable, why = browser.chromium()
  if executable is None:
    pytest.skip(why)
  images, bad = _inputs(tiny_run[1], tmp_path)
  probabilities, reasons = _predict_reference(onnx_export, images + bad)
  port = _free_port()
  server, url = _serve(onnx_export, port), f"http://127.0.0.1:{port}/"
  try:
    with sync_api.sync_playwright() as playwright:
      chromium = playwright.chromium.launch(executable_path=executable, args=browser.ARGS)
      page = chromium.new_page(viewport={"width": 1200, "height": 1100})
      page.goto(url)
      upload = page.locator("#files input[type=file]")
      upload.set_input_files(images[1])
      shown = _shown(page, "PNEUMONIA probability")
      assert f"probability {probabilities[images[1]]:.6f}" in shown, shown
      page.wait_for_selector("#overlay img", timeout=60000)
      assert "Not a medical device" in page.inner_text("#card")
      shot = tmp_path / "demo_page.png"
      page.screenshot(path=str(shot), full_page=True)
      assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
      page.goto(url)
      upload.set_input_files(bad[0])
      assert _shown(page, "refused") == f"{os.path.basename(bad[0])} refused: {reasons[bad[0]]}"
      page.goto(url)
      upload.set_input_files(images + bad)
      _shown(page, "4 files: 2 classified, 2 refused")
      table = page.inner_text("#table")
      for path in images:
        assert f"{probabilities[path]:.6f}" in table
      chromium.close()
  finally:
    server.terminate()
    server.wait(timeout=30)
