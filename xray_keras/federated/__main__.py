"""Federated training of a study model across K simulated sites with Flower.

  python -m xray_keras.federated --flagfile=experiments/federated.cfg [--flag=value ...]

Every flag of `python -m xray_keras.run` applies (model, data, optimizer, ...), plus the
federated ones (--sites, --partition, --rounds, --local_epochs, --strategy, --privacy, ...).
"""

import dataclasses
import datetime
import os
import sys

from absl import app, flags, logging

from xray_keras import flags as xray_flags
from xray_keras.errors import UserError
from xray_keras.federated import flags as federated_flags

flags.adopt_module_key_flags(xray_flags)
flags.adopt_module_key_flags(federated_flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  fed = federated_flags.federated_config()
  if fed.runtime == "deployment" and not flags.FLAGS.output_dir:  # the SuperLink's ServerApp needs the folder
    flags.FLAGS.output_dir = os.path.join(
      "runs", xray_flags.run_config().experiment, datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    )
  config = xray_flags.run_config()
  config = dataclasses.replace(config, flags_text=config.flags_text + federated_flags.flags_text())
  try:
    federated_flags.check(config, fed)  # before the imports below, which take seconds
    if fed.runtime == "simulation":
      from xray_keras.federated import ray_auth

      ray_auth.enable()  # before Ray is imported
    from xray_keras.federated import run  # Imports Keras, the backend, Flower and Ray.

    if fed.runtime == "simulation":
      run.train_and_evaluate(config, fed)
      return
    from xray_keras.federated import deployment

    deployment.launch(config.output_dir, config.flags_text, fed)
    if not os.path.exists(os.path.join(config.output_dir, "metrics.json")):
      raise UserError(
        f"The federated run did not finish; see {os.path.join(config.output_dir, 'run.log')} and "
        f"the logs in {os.path.join(config.output_dir, deployment.FLOWER_DIR)}."
      )
    logging.info("Run folder: %s", config.output_dir)
  except UserError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except OSError as e:
    message = f"{e.strerror or e}: {e.filename}" if e.filename else f"{e.strerror or e}"
    logging.error("%s", message)
    sys.exit(f"error: {message}")


if __name__ == "__main__":
  app.run(main)
