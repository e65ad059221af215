"""Write `report.md`, `report.html`, `results.csv` and `results.json` (figures beside them) for a study or a run."""

import csv
import itertools
import json
import os

import numpy as np
from absl import logging

from xray_keras.data.records import VALIDATION
from xray_keras.evaluation import metrics, statistics
from xray_keras.report import clinical, collect, federated, figures, html

CI_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")


def _fmt(value, digits=3):
  if value is None or (isinstance(value, float) and not np.isfinite(value)):
    return "-"
  return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def result_rows(runs, resamples, seed):
  """One dict per run: test metrics at 0.5 with bootstrap CIs, and timing."""
  rows = []
  for run in runs:
    point = metrics.binary_metrics(run.test_labels, run.test_probabilities, 0.5)
    ci = statistics.bootstrap_ci(run.test_labels, run.test_probabilities, 0.5, resamples, seed)
    testbed = run.timing.get("testbed", {})
    row = {
      "model": run.display_name,
      "name": run.name,
      "params": run.params,
      "test_images": int(len(run.test_labels)),
      "test_bed": f"{testbed.get('cpu', '?')} x{testbed.get('cpu_cores', '?')}"
      + (f", {', '.join(testbed['gpus'])}" if testbed.get("gpus") else ""),
    }
    for key in CI_METRICS:
      row[key] = point[key]
      row[f"{key}_ci"] = list(ci.get(key, (float("nan"), float("nan"))))
    row["accuracy_at_val_threshold"] = run.metrics["test"]["at_val_threshold"]["accuracy"]
    for key in ("accuracy", "specificity", "auc"):
      row[f"val_{key}"] = run.metrics.get("val", {}).get(key)
    row["val_threshold"] = run.threshold
    row["train_s"] = run.train_s
    row["mean_epoch_s"] = run.timing.get("mean_epoch_s")
    row["train_images_per_s"] = run.timing.get("train_images_per_s")
    row["latency_ms_per_image"] = run.timing.get("eval", {}).get("latency_ms_per_image")
    row["inference_images_per_s"] = run.timing.get("eval", {}).get("images_per_s")
    row["synthetic"] = bool(run.metrics.get("synthetic"))
    rows.append(row)
  return rows


def pairwise(runs):
  """DeLong (AUC) and McNemar (accuracy at 0.5) for every pair of runs scored on the same test images."""
  out = []
  for a, b in itertools.combinations(runs, 2):
    if len(a.test_labels) != len(b.test_labels) or not np.array_equal(a.test_labels, b.test_labels):
      logging.warning("%s and %s were not tested on the same images; not compared.", a.name, b.name)
      continue
    delong = statistics.delong_test(a.test_labels, a.test_probabilities, b.test_probabilities)
    mcnemar = statistics.mcnemar_test(a.test_labels, a.test_probabilities >= 0.5, b.test_probabilities >= 0.5)
    out.append(
      {
        "a": a.display_name,
        "b": b.display_name,
        "auc_difference": delong["difference"],
        "delong_p": delong["p_value"],
        "a_only_right": mcnemar["a_only"],
        "b_only_right": mcnemar["b_only"],
        "mcnemar_p": mcnemar["p_value"],
      }
    )
  return out


def _choose_images(run, per_group=2):
  """Test rows of both classes, right and wrong (by the first model), in file order."""
  chosen = []
  for label in (0, 1):
    for right in (True, False):
      rows = [
        i
        for i, (y, p) in enumerate(zip(run.test_labels, run.test_probabilities))
        if y == label and ((p >= run.threshold) == bool(y)) == right
      ]
      chosen += rows[:per_group]
  return chosen


