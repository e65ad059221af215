"""Token authentication for the simulation runtime's local Ray cluster.

Ray's GCS and raylets listen on every interface of the machine. With `RAY_AUTH_MODE=token` (Ray 2.52
and later) they answer only callers holding the cluster's token, here a fresh one per run kept in
the process's environment (readable by its own user only). Ray reads the mode once, when it is
first imported: `enable` must run before anything imports Ray.
"""

import os
import secrets
import sys


def enable():
  """Sets a fresh token unless the user chose a mode or Ray is already imported; returns whether it is on."""
  if "RAY_AUTH_MODE" in os.environ:
    return os.environ["RAY_AUTH_MODE"] == "token"
  if "ray" in sys.modules:
    return False
  os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
  return True
