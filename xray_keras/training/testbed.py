"""Describe the machine a run used: CPU, cores, RAM, GPUs, framework versions, the package's commit."""

import os
import platform
import subprocess
import sys

import keras
import numpy as np


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _ram_gib():
  try:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
  except (ValueError, OSError, AttributeError):
    return None


def _gpus(backend):
  if backend == "tensorflow":
    import tensorflow as tf

    names = []
    for device in tf.config.get_visible_devices("GPU"):
      details = tf.config.experimental.get_device_details(device)
      names.append(details.get("device_name", device.name))
    return names
  if backend == "jax":
    import jax

    return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
  return []


def package_commit():
  """The git commit of the checkout the package runs from, with "+changes" if files differ from it;
  None for an installed copy without git."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if not os.path.exists(os.path.join(root, ".git")):
    return None
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    changed = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no", "--", "xray_keras", "experiments"],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=10,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  if commit.returncode:
    return None
  return commit.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def describe():
  """Returns a JSON-ready dict describing this test bed."""
  backend = keras.backend.backend()
  versions = {"python": sys.version.split()[0], "keras": keras.__version__, "numpy": np.__version__}
  if backend == "tensorflow" or "tensorflow" in sys.modules:
    import tensorflow as tf

    versions["tensorflow"] = tf.__version__
  if backend == "jax":
    import jax

    versions["jax"] = jax.__version__
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {
    "cpu": _cpu_model(),
    "cpu_cores": usable,
    "ram_gib": _ram_gib(),
    "gpus": _gpus(backend),
    "os": platform.platform(),
    "backend": backend,
    "versions": versions,
    "commit": package_commit(),
  }
