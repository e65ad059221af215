"""Flower's deployment runtime on one machine: a SuperLink, its Fleet gateway and K SuperNodes as processes.

`launch` writes the run's flagfile, a Flower App folder naming this package's ServerApp and
ClientApp, and a Flower configuration, starts `flower-superlink` on 127.0.0.1 (its Control and
Runtime APIs are the operator's), the Fleet gateway (`gateway.py`: the only address the sites are
given, passing the Fleet API and nothing else) and one `flower-supernode` per site (site k is told
only its own image file, `--node-config site-data=...`), submits the run with `flwr run`, waits for
it and stops every process. Unless `--insecure`, it first provisions the federation
(`credentials.py`: a CA, the SuperLink's TLS certificate, a key pair per site; the CA's private key
is not kept) into the run's flower/federation/, starts the SuperLink with TLS and SuperNode
authentication, registers each site's public key and writes the node ids it gets to roster.json,
which the ServerApp enforces (`--roster`). The ServerApp (`app` below) reads the flagfile and runs
the same federated experiment as the simulation runtime, on the SuperNodes.

The same steps by hand, e.g. SuperNodes on other machines, are in docs/federated.md; the threat
model in docs/federated_security.md.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from absl import logging
from flwr.serverapp import ServerApp

from xray_keras.errors import UserError
from xray_keras.federated import credentials, superexec
from xray_keras.federated import roster as federated_roster

FLOWER_DIR = "flower"  # in the run folder: the App, the Flower configuration, the process logs
ROSTER = "roster.json"  # in FLOWER_DIR: the registered sites' node ids
SERVERAPP_ERROR = "serverapp_error.txt"  # in FLOWER_DIR: why the ServerApp stopped, for the launching process
_APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "xray-keras-federated"
version = "1.0.0"
description = "xray_keras federated training"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "xray-keras"

[tool.flwr.app.components]
serverapp = "xray_keras.federated.deployment:app"
clientapp = "xray_keras.federated.client:{clientapp}"

[tool.flwr.app.config]
flagfile = ""
"""
_CLIENT_APPS = {"none": "app", "dp": "app_dp", "secagg": "app_secagg"}

app = ServerApp()


@app.main()
def main(grid, context):
  import dataclasses

  from absl import flags

  from xray_keras import flags as xray_flags
  from xray_keras.federated import flags as federated_flags
  from xray_keras.federated import run

  flagfile = context.run_config["flagfile"]
  flags.FLAGS(["serverapp", f"--flagfile={flagfile}"])
  if "--token" in sys.argv:
    logging.warning(
      "This ServerApp's task token is on its command line (Flower's own flower-superexec started it): "
      "start flower-superlink and flower-supernode through python -m xray_keras.federated.superexec "
      "(docs/federated_security.md)."
    )
  config = xray_flags.run_config()
  config = dataclasses.replace(config, flags_text=config.flags_text + federated_flags.flags_text())
  try:
    run.train_and_evaluate(config, federated_flags.federated_config(), grid=grid, context=context)
  except UserError as e:
    with open(os.path.join(os.path.dirname(flagfile), SERVERAPP_ERROR), "w") as f:
      f.write(str(e))
    raise


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tool(name):
  path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    raise UserError(f'{name} not found; install Flower with: pip install -e ".[federated]"')
  return path


def _wait_for_port(port, process, what, timeout=60):
  start = time.monotonic()
  while time.monotonic() - start < timeout:
    if process.poll() is not None:
      raise UserError(f"{what} exited at start (code {process.returncode}); see its log.")
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.2)
  raise UserError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s.")


def supernode_security(parties, k):
  """A SuperNode's flags: the CA that vouches for the SuperLink and site k's own key, or --insecure."""
  if parties is None:
    return ["--insecure"]
  site = parties[credentials.site_folder(k)]
  return [
    "--root-certificates",
    os.path.join(site, "ca.crt"),
    "--auth-supernode-private-key",
    os.path.join(site, "site.key"),
  ]


def register(parties, sites, env, root, connection="local-deployment"):
  """Registers each site's public key with the SuperLink (`flwr supernode register`); returns `{node id: site}`."""
  link = parties[credentials.SUPERLINK]
  roster = {}
  for k in range(sites):
    public = os.path.join(link, f"{credentials.site_folder(k)}.pub")
    result = subprocess.run(
      [_tool("flwr"), "supernode", "register", public, connection], env=env, capture_output=True, text=True, timeout=120
    )
    with open(os.path.join(root, "register.log"), "a") as f:
      f.write(result.stdout + result.stderr)
    node_id = federated_roster.node_id_of(result.stdout)
    if result.returncode or node_id is None:
      raise UserError(f"Registering site {k}'s key with the SuperLink failed; see {os.path.join(root, 'register.log')}")
    roster[node_id] = credentials.site_folder(k)
  return roster


