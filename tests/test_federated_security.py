"""The federation's keys and who the SuperLink admits: provisioning, TLS and SuperNode authentication."""

import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from xray_keras.errors import UserError
from xray_keras.federated import credentials


def _private_keys(folders):
  """`{path: key bytes}` of every private key written."""
  out = {}
  for folder in folders.values():
    for name in os.listdir(folder):
      if name.endswith(".key"):
        with open(os.path.join(folder, name), "rb") as f:
          out[os.path.join(folder, name)] = f.read()
  return out


def _secret(key):
  from cryptography.hazmat.primitives import serialization

  load = serialization.load_ssh_private_key if b"OPENSSH" in key else serialization.load_pem_private_key
  return load(key, None).private_numbers().private_value


def test_provisioning_gives_each_party_only_what_it_needs(tmp_path):
  from cryptography import x509
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec

  folders = credentials.provision(str(tmp_path / "federation"), 3)
  listing = {party: sorted(os.listdir(folder)) for party, folder in folders.items()}
  assert listing == {
    "ca": ["ca.crt", "ca.key"],
    "superlink": ["ca.crt", "server.crt", "server.key", "site_0.pub", "site_1.pub", "site_2.pub"],
    **{f"site_{k}": ["ca.crt", "site.key", "site.pub"] for k in range(3)},
  }
  keys = _private_keys(folders)
  assert len(keys) == 5
  for path in keys:
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
  secrets = {_secret(key) for key in keys.values()}
  assert len(secrets) == 5  # five different keys: none copied to a second party
  for folder in folders.values():
    for name in os.listdir(folder):
      if not name.endswith(".key"):
        with open(os.path.join(folder, name), "rb") as f:
          assert b"PRIVATE KEY" not in f.read(), os.path.join(folder, name)
  for folder in folders.values():
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
  with open(os.path.join(folders["ca"], "ca.crt"), "rb") as f:
    ca = x509.load_pem_x509_certificate(f.read())
  with open(os.path.join(folders["superlink"], "server.crt"), "rb") as f:
    server = x509.load_pem_x509_certificate(f.read())
  server.verify_directly_issued_by(ca)
  names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
  assert names.get_values_for_type(x509.DNSName) == ["localhost"]
  assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
  site = serialization.load_ssh_private_key(keys[os.path.join(folders["site_1"], "site.key")], None)
  assert isinstance(site, ec.EllipticCurvePrivateKey) and site.curve.name == "secp384r1"
  with open(os.path.join(folders["superlink"], "site_1.pub"), "rb") as f:
    assert serialization.load_ssh_public_key(f.read()).public_numbers() == site.public_key().public_numbers()
  with pytest.raises(UserError, match="exists: provisioning never overwrites keys"):
    credentials.provision(str(tmp_path / "federation"), 3)
  result = subprocess.run(
    [sys.executable, "-m", "xray_keras.federated.provision", "--sites=2", f"--out={tmp_path / 'cli'}"],
    capture_output=True,
    text=True,
  )
  assert (
    result.returncode == 0
    and "keep" in result.stdout
    and sorted(os.listdir(tmp_path / "cli"))
    == [
      "ca",
      "site_0",
      "site_1",
      "superlink",
    ]
  )


def _wait_for(path, text, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path):
      with open(path, errors="replace") as f:
        found = [line for line in f if text in line]
      if found:
        return found[0].strip()
    time.sleep(0.5)
  with open(path, errors="replace") as f:
    raise AssertionError(f"{text!r} not in {path} after {timeout}s:\n{f.read()[-3000:]}")


