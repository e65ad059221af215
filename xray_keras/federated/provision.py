"""Provisions a federation: its certificate authority, the SuperLink's TLS certificate, one key pair per site.

  python -m xray_keras.federated.provision --sites=3 --out=federation --server_name=superlink.example.org

Writes <out>/ca/, <out>/superlink/ and <out>/site_<k>/, each holding only what that party needs
(`credentials.py` lists them); docs/federated.md has the commands that use them.
"""

import os
import sys

from absl import app, flags

from xray_keras.errors import UserError
from xray_keras.federated import credentials

_SITES = flags.DEFINE_integer("sites", None, "Number of sites (SuperNodes).", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "New folder for the federation's parties.")
_SERVER_NAME = flags.DEFINE_list("server_name", ["localhost"], "DNS names the SuperLink's certificate holds.")
_SERVER_IPS = flags.DEFINE_list("server_ips", ["127.0.0.1"], "IP addresses the SuperLink's certificate holds.")
_VALID_DAYS = flags.DEFINE_integer("valid_days", credentials.DAYS, "Days the certificates stay valid.", lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if _SITES.value is None or not _OUT.value:
    raise app.UsageError("--sites and --out are required.")
  try:
    folders = credentials.provision(_OUT.value, _SITES.value, _SERVER_NAME.value, _SERVER_IPS.value, _VALID_DAYS.value)
  except UserError as e:
    sys.exit(f"error: {e}")
  print(f"Wrote {len(folders)} folders under {_OUT.value}: give superlink/ to the server, site_<k>/ to site k;")
  print(f"keep {os.path.join(_OUT.value, credentials.CA, 'ca.key')} offline (it signs new server certificates).")


if __name__ == "__main__":
  app.run(main)