def launch(run_dir, flags_text, fed, timeout_s=None):
  """Runs the experiment of `flags_text` on a local SuperLink and `fed.sites` SuperNodes; stops them all."""
  root = os.path.abspath(os.path.join(run_dir, FLOWER_DIR))
  app_dir, home = os.path.join(root, "app"), os.path.join(root, "home")
  for d in (app_dir, home):
    os.makedirs(d, exist_ok=True)
  flagfile = os.path.join(root, "run.flags")
  for stale in (flagfile, os.path.join(root, SERVERAPP_ERROR)):
    if os.path.exists(stale):
      os.remove(stale)
  with open(os.path.join(app_dir, "pyproject.toml"), "w") as f:
    f.write(_APP_TOML.format(clientapp=_CLIENT_APPS[fed.privacy]))
  link_port = fleet_port = _free_port()
  if fed.insecure:
    logging.warning(
      "--insecure: plaintext between SuperLink and SuperNodes, and any process that reaches the port can join."
    )
    parties, link_security, connection = None, ["--insecure"], "insecure = true"
  else:
    federation = os.path.join(root, "federation")
    shutil.rmtree(federation, ignore_errors=True)  # a resumed run gets new keys: they live as long as a launch
    parties = credentials.provision(federation, fed.sites, keep_ca_key=False)
    link = parties[credentials.SUPERLINK]
    fleet_port = _free_port()
    link_security = [
      *("--ssl-ca-certfile", os.path.join(link, "ca.crt")),
      *("--ssl-certfile", os.path.join(link, "server.crt")),
      *("--ssl-keyfile", os.path.join(link, "server.key")),
      "--enable-supernode-auth",
    ]
    connection = f'root-certificates = "{os.path.join(link, "ca.crt")}"'
  with open(os.path.join(home, "config.toml"), "w") as f:
    f.write(
      f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
      f'address = "127.0.0.1:{link_port}"\n{connection}\n'
    )
  env = {
    **os.environ,
    "FLWR_HOME": home,
    # The SuperLink and SuperNodes start flower-superexec from PATH: ours keeps app tokens off command lines.
    "PATH": os.pathsep.join(
      [superexec.install(os.path.join(root, "bin")), os.path.dirname(sys.executable), os.environ.get("PATH", "")]
    ),
  }
  processes = []
  # A SIGTERM (a scheduler's stop, `kill`) stops the SuperLink, gateway and SuperNodes too, as Ctrl-C does.
  previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

  def start(args, log_name):
    log = open(os.path.join(root, log_name), "w")
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes.append((process, log))
    return process

  try:
    link_process = start(
      [
        _tool("flower-superlink"),
        *link_security,
        "--host",
        "127.0.0.1",
        "--port",
        str(link_port),
        "--disable-runtime-dependency-installation",
      ],
      "superlink.log",
    )
    _wait_for_port(link_port, link_process, "flower-superlink")
    roster_flag = ""
    if parties:
      gateway = start(
        [
          sys.executable,
          "-m",
          "xray_keras.federated.gateway",
          f"--listen=127.0.0.1:{fleet_port}",
          f"--superlink=127.0.0.1:{link_port}",
          f"--certs={parties[credentials.SUPERLINK]}",
        ],
        "gateway.log",
      )
      _wait_for_port(fleet_port, gateway, "the Fleet gateway")
      roster_path = os.path.join(root, ROSTER)
      federated_roster.write(roster_path, register(parties, fed.sites, env, root))
      roster_flag = f"--roster={roster_path}\n"
    if roster_flag:  # the registration's roster replaces any --roster line of the flags
      flags_text = "".join(line for line in flags_text.splitlines(True) if not line.startswith("--roster="))
    with open(flagfile, "w") as f:
      f.write(flags_text + roster_flag)
    sites = os.path.abspath(os.path.join(run_dir, "sites"))
    for k in range(fed.sites):
      start(
        [
          _tool("flower-supernode"),
          *supernode_security(parties, k),
          "--superlink",
          f"127.0.0.1:{fleet_port}",
          "--port",
          str(_free_port()),
          "--node-config",
          f'site-data="{os.path.join(sites, f"site_{k}.npz")}"',
        ],
        f"supernode_{k}.log",
      )
    logging.info(
      "Flower deployment runtime: SuperLink on 127.0.0.1:%d, sites through the Fleet gateway on 127.0.0.1:%d, "
      "%d SuperNodes (logs in %s)",
      link_port,
      fleet_port,
      fed.sites,
      root,
    )
    submitted = subprocess.run(
      [_tool("flwr"), "run", app_dir, "local-deployment", "--run-config", f'flagfile="{flagfile}"', "--stream"],
      env=env,
      cwd=app_dir,
      stdout=open(os.path.join(root, "flwr_run.log"), "w"),
      stderr=subprocess.STDOUT,
      timeout=timeout_s,
    )
    error = os.path.join(root, SERVERAPP_ERROR)
    if os.path.exists(error):
      with open(error) as f:
        raise UserError(f.read().strip())
    if submitted.returncode:
      raise UserError(f"flwr run failed (code {submitted.returncode}); see {os.path.join(root, 'flwr_run.log')}")
  finally:
    signal.signal(signal.SIGTERM, previous)
    for process, _log in reversed(processes):
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    for process, log in processes:
      try:
        process.wait(20)
      except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
      log.close()