def explanations(runs, study_dir):
  """Grad-CAM / attention-rollout grid on a fixed set of test images; None if the data cannot be read."""
  from xray_keras import models
  from xray_keras.data import builtin, decode, folder
  from xray_keras.evaluation import explain
  from xray_keras.training.run_dir import read_flags

  rows = []
  chosen = _choose_images(runs[0])
  for run in runs:
    flags = read_flags(os.path.join(run.run_dir, "flags.txt"))
    size, _, channels = run.metrics["model"]["input_shape"]
    files = [run.test_files[i] for i in chosen]
    source, data_dir = run.metrics.get("data", {}).get("source"), flags.get("data_dir", "")
    if source == "builtin":
      images, records = builtin.load()
      index = {r.path: i for i, r in enumerate(records)}
      pixels = decode.resize_array(images[[index[f] for f in files]], size, channels)
    elif source == "folder" and os.path.isdir(data_dir):
      root = folder.find_root(data_dir)
      pixels = np.stack(
        [
          decode.decode_image(
            decode.read_file(os.path.join(root, f)), size, channels, flags.get("resize_mode", "squash")
          )
          for f in files
        ]
      )
    else:
      logging.info("No explanations for %s: its images are not in a readable folder.", run.name)
      continue
    pixels = pixels.astype(np.float32)
    maps = explain.explain(models.load_model(os.path.join(run.run_dir, "model.keras")), pixels)
    if maps is None:
      logging.info("No explanations for %s: neither Grad-CAM nor attention rollout applies.", run.name)
      continue
    titles = [
      f"{'PNEUMONIA' if run.test_labels[i] else 'NORMAL'} p={run.test_probabilities[i]:.2f}"
      + (" ok" if (run.test_probabilities[i] >= run.threshold) == bool(run.test_labels[i]) else " WRONG")
      for i in chosen
    ]
    rows.append((run.display_name, pixels, maps, titles))
  if not rows:
    return None
  return figures.explanation_grid(rows, os.path.join(study_dir, "explanations.png"))


def compare_test_beds(study_a, study_b, out_path):
  """Merges two studies of the same models on different test beds: time per epoch and speed-up (A / B)."""
  runs_a, _ = collect.read_study(study_a)
  runs_b = {r.name: r for r in collect.read_study(study_b)[0]}
  rows = []
  for a in runs_a:
    b = runs_b.get(a.name)
    if b is None:
      continue
    bed = lambda r: r.timing.get("testbed", {})  # noqa: E731
    rows.append(
      {
        "model": a.display_name,
        "test_bed_a": f"{bed(a).get('cpu', '?')} x{bed(a).get('cpu_cores', '?')} {' '.join(bed(a).get('gpus') or [])}".strip(),
        "test_bed_b": f"{bed(b).get('cpu', '?')} x{bed(b).get('cpu_cores', '?')} {' '.join(bed(b).get('gpus') or [])}".strip(),
        "epoch_s_a": a.timing.get("mean_epoch_s"),
        "epoch_s_b": b.timing.get("mean_epoch_s"),
        "train_s_a": a.train_s,
        "train_s_b": b.train_s,
        "accuracy_a": a.metrics["test"]["accuracy"],
        "accuracy_b": b.metrics["test"]["accuracy"],
        "speedup_b_over_a": (a.timing.get("mean_epoch_s") or 0) / (b.timing.get("mean_epoch_s") or float("nan")),
      }
    )
  if not rows:
    raise ValueError(f"{study_a} and {study_b} have no finished model in common")
  md = [
    "# Test beds compared",
    "",
    f"A: `{os.path.basename(os.path.normpath(study_a))}`, "
    f"B: `{os.path.basename(os.path.normpath(study_b))}`; speed-up = time per epoch on A / on B.",
    "",
    _table(
      ["model", "test bed A", "s / epoch A", "test bed B", "s / epoch B", "speed-up", "accuracy A", "accuracy B"],
      [
        [
          r["model"],
          r["test_bed_a"],
          _fmt(r["epoch_s_a"], 1),
          r["test_bed_b"],
          _fmt(r["epoch_s_b"], 1),
          f"x{_fmt(r['speedup_b_over_a'], 2)}",
          _fmt(r["accuracy_a"]),
          _fmt(r["accuracy_b"]),
        ]
        for r in rows
      ],
    ),
    "",
  ]
  with open(out_path, "w") as f:
    f.write("\n".join(md))
  with open(os.path.splitext(out_path)[0] + ".json", "w") as f:
    json.dump(rows, f, indent=2)
  return out_path


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _weights(name):
  if name in ("", "none", None):
    return "random (from scratch)"
  return "ImageNet (download)" if name == "imagenet" else f"file {os.path.basename(str(name).rstrip('/'))}"


def validation_words(runs):
  """How the runs' validation splits were made, from their data records (one phrase, or one per model)."""

  def words(run):
    data = run.metrics.get("data", {})
    key = data.get("validation") or ("patient" if data.get("source") in ("folder", "builtin", "tfds") else None)
    return VALIDATION.get(key, "made in a way the run did not record")

  said = {run.display_name: words(run) for run in runs}
  if len(set(said.values())) == 1:
    return next(iter(said.values()))
  return "; ".join(f"{name}: {text}" for name, text in said.items())