@pytest.mark.slow
def test_the_superlink_admits_registered_sites_only_and_never_plaintext(tmp_path):
  pytest.importorskip("flwr")
  from xray_keras.federated import deployment

  parties = credentials.provision(str(tmp_path / "federation"), 2)
  strangers = credentials.provision(str(tmp_path / "another_federation"), 1)  # another CA, another key
  home, port = tmp_path / "home", deployment._free_port()
  home.mkdir()
  link = parties[credentials.SUPERLINK]
  (home / "config.toml").write_text(
    f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
    f'address = "127.0.0.1:{port}"\nroot-certificates = "{os.path.join(link, "ca.crt")}"\n'
  )
  env = {
    **os.environ,
    "FLWR_HOME": str(home),
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
  }
  processes = []

  def start(args, log):
    with open(tmp_path / log, "w") as f:
      processes.append(subprocess.Popen(args, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
    return processes[-1]

  def supernode(security, log):
    command = [deployment._tool("flower-supernode"), *security, "--superlink", f"127.0.0.1:{port}"]
    return start([*command, "--port", str(deployment._free_port())], log)

  try:
    security = [
      *("--ssl-ca-certfile", os.path.join(link, "ca.crt")),
      *("--ssl-certfile", os.path.join(link, "server.crt")),
      *("--ssl-keyfile", os.path.join(link, "server.key")),
    ]
    command = [deployment._tool("flower-superlink"), *security, "--enable-supernode-auth", "--host", "127.0.0.1"]
    superlink = start([*command, "--port", str(port), "--disable-runtime-dependency-installation"], "superlink.log")
    deployment._wait_for_port(port, superlink, "flower-superlink")
    (tmp_path / "flower").mkdir()
    os.remove(os.path.join(link, "site_1.pub"))  # site 1 was never registered
    deployment.register(parties, 1, env, str(tmp_path / "flower"))
    supernode(deployment.supernode_security(parties, 0), "site_0.log")
    activated = _wait_for(tmp_path / "superlink.log", "Activated node_id")
    supernode(deployment.supernode_security(parties, 1), "unregistered.log")
    refused = _wait_for(tmp_path / "superlink.log", "Attempted to register SuperNode with public key")
    assert "ApiError:2004" in refused
    _wait_for(tmp_path / "superlink.log", '"POST /v1/fleet/activate-node HTTP/1.1" 412')
    supernode(["--insecure"], "plaintext.log")
    _wait_for(tmp_path / "plaintext.log", "Connection attempt failed")
    foreign = ["--root-certificates", os.path.join(strangers["site_0"], "ca.crt")]
    supernode([*foreign, "--auth-supernode-private-key", os.path.join(parties["site_0"], "site.key")], "other_ca.log")
    assert "certificate verify failed" in _wait_for(tmp_path / "other_ca.log", "CERTIFICATE_VERIFY_FAILED")
    with open(tmp_path / "superlink.log") as f:
      assert sum("Activated node_id" in line for line in f) == 1, activated  # only the registered site got in
  finally:
    for process in processes:
      if process.poll() is None:
        process.terminate()
    for process in processes:
      try:
        process.wait(20)
      except subprocess.TimeoutExpired:
        process.kill()


class _Proxy:
  def __init__(self, node_id):
    self.node_id = node_id


def _reply(arrays, site, examples=10):
  from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

  metrics = {"site": site, "train_s": 1.0, "train_loss": 0.5, "optimizer_steps": 3}
  return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), examples, metrics)


