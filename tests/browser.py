"""Headless Chromium for page tests: found on PATH, else installed from Debian's package where root can."""

import os
import shutil
import subprocess

# Without the networking flags Chromium keeps calling Google's hosts, refused on a closed network.
ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
]


def chromium():
  """`(path, "")` to a Chromium, or `(None, why not)`."""
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name), ""
  if not shutil.which("apt-get") or os.geteuid() != 0:
    return None, "no Chromium on PATH, and no root apt-get to install it (apt-get install -y chromium)"
  result = subprocess.run(
    "apt-get update -q && apt-get install -y -q chromium",
    shell=True,
    capture_output=True,
    text=True,
    timeout=900,
    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
  )
  if shutil.which("chromium"):
    return shutil.which("chromium"), ""
  return None, f"apt-get install chromium failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}"