def ood_lines(runs):
  """One line: how many test images each run's out-of-distribution score flagged (metrics.json's `ood`)."""
  said = []
  for run in runs:
    ood = run.metrics.get("ood")
    if ood and ood.get("test_n") is not None:
      said.append(
        f"{run.display_name} {ood['test_flagged']} of {ood['test_n']} (score above {ood['threshold']:.4g})"
        if len(runs) > 1
        else f"{ood['test_flagged']} of {ood['test_n']} (score above {ood['threshold']:.4g})"
      )
  if not said:
    return []
  return [
    "Out of distribution: test images flagged as unlike the training X-rays (Mahalanobis score above the "
    f"validation split's 99th percentile): {'; '.join(said)}.",
    "",
  ]


def _run_row(run):
  model, timing = run.metrics.get("model", {}), run.timing
  head = timing.get("head_phase", {}).get("epochs_run", 0)
  shape = "x".join(str(d) for d in model.get("input_shape", [])) or "-"
  epochs = federated.total_epochs(run)  # a federated run's rounds x local epochs
  return [
    run.display_name,
    shape,
    _weights(model.get("weights")),
    f"{head} + {epochs:g}",
    timing.get("batch_size", "-"),
  ]


def write_report(study_dir, resamples=1000, seed=0, parameter_table=None, ensemble=None, ensemble_space="probability"):
  """Writes the report files into `study_dir`; returns the path of report.md.

  `ensemble`: also average the runs' probabilities (weights chosen on validation); None: as the study
  runner does in its own folders (those with a study.json), and not elsewhere.
  """
  if ensemble is None:
    ensemble = os.path.isfile(os.path.join(study_dir, "study.json"))
  runs, missing = collect.read_study(study_dir)
  if not runs:
    raise FileNotFoundError(f"No finished runs in {study_dir}")
  rows = result_rows(runs, resamples, seed)
  pairs = pairwise(runs)
  makers = {
    "training_curves.png": figures.training_curves,
    "roc_curves.png": figures.roc_curves,
    "confusion_matrices.png": figures.confusion_matrices,
    "epoch_time.png": figures.epoch_time_bars,
    "accuracy_vs_size_and_time.png": figures.accuracy_scatter,
    "explanations.png": lambda runs, path: explanations(runs, study_dir) and path,
  }
  figure_files = {}
  for name, make in makers.items():
    try:  # a figure must never cost the rest of the report
      if make(runs, os.path.join(study_dir, name)):
        figure_files[name] = name
    except Exception as e:
      logging.warning("No %s: %s: %s", name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
  clinical_md, clinical_data, clinical_figures = clinical.sections(
    runs, study_dir, resamples, seed, ensemble, ensemble_space
  )
  federated_md, federated_data, _ = federated.sections(runs, study_dir, resamples, seed)
  with open(os.path.join(study_dir, "results.json"), "w") as f:
    json.dump(
      {
        "results": rows,
        "pairwise": pairs,
        "bootstrap": {"resamples": resamples, "seed": seed},
        "parameter_table": parameter_table or [],
        "missing": missing,
        "clinical": clinical_data,
        "federated": federated_data,
      },
      f,
      indent=2,
      default=_json_default,
    )
  with open(os.path.join(study_dir, "results.csv"), "w", newline="") as f:
    flat = [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()} for r in rows]
    writer = csv.DictWriter(f, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)

  validation = validation_words(runs)
  md = ["# Study report" if len(runs) > 1 else f"# Run report: {runs[0].display_name}", ""]
  if any(r["synthetic"] for r in rows):
    md += ["**SYNTHETIC DATA: these numbers say nothing about chest X-rays.**", ""]
  if missing:
    md += [f"Not finished (left out): {', '.join(missing)}.", ""]
  if parameter_table:
    md += [
      "## Models parameters",
      "",
      "Built at each model's design input (the runs' own counts are in the Time table).",
      "",
      _table(
        ["model", "layers", "hidden size", "MLP size", "heads", "params"],
        [
          [r["model"]]
          + ["-" if r[k] is None else r[k] for k in ("layers", "hidden_size", "mlp_size", "heads")]
          + [f"{r['params']:,}"]
          for r in parameter_table
        ],
      ),
      "",
    ]
  md += [
    "## Runs",
    "",
    "What each model was trained from, at what input size and for how long.",
    "",
    _table(["model", "input", "weights", "epochs (head phase + training)", "batch"], [_run_row(run) for run in runs]),
    "",
  ]
  md += federated_md
  md += [
    "## Results on the test split",
    "",
    f"At threshold 0.5, with 95% bootstrap intervals over test images ({resamples} resamples, seed {seed}).",
    "",
    _table(
      ["model", "test bed"] + list(CI_METRICS) + ["acc. at val threshold"],
      [
        [r["model"], r["test_bed"]]
        + [f"{_fmt(r[k])} [{_fmt(r[k + '_ci'][0])}, {_fmt(r[k + '_ci'][1])}]" for k in CI_METRICS]
        + [f"{_fmt(r['accuracy_at_val_threshold'])} (t={_fmt(r['val_threshold'], 2)})"]
        for r in rows
      ],
    ),
    "",
  ]
  md += ood_lines(runs)
  md += [
    "## Validation versus test",
    "",
    f"The same model on the validation split (used for model choice; {validation}) and on the "
    "test split, threshold 0.5. A large drop means the test images differ from the training "
    "distribution, and that validation scores overstate what the model does on new images.",
    "",
    _table(
      ["model", "val accuracy", "test accuracy", "val specificity", "test specificity", "val AUC", "test AUC"],
      [
        [r["model"]] + [_fmt(r[f"{prefix}{k}"]) for k in ("accuracy", "specificity", "auc") for prefix in ("val_", "")]
        for r in rows
      ],
    ),
    "",
    "## Time",
    "",
    _table(
      ["model", "params", "train time (min)", "s / epoch", "train img/s", "latency ms / image", "inference img/s"],
      [
        [
          r["model"],
          f"{r['params']:,}",
          _fmt(r["train_s"] / 60, 1),
          _fmt(r["mean_epoch_s"], 1),
          _fmt(r["train_images_per_s"], 1),
          _fmt(r["latency_ms_per_image"], 1),
          _fmt(r["inference_images_per_s"], 1),
        ]
        for r in rows
      ],
    ),
    "",
  ]
  beds = {}
  for run in runs:
    t = run.timing.get("testbed", {})
    beds.setdefault(json.dumps(t, sort_keys=True), (t, []))[1].append(run.display_name)
  md += [
    "## Test beds",
    "",
    _table(
      ["models", "CPU", "cores", "RAM (GiB)", "GPU", "peak FLOPS", "backend", "versions"],
      [
        [
          ", ".join(names),
          t.get("cpu", "-"),
          t.get("cpu_cores", "-"),
          t.get("ram_gib", "-"),
          ", ".join(t.get("gpus") or []) or "none",
          "-",
          t.get("backend", "-"),
          ", ".join(f"{k} {v}" for k, v in sorted(t.get("versions", {}).items())),
        ]
        for t, names in beds.values()
      ],
    ),
    "",
  ]
  if pairs:
    md += [
      "## Are the differences real?",
      "",
      "DeLong test for equal AUC and exact McNemar test for equal accuracy (threshold 0.5), on the same test images.",
      "",
      _table(
        ["A", "B", "AUC A - B", "DeLong p", "only A right", "only B right", "McNemar p"],
        [
          [
            p["a"],
            p["b"],
            f"{p['auc_difference']:+.3f}",
            f"{p['delong_p']:.3g}",
            p["a_only_right"],
            p["b_only_right"],
            f"{p['mcnemar_p']:.3g}",
          ]
          for p in pairs
        ],
      ),
      "",
    ]
  md += clinical_md
  data = runs[0].metrics.get("data", {})
  md += [
    "## Data",
    "",
    f"Source: {data.get('source', '-')} ({data.get('name', '-')}); skipped files: "
    f"{data.get('skipped_files', 0)}; validation {validation}.",
    "",
    _table(
      ["split", "NORMAL", "PNEUMONIA", "total"],
      [
        [s, c.get("NORMAL", 0), c.get("PNEUMONIA", c.get("BACTERIA", 0) + c.get("VIRUS", 0)), c.get("total", 0)]
        for s, c in data.get("counts", {}).items()
      ],
    ),
    "",
  ]
  md += [f"- {note}" for note in data.get("notes", [])] + [""]
  md += ["## Figures", ""] + [f"![{name}]({name})" for name in figure_files] + [""]
  if "explanations.png" in figure_files:
    md += [
      "`explanations.png`: Grad-CAM (CNNs) and attention rollout (ViTs) on the same test images, "
      "both classes, right and wrong by the first model; the title gives each model's probability.",
      "",
    ]
  path = os.path.join(study_dir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(md))
  html.write(md, os.path.join(study_dir, "report.html"))
  logging.info("Report written to %s", path)
  return path
