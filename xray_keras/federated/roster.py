"""The federation's roster: the SuperNode ids the operator registered, and a client manager that sees only them.

`flwr supernode register` assigns each registered site key a node id; the deployment runtime
writes them to `roster.json` (`{"<node id>": "site_<k>", ...}`) and the ServerApp takes replies
only from those nodes (`--roster`).
"""

import json
import os
import re
import time

from absl import logging
from flwr.server.client_manager import ClientManager

from xray_keras.errors import UserError

_REGISTERED = re.compile(r"SuperNode (\d+) registered successfully")


def node_id_of(register_output):
  """The node id `flwr supernode register` printed, or None."""
  match = _REGISTERED.search(register_output)
  return int(match.group(1)) if match else None


def write(path, roster):
  """Writes `{node id: site name}` as JSON, readable by its owner only."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  with os.fdopen(fd, "w") as f:
    json.dump({str(k): v for k, v in roster.items()}, f, indent=1)


def read(path, sites):
  """`{node id: site name}` of a roster file, which must name exactly `sites` nodes."""
  try:
    with open(path) as f:
      roster = {int(k): str(v) for k, v in json.load(f).items()}
  except (OSError, ValueError, AttributeError) as e:
    raise UserError(f"--roster={path}: not a roster file ({e}).") from None
  if len(roster) != sites:
    raise UserError(f"--roster={path} names {len(roster)} sites, --sites={sites}.")
  return roster


class RosterView(ClientManager):
  """The connected nodes of `inner` that are on `roster`; others are logged once and never sampled."""

  def __init__(self, inner, roster, round_):
    self.inner, self.roster, self.round = inner, roster, round_
    for proxy in list(inner.all().values()):
      if proxy.node_id not in roster:
        logging.warning(
          "Round %d: node %d is connected but not on the roster: sent nothing, its replies refused.",
          round_,
          proxy.node_id,
        )

  def all(self):
    return {cid: p for cid, p in self.inner.all().items() if p.node_id in self.roster}

  def num_available(self):
    return len(self.all())

  def wait_for(self, num_clients, timeout=86400):
    deadline = time.monotonic() + timeout
    while self.num_available() < num_clients:
      if time.monotonic() >= deadline:
        return False
      self.inner.wait_for(self.inner.num_available() + 1, timeout=min(1.0, max(deadline - time.monotonic(), 0)))
    return True

  def sample(self, num_clients, min_num_clients=None, criterion=None):
    self.wait_for(num_clients if min_num_clients is None else min_num_clients)

    class OnRoster:
      def select(_, client):
        return client.node_id in self.roster and (criterion is None or criterion.select(client))

    return self.inner.sample(num_clients, min_num_clients=0, criterion=OnRoster())

  def register(self, client):
    return self.inner.register(client)

  def unregister(self, client):
    self.inner.unregister(client)
