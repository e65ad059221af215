"""The run directory: its contract, refusing finished runs and resuming interrupted ones.

A finished run directory holds `FINISHED_FILES`: flags.txt, split_manifest.csv, skipped_files.csv,
history.csv, timing.json, metrics.json (written last: it marks a finished run), predictions.csv,
model.keras, samples/ (a few test images as PNG) and run.log; with the options that make them,
`OPTIONAL_FILES`; and the report (`REPORT_FILES` and its figures, `*.png`). checkpoints/ and
backup/ exist only while training is unfinished.
"""

import csv
import datetime
import json
import os
import shutil

from xray_keras.errors import UserError

FINISHED_MARKER = "metrics.json"
FINISHED_FILES = (
  "flags.txt",
  "split_manifest.csv",
  "skipped_files.csv",
  "history.csv",
  "timing.json",
  FINISHED_MARKER,
  "predictions.csv",
  "model.keras",
  "samples",
  "run.log",
)
# --ood, --calibrate, --tta, a pretrained model's phase 1
OPTIONAL_FILES = ("ood.json", "ood.npz", "calibration.json", "predictions_tta.csv", "tta.json", "history_head.csv")
REPORT_FILES = ("report.md", "report.html", "results.csv", "results.json")
BACKUP_DIR = "backup"
CHECKPOINT = os.path.join("checkpoints", "last_good.weights.h5")


def _comparable_flags(text):
  return [line for line in text.splitlines() if not line.startswith(("--overwrite", "--nooverwrite"))]


def prepare(config, plan, synthetic=False):
  """The run's output folder and whether it resumes an interrupted run.

  The default folder is runs/<experiment>/<UTC timestamp>/, with "_synthetic"
  after the experiment name for runs on the built-in synthetic data.

  A finished run (metrics.json present) is refused unless `--overwrite`; an
  interrupted one (a BackupAndRestore backup, no metrics.json) is resumed when
  the flags are the same.
  """
  if plan.num_workers > 1 and not config.output_dir:
    raise UserError("--distribution=multiworker needs an explicit --output_dir shared by all workers.")
  experiment = f"{config.experiment}_synthetic" if synthetic else config.experiment
  path = config.output_dir or os.path.join(
    "runs", experiment, datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
  )
  if not plan.is_chief:
    path = os.path.join(path, f".worker{plan.worker_index}")  # backups only; the chief writes the outputs
  resuming = check(path, config)
  backup = os.path.join(path, BACKUP_DIR)
  if not resuming and os.path.isdir(backup):
    shutil.rmtree(backup)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create output directory {path!r}: {e.strerror}") from None
  return path, resuming


def check(path, config):
  """Whether `path` holds an interrupted run to resume; refuses a finished one, or one with other flags."""
  if os.path.exists(os.path.join(path, FINISHED_MARKER)) and not config.overwrite:
    raise UserError(f"{path} holds a finished run; choose another --output_dir or pass --overwrite.")
  resuming = os.path.isdir(os.path.join(path, BACKUP_DIR)) and not config.overwrite
  if resuming:
    with open(os.path.join(path, "flags.txt")) as f:
      if _comparable_flags(f.read()) != _comparable_flags(config.flags_text):
        raise UserError(
          f"{path} holds an interrupted run with other flags; rerun the same command to resume it, "
          "or choose another --output_dir, or pass --overwrite."
        )
  return resuming


def completed_epochs(run_dir):
  """Epochs finished before an interruption, from BackupAndRestore's metadata."""
  for name in ("training_metadata.json", "training_metadata.json.bkp"):
    try:
      with open(os.path.join(run_dir, BACKUP_DIR, name)) as f:
        return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
      continue
  return 0


def trim_history(path, epochs):
  """Keeps history.csv rows of the first `epochs` epochs, once each (a kill can leave extras)."""
  if not os.path.isfile(path):
    return
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    return
  kept, seen = [rows[0]], set()
  for row in rows[1:]:
    if row and int(row[0]) < epochs and row[0] not in seen:
      seen.add(row[0])
      kept.append(row)
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows(kept)


def read_flags(path):
  """Parses a flags.txt written by a run into `{name: value}`."""
  values = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line.startswith("--"):
        continue
      name, has_value, value = line[2:].partition("=")
      if not has_value:  # absl writes booleans as --name / --noname
        name, value = (name[2:], "false") if name.startswith("no") else (name, "true")
      values[name] = value
  return values
