"""The server side: Flower's strategies around a recorder, and the ServerApp that runs them.

`Recorded` wraps the chosen strategy (FedAvg, FedProx, FedAdam, FedAdagrad, or the robust FedMedian,
FedTrimmedAvg and Krum, optionally inside Flower's client-side fixed-clipping DP wrapper) and, for
every round, measures the time from the fit instructions to the aggregate, the bytes of weights
sent to and received from the sites, the sites that failed or did not reply in time, and hands the
global weights to `on_round` (central validation, history, checkpoint).

What it lets in: with a roster (the node ids the operator registered), the strategy samples only
those nodes and any other connected node gets nothing and is named in the log; a reply from a node
that was not sent the round's instructions is refused. Before aggregating it refuses a reply that
could break the model (arrays unlike the model's in number, shape or dtype; NaN or infinity; an
update beyond the round's norm bound, `validation.update_bound`), naming the site and the reason.
A round with fewer usable replies than `min_replies` keeps the weights it started from; an
aggregate that is not finite, or one that `on_round` finds predicting NaN or infinity, stops the
run (`fatal`), naming the round and the sites it took.
"""

import collections
import time

import numpy as np
from absl import logging
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server import strategy as strategies
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow

from xray_keras.federated import validation
from xray_keras.federated.roster import RosterView

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedadagrad", "fedmedian", "fedtrimmedavg", "krum")
PRIVACY = ("none", "dp", "secagg")


def _bytes(parameters):
  return sum(len(t) for t in parameters.tensors)


def _per_site(results, name, cast):
  """`{site: metric}` of the sites' replies; 0 where a site did not report it."""
  return {str(res.metrics.get("site")): cast(res.metrics.get(name, 0)) for _, res in results}


