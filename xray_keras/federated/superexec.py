"""Flower's SuperExec with the app's task token in a private file instead of on its command line.

Flower 1.42's SuperLink and SuperNodes start `flower-superexec` from PATH, whose subprocess executor
starts `flwr-serverapp` / `flwr-clientapp` with `--token <token>`: readable by every local user
through `ps` for as long as the app runs, and the token lets its holder act as that app on the
Runtime API. The deployment runtime puts this module first on their PATH as `flower-superexec`
(`install`); it runs Flower's own SuperExec, except that each app gets `--token-file` naming a
0600 file in a 0700 folder, removed when the app exits.

By hand: `python -m xray_keras.federated.superexec flower-superlink [flags]` (or `flower-supernode`)
starts the Flower command with this SuperExec; the ServerApp warns when its token is on its command
line all the same.
"""

import os
import stat
import subprocess
import sys
import tempfile
import threading

_SCRIPT = """#!{python}
from xray_keras.federated.superexec import main

main()
"""


def install(folder):
  """Writes a `flower-superexec` that runs `main` into `folder` (for the front of PATH); returns `folder`."""
  os.makedirs(folder, mode=0o700, exist_ok=True)
  path = os.path.join(folder, "flower-superexec")
  with open(path, "w") as f:
    f.write(_SCRIPT.format(python=sys.executable))
  os.chmod(path, stat.S_IRWXU)
  return folder


def _launch(spec):
  """`SubprocessExecutor.launch`, with the token in a file: the same command otherwise."""
  from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
  from flwr.supercore.superexec.executor.types import LaunchResult

  folder = tempfile.mkdtemp(prefix="flwr-token-")  # mode 0700
  token_file = os.path.join(folder, "token")
  fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, "w") as f:
    f.write(spec.token)
  args = [
    TASK_TYPE_TO_COMMAND[spec.task_type],
    TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
    spec.runtime_api_address,
    "--token-file",
    token_file,
  ]
  if spec.insecure:
    args.append("--insecure")
  elif spec.root_certificates_path is not None:
    args.extend(["--root-certificates", spec.root_certificates_path])
  if spec.parent_pid is not None:
    args.extend(["--parent-pid", str(spec.parent_pid)])
  if spec.runtime_dependency_install:
    args.append("--allow-runtime-dependency-installation")
  quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} if spec.suppress_output else {}
  process = subprocess.Popen(args, **quiet)

  def remove_when_done():
    process.wait()
    os.remove(token_file)
    os.rmdir(folder)

  threading.Thread(target=remove_when_done, daemon=True).start()
  return LaunchResult.accepted()


def main():
  from flwr.supercore.cli import flower_superexec
  from flwr.supercore.superexec.executor import SubprocessExecutor

  SubprocessExecutor.launch = lambda self, spec: _launch(spec)
  sys.argv[0] = "flower-superexec"
  flower_superexec()


def exec_with_wrapper(argv):
  """Replaces this process with `argv` (`flower-superlink ...` or `flower-supernode ...`) started so that the
  SuperExec it starts is this module's: the wrapper first on PATH, and the Flower command run from Python's
  own folder, not through a shim (pyenv's would put that folder back before the wrapper)."""
  if not argv or argv[0] not in ("flower-superlink", "flower-supernode"):
    sys.exit("usage: python -m xray_keras.federated.superexec flower-superlink|flower-supernode [its flags]")
  bindir = os.path.dirname(sys.executable)
  folder = install(tempfile.mkdtemp(prefix="xray-superexec-"))
  os.environ["PATH"] = os.pathsep.join([folder, bindir, os.environ.get("PATH", "")])
  os.execv(os.path.join(bindir, argv[0]), argv)


if __name__ == "__main__":
  exec_with_wrapper(sys.argv[1:])
