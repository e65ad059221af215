"""The federated command's own flags (the study's flags in `xray_keras.flags` apply too)."""

import dataclasses

from absl import flags, logging

from xray_keras.errors import UserError
from xray_keras.federated import partition, server

_SITES = flags.DEFINE_integer(
  "sites", 4, "Sites (hospitals) K: the train split is partitioned by patient into K.", lower_bound=2
)
_PARTITION = flags.DEFINE_enum(
  "partition",
  "iid",
  partition.SCHEMES,
  "How patients are dealt to sites: iid (near-equal sizes), label_skew (each class split by Dirichlet(--partition_alpha) shares), size_skew (site sizes from Dirichlet(--partition_alpha)).",
)
_ALPHA = flags.DEFINE_float(
  "partition_alpha",
  0.5,
  "Dirichlet concentration of label_skew and size_skew; smaller is more skewed.",
  lower_bound=0.0,
)
_PARTITION_SEED = flags.DEFINE_integer("partition_seed", 0, "Seed of the partition.")
_ROUNDS = flags.DEFINE_integer(
  "rounds", 10, "Federated rounds. The learning-rate schedule runs over rounds x --local_epochs epochs.", lower_bound=1
)
_LOCAL_EPOCHS = flags.DEFINE_float(
  "local_epochs",
  1.0,
  "Epochs each site trains per round on its own images. A fraction averages more often: with 0.25 a round trains on the next quarter of the site's shuffled epoch, and four rounds see each image once.",
  lower_bound=0.0,
)
_FRACTION_FIT = flags.DEFINE_float(
  "fraction_fit", 1.0, "Fraction of sites asked to train each round.", lower_bound=0.0, upper_bound=1.0
)
_MIN_FIT = flags.DEFINE_integer(
  "min_fit_clients",
  2,
  "Flower's min_fit_clients: sites a round samples at least, and the replies it needs to update the global model.",
  lower_bound=1,
)
_ROUND_TIMEOUT = flags.DEFINE_float(
  "round_timeout",
  1800.0,
  "Seconds a round waits for the sites' replies before it goes on with those that answered (the first round also waits for the sites to start); 0: no limit.",
  lower_bound=0.0,
)
_KEEP_OPTIMIZER = flags.DEFINE_bool(
  "keep_optimizer_state",
  False,
  "Each site keeps its optimizer's state (AdamW's moments and step count) from round to round in its Flower context, as a hospital training in every round would; without it a site starts every round with a fresh optimizer. A resumed run starts the sites afresh.",
)
_STRATEGY = flags.DEFINE_enum(
  "strategy",
  "fedavg",
  server.STRATEGIES,
  "Flower strategy; fedmedian, fedtrimmedavg and krum resist a few misbehaving sites.",
)
_TRIM = flags.DEFINE_float(
  "trim_fraction",
  0.25,
  "FedTrimmedAvg: share of the replies cut at each end, per weight (Flower's beta; 0.25 of 4 sites cuts 1 each end).",
  lower_bound=0.0,
  upper_bound=0.49,
)
_KRUM_F = flags.DEFINE_integer("krum_byzantine", 1, "Krum: misbehaving sites it tolerates.", lower_bound=0)
_BAD_SITES = flags.DEFINE_integer(
  "bad_sites",
  0,
  "Fault injection for robustness studies: sites 0..N-1 misbehave as --bad_kind says. Never for real training.",
  lower_bound=0,
)
_BAD_KIND = flags.DEFINE_enum(
  "bad_kind",
  "label_flip",
  ["label_flip", "scaled_update", "noise", "huge"],
  "label_flip: the bad sites train on flipped labels; scaled_update: they send the global weights plus --bad_scale times their update; noise: plus Gaussian noise of their update's norm instead of the update; huge: every weight 1e30 (finite in float32).",
)
_BAD_SCALE = flags.DEFINE_float("bad_scale", 10.0, "Factor of --bad_kind=scaled_update.")
_MU = flags.DEFINE_float("proximal_mu", 0.01, "FedProx's proximal weight mu.", lower_bound=0.0)
_SERVER_LR = flags.DEFINE_float(
  "server_learning_rate", 0.01, "FedAdam / FedAdagrad server learning rate (Flower's eta).", lower_bound=0.0
)
_PRIVACY = flags.DEFINE_enum(
  "privacy",
  "none",
  server.PRIVACY,
  "dp: Flower's client-side fixed-clipping differential privacy (fixedclipping_mod); secagg: Flower's SecAgg+ secure aggregation (secaggplus_mod).",
)
_DP_NOISE = flags.DEFINE_float(
  "dp_noise_multiplier",
  0.1,
  "DP noise multiplier (Gaussian noise std = multiplier x clipping norm / sampled sites).",
  lower_bound=0.0,
)
_DP_CLIP = flags.DEFINE_float("dp_clipping_norm", 1.0, "DP clipping norm of each site's update.", lower_bound=0.0)
_SECAGG_SHARES = flags.DEFINE_integer("secagg_shares", 3, "SecAgg+ shares of each site's secret key.", lower_bound=2)
_SECAGG_THRESHOLD = flags.DEFINE_integer(
  "secagg_threshold", 2, "SecAgg+ shares needed to rebuild a key.", lower_bound=1
)
_RUNTIME = flags.DEFINE_enum(
  "runtime",
  "simulation",
  ["simulation", "deployment"],
  "Flower runtime: simulation (one process, sites as Ray actors) or deployment (a SuperLink and one SuperNode per site as separate processes on 127.0.0.1).",
)
_MAX_UPDATE_NORM = flags.DEFINE_float(
  "max_update_norm",
  0.0,
  "An absolute bound: refuse a site's reply whose update (its weights minus the round's global weights) has a larger L2 norm; 0: none (--max_update_ratio bounds updates by default). Replies unlike the model (arrays, shapes, dtypes) or holding NaN or infinity are always refused.",
  lower_bound=0.0,
)
_MAX_UPDATE_RATIO = flags.DEFINE_float(
  "max_update_ratio",
  10.0,
  "Refuse a site's reply whose update norm exceeds this many times the round's lower-median update norm (with one reply, the global weights' norm): a minority of sites cannot move the bound. 0: no relative bound.",
  lower_bound=0.0,
)
_ROSTER = flags.DEFINE_string(
  "roster",
  "",
  "Deployment runtime: JSON file of the registered SuperNode ids ({node id: site name}); the server samples and takes replies only from them. The deployment runtime writes it when it registers the sites' keys.",
)
_INSECURE = flags.DEFINE_bool(
  "insecure",
  False,
  "Deployment runtime: plaintext, and any process that reaches the SuperLink may join as a site. By default a fresh certificate authority signs the SuperLink's TLS certificate and only the sites' registered keys are admitted (python -m xray_keras.federated.provision writes the same for other machines).",
)
_CLIENT_CPUS = flags.DEFINE_float(
  "client_cpus",
  1.0,
  "Simulation runtime: CPU cores each simulated site reserves (sites run side by side when cores allow).",
  lower_bound=0.0,
)


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
  sites: int = 4
  partition: str = "iid"
  partition_alpha: float = 0.5
  partition_seed: int = 0
  rounds: int = 10
  local_epochs: float = 1.0
  keep_optimizer_state: bool = False
  fraction_fit: float = 1.0
  min_fit_clients: int = 2
  round_timeout: float = 1800.0
  strategy: str = "fedavg"
  trim_fraction: float = 0.25
  krum_byzantine: int = 1
  bad_sites: int = 0
  bad_kind: str = "label_flip"
  bad_scale: float = 10.0
  proximal_mu: float = 0.01
  server_learning_rate: float = 0.01
  privacy: str = "none"
  dp_noise_multiplier: float = 0.1
  dp_clipping_norm: float = 1.0
  secagg_shares: int = 3
  secagg_threshold: int = 2
  client_cpus: float = 1.0
  runtime: str = "simulation"
  insecure: bool = False
  max_update_norm: float = 0.0
  max_update_ratio: float = 10.0
  roster: str = ""