class Recorded(strategies.Strategy):
  """Delegates to `inner`; records each round and calls `on_round(round, weights, record)`."""

  def __init__(
    self,
    inner,
    on_round,
    first_round=0,
    dtypes=None,
    secure=False,
    sites=0,
    wait_s=120.0,
    min_replies=1,
    shapes=None,
    max_update_norm=0.0,
    max_update_ratio=0.0,
    roster=None,
  ):
    self.inner, self.on_round, self.first_round = inner, on_round, first_round
    self.dtypes, self.secure, self.expected, self.wait_s = dtypes, secure, sites, wait_s
    self.min_replies, self.shapes = min_replies, shapes
    self.max_update_norm, self.max_update_ratio = max_update_norm, max_update_ratio
    self.roster = roster  # {node id: site name} the operator registered, or None (simulation)
    self.sites = dict(roster or {})  # node id -> site name, from the roster or learnt from replies
    self.record = {}
    self.fatal = ""  # why the run must stop: an aggregate that is not finite, or a model that predicts NaN
    self.accepted_norms = collections.deque(maxlen=validation.RECENT_ROUNDS)  # update norms taken, by round

  def __repr__(self):
    return f"Recorded({self.inner!r})"

  def initialize_parameters(self, client_manager):
    return self.inner.initialize_parameters(client_manager)

  def configure_fit(self, server_round, parameters, client_manager):
    if self.fatal:
      return []
    if self.roster is not None:
      client_manager = RosterView(client_manager, self.roster, self.first_round + server_round)
    # Flower sizes the sample from the sites connected so far: give the others time to connect.
    if self.expected and not client_manager.wait_for(self.expected, timeout=self.wait_s):
      logging.warning(
        "Round %d: %d of %d sites connected after %.0fs; going on with them.",
        self.first_round + server_round,
        client_manager.num_available(),
        self.expected,
        self.wait_s,
      )
    instructions = self.inner.configure_fit(server_round, parameters, client_manager)
    self.record = {
      "start": time.perf_counter(),
      "sampled": [p.node_id for p, _ in instructions],
      "bytes_sent": sum(_bytes(ins.parameters) for _, ins in instructions),
      "sent": parameters_to_ndarrays(parameters),
    }
    return instructions

  def _name(self, proxy, res):
    """The site's name: the roster's, else what the site reported, else its node id."""
    if proxy.node_id in self.sites:
      return self.sites[proxy.node_id]
    return str(res.metrics.get("site", f"node {proxy.node_id}"))

  def _usable(self, server_round, results):
    r = self.first_round + server_round
    usable, refused, norms = [], [], {}
    sampled = set(self.record.get("sampled", []))
    sent = self.record.get("sent")
    for proxy, res in results:
      site = self._name(proxy, res)
      if proxy.node_id not in sampled:  # with a roster, only roster nodes are sampled (`RosterView`)
        reason = f"node {proxy.node_id} was not sent this round's instructions"
      elif self.secure:  # SecAgg+ hands over the masked sum only: no site's weights to inspect
        reason = ""
      else:
        arrays = parameters_to_ndarrays(res.parameters)
        reason = validation.refusal(arrays, self.shapes or [a.shape for a in sent], self.dtypes)
        if not reason and sent is not None:
          norms[proxy.node_id] = validation.norm(arrays, sent)
      if reason:
        logging.warning("Round %d: refused the reply of %s: %s.", r, site, reason)
        refused.append(site)
      else:
        usable.append((proxy, res))
    if norms:
      recent = [n for past in self.accepted_norms for n in past]
      bound, why = validation.update_bound(
        list(norms.values()), validation.norm(sent), self.max_update_norm, self.max_update_ratio, recent
      )
      kept = []
      for proxy, res in usable:
        if norms[proxy.node_id] > bound:
          site = self._name(proxy, res)
          logging.warning(
            "Round %d: refused the reply of %s: update norm %.4g exceeds %.4g (%s).",
            r,
            site,
            norms[proxy.node_id],
            bound,
            why,
          )
          refused.append(site)
        else:
          kept.append((proxy, res))
      usable = kept
      self.accepted_norms.append([norms[proxy.node_id] for proxy, _ in usable])
    return usable, refused

  def aggregate_fit(self, server_round, results, failures):
    record = self.record
    replied = []
    for proxy, res in results:
      self.sites.setdefault(proxy.node_id, str(res.metrics.get("site", proxy.node_id)))
      replied.append(proxy.node_id)
    missing = [n for n in record.get("sampled", []) if n not in replied]
    names = [self.sites.get(n, f"node {n}") for n in missing]
    if missing:
      logging.warning(
        "Round %d: %d of %d sites did not reply (%s); aggregating the other %d.",
        self.first_round + server_round,
        len(missing),
        len(record["sampled"]),
        ", ".join(names),
        len(results),
      )
    usable, refused = self._usable(server_round, results)
    if len(usable) < self.min_replies:
      logging.error(
        "Round %d: %d usable site repl(ies), fewer than --min_fit_clients=%d; the global weights stay as they were.",
        self.first_round + server_round,
        len(usable),
        self.min_replies,
      )
      parameters, metrics = None, {}
    else:
      parameters, metrics = self.inner.aggregate_fit(server_round, usable, failures)
    arrays = parameters_to_ndarrays(parameters) if parameters is not None else []
    if self.dtypes and any(a.dtype != d for a, d in zip(arrays, self.dtypes)):  # SecAgg+ dequantizes to float64
      arrays = [a.astype(d) for a, d in zip(arrays, self.dtypes)]
      parameters = ndarrays_to_parameters(arrays)
    if parameters is not None and not all(np.isfinite(a).all() for a in arrays):
      taken = ", ".join(self._name(p, res) for p, res in usable)
      self.fatal = (
        f"Round {self.first_round + server_round}: the aggregated global weights hold NaN or infinity "
        f"(replies taken: {taken}; the last accepted was {self._name(*usable[-1])}); the run stops before any report"
      )
      logging.error("%s.", self.fatal)
      self.record = {}
      return None, {}
    record.update(
      {
        # Under SecAgg+ the sites' masked vectors stay inside Flower's workflow: not counted.
        "bytes_received": "" if self.secure else sum(_bytes(res.parameters) for _, res in results),
        "replies": len(results),
        "failed_sites": names,
        "refused_sites": refused,
        "taken_sites": [self._name(p, res) for p, res in usable] if parameters is not None else [],
        "site_train_s": _per_site(results, "train_s", float),
        "site_train_loss": _per_site(results, "train_loss", float),
        "site_optimizer_steps": _per_site(results, "optimizer_steps", int),
        "round_s": time.perf_counter() - record.get("start", time.perf_counter()),
      }
    )
    return parameters, metrics

  def configure_evaluate(self, server_round, parameters, client_manager):
    return []  # validation and test are central

  def aggregate_evaluate(self, server_round, results, failures):
    return None, {}

  def evaluate(self, server_round, parameters):
    if server_round == 0 or self.fatal or "round_s" not in self.record:
      return None
    problem = self.on_round(self.first_round + server_round, parameters_to_ndarrays(parameters), dict(self.record))
    if problem:  # e.g. finite weights so large that the model predicts NaN
      self.fatal = f"{problem} (replies taken: {', '.join(self.record.get('taken_sites', [])) or 'none'})"
      logging.error("%s.", self.fatal)
    self.record = {}
    return None


