"""What every command prints to the terminal: our own lines in short, TensorFlow's C++ log held back.

`python -m xray_keras.<command>` configures this when the package is imported, before anything can
import TensorFlow: TF_CPP_MIN_LOG_LEVEL=3 and GRPC_VERBOSITY=ERROR unless already set, and the C++
lines TensorFlow's libraries print as they load (before they read TF_CPP_MIN_LOG_LEVEL) dropped
when that level hides them. Our lines read `16:42:35 message` (`WARNING: `, `ERROR: ` before the
message where it is one); a run's run.log keeps dates and levels. `--verbosity=1` (or `-v=1`) on
the command line leaves both logs as absl and TensorFlow print them.
"""

import contextlib
import importlib.abc
import importlib.util
import logging as std_logging
import os
import re
import sys
import tempfile
import time

# absl's C++ prefix, as TensorFlow's libraries print it: severity, date, time, thread, file:line.
_NATIVE_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_NATIVE_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_PREFIXES = {std_logging.WARNING: "WARNING: ", std_logging.ERROR: "ERROR: ", std_logging.CRITICAL: "FATAL: "}
# Tells each model's run which model of the study it is, for its progress lines (set by the study runner).
STUDY_ENV = "XRAY_STUDY_PROGRESS"


def command(argv=None):
  """The module that `python -m` runs if it is one of ours, else None."""
  argv = sys.orig_argv if argv is None else argv
  if "-m" not in argv[:-1]:
    return None
  module = argv[argv.index("-m") + 1]
  return module if module.split(".")[0] == "xray_keras" else None


def verbosity(args):
  """absl's `--verbosity` (`-v`, `--v`) as given in `args`; 0 when absent or not a number."""
  value = "0"
  for i, arg in enumerate(args):
    name, equals, rest = arg.partition("=")
    if name in ("--verbosity", "-v", "--v"):
      value = rest if equals else (args[i + 1] if i + 1 < len(args) else "0")
  try:
    return int(value)
  except ValueError:
    return 1 if value.lower() == "debug" else 0


def native_level():
  """TensorFlow's C++ log level in effect: TF_CPP_MIN_LOG_LEVEL, 0 (everything) when unset."""
  try:
    return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
  except ValueError:
    return 0


class ShortFormatter(std_logging.Formatter):
  """`HH:MM:SS message`, with `WARNING: `, `ERROR: ` or `FATAL: ` before the message."""

  def format(self, record):
    text = super().format(record)
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    return f"{stamp} {_PREFIXES.get(record.levelno, '')}{text}"


def configure(args):
  """The console of a command run with `args`; see the module docstring."""
  if verbosity(args) >= 1:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  level = native_level()
  if level > 0 and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport(level))
  from absl import logging

  logging.get_absl_handler().setFormatter(ShortFormatter())


def configure_command():
  """`configure` when this process is `python -m xray_keras.<command>`; nothing for a library user."""
  if command():
    configure(sys.orig_argv[sys.orig_argv.index("-m") + 2 :])


def hidden(line, level):
  """Whether a line of stderr is a C++ log line that `level` (TF_CPP_MIN_LOG_LEVEL) hides."""
  if line.startswith(_NATIVE_PREAMBLE):
    return level > 0
  match = _NATIVE_LINE.match(line)
  return bool(match) and "IWEF".index(match.group(1)) < min(level, 3)


@contextlib.contextmanager
def held_native_log(level):
  """Holds back file descriptor 2 meanwhile and then passes on what `hidden` keeps, all of it on an error."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as held:
    os.dup2(held.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
        if failed or not hidden(line, level):
          sys.stderr.write(line)
      sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Imports `tensorflow`, the first time anything asks for it, inside `held_native_log`."""

  def __init__(self, level):
    self._level = level

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader, self._level)
    return spec


class _QuietLoader(importlib.abc.Loader):
  def __init__(self, loader, level):
    self._loader, self._level = loader, level

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    module.__loader__ = module.__spec__.loader = self._loader
    with held_native_log(self._level):
      self._loader.exec_module(module)
