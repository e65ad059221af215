"""Fetch the full-resolution Kermany data: `--data_dir=kaggle` or `--data_dir=mendeley`.

`kaggle` asks kagglehub for the Kaggle copy (into kagglehub's cache, `$KAGGLEHUB_CACHE`) and falls
back to the Mendeley archive; `mendeley` downloads the archive straight into
`<cache_dir>/downloads/`. A finished download records the archive's SHA-256, its size and the image
count in `download.json`; the archive is extracted through a temporary folder, so a killed download
is never taken for a finished one. Without a network the run stops with one line.
"""

import datetime
import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile

from absl import logging

from xray_keras import atomic
from xray_keras.data import folder
from xray_keras.data.folder import DataError

KAGGLE_HANDLE = "paultimothymooney/chest-xray-pneumonia/versions/2"
MENDELEY_URL = (
  "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
  "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded"
)
SOURCES = ("kaggle", "mendeley")
EXPECTED_IMAGES = 5856
_RECORD = "download.json"
_TIMEOUT_S = 30


def _first_line(error):
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _count_images(root):
  return sum(1 for r in folder.list_records(root)[1])


def from_kaggle(handle=KAGGLE_HANDLE):
  """The kagglehub cache folder of the Kaggle copy (downloaded on first use)."""
  import kagglehub  # keras-hub depends on it; imported late, it is slow to import.

  path = kagglehub.dataset_download(handle)
  folder.find_root(path)  # fails in one line if the layout is not there
  return path


def from_url(url, cache_dir):
  """Downloads and extracts the archive at `url` once; returns the extracted folder."""
  target = os.path.join(cache_dir, "downloads", "mendeley-rscbjbr9sj-2")
  record = os.path.join(target, _RECORD)
  extracted = os.path.join(target, "extracted")
  if os.path.isfile(record) and os.path.isdir(extracted):
    return extracted
  os.makedirs(target, exist_ok=True)
  work = atomic.temp_dir(target)
  try:
    archive = os.path.join(work, "archive.zip")
    digest, size = _fetch(url, archive)
    _extract(archive, os.path.join(work, "extracted"))
    os.remove(archive)
    count = _count_images(os.path.join(work, "extracted"))
    if os.path.isdir(extracted):
      shutil.rmtree(extracted)
    os.rename(os.path.join(work, "extracted"), extracted)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  atomic.write_json(
    record,
    {
      "url": url,
      "sha256": digest,
      "bytes": size,
      "images": count,
      "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    },
  )
  logging.info("Downloaded %s: %d bytes, sha256 %s, %d images", url, size, digest, count)
  if count != EXPECTED_IMAGES:
    logging.warning("The archive holds %d images; the Kermany set has %d.", count, EXPECTED_IMAGES)
  return extracted


def _fetch(url, path):
  digest, size = hashlib.sha256(), 0
  with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(path, "wb") as out:
    for block in iter(lambda: response.read(1 << 20), b""):
      out.write(block)
      digest.update(block)
      size += len(block)
  return digest.hexdigest(), size


def _extract(archive, dest):
  """Extracts a zip, refusing members that would land outside `dest`."""
  try:
    with zipfile.ZipFile(archive) as z:
      base = os.path.realpath(dest)
      for name in z.namelist():
        if not os.path.realpath(os.path.join(base, name)).startswith(base + os.sep):
          raise DataError(f"The downloaded archive has an unsafe member path {name!r}.")
      z.extractall(dest)
  except zipfile.BadZipFile as e:
    raise DataError(f"The downloaded file is not a zip archive ({_first_line(e)}).") from None


def fetch(source, cache_dir, mendeley_url=MENDELEY_URL):
  """Returns a local folder holding the Kermany data for `source` (`kaggle` or `mendeley`)."""
  failures = []
  if source == "kaggle":
    try:
      return from_kaggle()
    except DataError:
      raise
    except Exception as e:  # kagglehub raises many types: offline, auth, HTTP errors
      failures.append(f"kaggle: {_first_line(e)}")
      logging.warning("Kaggle download failed (%s); trying %s", failures[-1], mendeley_url)
  try:
    return from_url(mendeley_url, cache_dir)
  except DataError:
    raise
  except (urllib.error.URLError, OSError, ValueError) as e:
    failures.append(f"mendeley: {_first_line(e)}")
  raise DataError(
    f"Cannot download the Kermany chest X-ray data ({'; '.join(failures)}). Without a network, get "
    "it elsewhere (Kaggle paultimothymooney/chest-xray-pneumonia or Mendeley doi:10.17632/rscbjbr9sj.2), "
    "unzip it and pass --data_dir=<the folder>; without --data_dir, runs use the built-in 64 px copy."
  )
