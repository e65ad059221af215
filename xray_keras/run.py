"""Train, evaluate and time one study model.

  python -m xray_keras.run --flagfile=experiments/vit_scratch.cfg [--flag=value ...]
  python -m xray_keras.run --flagfile=experiments/study.cfg [--models=cnn_scratch,vit_scratch]

Without --data_dir it runs on the built-in real X-rays (64 px). See README.md.
"""

import os
import sys

from absl import app, flags, logging

from xray_keras import flags as xray_flags
from xray_keras.errors import UserError

flags.adopt_module_key_flags(xray_flags)  # --helpshort lists them


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = xray_flags.run_config()
  try:
    if xray_flags.study_models():
      from xray_keras import study

      study_dir = config.output_dir or os.path.join("runs", xray_flags.study_name())
      study.run(
        xray_flags.study_models(),
        study_dir,
        xray_flags.__name__,
        config.overwrite,
        xray_flags.bootstrap_resamples(),
        xray_flags.overrides(),
        xray_flags.seeds(),
      )
      return
    if config.output_dir and config.train.distribution != "multiworker":
      from xray_keras.training import run_dir

      run_dir.check(config.output_dir, config)  # before the imports below, which take seconds
    from xray_keras.data import loader

    loader.check_early(config.data)
    from xray_keras import pipeline  # Imports Keras and the backend.

    pipeline.train_and_evaluate(config)
  except UserError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except OSError as e:  # a write or read the checks above could not foresee
    message = f"{e.strerror or e}: {e.filename}" if e.filename else f"{e.strerror or e}"
    logging.error("%s", message)
    sys.exit(f"error: {message}")


if __name__ == "__main__":
  app.run(main)
