"""Quick modes of the benchmarks, so they cannot rot."""

import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, shared_weights


def _run_script(args, timeout, env=None):
  """Runs `python *args` from the repository; fails with the end of its stderr and stdout."""
  result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
  assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]


def _run_in_process(args):
  """Runs `python *args` as `__main__` in this process, from the repository: for a script whose own
  process is not what is tested, this worker's TensorFlow import (about 8 s of CPU) serves it too."""
  script, *rest = args
  saved_argv, saved_cwd = sys.argv, os.getcwd()
  sys.argv = [script, *rest]
  os.chdir(REPO)
  try:
    runpy.run_path(os.path.join(REPO, script), run_name="__main__")
  finally:
    sys.argv = saved_argv
    os.chdir(saved_cwd)


def _no_tensorflow_env(tmp_path):
  """An environment whose Python processes (workers included) cannot import TensorFlow.

  A `tensorflow` package ahead on the path that fails on import, as a missing one would.
  """
  site = tmp_path / "no_tf"
  (site / "tensorflow").mkdir(parents=True)
  (site / "tensorflow" / "__init__.py").write_text('raise ImportError("TensorFlow is not installed on this machine")\n')
  path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": path}


@pytest.mark.slow
def test_gpu_script_quick_mode_runs_on_jax_without_tensorflow(tmp_path):
  pytest.importorskip("jax")
  pytest.importorskip("torch")
  out = tmp_path / "gpu.json"
  _run_script(
    ["benchmarks/gpu_vs_torch.py", "--quick", "--peer=torch", "--models=vit_scratch", f"--output={out}"],
    timeout=600,
    env=_no_tensorflow_env(tmp_path),
  )
  report = json.loads(out.read_text())
  assert [(r["model"], r["framework"]) for r in report["rows"]] == [
    ("vit_scratch", "keras-jax"),
    ("vit_scratch", "torch"),
  ]
  assert report["tensorflow_imported"] is False and report["precision"] == "mixed_bfloat16"
  ours = [r for r in report["rows"] if r["framework"] == "keras-jax"]
  assert all(r["ratio_vs_peer"]["train"] > 0 and r["forward_flops_per_image"] > 0 for r in ours)


@pytest.mark.slow
def test_cpu_vs_torch_quick_mode_compares_both_backends_with_the_peer(tmp_path):
  pytest.importorskip("jax")
  pytest.importorskip("torch")
  out = tmp_path / "cpu.json"
  _run_script(["benchmarks/cpu_vs_torch.py", "--quick", "--models=vit_scratch", f"--output={out}"], timeout=600)
  rows = json.loads(out.read_text())["rows"]
  assert [r["framework"] for r in rows] == ["keras-tensorflow", "keras-jax", "torch"]
  assert rows[0]["params"] == rows[2]["params"]  # the same architecture on both sides
  for row in rows[:2]:
    assert row["ratio_vs_peer"]["train"] == row["train_images_per_s"] / rows[2]["train_images_per_s"]
  assert all(r["peak_rss_mb"] > 100 and r["infer_images_per_s"] > 0 for r in rows)


def test_torch_peers_match_our_parameter_counts():
  pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import torch_peers

  from xray_keras import models

  for name, size, patch in [("cnn_scratch", 64, None), ("vit_scratch", 64, 8)]:
    ours = models.build_model(name, (size, size, 1), patch_size=patch)
    trainable = sum(int(np.prod(w.shape)) for w in ours.trainable_weights)
    assert sum(p.numel() for p in torch_peers.build(name, size, patch).parameters()) == trainable


@pytest.mark.slow
def test_input_pipeline_and_end_to_end_quick_modes(tmp_path):
  for script in ("input_pipeline.py", "end_to_end.py"):
    out = tmp_path / f"{script}.json"
    _run_in_process([f"benchmarks/{script}", "--quick", f"--output={out}"])
    report = json.loads(out.read_text())
    if script == "input_pipeline.py":
      assert [r["cache"] for r in report["loads"]] == ["cold", "warm"] and report["loads"][0]["images"] > 0
      assert [f["augment"] for f in report["feeder"]] == [False, True]
      assert all(s["warm_cache_first_step_s"] > 0 for s in report["startup"])
    else:
      assert [r["experiment"] for r in report["rows"]] == ["vit_scratch", "cnn_scratch"]
      assert all(r["end_to_end_epoch_s"] > 0 and r["compute_epoch_s"] > 0 for r in report["rows"])