def test_replies_that_could_break_the_model_are_refused_by_name_and_the_rest_averaged(caplog):
  from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
  from flwr.server import strategy as strategies

  from xray_keras.federated import server

  rng = np.random.default_rng(0)
  model = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
  good = [[w + rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in model] for _ in range(2)]
  nan = [w.copy() for w in model]
  nan[1][0] = np.nan
  bad = {
    "site_2.npz": ([model[0].T.copy(), model[1]], "array 0 has shape (3, 4), the model's is (4, 3)"),
    "site_3.npz": ([model[0].astype(np.float64), model[1]], "array 0 is float64, the model's is float32"),
    "site_4.npz": (nan, "array 1 holds NaN or infinity"),
    "site_5.npz": ([w + 100 for w in model], "update norm 387.3 exceeds 10 (--max_update_norm=10)"),
    "site_6.npz": (model[:1], "1 arrays, the model has 2"),
  }
  fedavg = strategies.FedAvg(initial_parameters=ndarrays_to_parameters(model), accept_failures=True)
  recorded = server.Recorded(
    fedavg, None, dtypes=[w.dtype for w in model], shapes=[w.shape for w in model], max_update_norm=10.0
  )
  recorded.record = {"sent": model, "sampled": list(range(7))}
  results = [(_Proxy(k), _reply(w, f"site_{k}.npz", 10 + k)) for k, w in enumerate(good)]
  results += [(_Proxy(2 + i), _reply(w, site)) for i, (site, (w, _)) in enumerate(bad.items())]
  with caplog.at_level("WARNING"):
    parameters, _ = recorded.aggregate_fit(1, results, [])
  for site, (_, reason) in bad.items():
    assert f"Round 1: refused the reply of {site}: {reason}." in caplog.text
  expected = [(10 * a + 11 * b) / 21 for a, b in zip(*good)]
  got = parameters_to_ndarrays(parameters)
  assert all(np.allclose(g, e, atol=1e-6) and g.dtype == np.float32 for g, e in zip(got, expected))
  assert sorted(recorded.record["refused_sites"]) == list(bad) and recorded.record["replies"] == 7