def federated_config():
  """`FederatedConfig` from the parsed flags."""
  return FederatedConfig(**{f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(FederatedConfig)})


def flags_text():
  """This module's flags as flagfile lines."""
  lines = [flag.serialize() for flag in flags.FLAGS.get_flags_for_module(__name__)]
  return "\n".join(line for line in lines if line) + "\n"


def check(config, fed):
  """One-line errors for settings that cannot work together."""
  if config.train.head_epochs:
    raise UserError("--head_epochs is not available in federated training; set --head_epochs=0.")
  if config.train.ema_momentum:
    raise UserError("--ema_momentum is not available in federated training; set --ema_momentum=0.")
  if fed.local_epochs <= 0:
    raise UserError(f"--local_epochs must be above 0 (got {fed.local_epochs:g}).")
  if not fed.max_update_norm and not fed.max_update_ratio and fed.privacy != "secagg":
    logging.warning("--max_update_norm=0 and --max_update_ratio=0: a site's update is not bounded.")
  if fed.min_fit_clients > fed.sites:
    raise UserError(f"--min_fit_clients={fed.min_fit_clients} exceeds --sites={fed.sites}.")
  if fed.privacy == "secagg" and not fed.secagg_threshold <= fed.secagg_shares <= fed.sites:
    raise UserError(
      f"SecAgg+ needs --secagg_threshold <= --secagg_shares <= --sites "
      f"(got {fed.secagg_threshold}, {fed.secagg_shares}, {fed.sites})."
    )
