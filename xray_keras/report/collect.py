"""Read what the report needs from finished run directories."""

import csv
import dataclasses
import json
import os

import numpy as np

from xray_keras.errors import UserError
from xray_keras.evaluation import clinical
from xray_keras.training import run_dir as run_dirs


@dataclasses.dataclass
class RunResult:
  """One finished run: its metrics, test predictions, timing and history."""

  name: str
  run_dir: str
  metrics: dict
  timing: dict
  history: list
  test_labels: np.ndarray
  test_probabilities: np.ndarray
  test_files: list

  val_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
  val_probabilities: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
  val_files: list = dataclasses.field(default_factory=list)
  temperature: float = None  # from calibration.json (--calibrate)

  label: str = ""  # set by read_study when two runs share a model name

  @property
  def display_name(self):
    return self.label or self.metrics["model"].get("display_name", self.name)

  @property
  def params(self):
    return self.metrics["model"]["params"]

  @property
  def threshold(self):
    return self.metrics["test"]["at_val_threshold"]["threshold"]

  @property
  def train_s(self):
    """Training time: phase 1 (if any) and the epochs of `fit`."""
    head = self.timing.get("head_phase", {}).get("total_s") or 0.0
    return head + (self.timing.get("fit_s") or 0.0)


def _read_csv(path):
  if not os.path.isfile(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def read_run(run_dir, name=None):
  """Reads one finished run directory; raises `FileNotFoundError` if it is not finished."""
  with open(os.path.join(run_dir, run_dirs.FINISHED_MARKER)) as f:
    metrics = json.load(f)
  with open(os.path.join(run_dir, "timing.json")) as f:
    timing = json.load(f)
  predictions = clinical.read_predictions(run_dir)
  if predictions and "test" not in predictions:
    raise UserError(f"{os.path.join(run_dir, clinical.PREDICTIONS)} has no test split: not a run's predictions.")
  empty = ([], np.zeros(0, int), np.zeros(0))
  test_files, test_labels, test_probabilities = predictions.get("test", empty)
  val_files, val_labels, val_probabilities = predictions.get("val", empty)
  history = [
    {k: float(v) for k, v in r.items() if v not in ("", None)} for r in _read_csv(os.path.join(run_dir, "history.csv"))
  ]
  return RunResult(
    name=name or metrics["model"]["name"],
    run_dir=run_dir,
    metrics=metrics,
    timing=timing,
    history=history,
    test_labels=test_labels,
    test_probabilities=test_probabilities,
    test_files=test_files,
    val_labels=val_labels,
    val_probabilities=val_probabilities,
    val_files=val_files,
    temperature=clinical.temperature(run_dir),
  )


def read_study(study_dir):
  """Finished runs of a study folder (or one run folder), in the study's model order; unfinished ones apart."""
  if os.path.isfile(os.path.join(study_dir, run_dirs.FINISHED_MARKER)):
    return [read_run(study_dir)], []
  order = []
  study_json = os.path.join(study_dir, "study.json")
  if os.path.isfile(study_json):
    with open(study_json) as f:
      order = [(m, s["run_dir"]) for m, s in json.load(f)["runs"].items()]
  else:
    order = [(d, d) for d in sorted(os.listdir(study_dir)) if os.path.isdir(os.path.join(study_dir, d))]
  runs, missing = [], []
  for name, folder in order:
    path = os.path.join(study_dir, folder)
    if os.path.isfile(os.path.join(path, run_dirs.FINISHED_MARKER)):
      runs.append(read_run(path, name))
    else:
      missing.append(name)
  names = [r.display_name for r in runs]
  for run in runs:
    if names.count(run.display_name) > 1:
      run.label = f"{run.display_name} ({run.name})"
  return runs, missing