def test_a_bad_site_misbehaves_as_asked_and_robust_strategies_resist_it():
  from flwr.common import parameters_to_ndarrays

  from xray_keras.federated import client, server
  from xray_keras.federated.flags import FederatedConfig

  rng = np.random.default_rng(1)
  model = [rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
  honest = [[w + rng.normal(scale=0.01, size=w.shape).astype(np.float32) for w in model] for _ in range(4)]
  scaled = client.misbehave(honest[0], model, "scaled_update", 10.0, seed=0)
  noise = client.misbehave(honest[0], model, "noise", 10.0, seed=0)
  for s, n, h, g in zip(scaled, noise, honest[0], model):
    assert np.allclose(s - g, 10 * (h - g), atol=1e-5)
    assert np.linalg.norm(n - g) == pytest.approx(np.linalg.norm(h - g), rel=1e-4)
    assert abs(np.corrcoef((n - g).ravel(), (h - g).ravel())[0, 1]) < 0.9
  config = {"bad_sites": 1, "bad_kind": "label_flip"}
  assert [client._bad_kind(f"/data/site_{k}.npz", config) for k in range(3)] == ["label_flip", "", ""]
  assert client._bad_kind("/data/hospital.npz", config) == ""
  attacked = [[g + 100 * (h - g) for h, g in zip(honest[0], model)], *honest[1:]]
  mean = [np.mean(ws, axis=0) for ws in zip(*honest[1:])]
  errors = {}
  for name in ("fedavg", "fedmedian", "fedtrimmedavg", "krum"):
    fed = FederatedConfig(sites=4, strategy=name, min_fit_clients=2)
    strategy = server.make_strategy(fed, model, lambda r: {}, None)
    strategy.record = {"sampled": list(range(4))}
    results = [(_Proxy(k), _reply(w, f"site_{k}.npz")) for k, w in enumerate(attacked)]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    got = parameters_to_ndarrays(parameters)
    errors[name] = max(float(np.abs(a - b).max()) for a, b in zip(got, mean))
  assert errors["fedavg"] > 0.5, errors  # one site's x100 update drags the average
  assert max(errors["fedmedian"], errors["fedtrimmedavg"], errors["krum"]) < 0.05, errors


def _round(recorded, replies, round_=1):
  """`recorded.aggregate_fit` of `replies` ({node id: (arrays, site)}) after sampling all of them."""
  recorded.record = {"sent": recorded.sent_for_test, "sampled": list(replies), "start": time.perf_counter()}
  results = [(_Proxy(n), _reply(w, site)) for n, (w, site) in replies.items()]
  return recorded.aggregate_fit(round_, results, [])


def _strategy(model, **kwargs):
  from flwr.common import ndarrays_to_parameters
  from flwr.server import strategy as strategies

  from xray_keras.federated import server

  fedavg = strategies.FedAvg(initial_parameters=ndarrays_to_parameters(model), accept_failures=True)
  recorded = server.Recorded(fedavg, None, dtypes=[w.dtype for w in model], shapes=[w.shape for w in model], **kwargs)
  recorded.sent_for_test = model
  return recorded


def _honest(model, rng, scale=0.05):
  return [w + rng.normal(scale=scale, size=w.shape).astype(np.float32) for w in model]


@pytest.mark.parametrize("sites", [2, 3, 4, 7])
def test_the_default_update_bound_refuses_a_huge_update_by_name_and_keeps_every_honest_one(caplog, sites):
  from flwr.common import parameters_to_ndarrays

  from xray_keras.federated.flags import FederatedConfig

  rng = np.random.default_rng(sites)
  model = [rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
  ratio = FederatedConfig().max_update_ratio
  assert ratio > 0 and FederatedConfig().max_update_norm == 0  # bounded by default
  for trial in range(20):  # honest sites of unequal sizes and step counts: none refused
    recorded = _strategy(model, max_update_ratio=ratio)
    scales = rng.uniform(0.01, 0.2, size=sites)
    replies = {k: (_honest(model, rng, s), f"site_{k}.npz") for k, s in enumerate(scales)}
    _round(recorded, replies)
    assert recorded.record["refused_sites"] == [], (trial, scales)
  for bad in range(1, (sites + 1) // 2):  # a minority of sites send every weight = 1e30, still finite in float32
    recorded = _strategy(model, max_update_ratio=ratio)
    replies = {k: (_honest(model, rng), f"site_{k}.npz") for k in range(sites)}
    for k in range(bad):
      replies[k] = ([np.full_like(w, 1e30) for w in model], f"site_{k}.npz")
    caplog.clear()
    with caplog.at_level("WARNING"):
      parameters, _ = _round(recorded, replies)
    refused = [r for r in caplog.records if "refused the reply" in r.getMessage()]
    assert [r.getMessage().split(":")[1].split()[-1] for r in refused] == [f"site_{k}.npz" for k in range(bad)]
    assert "update norm 5.916e+30 exceeds" in refused[0].getMessage()
    expected = [np.mean([replies[k][0][i] for k in range(bad, sites)], axis=0) for i in range(2)]
    got = parameters_to_ndarrays(parameters)
    assert all(np.allclose(g, e, atol=1e-6) for g, e in zip(got, expected))


def test_a_non_finite_aggregate_stops_the_run_naming_the_round_and_the_sites_taken(caplog):
  from flwr.common import ndarrays_to_parameters
  from flwr.server import strategy as strategies

  class Overflowing(strategies.FedAvg):  # e.g. FedAdam's server step, or a sum past float32's range
    def aggregate_fit(self, server_round, results, failures):
      return ndarrays_to_parameters([np.full((4, 4), np.inf, np.float32)]), {}

  rng = np.random.default_rng(3)
  model = [rng.normal(size=(4, 4)).astype(np.float32)]
  recorded = _strategy(model)
  recorded.inner = Overflowing()
  honest = {1: (_honest(model, rng), "site_0.npz"), 2: (_honest(model, rng), "site_1.npz")}
  with caplog.at_level("ERROR"):
    parameters, _ = _round(recorded, honest, round_=4)
  assert parameters is None and recorded.record == {}
  assert recorded.fatal.startswith("Round 4: the aggregated global weights hold NaN or infinity")
  assert "the last accepted was site_1.npz" in recorded.fatal and recorded.fatal in caplog.text
  assert recorded.configure_fit(5, None, None) == []  # no further round is sent
  assert recorded.evaluate(4, None) is None  # and nothing is recorded as a finished round


class _Manager:
  """A client manager holding proxies for `node_ids`."""

  def __init__(self, node_ids):
    self.clients = {str(n): _Proxy(n) for n in node_ids}

  def all(self):
    return dict(self.clients)

  def num_available(self):
    return len(self.clients)

  def wait_for(self, num_clients, timeout=86400):
    return len(self.clients) >= num_clients

  def sample(self, num_clients, min_num_clients=None, criterion=None):
    chosen = [p for p in self.clients.values() if criterion is None or criterion.select(p)]
    return chosen[:num_clients] if len(chosen) >= num_clients else []


def test_only_roster_nodes_are_sampled_and_a_stranger_is_named_and_refused(caplog, tmp_path):
  from flwr.common import ndarrays_to_parameters
  from flwr.server import strategy as strategies

  from xray_keras.federated import roster as federated_roster
  from xray_keras.federated import server

  model = [np.zeros((3, 2), np.float32)]
  registered = {11: "site_0", 12: "site_1", 13: "site_2"}
  path = tmp_path / "roster.json"
  federated_roster.write(path, registered)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  assert federated_roster.read(path, 3) == registered
  with pytest.raises(UserError, match="names 3 sites, --sites=4"):
    federated_roster.read(path, 4)
  fedavg = strategies.FedAvg(initial_parameters=ndarrays_to_parameters(model), min_available_clients=3)
  recorded = server.Recorded(fedavg, None, sites=3, wait_s=0.1, shapes=[(3, 2)], roster=registered)
  with caplog.at_level("WARNING"):
    instructions = recorded.configure_fit(1, ndarrays_to_parameters(model), _Manager([11, 12, 13, 99]))
  assert sorted(p.node_id for p, _ in instructions) == [11, 12, 13]
  assert "Round 1: node 99 is connected but not on the roster: sent nothing, its replies refused." in caplog.text
  results = [(_Proxy(n), _reply(model, f"site_{n}.npz")) for n in (11, 12, 13, 99)]
  with caplog.at_level("WARNING"):
    recorded.aggregate_fit(1, results, [])
  assert "refused the reply of site_99.npz: node 99 was not sent this round's instructions" in caplog.text
  assert recorded.record["refused_sites"] == ["site_99.npz"]
  assert federated_roster.node_id_of("✅ SuperNode 13362063030841499244 registered successfully.\n") == (
    13362063030841499244
  )


def _flwr(args, home, timeout=120):
  from xray_keras.federated import deployment

  env = {**os.environ, "FLWR_HOME": str(home)}
  return subprocess.run([deployment._tool("flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _connection(home, address, ca):
  home.mkdir(exist_ok=True)
  (home / "config.toml").write_text(
    f'[superlink]\ndefault = "target"\n\n[superlink.target]\naddress = "{address}"\n'
    + (f'root-certificates = "{ca}"\n' if ca else "insecure = true\n")
  )


@pytest.mark.slow
def test_a_stranger_at_the_sites_address_cannot_register_run_or_unregister_and_a_huge_update_is_refused(tmp_path):
  """The attacks of a process that reaches the sites' address, during a real 3-site deployment run.

  Site 0 sends every weight = 1e30; a stranger with the federation's CA certificate (it is public)
  tries the Control API through the sites' address with Flower's own CLI, and without any
  certificate and with TLS verification off; a fourth key registered on the operator's loopback
  port (an operator's mistake) connects a fourth SuperNode, which the roster keeps out.
  """
  pytest.importorskip("flwr")
  import httpx
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec

  from tests.conftest import REPO
  from xray_keras.federated import deployment

  out = tmp_path / "run"
  command = [sys.executable, "-m", "xray_keras.federated", "--flagfile=experiments/smoke.cfg"]
  command += ["--max_images_per_split=40", "--sites=3", "--rounds=3", "--runtime=deployment", "--noreport"]
  command += ["--bad_sites=1", "--bad_kind=huge", "--round_timeout=300", f"--output_dir={out}"]
  console = open(tmp_path / "console.log", "w")  # a pipe left unread would fill and stall the run
  run = subprocess.Popen(command, cwd=REPO, stdout=console, stderr=subprocess.STDOUT)
  processes = []
  try:
    gateway_line = _wait_for(out / "flower" / "gateway.log", "Fleet gateway on", timeout=240)
    fleet_port, link_port = (int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", gateway_line))
    fleet = f"127.0.0.1:{fleet_port}"
    ca = out / "flower" / "federation" / "superlink" / "ca.crt"
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "rogue.key").write_bytes(
      key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    os.chmod(tmp_path / "rogue.key", 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "rogue.pub").write_bytes(public + b"\n")
    # An operator registers a fourth key by mistake. Its SuperNode is refused at the sites' address (not a
    # provisioned site key); from the SuperLink's own host it connects, and the roster keeps it out.
    operator = tmp_path / "operator"
    _connection(operator, f"127.0.0.1:{link_port}", ca)
    registered = _flwr(["supernode", "register", str(tmp_path / "rogue.pub")], operator)
    assert "registered successfully" in registered.stdout, registered.stdout + registered.stderr
    rogue_id = re.search(r"SuperNode (\d+) registered", registered.stdout).group(1)
    for name, address in (("rogue_at_gateway", fleet), ("rogue_on_loopback", f"127.0.0.1:{link_port}")):
      with open(tmp_path / f"{name}.log", "w") as log:
        rogue = [deployment._tool("flower-supernode"), "--root-certificates", str(ca)]
        rogue += ["--auth-supernode-private-key", str(tmp_path / "rogue.key"), "--superlink", address]
        processes.append(
          subprocess.Popen([*rogue, "--port", str(deployment._free_port())], stdout=log, stderr=subprocess.STDOUT)
        )
    _wait_for(out / "flower" / "gateway.log", "signed by a key that is not one of the federation's sites")
    apps = []  # the ServerApp's and ClientApps' command lines while they run: no task token on them
    deadline = time.time() + 300
    while time.time() < deadline and not all(any(n in a for a in apps) for n in ("flwr-serverapp", "flwr-clientapp")):
      listing = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout.splitlines()
      apps = [a for a in listing if ("flwr-serverapp" in a or "flwr-clientapp" in a) and "<defunct>" not in a]
      time.sleep(0.2)
    assert any("flwr-serverapp" in a for a in apps) and any("flwr-clientapp" in a for a in apps), apps
    assert all("--token-file" in a and "--token " not in a for a in apps), apps
    stranger = tmp_path / "stranger"
    _connection(stranger, fleet, ca)
    attempts = {
      "register": _flwr(["supernode", "register", str(tmp_path / "rogue.pub")], stranger),
      "list": _flwr(["supernode", "list"], stranger),
      "unregister": _flwr(["supernode", "unregister", rogue_id], stranger),
      "run": _flwr(["run", str(out / "flower" / "app"), "target"], stranger),
    }
    for what, result in attempts.items():
      assert result.returncode != 0 and "successfully" not in result.stdout, (what, result.stdout)
    with httpx.Client(verify=False, timeout=30) as blind:  # no certificate, no verification
      for path in ("/v1/control/list-nodes", "/v1/control/start-run", "/v1/runtime/pull-task", "/docs"):
        assert blind.post(f"https://{fleet}{path}", content=b"").status_code == 403, path
      blind_fleet = blind.post(f"https://{fleet}/v1/fleet/register-node", content=b"\x00" * 1000)
    refused = (out / "flower" / "gateway.log").read_text()
    assert "Refused POST /v1/control/register-node from 127.0.0.1:" in refused, refused[-2000:]
    assert refused.count("only the Fleet API is served here") >= 8, refused[-2000:]  # 4 CLI commands, 4 blind
    assert blind_fleet.status_code == 403 and "no valid SuperNode signature headers" in refused
    run.wait(timeout=900)
    assert run.returncode == 0, (tmp_path / "console.log").read_text()[-3000:]
  finally:
    for process in [run, *processes]:
      if process.poll() is None:
        process.kill()
    console.close()
  log = (out / "run.log").read_text()
  for r in (1, 2, 3):
    assert re.search(f"Round {r}: refused the reply of site_0: update norm \\d\\.\\d+e\\+3\\d exceeds", log), log[
      -3000:
    ]
  assert re.search(f"Round [123]: node {rogue_id} is connected but not on the roster: sent nothing", log), log[-3000:]
  history = list(csv.DictReader(open(out / "history.csv")))
  assert [int(h["replies"]) for h in history] == [3, 3, 3]  # the three sites, never the fourth node
  assert all(np.isfinite(float(h["val_loss"])) for h in history)
  metrics = json.loads((out / "metrics.json").read_text())
  assert 0 < metrics["test"]["auc"] < 1  # from finite predictions


def _paths():
  """Request paths near the Fleet API's: tricks a gateway that matched prefixes or decoded twice would pass."""
  from xray_keras.federated import gateway

  tails = ["list-nodes", "start-run", "register-node"]
  for method in sorted(gateway.FLEET_METHODS):
    yield f"/v1/fleet/{method}", True
    for trick in (
      f"/v1/fleet/{method}/",
      f"//v1/fleet/{method}",
      f"/v1/fleet/{method}/../../control/list-nodes",
      f"/v1/fleet/{method}%2F..%2F..%2Fcontrol%2Flist-nodes",
      f"/V1/fleet/{method}",
      f"/v1/fleet/{method.upper()}",
      f"/v1/fleet/./{method}",
      f"/v1/fleet/{method}\x00",
      f"/v1/fleet/{method} ",
    ):
      yield trick, False
  for tail in tails:
    for prefix in ("/v1/control/", "/v1/fleet/../control/", "/v1/fleet/%2e%2e/control/", "/v1/runtime/", "/"):
      yield prefix + tail, False


def test_the_gateway_passes_the_fleet_api_signed_by_a_site_and_nothing_else(tmp_path):
  pytest.importorskip("flwr")
  import base64
  import datetime

  from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

  from xray_keras.federated import gateway

  cases = list(_paths())
  assert len(cases) == 12 * 10 + 15
  for path, expected in cases:
    for method in ("POST", "GET", "PUT", "DELETE", "OPTIONS"):
      assert gateway.allowed(method, path) == (expected and method == "POST"), (method, path)
  parties = credentials.provision(str(tmp_path / "federation"), 2)
  keys = gateway.site_keys(parties[credentials.SUPERLINK])
  assert len(keys) == 2

  def headers(key_file, age_s=0.0, tamper=False):
    from cryptography.hazmat.primitives import serialization

    with open(key_file, "rb") as f:
      key = serialization.load_ssh_private_key(f.read(), None)
    stamp = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age_s)).isoformat()
    signature = sign_message(key, (stamp + ("x" if tamper else "")).encode("ascii"))
    return {
      "flwr-public-key": base64.b64encode(public_key_to_bytes(key.public_key())).decode("ascii"),
      "flwr-timestamp": stamp,
      "flwr-signature": base64.b64encode(signature).decode("ascii"),
    }

  site = os.path.join(parties["site_1"], "site.key")
  stranger = credentials.provision(str(tmp_path / "other"), 1)["site_0"]
  assert gateway.unsigned(headers(site), keys) == ""
  assert gateway.unsigned(headers(os.path.join(stranger, "site.key")), keys) == (
    "signed by a key that is not one of the federation's sites"
  )
  assert gateway.unsigned(headers(site, age_s=900), keys) == "signed timestamp 900 s old"
  assert gateway.unsigned(headers(site, tamper=True), keys) == "the signature does not match the key"
  for missing in ("flwr-public-key", "flwr-timestamp", "flwr-signature"):
    partial = {k: v for k, v in headers(site).items() if k != missing}
    assert gateway.unsigned(partial, keys).startswith("no valid SuperNode signature headers"), missing
  assert gateway.unsigned({**headers(site), "flwr-public-key": "not base64!"}, keys).startswith("no valid")


def test_a_model_that_predicts_nan_stops_the_run_and_one_reply_is_held_to_the_rounds_before(caplog):
  rng = np.random.default_rng(5)
  model = [rng.normal(size=(6, 5)).astype(np.float32)]
  recorded = _strategy(model, max_update_ratio=10.0)
  recorded.on_round = lambda r, weights, record: f"Round {r}: the global model's validation loss is nan"
  _round(recorded, {1: (_honest(model, rng), "site_0.npz"), 2: (_honest(model, rng), "site_1.npz")}, round_=2)
  with caplog.at_level("ERROR"):
    recorded.evaluate(2, recorded.inner.initial_parameters)
  assert recorded.fatal == "Round 2: the global model's validation loss is nan (replies taken: site_0.npz, site_1.npz)"
  assert recorded.fatal in caplog.text and recorded.configure_fit(3, None, None) == []
  # One reply a round (--fraction_fit): held to the update norms of the rounds before, not the weights' norm.
  recorded = _strategy(model, max_update_ratio=10.0)
  for r in (1, 2, 3):
    _round(recorded, {r: (_honest(model, rng, 0.05), "site_0.npz")}, round_=r)
    assert recorded.record["refused_sites"] == []
  scaled = [model[0] + 300 * (_honest(model, rng, 0.05)[0] - model[0])]
  _round(recorded, {4: (scaled, "site_1.npz")}, round_=4)
  assert recorded.record["refused_sites"] == ["site_1.npz"]


_RAY_CLUSTER = """
import os, subprocess, sys
from xray_keras.federated import ray_auth
assert ray_auth.enable()
import ray
ray.init(include_dashboard=False, num_cpus=1)
assert ray.get(ray.remote(lambda: 42).remote()) == 42  # the run's own driver is let in
address = ray.get_runtime_context().gcs_address
stranger = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
code = f"import ray._raylet as r; print(r.GcsClient(address={address!r}).internal_kv_keys(b'', namespace=None))"
for env in (stranger, {**stranger, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  print("refused" if result.returncode and "InvalidAuthToken" in result.stderr else "ANSWERED: " + result.stdout)
ray.shutdown()
"""


@pytest.mark.slow
def test_the_simulations_ray_cluster_answers_only_its_token():
  pytest.importorskip("ray")
  env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
  result = subprocess.run([sys.executable, "-c", _RAY_CLUSTER], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.split() == ["refused", "refused"], (
    result.stdout + result.stderr[-3000:]
  )


@pytest.mark.slow
def test_a_sigterm_to_the_deployment_command_stops_every_process_it_started(tmp_path):
  pytest.importorskip("flwr")
  from tests.conftest import REPO

  out = tmp_path / "run"
  command = [sys.executable, "-m", "xray_keras.federated", "--flagfile=experiments/smoke.cfg", "--sites=2"]
  command += ["--max_images_per_split=40", "--rounds=1", "--runtime=deployment", "--noreport", f"--output_dir={out}"]
  with open(tmp_path / "console.log", "w") as console:
    run = subprocess.Popen(command, cwd=REPO, stdout=console, stderr=subprocess.STDOUT)
    try:
      _wait_for(out / "flower" / "supernode_1.log", "Starting Flower SuperNode", timeout=240)
      run.send_signal(signal.SIGTERM)
      run.wait(timeout=60)
    finally:
      if run.poll() is None:
        run.kill()
  deadline = time.time() + 30
  while time.time() < deadline:
    listing = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
    if str(out) not in listing:
      break
    time.sleep(1)
  assert str(out) not in listing, [line for line in listing.splitlines() if str(out) in line]
