"""Registers the provisioned sites' keys with a SuperLink and writes the roster the ServerApp enforces.

  python -m xray_keras.federated.register --superlink_dir=federation/superlink --connection=local \
      --sites=3 --roster=roster.json

Runs `flwr supernode register <superlink_dir>/site_<k>.pub <connection>` for each site, on the
SuperLink's host (the connection names the SuperLink's loopback address in $FLWR_HOME/config.toml),
and writes `{node id: "site_<k>"}` to the roster; give the ServerApp `--roster=<that file>`.
"""

import os
import sys

from absl import app, flags

from xray_keras.errors import UserError
from xray_keras.federated import credentials, deployment
from xray_keras.federated import roster as federated_roster

_DIR = flags.DEFINE_string("superlink_dir", None, "The superlink/ folder written by provision (site_<k>.pub).")
_CONNECTION = flags.DEFINE_string("connection", None, "The SuperLink connection's name in $FLWR_HOME/config.toml.")
_SITES = flags.DEFINE_integer("sites", None, "Number of sites to register: site_0 .. site_<sites-1>.", lower_bound=1)
_ROSTER = flags.DEFINE_string("roster", "roster.json", "The roster file to write.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not (_DIR.value and _CONNECTION.value and _SITES.value):
    raise app.UsageError("--superlink_dir, --connection and --sites are required.")
  log_dir = os.path.dirname(os.path.abspath(_ROSTER.value))
  try:
    parties = {credentials.SUPERLINK: _DIR.value}
    roster = deployment.register(parties, _SITES.value, dict(os.environ), log_dir, _CONNECTION.value)
  except UserError as e:
    sys.exit(f"error: {e}")
  federated_roster.write(_ROSTER.value, roster)
  print(f"Registered {len(roster)} sites; roster: {_ROSTER.value} (give the ServerApp --roster={_ROSTER.value})")


if __name__ == "__main__":
  app.run(main)
