"""Prints the models' parameter table: `python -m xray_keras.models [--format=json]`."""

import json

from absl import app, flags

from xray_keras.models import table

_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"], "Output format.")
_ONLY = flags.DEFINE_list("only", [], "Registry names to include; default all.")


def main(argv):
  del argv
  rows = table.rows(_ONLY.value or None)
  print(json.dumps(rows, indent=2) if _FORMAT.value == "json" else table.format_text(rows))


if __name__ == "__main__":
  app.run(main)