def make_strategy(fed, initial_weights, fit_config, on_round, first_round=0, roster=None):
  """The strategy of `fed` (FederatedConfig), started from `initial_weights`; only `roster`'s nodes if given."""
  common = dict(
    fraction_fit=fed.fraction_fit,
    fraction_evaluate=0.0,
    min_fit_clients=fed.min_fit_clients,
    min_evaluate_clients=0,
    min_available_clients=fed.sites,
    accept_failures=True,
    initial_parameters=ndarrays_to_parameters(initial_weights),
    on_fit_config_fn=lambda r: fit_config(first_round + r),
  )
  if fed.strategy == "fedavg":
    inner = strategies.FedAvg(**common)
  elif fed.strategy == "fedprox":
    inner = strategies.FedProx(proximal_mu=fed.proximal_mu, **common)
  elif fed.strategy == "fedadam":
    inner = strategies.FedAdam(eta=fed.server_learning_rate, **common)
  elif fed.strategy == "fedadagrad":
    inner = strategies.FedAdagrad(eta=fed.server_learning_rate, **common)
  elif fed.strategy == "fedmedian":
    inner = strategies.FedMedian(**common)
  elif fed.strategy == "fedtrimmedavg":
    inner = strategies.FedTrimmedAvg(beta=fed.trim_fraction, **common)
  elif fed.strategy == "krum":
    inner = strategies.Krum(num_malicious_clients=fed.krum_byzantine, **common)
  else:
    raise ValueError(f"Unknown strategy {fed.strategy!r}")
  if fed.privacy == "dp":
    inner = strategies.DifferentialPrivacyClientSideFixedClipping(
      inner,
      noise_multiplier=fed.dp_noise_multiplier,
      clipping_norm=fed.dp_clipping_norm,
      num_sampled_clients=max(int(fed.sites * fed.fraction_fit), fed.min_fit_clients),
    )
  return Recorded(
    inner,
    on_round,
    first_round,
    [w.dtype for w in initial_weights],
    fed.privacy == "secagg",
    fed.sites,
    min_replies=fed.min_fit_clients,
    shapes=[w.shape for w in initial_weights],
    max_update_norm=fed.max_update_norm,
    max_update_ratio=fed.max_update_ratio,
    roster=roster,
  )


def privacy_spent(fed, rounds, delta=1e-5):
  """Epsilon of `rounds` DP releases at `delta`, from Flower's RDP accountant (site-level privacy).

  Every round is counted as one Gaussian release over the sampled sites, without amplification by
  sampling (sites are not Poisson-sampled).
  """
  from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

  sampled = max(int(fed.sites * fed.fraction_fit), fed.min_fit_clients)
  accountant = RdpAccountant(
    PrivacyConfig(
      target_delta=delta,
      population_size=fed.sites,
      neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
      sampling_method=SamplingMethod.NO_AMPLIFICATION,
    )
  )
  if rounds and fed.dp_noise_multiplier > 0:
    accountant.compose(
      GaussianPrivacyEvent(noise_multiplier=fed.dp_noise_multiplier, sample_size=sampled, population_size=fed.sites),
      count=rounds,
    )
  spent = accountant.get_privacy_spent() if rounds and fed.dp_noise_multiplier > 0 else None
  return {
    "noise_multiplier": fed.dp_noise_multiplier,
    "clipping_norm": fed.dp_clipping_norm,
    "delta": delta,
    "epsilon": spent.epsilon if spent else float("inf"),
    "rounds": rounds,
    "accountant": "Flower RdpAccountant",
  }


class _Deadline:
  """`grid`, except that a round stops waiting for replies after `timeout` seconds."""

  def __init__(self, grid, timeout):
    self._grid, self._timeout = grid, timeout

  def send_and_receive(self, messages, *, timeout=None):
    return self._grid.send_and_receive(messages, timeout=self._timeout if timeout is None else timeout)

  def __getattr__(self, name):
    return getattr(self._grid, name)


def run_rounds(grid, context, fed, strategy, rounds):
  """Runs `rounds` rounds of `strategy` on `grid`; with SecAgg+ when `fed.privacy == "secagg"`.

  Each round waits at most `fed.round_timeout` seconds (0: without limit) for the sites' replies.
  """
  timeout = fed.round_timeout or None
  legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds, round_timeout=timeout), strategy=strategy)
  if fed.privacy == "secagg":
    fit = SecAggPlusWorkflow(
      num_shares=fed.secagg_shares, reconstruction_threshold=fed.secagg_threshold, timeout=timeout
    )
  else:

    def fit(grid, context):
      default_fit_workflow(_Deadline(grid, timeout), context)

  DefaultWorkflow(fit_workflow=fit)(grid, legacy)


def server_app(fed, strategy, rounds, on_done=None):
  """A ServerApp running `rounds` rounds of `strategy` (the simulation runtime's); then `on_done()`."""
  app = ServerApp()

  @app.main()
  def main(grid, context):
    try:
      run_rounds(grid, context, fed, strategy, rounds)
    finally:
      if on_done:
        on_done()

  return app
