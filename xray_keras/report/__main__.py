"""Writes a study folder's report: `python -m xray_keras.report --study_dir=runs/study`."""

import sys

from absl import app, flags

from xray_keras import path_flags
from xray_keras.errors import UserError

_STUDY_DIR = path_flags.DEFINE_path(
  "study_dir", "runs/study", "A study folder (from --models) or any folder of run folders."
)
_RESAMPLES = flags.DEFINE_integer(
  "resamples", 1000, "Bootstrap resamples for the confidence intervals.", lower_bound=10
)
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_COMPARE_RUNS = flags.DEFINE_list(
  "compare_runs",
  [],
  "Two study folders of the same models on two test beds (e.g. CPU, GPU): writes <first>/compare_test_beds.md.",
)
_ENSEMBLE = flags.DEFINE_bool(
  "ensemble",
  None,
  "Add ensembles of the study's runs (all models; each model's seeds), weights chosen on validation; "
  "unset: yes in a study runner's folder (it has a study.json), as the runner's own report, else no.",
)
_ENSEMBLE_SPACE = flags.DEFINE_enum(
  "ensemble_space",
  "probability",
  ["probability", "logit"],
  "Average the probabilities, or their logits (a geometric-style mean that lets a confident model weigh more).",
)
_PARAMETER_TABLE = flags.DEFINE_bool("parameter_table", True, "Build the study's models to count their parameters.")


def main(argv):
  del argv
  from xray_keras.report import collect, write

  try:
    if _COMPARE_RUNS.value:
      if len(_COMPARE_RUNS.value) != 2:
        raise ValueError("--compare_runs takes two study folders: A,B")
      a, b = _COMPARE_RUNS.value
      print(write.compare_test_beds(a, b, f"{a.rstrip('/')}/compare_test_beds.md"))
      return
    table = None
    if _PARAMETER_TABLE.value:
      from xray_keras.models import table as params

      runs, _ = collect.read_study(_STUDY_DIR.value)
      table = params.rows([r.name for r in runs])
    print(
      write.write_report(_STUDY_DIR.value, _RESAMPLES.value, _SEED.value, table, _ENSEMBLE.value, _ENSEMBLE_SPACE.value)
    )
  except (OSError, ValueError, UserError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