@pytest.mark.slow
def test_feature_cache_quick_mode(tmp_path):
  out = tmp_path / "cache.json"
  weights = shared_weights("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
  _run_script(["benchmarks/feature_cache.py", "--quick", f"--weights={weights}", f"--output={out}"], timeout=600)
  report = json.loads(out.read_text())
  assert report["feature_shape"] == [2048] and report["train_images"] > 0
  assert [r["head_epochs"] for r in report["rows"]] == [1, 5, 10]
  assert all(r["through_backbone_s"] > 0 and r["feature_cache_s"] > 0 for r in report["rows"])


@pytest.mark.slow
def test_gpu_study_quick_mode_runs_the_study_on_jax_and_writes_its_report(tmp_path):
  pytest.importorskip("jax")
  out, study = tmp_path / "gpu_study.json", tmp_path / "study"
  _run_script(
    [
      "benchmarks/gpu_study.py",
      "--quick",
      "--skip_compare",
      "--models=vit_scratch",
      "--lever_models=resnet50",
      "--levers_budget_s=1",
      f"--study_dir={study}",
      f"--output={out}",
    ],
    timeout=600,
    env=_no_tensorflow_env(tmp_path),
  )
  report = json.loads(out.read_text())
  run = report["study"]
  assert run["exit_code"] == 0 and run["report_written"] and "--weights=none" in run["command"]
  assert run["models"]["vit_scratch"]["train_images_per_s"] > 0 and run["models"]["vit_scratch"]["test_auc"] > 0
  [row] = report["epoch_vs_step"]
  assert row["model"] == "vit_scratch" and row["step_train_images_per_s"] > 0 and row["epoch_vs_step"] > 0
  # Levers: the first runs, the rest wait for a budget a real GPU run gives them.
  [lever] = report["levers"]["rows"]
  assert (lever["lever"], lever["model"], lever["ratio_vs_ours"]) == ("ours", "resnet50", 1.0)
  assert "plain_backbone resnet50" in report["levers"]["skipped_for_time"]
  # The report of a study on JAX, Grad-CAM/rollout figure included, and the run used the device feeder.
  assert (study / "report.md").is_file() and (study / "explanations.png").stat().st_size > 5000
  assert "Feeder: the split on the JAX device" in (study / "vit_scratch" / "run.log").read_text()


@pytest.mark.slow
def test_cpu_roofline_quick_mode_counts_flops_from_the_compiled_step_and_by_hand(tmp_path):
  pytest.importorskip("jax")
  out = tmp_path / "roofline.json"
  _run_in_process(["benchmarks/cpu_roofline.py", "--quick", "--models=vit_scratch", f"--output={out}"])
  report = json.loads(out.read_text())
  assert (
    report["float32_peak_gflops"] > 1 and report["machine"]["cpu"] and isinstance(report["vector_extensions"], list)
  )
  (row,) = report["rows"]
  assert row["image_size"] == 32 and row["all_flops_per_image"] >= row["model_flops_per_image"] > 0
  assert abs(row["hand_vs_compiled"] - 1) < 0.10  # the hand count of ViT_scratch agrees with XLA's
  for kind in ("in_memory", "end_to_end"):
    assert row[f"{kind}_images_per_s"] > 0 and 0 < row[f"{kind}_fraction_of_peak"] < 1
    each = row[f"{kind}_images_per_s_each"]
    assert len(each) == row["epochs_timed"] == 3 and row[f"{kind}_images_per_s"] == sorted(each)[1]  # the median
  assert len(row["copy_gbps_after_each"]) == 6 and min(row["copy_gbps_after_each"]) > 0


@pytest.mark.slow
def test_epoch_profile_quick_mode_reads_the_trace_into_groups(tmp_path):
  out = tmp_path / "profile.json"
  _run_in_process(["benchmarks/epoch_profile.py", "--quick", f"--output={out}"])
  rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
  assert set(rows) == {"vit_scratch", "cnn_scratch"}
  assert rows["vit_scratch"]["compute_thread_s"]["matrix products"] > 0
  assert rows["cnn_scratch"]["compute_thread_s"]["convolutions"] > 0
  for row in rows.values():
    assert 0 < row["in_compiled_step_s"] <= row["wall_s"]


def test_trace_self_time_subtracts_nested_events():
  import types

  from benchmarks import epoch_profile

  event = lambda offset, duration, name: types.SimpleNamespace(offset_ps=offset, duration_ps=duration, metadata_id=name)  # noqa: E731
  names = {1: "ExecutorState::Process", 2: "MatMul", 3: "fusion.1"}
  times = epoch_profile.self_times([event(0, 10, 1), event(1, 4, 2), event(6, 3, 3), event(20, 5, 2)], names)
  assert {k: round(v * 1e12) for k, v in times.items()} == {"ExecutorState::Process": 3, "MatMul": 9, "fusion.1": 3}
  assert [epoch_profile.kind(n) for n in ("MatMul.3", "Conv2DBackpropFilter", "fusion.1", "BlockUntilReady")] == [
    "matrix products",
    "convolutions",
    "other kernels",
    "waiting on the compiled program",
  ]


@pytest.mark.slow
def test_dicom_parity_quick_mode_scores_a_run_on_jpeg_and_dicom_copies(tiny_run, tmp_path):
  pytest.importorskip("pydicom")
  out = tmp_path / "dicom_parity.json"
  _run_in_process(["benchmarks/dicom_parity.py", "--quick", f"--runs={tiny_run[2]}", f"--output={out}"])
  payload = json.loads(out.read_text())
  (row,) = payload["runs"]
  assert row["images"] == 40 and sum(payload["variants"].values()) == 40 and len(payload["variants"]) == 9
  assert abs(row["auc_difference"]) < 0.02 and row["label_agreement_at_0.5"] >= 0.9
  assert all(r["images_per_s"] > 0 for r in payload["decode_2048px_to_224px"].values())


@pytest.mark.slow
def test_formats_quick_mode_scores_every_format_against_keras_in_fresh_processes(tiny_run, tmp_path):
  pytest.importorskip("tf2onnx")
  out = tmp_path / "formats.json"
  _run_in_process(["benchmarks/formats.py", "--quick", f"--runs={tiny_run[2]}", f"--output={out}"])
  payload = json.loads(out.read_text())
  (row,) = payload["runs"]
  assert row["test_images"] == 12 and row["model"] == "vit_scratch"
  assert set(row["formats"]) == {"saved_model", "onnx", "onnx-int8", "litert-int8"}, row["skipped"]
  for name, entry in row["formats"].items():
    assert entry["batch1_ms_p50"] <= entry["batch1_ms_p95"] and entry["batch32_images_per_s"] > 0, name
    assert entry["file_mb"] > 0 and entry["peak_rss_mb"] > 0 and entry["import_s"] > 0, name
    assert 0 < entry["bytes_batch1_ms_p50"] <= entry["bytes_batch1_ms_p95"] and entry["bytes_mean_kb"] > 0, name
    assert entry["bytes_batch1_p50_speedup_vs_saved_model"] > 0, name  # from the files' bytes, as predict reads
    if "int8" not in name:
      assert entry["max_abs_probability_difference"] < 1e-4 and entry["label_agreement"] == 1.0, name
  assert row["formats"]["saved_model"]["batch1_p50_speedup_vs_saved_model"] == 1.0
  assert payload["runtime_install"]["tensorflow"]["mb"] > 5 * payload["runtime_install"]["onnxruntime"]["mb"]


@pytest.mark.slow
def test_federated_attacks_quick_mode_compares_strategies_under_a_bad_site(tmp_path):
  pytest.importorskip("flwr")
  out = tmp_path / "federated_attacks.json"
  _run_script(
    ["benchmarks/federated_attacks.py", "--quick", f"--output_dir={tmp_path / 'runs'}", f"--output={out}"], timeout=900
  )
  rows = json.loads(out.read_text())["runs"]
  assert set(rows) == {"clean_fedavg", "scaled_update_fedmedian"}
  assert rows["clean_fedavg"]["auc_minus_clean_fedavg"] == 0 and rows["clean_fedavg"]["delong_p_vs_clean"] is None
  row = rows["scaled_update_fedmedian"]
  assert 0 <= row["test_auc"] <= 1 and row["rounds"] == 1 and 0 <= row["delong_p_vs_clean"] <= 1
  assert row["resumed"] is False and row["wall_s"] > 0
  log = (tmp_path / "runs" / "scaled_update_fedmedian" / "run.log").read_text()
  assert "Fault injection: site_0..site_0 misbehave (scaled_update x10)." in log


@pytest.mark.slow
def test_ood_cost_quick_mode_times_exports_with_and_without_the_score(tiny_run, tmp_path):
  out = tmp_path / "ood_cost.json"
  _run_in_process(["benchmarks/ood_cost.py", "--quick", f"--run_dir={tiny_run[2]}", f"--output={out}"])
  report = json.loads(out.read_text())
  assert 0 < report["run_cost"]["ood_fit_s"] < report["run_cost"]["total_run_s"]
  saved_model = next(r for r in report["serving"] if r["format"] == "saved_model")
  assert saved_model["has_ood"] == [True, False]  # the same run exported with its OOD score and without
  for key in ("pixels", "bytes"):  # the tiny run's test images are files: both ways
    assert all(t > 0 for t in saved_model[f"{key}_ms_p50"]) and saved_model[f"{key}_ratio_with_to_without"] > 0


def test_ood_quick_mode_scores_every_family_with_each_candidate(tmp_path):
  out = tmp_path / "ood.json"
  _run_in_process(["benchmarks/ood.py", "--quick", f"--output={out}"])
  report = json.loads(out.read_text())
  assert report["quick"] and report["machine"]["cores"] >= 1 and report["date_utc"]
  assert {(r["family"], r["score"]) for r in report["rows"]} >= {
    ("uniform_noise", "mahalanobis"),
    ("upside_down", "combined"),
    ("inverted", "thumbnail"),
    ("dicom_ct_mr", "energy"),
  }
  assert all(0 <= r["auroc_vs_builtin_test"] <= 1 for r in report["rows"])
  assert set(report["false_flag_rate"]) == {
    "combined",
    "mahalanobis",
    "thumbnail",
    "histogram",
    "energy",
    "max_softmax",
  }


@pytest.mark.slow
def test_input_memory_quick_mode_measures_every_format_on_both_paths(tiny_run, tmp_path):
  pytest.importorskip("pydicom")
  out = tmp_path / "input_memory.json"
  _run_in_process(["benchmarks/input_memory.py", "--quick", f"--run_dir={tiny_run[2]}", f"--output={out}"])
  report = json.loads(out.read_text())
  rows = {(r["case"], r["side"], r["path"]): r for r in report["rows"]}
  assert not [r for r in report["rows"] if "error" in r], report["rows"]
  for kind in ("png8_grey", "png16_rgba", "jpeg_grey", "jpeg_rgb", "gif"):
    assert rows[kind, 1000, "serving"]["outcome"] == rows[kind, 1000, "host"]["outcome"] == "accepted"
    assert rows[kind, 1000, "host"]["bytes_per_source_pixel"] > 0
  assert ("dicom16", 1000, "host") in rows and ("dicom16", 1000, "serving") not in rows


@pytest.mark.slow
def test_input_fuzz_quick_mode_counts_every_outcome_and_finds_nothing_undocumented(tmp_path):
  out = tmp_path / "input_fuzz.json"
  _run_in_process(["benchmarks/input_fuzz.py", "--quick", f"--output={out}"])
  report = json.loads(out.read_text())
  images = report["images"]
  assert sum(images["outcomes"].values()) == images["inputs"] == 40 and images["undocumented"] == 0, images
  assert images["outcomes"]["same pixels"] > 0 and images["outcomes"]["same refusal"] > 0
  if isinstance(report["dicom"], dict):  # dcmtk installed (.ci/run installs it)
    assert report["dicom"]["inputs"] == 12 and report["dicom"]["worst_grey_levels"] <= 1, report["dicom"]


def test_every_benchmark_script_is_in_the_index():
  """benchmarks/README.md lists each script with its question and result file (retired ones too)."""
  import re

  folder = os.path.join(REPO, "benchmarks")
  listed = set(re.findall(r"^\| `([a-z_0-9]+\.py)`", open(os.path.join(folder, "README.md")).read(), re.M))
  scripts = {name for name in os.listdir(folder) if name.endswith(".py") and name not in ("common.py", "__init__.py")}
  assert scripts <= listed, scripts - listed


def test_op_groups_name_the_convolution_gradients_of_both_frameworks():
  from benchmarks import op_profile

  tf_events = (
    "m/conv1_conv/BiasAdd:_MklNativeFusedConv2D",
    "gradient_tape/m/conv1_conv/convolution/Conv2DBackpropInput:_MklNativeConv2DBackpropInput",
    "gradient_tape/m/conv1_conv/convolution/Conv2DBackpropFilter:_MklNativeConv2DBackpropFilterWithBias",
    "gradient_tape/m/conv1_bn_1/moments/SquaredDifference:SquaredDifference",
    "adam/Sqrt_409:Sqrt",
    "m/Cast_3:Cast",
    "m/dense/MatMul:_MklMatMul",
  )
  assert [op_profile.tf_group(e) for e in tf_events] == [
    "convolution forward",
    "convolution input gradient",
    "convolution filter gradient",
    "batch norm",
    "optimizer",
    "casts and copies",
    "matrix products",
  ]
  torch_ops = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::native_batch_norm", "aten::_to_copy")
  assert [op_profile.torch_group(op) for op in torch_ops] == [
    "convolution forward",
    "convolution filter gradient",
    "batch norm",
    "casts and copies",
  ]


@pytest.mark.slow
def test_op_profile_quick_mode_splits_both_frameworks_steps_into_op_groups(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "ops.json"
  _run_script(["benchmarks/op_profile.py", "--quick", "--models=cnn_scratch", f"--output={out}"], timeout=600)
  rows = json.loads(out.read_text())["rows"]
  assert [(r["framework"], r["precision"]) for r in rows] == [
    ("keras-tensorflow", "float32"),
    ("torch", "float32"),
    ("keras-tensorflow", "bfloat16"),
    ("torch", "bfloat16"),
  ]
  for row in rows:
    assert row["groups_ms"]["convolution forward"] > 0 and row["groups_ms"]["convolution filter gradient"] > 0
    assert row["train_images_per_s"] > 0


def test_a_resumed_runs_wall_time_counts_each_process_and_not_the_gap(tmp_path):
  from benchmarks import study_table

  log = tmp_path / "run.log"
  log.write_text(
    "2026-12-07 03:48:50,000 INFO Mixed precision mixed_bfloat16\n"
    "2026-12-07 03:48:52,000 INFO Model ResNet50: 23589761 parameters, weights none\n"
    "2026-12-07 04:27:29,000 INFO epoch 3: 1031.5s\n"
    "a traceback line without a time\n"
    "2026-12-07 05:01:15,000 INFO Model ResNet50: 23589761 parameters, weights none\n"
    "2026-12-07 05:08:28,000 INFO Done\n"
  )
  started, seconds, processes = study_table._log_span(str(log))
  assert started.strftime("%H:%M:%S") == "03:48:50" and processes == 2
  assert seconds == (4 * 3600 + 27 * 60 + 29 - (3 * 3600 + 48 * 60 + 50)) + (7 * 60 + 13)


def test_the_study_table_reports_the_prediction_validation_chose(tiny_run, tmp_path):
  """A row and the DeLong comparison take the TTA views where validation's log loss chose them, else the one view."""
  import shutil

  from benchmarks import study_table
  from xray_keras.evaluation import calibration, clinical, metrics
  from xray_keras.report import tta_after_run

  study = tmp_path / "study"
  for model in ("vit_scratch", "cnn_scratch"):
    shutil.copytree(tiny_run[2], study / model)
  run = study / "vit_scratch"
  flags_txt = (run / "flags.txt").read_text()
  assert "--augment=\n" in flags_txt  # the tiny run trained without augmentation; TTA's views need one
  (run / "flags.txt").write_text(flags_txt.replace("--augment=\n", "--augment=rotation,contrast\n"))
  tta_after_run.add_tta(str(run), 3)

  single = clinical.read_predictions(str(run))
  views = clinical.read_predictions(str(run), clinical.TTA_PREDICTIONS)
  written = json.loads((run / "metrics.json").read_text())
  losses = [calibration.log_loss(single["val"][1], p["val"][2]) for p in (single, views)]
  assert written["tta"]["validation_chooses"] == clinical.tta_choice(*losses)
  for choice in ("TTA", "single view"):
    written["tta"]["validation_chooses"] = choice
    (run / "metrics.json").write_text(json.dumps(written))
    row = study_table.run_row(str(study), "vit_scratch", None)
    if choice == "TTA":
      _, val_labels, val_p = views["val"]
      _, labels, p = views["test"]
      at = metrics.binary_metrics(labels, p, metrics.choose_threshold(val_labels, val_p))
      assert row["prediction"] == "3-view TTA"
      assert row["test_auc"] == pytest.approx(metrics.roc_auc(labels, p), abs=1e-12)
      assert row["val_auc"] == pytest.approx(metrics.roc_auc(val_labels, val_p), abs=1e-12)
      assert (row["sensitivity_at_val_threshold"], row["specificity_at_val_threshold"]) == (
        at["recall"],
        at["specificity"],
      )
    else:
      assert row["prediction"] == "one view"
      assert (row["test_auc"], row["val_auc"]) == (written["test"]["auc"], written["val"]["auc"])
      assert row["sensitivity_at_val_threshold"] == written["test"]["at_val_threshold"]["recall"]
    assert row["one_view_test_auc"] == written["test"]["auc"]
    # the views the run did not make count in its wall time
    seconds = json.loads((run / "tta.json").read_text())["seconds"]
    assert seconds > 0 and row["wall_s"] == round(study_table._log_span(str(run / "run.log"))[1] + seconds, 1)
    assert "made afterwards by xray_keras.evaluate" in row["wall_source"]
    other = study_table.run_row(str(study), "cnn_scratch", None)
    (compared,) = study_table.compare_models([str(study)], [row, other])
    chosen = views if choice == "TTA" else single
    expected = metrics.roc_auc(*chosen["test"][1:]) - metrics.roc_auc(*single["test"][1:])
    assert (compared["a"], compared["b"]) == ("cnn_scratch", "vit_scratch")
    assert compared["auc_difference"] == pytest.approx(-expected, abs=1e-9)

  # A run whose files disagree is refused in one line, never reported from a mix of them.
  written["tta"]["validation_chooses"] = "TTA"
  (run / "metrics.json").write_text(json.dumps(written))
  made = json.loads((run / "tta.json").read_text())
  (run / "tta.json").write_text(json.dumps({**made, "views": 9}))
  with pytest.raises(ValueError, match="disagree on the number of views"):
    study_table.run_row(str(study), "vit_scratch", None)
  (run / "tta.json").write_text(json.dumps(made))
  shutil.copy(run / clinical.TTA_PREDICTIONS, tmp_path / "views.csv")
  (run / clinical.TTA_PREDICTIONS).write_text((run / clinical.PREDICTIONS).read_text())  # the one view's rows
  if metrics.roc_auc(*single["test"][1:]) != pytest.approx(written["tta"]["test"]["auc"], abs=1e-9):
    with pytest.raises(ValueError, match="is not the prediction metrics.json's TTA entry was computed from"):
      study_table.run_row(str(study), "vit_scratch", None)
  (run / clinical.TTA_PREDICTIONS).unlink()
  with pytest.raises(ValueError, match="rerun python -m xray_keras.evaluate"):
    study_table.run_row(str(study), "vit_scratch", None)
  shutil.copy(tmp_path / "views.csv", run / clinical.TTA_PREDICTIONS)

  # Lever rows: --append keeps the file's earlier rows and replaces those of a folder given again.
  levers = tmp_path / "levers.json"
  study_table.write_levers([str(run)], str(levers))
  study_table.write_levers([str(study / "cnn_scratch"), str(run)], str(levers), append=True)
  rows = json.loads(levers.read_text())["runs"]
  assert [(r["folder"], r["recipe"]["tta"]) for r in rows] == [(str(study / "cnn_scratch"), 1), (str(run), 3)]
  assert {"preprocess", "augment", "patch_size", "ema_momentum"} <= set(rows[0]["recipe"])  # what a lever changes
