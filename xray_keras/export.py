"""Export a finished run: a versioned SavedModel for TF Serving, or ONNX, LiteRT or OpenVINO (float32 or int8).

python -m xray_keras.export --run_dir=runs/vit_scratch/<timestamp> [--export_dir=saved_models]
python -m xray_keras.export --run_dir=runs/vit_scratch/<timestamp> --format=onnx --quantize=int8
"""

import contextlib
import os
import sys

from absl import app, flags, logging

from xray_keras import path_flags
from xray_keras.errors import UserError
from xray_keras.serving import runtime

_RUN_DIR = path_flags.DEFINE_path(
  "run_dir", None, "A finished run directory (holds metrics.json and model.keras).", required=True
)
_EXPORT_DIR = path_flags.DEFINE_path("export_dir", "saved_models", "Base folder: <export_dir>/<model>/<version>/.")
_MODEL_NAME = flags.DEFINE_string("model_name", "", "Name under export_dir; empty: the run's model name.")
_FORMAT = flags.DEFINE_enum(
  "format",
  "saved_model",
  list(runtime.FORMATS),
  "saved_model (TF Serving, <model>/<version>/) or a file for a runtime without TensorFlow (<model>-<format>/<version>/).",
)
_QUANTIZE = flags.DEFINE_enum(
  "quantize",
  "",
  ["", *runtime.QUANTIZE],
  "int8: post-training quantization (onnx, openvino: calibrated on the run's validation images; litert: int8 "
  "weights, activations quantized at run time); int8_full: LiteRT's integer-only file, calibrated likewise.",
)


@contextlib.contextmanager
def _stdout_to_stderr():
  """Sends what libraries print meanwhile (NNCF's progress, converters' notes) to stderr, file descriptor
  and all, so that standard output holds the exported path alone."""
  sys.stdout.flush()
  saved = os.dup(1)
  os.dup2(2, 1)
  try:
    yield
  finally:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    with _stdout_to_stderr():
      from xray_keras.serving import formats

      path = formats.export(
        _RUN_DIR.value, _FORMAT.value, _QUANTIZE.value, _EXPORT_DIR.value, _MODEL_NAME.value or None
      )
  except UserError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: {e.strerror or e}: {e.filename}" if e.filename else f"error: {e.strerror or e}")
  print(path)


if __name__ == "__main__":
  app.run(main)
