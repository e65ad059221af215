"""Helpers shared by the benchmarks: where results go and what machine made them."""

import datetime
import json
import os
import platform
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The 224 px real data: XRAY_SHARED_DATA, else ../shared/data/chest_xray_224. Where it is absent,
# REAL_DATA is "" and the scripts use the package's built-in 64 px copy (enough for --quick).
SHARED_DATA = os.environ.get("XRAY_SHARED_DATA") or os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "chest_xray_224"
)
REAL_DATA = SHARED_DATA if os.path.isdir(SHARED_DATA) else ""


def machine():
  """The CPU, its x86 family/model/stepping where /proc/cpuinfo has them (a virtual machine's model
  name may say only "AMD EPYC", which spans several generations), the cores and the platform."""
  cpu, ids = platform.processor(), {}
  try:
    with open("/proc/cpuinfo") as f:
      fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cpu = fields.get("model name", cpu)
    ids = {k: int(fields[k]) for k in ("cpu family", "model", "stepping") if fields.get(k, "").isdigit()}
  except OSError:
    pass
  found = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "platform": platform.platform()}
  if ids:
    found["cpu_id"] = " ".join(f"{k} {v}" for k, v in ids.items())
  return found


def peak_rss_mb():
  """This process's peak resident memory so far, in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name, payload, path=None):
  """Writes `payload` with the machine and date to `path` (default results/<name>.json)."""
  path = path or os.path.join(RESULTS, f"{name}.json")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  payload = {
    "benchmark": name,
    "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "machine": machine(),
    **payload,
  }
  with open(path, "w") as f:
    json.dump(payload, f, indent=2)
  return path


def run_timing(args, out, env=None, what="the run"):
  """Runs `python -m xray_keras.run *args --output_dir=out` from the repository and returns its timing.json."""
  command = [sys.executable, "-m", "xray_keras.run", *args, f"--output_dir={out}"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
  if result.returncode:
    raise RuntimeError(f"{what} failed:\n{result.stderr[-3000:]}")
  with open(os.path.join(out, "timing.json")) as f:
    return json.load(f)
