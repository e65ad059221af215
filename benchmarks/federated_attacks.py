"""A misbehaving site against each aggregation strategy: test AUC against clean FedAvg.

  python benchmarks/federated_attacks.py [--epochs=20] [--quick] [--output_dir=runs/federated_attacks]

Trains ViT_scratch with experiments/federated.cfg's site recipe on K=4 IID sites of the built-in
data: once clean with FedAvg, then with site_0 misbehaving (`--bad_sites=1`) as label_flip and as
scaled_update (x10), under FedAvg, FedMedian, FedTrimmedAvg and Krum. Each run's test ROC-AUC,
its difference from the clean run's and DeLong's p for equal AUC on the same test images, the
replies the server refused, and the time. Writes results/federated_attacks.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
ATTACKS = ("label_flip", "scaled_update")


def train(name, args, out, extra):
  run_dir = os.path.join(out, name)
  if not os.path.exists(os.path.join(run_dir, "metrics.json")):
    command = [sys.executable, "-m", "xray_keras.federated", *args, f"--output_dir={run_dir}", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(run_dir, "wall_s.txt"), "w") as f:
      f.write(f"{time.perf_counter() - start:.1f}")
  return run_dir


def test_predictions(run_dir):
  from xray_keras.evaluation import clinical

  _, labels, probabilities = clinical.read_predictions(run_dir)["test"]
  return (np.asarray(labels) > 0).astype(int), np.asarray(probabilities, np.float64)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--epochs", type=float, default=20, help="Epochs in all (rounds x 0.25 local epochs).")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="Smoke recipe, 40 images, 3 sites (2 cores each), 1 round, no run reports; clean FedAvg and scaled_update FedMedian.",
  )
  parser.add_argument("--output_dir", default=os.path.join("runs", "federated_attacks"))
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "federated_attacks.json"))
  args = parser.parse_args()
  from xray_keras.evaluation import metrics, statistics

  if args.quick:
    recipe = [
      "--flagfile=experiments/smoke.cfg",
      "--max_images_per_split=40",
      "--sites=3",
      "--rounds=1",
      "--noreport",
      "--bootstrap_resamples=50",
      "--client_cpus=2",  # one site process on 2 cores
    ]
    plan = [("scaled_update", "fedmedian")]
  else:
    recipe = ["--flagfile=experiments/federated.cfg", f"--rounds={int(round(args.epochs * 4))}"]
    plan = [(attack, strategy) for attack in ATTACKS for strategy in STRATEGIES]
  out = os.path.abspath(args.output_dir)
  runs = {"clean_fedavg": train("clean_fedavg", recipe, out, ["--strategy=fedavg"])}
  for attack, strategy in plan:
    bad = [f"--strategy={strategy}", "--bad_sites=1", f"--bad_kind={attack}", "--bad_scale=10"]
    runs[f"{attack}_{strategy}"] = train(f"{attack}_{strategy}", recipe, out, bad)
  labels, clean = test_predictions(runs["clean_fedavg"])
  rows = {}
  for name, run_dir in runs.items():
    with open(os.path.join(run_dir, "metrics.json")) as f:
      result = json.load(f)
    with open(os.path.join(run_dir, "timing.json")) as f:
      timing = json.load(f)
    rounds = timing["federated"]["rounds"]
    _, probabilities = test_predictions(run_dir)
    refused = sum(len(r.get("refused_sites", [])) for r in rounds)
    with open(os.path.join(run_dir, "wall_s.txt")) as f:
      wall_s = float(f.read())
    with open(os.path.join(run_dir, "history.csv")) as f:
      rounds_run = sum(1 for _ in f) - 1  # all of a resumed run's rounds, not only its last process's
    rows[name] = {
      "test_auc": metrics.roc_auc(labels, probabilities),
      "test_auc_ci95": result["test"]["ci95"]["auc"],
      "auc_minus_clean_fedavg": metrics.roc_auc(labels, probabilities) - metrics.roc_auc(labels, clean),
      "delong_p_vs_clean": None
      if name == "clean_fedavg"
      else statistics.delong_test(labels, probabilities, clean)["p_value"],
      "val_auc": result["val"]["auc"],
      "refused_replies": refused,
      "rounds": rounds_run,
      "wall_s": wall_s,  # of the process that finished the run
      "resumed": timing["resumed"],  # an earlier process was stopped: wall_s covers only the last one
    }
    print(name, json.dumps(rows[name]), flush=True)
  path = common.write_result(
    "federated_attacks", {"quick": args.quick, "recipe": recipe, "sites_bad": ["site_0"], "runs": rows}, args.output
  )
  print(f"Wrote {path}")


if __name__ == "__main__":
  main()
