"""One console line per epoch: epoch k of N, elapsed time, the run's ETA and the metrics that matter.

The full metrics of every epoch stay in history.csv and run.log (`DETAIL`, a logger that writes
to the run's log file only). A study passes `XRAY_STUDY_PROGRESS` to each model's run, so its
lines say which model of the study they belong to and how many follow it.
"""

import json
import logging as std_logging
import os
import statistics
import time

import keras
from absl import logging

from xray_keras.console import STUDY_ENV

# Records of this logger reach run.log (trainer.log_to_file) but not the console.
DETAIL = std_logging.getLogger("xray_keras.detail")
DETAIL.propagate = False
SHOWN = ("loss", "auc", "val_loss", "val_auc")


def clock(seconds):
  """`1:02:03` or `2:03`."""
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta(epoch_seconds, remaining):
  """Seconds left for `remaining` epochs: the median steady epoch (the first, which compiles, only
  while it is the only one)."""
  steady = epoch_seconds[1:] or epoch_seconds
  return statistics.median(steady) * remaining if steady else 0.0


def study_eta(study, left):
  """What follows this model in its study: the study's ETA when every later model has been timed in
  it (an earlier seed of the same model), else how many are still untimed."""
  later = study["count"] - study["index"]
  if not later:
    return ""
  untimed = study.get("later_untimed", later)
  if not untimed:
    return f", study ETA {clock(left + study.get('later_s', 0.0))}"
  timed = later - untimed
  known = f", {clock(study.get('later_s', 0.0))} for {timed} timed" if timed else ""
  return f" (then {later} more model{'s' if later > 1 else ''}{known}; {untimed} not yet timed)"


def study_context():
  """`{"index", "count", "name", "later_s", "later_untimed"}` of the study running this process, or None."""
  text = os.environ.get(STUDY_ENV)
  if not text:
    return None
  try:
    return json.loads(text)
  except ValueError:
    return None


class ProgressLine(keras.callbacks.Callback):
  """Prints `epoch k/N ... elapsed, ETA ... | loss, val_auc` once per epoch.

  Args:
    epochs: int. Epochs of the whole fit (a resumed run counts from its first epoch too).
  """

  def __init__(self, epochs):
    super().__init__()
    self.epochs = epochs
    self.seconds = []
    self.study = study_context()

  def on_train_begin(self, logs=None):
    self._start = time.perf_counter()

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch_start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._epoch_start)
    elapsed = time.perf_counter() - self._start
    left = eta(self.seconds, self.epochs - epoch - 1)
    metrics = ", ".join(f"{k} {logs[k]:.4f}" for k in SHOWN if isinstance((logs or {}).get(k), float))
    where = f"epoch {epoch + 1}/{self.epochs}"
    if self.study:
      where = f"model {self.study['index']}/{self.study['count']} {self.study['name']}, {where}"
    left_text = f"ETA {clock(left)}"
    if self.study:
      left_text += study_eta(self.study, left)
    logging.info("%s: %.1fs, %s elapsed, %s | %s", where, self.seconds[-1], clock(elapsed), left_text, metrics)
