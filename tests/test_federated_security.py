"""The federation's keys and who the SuperLink admits: provisioning, TLS and SuperNode authentication."""

import os
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
    "site_5.npz": ([w + 100 for w in model], "update norm 387.3 exceeds --max_update_norm=10"),
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
  assert recorded.record["refused_sites"] == list(bad) and recorded.record["replies"] == 7


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
