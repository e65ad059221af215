"""The demo page: what it shows for a run and for an export, and the page itself in headless Chromium."""

import csv
import dataclasses
import json
import os
import re
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
from xray_keras.serving.demo_model import NOT_A_DEVICE, DemoModel, about_markdown


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


def test_about_says_calibrated_with_its_figure_and_not_recorded_where_the_files_hold_nothing():
  model_card = {
    "input": {"image_size": 64, "channels": 3, "resize_mode": "squash"},
    "data": {"name": "my_hospital", "source": "folder"},
    "calibration": {"method": "temperature scaling", "temperature": 1.5},
    "operating_points": {"youden": {"threshold": 0.4, "description": "max sensitivity + specificity - 1"}},
  }
  about = about_markdown(model_card, {}, {"val_log_loss_before": 0.61, "val_log_loss_after": 0.42, "val_images": 40})
  assert "Trained on**: not recorded (data my_hospital, from a folder)" in about
  assert "64 x 64 px colour (3 channels), squashed" in about
  assert (
    "**calibrated**: temperature scaling (T = 1.500) fitted on validation; validation log loss 0.610 before" in about
  )
  assert "threshold 0.400; validation sensitivity and specificity not recorded" in about
  assert "validation log loss not recorded" in about_markdown(model_card, {}, None)


def _open_page(model, sync_api, port):
  """`build_page(model)` served in this process; `(playwright, browser, page, app)`, the page loaded."""
  from xray_keras.demo import build_page

  executable, why = browser.chromium()
  if executable is None:
    pytest.skip(why)
  app = build_page(model)
  app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
  playwright = sync_api.sync_playwright().start()
  chromium = playwright.chromium.launch(executable_path=executable, args=browser.ARGS)
  page = chromium.new_page(viewport={"width": 1280, "height": 1100})
  page.goto(f"http://127.0.0.1:{port}/")
  return playwright, chromium, page, app


def _close(playwright, chromium, app):
  chromium.close()
  playwright.stop()
  app.close()


def _val_rates(run_dir, threshold):
  """Validation sensitivity and specificity at `threshold`, read here from the run's predictions.csv."""
  with open(run_dir / "predictions.csv", newline="") as f:
    val = [(int(r["label"]), float(r["probability"])) for r in csv.DictReader(f) if r["split"] == "val"]
  positives = [p >= threshold for label, p in val if label == 1]
  negatives = [p < threshold for label, p in val if label == 0]
  return sum(positives) / len(positives), sum(negatives) / len(negatives), len(val)


@pytest.mark.slow
def test_the_page_says_who_the_model_learnt_from_its_calibration_and_operating_points_in_words(tiny_run):
  pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
  sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")
  from xray_keras.evaluation import clinical

  run_dir = tiny_run[2]
  metrics = json.loads((run_dir / "metrics.json").read_text())
  size, _, channels = metrics["model"]["input_shape"]
  thresholds = clinical.decision_thresholds(str(run_dir))
  playwright, chromium, page, app = _open_page(DemoModel(str(run_dir)), sync_api, _free_port())
  try:
    about = page.inner_text("#about")
  finally:
    _close(playwright, chromium, app)
  assert "paediatric patients aged 1 to 5 at Guangzhou Women and Children's Medical Center" in about, about
  assert f"{size} x {size} px {'grey' if channels == 1 else 'colour'}, letterboxed" in about, about
  assert not (run_dir / "calibration.json").exists() and "not calibrated (no temperature scaling)" in about
  lines = {rule: next(line for line in about.splitlines() if f"({rule}:" in line) for rule in thresholds}
  words = {"youden": "Balanced", "sensitivity_95": "High sensitivity", "specificity_90": "High specificity"}
  for rule, t in thresholds.items():
    line = lines[rule]
    assert line.startswith(words[rule]), line
    shown = re.search(r"threshold (\d\.(\d+))", line)
    assert abs(float(shown[1]) - t) <= 0.5 * 10 ** -len(shown[2]), (line, t)
    at = metrics["val"]["at_val_threshold"]  # from unrounded probabilities, where taken at this threshold
    if abs(at["threshold"] - t) < 1e-9:
      sensitivity, specificity, n = at["recall"], at["specificity"], at["n"]
    else:
      sensitivity, specificity, n = _val_rates(run_dir, t)
    assert f"caught {sensitivity:.0%} of pneumonia and cleared {specificity:.0%} of normal X-rays on validation" in line
    assert f"({n} images)" in line
  if len(set(thresholds.values())) > 1:
    lowest = min(thresholds, key=thresholds.get)
    assert "calls the most images PNEUMONIA" in lines[lowest], lines[lowest]


@pytest.mark.slow
def test_a_long_refusal_reason_wraps_and_leaves_the_other_columns_their_width(tiny_run, onnx_export, tmp_path):
  pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
  sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")
  images, bad = _inputs(tiny_run[1], tmp_path)
  model = DemoModel(onnx_export)
  reason = ("the decoder refused this file because " + "its bytes are not an image the model takes; " * 8)[:300]
  score = model.score

  def long_reasons(paths):
    return [dataclasses.replace(s, refused=reason) if s.refused else s for s in score(paths)]

  model.score = long_reasons
  playwright, chromium, page, app = _open_page(model, sync_api, _free_port())
  try:
    page.locator("#files input[type=file]").set_input_files([images[1], bad[0]])
    page.wait_for_function("document.querySelector('#table').innerText.includes('the decoder refused')", timeout=60000)
    # the probability header's content width, the width of one "0" in its font, and how far right the reason's
    # cell and the table reach
    header, zero, reason_right, table_right = page.evaluate(
      """() => {
        const header = [...document.querySelectorAll('#table th')].find(
          c => c.textContent.trim().startsWith('PNEUMONIA probability'));
        const style = getComputedStyle(header);
        const probe = document.createElement('span');
        probe.style.font = style.font;
        probe.style.cssText += 'white-space:pre;display:inline-block;position:absolute;width:auto;padding:0';
        probe.textContent = '0'.repeat(100);
        document.body.appendChild(probe);
        const cell = [...document.querySelectorAll('#table td')].find(c => c.textContent.includes('the decoder refused'));
        const content = header.getBoundingClientRect().width - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return [content, probe.getBoundingClientRect().width / 100, cell.getBoundingClientRect().right,
                document.querySelector('#table').getBoundingClientRect().right];
      }"""
    )
    table = page.inner_text("#table")
  finally:
    _close(playwright, chromium, app)
  # 11 characters: "probability", the header's longest word, and more than the 8 of a probability such as 0.994512
  assert header >= 11 * zero, f"the probability column is {header / zero:.1f} characters wide"
  assert reason_right <= table_right + 1, f"the reason runs {reason_right - table_right:.0f} px past the table's edge"
  assert reason in table, "the full reason is not in the table"
