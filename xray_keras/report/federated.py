"""The report's federated section: each federated run against the central run of the same model.

A federated run folder (from `python -m xray_keras.federated`) has a `federated` block in its
timing.json. Its central baseline is the finished central run of the same model with the same
total local epochs (rounds x local epochs), the one with the same `--seed` where there are several,
else the central run of that model with the most epochs.
"""

import math
import os

import numpy as np

from xray_keras.evaluation import statistics
from xray_keras.report.clinical import _ci, _f, _table
from xray_keras.training import run_dir as run_dirs


def settings(run):
  """The run's `federated` timing block, or None for a central run."""
  return run.timing.get("federated")


def _rounds(fed):
  """Rounds run: timing.json's `rounds` is the per-round log."""
  return len(fed["rounds"]) if isinstance(fed["rounds"], list) else int(fed["rounds"])


def total_epochs(run):
  fed = settings(run)
  return _rounds(fed) * fed["local_epochs"] if fed else int(run.timing.get("epochs_run", 0))


def _model(run):
  return run.metrics["model"]["name"]


def _seed(run):
  """The run's `--seed` from its flags.txt, or None."""
  try:
    return run_dirs.read_flags(os.path.join(run.run_dir, "flags.txt")).get("seed")
  except OSError:
    return None


def baseline(run, runs):
  """The central run `run` is measured against, or None."""
  central = [r for r in runs if settings(r) is None and _model(r) == _model(run)]
  same = [r for r in central if math.isclose(total_epochs(r), total_epochs(run))]
  same = [r for r in same if _seed(r) == _seed(run)] or same
  return (same or sorted(central, key=total_epochs, reverse=True) or [None])[0]


def _partition(fed):
  alpha = f" (alpha {fed['partition_alpha']:g})" if fed["partition"] != "iid" else ""
  return f"{fed['partition']}{alpha}"


def _strategy(fed):
  mu = f" (mu {fed['proximal_mu']:g})" if fed["strategy"] == "fedprox" else ""
  privacy = f", {fed['privacy']}" if fed.get("privacy", "none") != "none" else ""
  kept = ", sites keep optimizer state" if fed.get("keep_optimizer_state") else ""
  return f"{fed['strategy']}{mu}{privacy}{kept}"


def rows(runs, resamples, seed):
  """One dict per federated run: test accuracy/AUC with CIs, DeLong and McNemar against central, cost."""
  out = []
  for run in runs:
    fed = settings(run)
    if fed is None:
      continue
    row = {
      "run": run.name,
      "model": run.metrics["model"].get("display_name", _model(run)),
      "sites": fed["sites"],
      "partition": _partition(fed),
      "strategy": _strategy(fed),
      "rounds": _rounds(fed),
      "local_epochs": fed["local_epochs"],
      "batch_size": run.timing.get("batch_size"),
      "total_epochs": total_epochs(run),
      "val_auc": run.metrics.get("val", {}).get("auc"),
      **statistics.accuracy_auc(run.test_labels, run.test_probabilities, 0.5, resamples, seed),
      "first_round_s": run.timing.get("first_round_s"),
      "mean_round_s": fed.get("mean_round_s"),
      "mb_sent_per_round": fed["bytes_sent_per_round"] / 1e6,
      "mb_received_per_round": (
        fed["bytes_received_per_round"] / 1e6 if fed.get("bytes_received_per_round") is not None else None
      ),
      "train_min": run.train_s / 60,
      "central": None,
    }
    central = baseline(run, runs)
    if central is not None and np.array_equal(central.test_labels, run.test_labels):
      delong = statistics.delong_test(run.test_labels, run.test_probabilities, central.test_probabilities)
      mcnemar = statistics.mcnemar_test(
        run.test_labels, run.test_probabilities >= 0.5, central.test_probabilities >= 0.5
      )
      row.update(
        {
          "central": central.name,
          "central_epochs": total_epochs(central),
          "central_auc": delong["auc_b"],
          "auc_minus_central": delong["difference"],
          "delong_p": delong["p_value"],
          "mcnemar_p": mcnemar["p_value"],
          "central_train_min": central.train_s / 60,
        }
      )
    out.append(row)
  return out


