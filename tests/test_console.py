"""What commands print: no TensorFlow C++ log, our own lines short, the export's path alone on stdout."""

import re
import subprocess
import sys

from tests.conftest import REPO

ABSL_PREFIX = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")  # absl's, C++ and Python alike
SHORT = re.compile(r"\d\d:\d\d:\d\d (WARNING: |ERROR: )?\S")


def test_a_run_prints_no_cpp_log_and_short_lines_while_run_log_keeps_dates(tiny_run):
  base, _, run_dir, _ = tiny_run
  lines = (base / "console.txt").read_text().splitlines()
  assert not [line for line in lines if ABSL_PREFIX.match(line) or "E0000" in line or "absl::" in line], lines[:12]
  (done,) = [line for line in lines if "Run folder: " in line]
  assert SHORT.match(done) and done.endswith(f" Run folder: {run_dir}")
  log = (run_dir / "run.log").read_text()
  assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} INFO Run folder: {re.escape(str(run_dir))}$", log, re.M)


def test_cpp_lines_are_hidden_as_tf_cpp_min_log_level_says():
  from xray_keras import console

  info = "I0000 00:00:1796587184.515857   23420 port.cc:153] oneDNN custom operations are on."
  error = "E1206 16:42:35.399622 140160736398208 cuda_platform.cc:52] failed call to cuInit"
  assert console.hidden(info, 1) and not console.hidden(info, 0)
  assert console.hidden(error, 3) and not console.hidden(error, 2)
  assert not console.hidden("F1206 16:42:35.399622 1 a.cc:1] fatal", 3) and not console.hidden("16:42:35 ours", 3)
  assert console.verbosity(["--flagfile=x.cfg", "--verbosity=1"]) == 1 and console.verbosity(["-v", "2"]) == 2
  assert console.command(["python", "-X", "utf8", "-m", "xray_keras.run", "--v=1"]) == "xray_keras.run"
  assert console.command(["python", "-m", "pytest"]) is None and console.command(["python", "-c", "1"]) is None


def test_export_prints_the_exported_path_alone_on_stdout(tiny_run, tmp_path):
  """Whatever a converter or quantizer prints meanwhile (NNCF prints its progress) goes to stderr."""
  _, _, run_dir, _ = tiny_run
  code = (
    "import os, runpy, sys\n"
    "from xray_keras.serving import formats\n"
    "export = formats.export\n"
    "def noisy(*args, **kwargs):\n"
    "  print('INFO:nncf:Collecting tensor statistics')\n"
    "  sys.stdout.flush()\n"
    "  os.write(1, b'a native library line\\n')\n"
    "  return export(*args, **kwargs)\n"
    "formats.export = noisy\n"
    "sys.argv = ['export'] + sys.argv[1:]\n"
    "runpy.run_module('xray_keras.export', run_name='__main__')\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code, f"--run_dir={run_dir}", f"--export_dir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == f"{tmp_path / 'vit_scratch' / '1'}\n"
  assert "INFO:nncf:Collecting tensor statistics" in result.stderr and "a native library line" in result.stderr
