"""--data_dir=kaggle / mendeley without touching the network: a local server and a pre-filled cache."""

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile

import pytest

from tests.conftest import REPO, make_tree
from xray_keras.data import download, loader
from xray_keras.data.folder import DataError

# A closed local port as the proxy: every download fails at once, with or without a network.
OFFLINE = {
  "https_proxy": "http://127.0.0.1:9",
  "HTTPS_PROXY": "http://127.0.0.1:9",
  "http_proxy": "http://127.0.0.1:9",
  "HTTP_PROXY": "http://127.0.0.1:9",
}


def _mendeley_zip(tmp_path, members=None):
  """A small archive laid out like ChestXRay2017.zip (chest_xray/{train,test}/..., plus __MACOSX junk)."""
  tree = make_tree(str(tmp_path / "src" / "chest_xray"), per_class=3, splits=("train", "test"))
  path = tmp_path / "serve" / "ChestXRay2017.zip"
  path.parent.mkdir()
  with zipfile.ZipFile(path, "w") as z:
    for folder, _, names in os.walk(tree):
      for name in names:
        full = os.path.join(folder, name)
        z.write(full, os.path.relpath(full, tmp_path / "src"))
    z.writestr("__MACOSX/chest_xray/._junk.jpeg", b"\x00\x05\x16\x07")
    for name, data in (members or {}).items():
      z.writestr(name, data)
  return path


@pytest.fixture
def server(tmp_path):
  """Serves tmp_path/serve on 127.0.0.1; yields (base URL, list of requested paths)."""
  requests = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      requests.append(self.path)

  handler = functools.partial(Handler, directory=str(tmp_path / "serve"))
  (tmp_path / "serve").mkdir(exist_ok=True)
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
  httpd.shutdown()


def _config(tmp_path, data_dir, url):
  return loader.DataConfig(
    data_dir=data_dir, image_size=32, cache_dir=str(tmp_path / "cache"), mendeley_url=url, val_fraction=0.3
  )


def test_mendeley_download_from_a_local_server_is_checksummed_and_reused(tmp_path, server):
  base, requests = server
  (tmp_path / "serve").rmdir()
  archive = _mendeley_zip(tmp_path)
  url = f"{base}/ChestXRay2017.zip"
  data = loader.load(_config(tmp_path, "mendeley", url))
  assert data.source == "folder" and data.counts()["test"]["total"] == 6
  assert sum(data.counts()[s]["total"] for s in ("train", "val")) == 6
  record = json.loads((tmp_path / "cache" / "downloads" / "mendeley-rscbjbr9sj-2" / "download.json").read_text())
  assert record["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
  assert record["bytes"] == archive.stat().st_size and record["images"] == 12 and record["url"] == url
  assert len(requests) == 1
  loader.load(_config(tmp_path, "mendeley", url))  # the second run reads the extracted copy
  assert len(requests) == 1


def test_an_archive_with_an_unsafe_member_is_refused(tmp_path, server):
  base, _ = server
  (tmp_path / "serve").rmdir()
  _mendeley_zip(tmp_path, {"../../escaped.txt": b"x"})
  with pytest.raises(DataError, match="unsafe member"):
    loader.load(_config(tmp_path, "mendeley", f"{base}/ChestXRay2017.zip"))
  assert not (tmp_path / "cache" / "escaped.txt").exists()
  assert not (tmp_path / "cache" / "downloads" / "mendeley-rscbjbr9sj-2" / "download.json").exists()


def test_kaggle_reads_a_filled_kagglehub_cache_offline(tmp_path, monkeypatch):
  import kagglehub.cache
  from kagglehub.handle import parse_dataset_handle

  for key, value in OFFLINE.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
  handle = parse_dataset_handle(download.KAGGLE_HANDLE)
  # The Kaggle copy: chest_xray/{train,val,test} and the nested duplicate chest_xray/chest_xray/.
  target = kagglehub.cache.Cache().get_path(handle)
  make_tree(os.path.join(target, "chest_xray"), per_class=2)
  make_tree(os.path.join(target, "chest_xray", "chest_xray"), per_class=2)
  kagglehub.cache.Cache().mark_as_complete(handle)
  data = loader.load(_config(tmp_path, "kaggle", "http://127.0.0.1:9/unused.zip"))
  assert data.counts()["test"]["total"] == 4
  assert sum(data.counts()[s]["total"] for s in ("train", "val")) == 8  # official val merged


def test_offline_download_stops_in_one_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.run",
      "--flagfile=experiments/smoke.cfg",
      "--data_dir=kaggle",
      "--mendeley_url=http://127.0.0.1:9/ChestXRay2017.zip",
      f"--output_dir={tmp_path / 'run'}",
      f"--cache_dir={tmp_path / 'cache'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, **OFFLINE, "KAGGLEHUB_CACHE": str(tmp_path / "kagglehub")},
  )
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
  assert "Cannot download the Kermany chest X-ray data (kaggle:" in errors[0] and "mendeley:" in errors[0]
  assert "Traceback" not in result.stderr