def site_rows(runs):
  """Images, patients and class counts of every site, for each distinct partition."""
  seen, out = set(), []
  for run in runs:
    fed = settings(run)
    if fed is None:
      continue
    key = (fed["partition"], fed["partition_alpha"], fed["partition_seed"], fed["sites"])
    if key in seen:
      continue
    seen.add(key)
    for site in fed.get("site_table", []):
      out.append({"partition": _partition(fed), **site})
  return out


def sections(runs, study_dir, resamples, seed):
  """Markdown lines, a dict for results.json and the figure files written (none without federated runs)."""
  from xray_keras.report import figures

  data = {"runs": rows(runs, resamples, seed), "sites": site_rows(runs)}
  if not data["runs"]:
    return [], {}, []
  md = [
    "## Federated training against central training",
    "",
    "Each federated run (Flower; validation and test central as in the study) beside the central run of the same "
    "model with the same total local epochs. Test at threshold 0.5 with 95% bootstrap intervals; DeLong for equal "
    "AUC and exact McNemar for equal accuracy against the central run, on the same test images. Round time is the "
    "mean from the second round on (the first also starts the sites); bytes are the weights sent to and received "
    "from the sites per round.",
    "",
    _table(
      [
        "run",
        "model",
        "partition",
        "strategy",
        "sites",
        "rounds x local epochs",
        "site batch",
        "val AUC",
        "test accuracy",
        "test AUC",
        "central run: AUC (epochs)",
        "AUC - central",
        "DeLong p",
        "McNemar p",
        "s / round",
        "MB sent / round",
        "MB received / round",
        "train min (central)",
      ],
      [
        [
          r["run"],
          r["model"],
          r["partition"],
          r["strategy"],
          r["sites"],
          f"{r['rounds']} x {r['local_epochs']:g}",
          r["batch_size"],
          _f(r["val_auc"]),
          _ci(r["accuracy"], r["accuracy_ci"]),
          _ci(r["auc"], r["auc_ci"]),
          f"{r['central']}: {_f(r['central_auc'])} ({r['central_epochs']})" if r["central"] else "no central run",
          f"{r['auc_minus_central']:+.3f}" if r["central"] else "-",
          f"{r['delong_p']:.3g}" if r["central"] else "-",
          f"{r['mcnemar_p']:.3g}" if r["central"] else "-",
          _f(r["mean_round_s"], 1),
          _f(r["mb_sent_per_round"], 2),
          _f(r["mb_received_per_round"], 2) if r["mb_received_per_round"] is not None else "masked",
          f"{_f(r['train_min'], 1)} ({_f(r['central_train_min'], 1) if r['central'] else '-'})",
        ]
        for r in data["runs"]
      ],
    ),
    "",
  ]
  if data["sites"]:
    classes = [k for k in data["sites"][0] if k not in ("partition", "site", "images", "patients")]
    md += [
      "Sites of each partition (train split only, dealt by patient):",
      "",
      _table(
        ["partition", "site", "images", "patients"] + classes,
        [
          [s["partition"], s["site"], s["images"], s["patients"]] + [s.get(c, 0) for c in classes]
          for s in data["sites"]
        ],
      ),
      "",
    ]
  written = []
  try:
    series = {}
    for run in runs:
      fed = settings(run)
      if fed is None and not any(settings(f) and baseline(f, runs) is run for f in runs):
        continue
      step = fed["local_epochs"] if fed else 1
      x = [(h["round"] if fed else h["epoch"] + 1) * step for h in run.history]
      label = f"{run.name}: {_partition(fed)}, {_strategy(fed)}" if fed else f"{run.name}: central"
      series.setdefault(run.metrics["model"].get("display_name", _model(run)), []).append(
        (
          label,
          x,
          [h.get("val_auc", np.nan) for h in run.history],
          [h.get("val_loss", np.nan) for h in run.history],
          fed is None,
        )
      )
    path = figures.federated_curves(series, os.path.join(study_dir, "federated_curves.png"))
    written.append(os.path.basename(path))
    md += [
      "![federated_curves.png](federated_curves.png)",
      "",
      "Validation AUC and loss of the global model after each round, against the central run's after each "
      "epoch, both over the epochs of local training so far.",
      "",
    ]
  except Exception as e:  # a figure must never cost the report
    md += [f"(No federated curves: {type(e).__name__}.)", ""]
  return md, data, written
