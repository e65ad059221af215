"""Export a finished run as a versioned SavedModel for TF Serving.

python -m xray_keras.export --run_dir=runs/vit_scratch/<timestamp> [--export_dir=saved_models]
"""

import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.errors import UserError

_RUN_DIR = path_flags.DEFINE_path(
  "run_dir", None, "A finished run directory (holds metrics.json and model.keras).", required=True
)
_EXPORT_DIR = path_flags.DEFINE_path("export_dir", "saved_models", "Base folder: <export_dir>/<model>/<version>/.")
_MODEL_NAME = flags.DEFINE_string("model_name", "", "Name under export_dir; empty: the run's model name.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from xray_keras.serving import export

  try:
    path = export.export_run(_RUN_DIR.value, _EXPORT_DIR.value, _MODEL_NAME.value or None)
  except UserError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: {e.strerror or e}: {e.filename}" if e.filename else f"error: {e.strerror or e}")
  print(path)


if __name__ == "__main__":
  app.run(main)
