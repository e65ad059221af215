"""Decode-once cache: decoded uint8 arrays on disk, keyed by source files and settings.

A cache entry is a folder `<cache_dir>/<key>/` holding `images.npy` and
`index.json` (file list, skipped files). It is written to a temporary folder
and renamed into place, so a killed run never leaves a half-written entry that
a later run would read; a CRC-32 of the images, checked on every hit, catches
an entry damaged later. No pickle: arrays are loaded with `allow_pickle=False`.
"""

import concurrent.futures
import hashlib
import json
import os
import shutil
import zlib

import numpy as np
from absl import logging

from xray_keras import atomic
from xray_keras.data import contract, decode
from xray_keras.data.records import Skipped


def default_cache_dir():
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "xray_keras")


def cache_key(root, paths, image_size, channels, resize_mode):
  """Hash of the source files (path, size, mtime) and the decode settings."""
  digest = hashlib.sha256()
  digest.update(json.dumps([decode.DECODER_VERSION, image_size, channels, resize_mode]).encode())
  for rel in paths:
    try:
      stat = os.stat(os.path.join(root, rel))
      digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    except OSError:
      digest.update(f"{rel}\0missing\n".encode("utf-8", "surrogateescape"))
  return digest.hexdigest()[:32]


def _decode_file(root, rel, image_size, channels, resize_mode):
  path = os.path.join(root, rel)
  try:
    data = decode.read_file(path)
  except OSError as e:
    return None, f"unreadable ({e.strerror or type(e).__name__})", None
  except decode.DecodeError as e:
    return None, str(e), None
  try:
    array = decode.decode_image(data, image_size, channels, resize_mode)
  except decode.DecodeError as e:
    return None, str(e), None
  return array, None, hashlib.sha1(data).hexdigest()


# What one decode thread may hold at worst: the largest file it reads and 8 bytes a pixel of the largest image.
WORKER_BYTES = contract.MAX_BYTES + 8 * contract.MAX_PIXELS
# Large files (DICOM radiographs of 50 MB) share this much between the threads; a file takes about four times
# its bytes while it is decoded (the file, pydicom's copy of its pixel data, the stored array, the output).
DECODE_BUDGET = 512 * 2**20


def default_workers(largest_file=0):
  """Decode threads: two a core, at most 8, no more than half the available memory holds at worst, and no
  more than `DECODE_BUDGET` holds of files the size of `largest_file` (bytes)."""
  workers = min(8, (os.cpu_count() or 1) * 2)
  available = _available_memory()
  if available is not None:
    workers = min(workers, available // 2 // WORKER_BYTES)
  if largest_file:
    workers = min(workers, DECODE_BUDGET // (4 * largest_file))
  return max(1, workers)


def _size(path):
  try:
    return os.path.getsize(path)
  except OSError:
    return 0


def _available_memory():
  """Bytes the system can give without swapping (Linux's MemAvailable: free and reclaimable), or None."""
  try:
    with open("/proc/meminfo") as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
  except (OSError, StopIteration, ValueError):
    return None


def decode_files(root, paths, image_size, channels, resize_mode, workers=None):
  """Decodes files in parallel (Pillow releases the GIL while decoding).

  Returns:
    (images, kept_paths, skipped, digests): a uint8 array for the decodable
    files in input order, their paths, `Skipped` for the rest, and the SHA-1 of
    each kept file's bytes.
  """
  workers = workers or default_workers(max((_size(os.path.join(root, p)) for p in paths), default=0))
  images = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
  kept, skipped, digests = [], [], []
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = pool.map(lambda rel: _decode_file(root, rel, image_size, channels, resize_mode), paths)
    for rel, (array, reason, digest) in zip(paths, results):
      if array is None:
        skipped.append(Skipped(rel, reason))
        continue
      images[len(kept)] = array
      kept.append(rel)
      digests.append(digest)
  return images[: len(kept)], kept, skipped, digests


def load_or_decode(root, paths, image_size, channels, resize_mode, cache_dir):
  """Returns `(images, kept_paths, skipped, digests)`, from the cache when possible."""
  key = cache_key(root, paths, image_size, channels, resize_mode)
  entry = os.path.join(cache_dir, key) if cache_dir else None
  if entry and os.path.isfile(os.path.join(entry, "index.json")):
    try:
      with open(os.path.join(entry, "index.json")) as f:
        index = json.load(f)
      images = np.load(os.path.join(entry, "images.npy"), mmap_mode=None, allow_pickle=False)
      if len(images) != len(index["kept"]) or images.shape[1:] != (image_size, image_size, channels):
        raise ValueError("shape does not match its index")
      if _crc32(images) != index["images_crc32"]:
        raise ValueError("image data does not match its checksum")
      logging.info("Decode cache hit: %d images from %s", len(images), entry)
      skipped = [Skipped(p, r) for p, r in index["skipped"]]
      return images, index["kept"], skipped, index["digests"]
    except (OSError, ValueError, KeyError) as e:
      logging.warning("Decode cache entry %s is unreadable (%s); rebuilding it.", entry, e)
      shutil.rmtree(entry, ignore_errors=True)
  logging.info("Decode cache miss: decoding %d files at %dpx, %d channel(s)", len(paths), image_size, channels)
  images, kept, skipped, digests = decode_files(root, paths, image_size, channels, resize_mode)
  if entry:
    _write_entry(entry, images, kept, skipped, digests)
  return images, kept, skipped, digests


def _crc32(images):
  return zlib.crc32(np.ascontiguousarray(images).data)


def _write_entry(entry, images, kept, skipped, digests):
  parent = os.path.dirname(entry)
  tmp = None
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = atomic.temp_dir(parent)
    np.save(os.path.join(tmp, "images.npy"), images, allow_pickle=False)
    index = {
      "kept": kept,
      "skipped": [[s.path, s.reason] for s in skipped],
      "digests": digests,
      "images_crc32": _crc32(images),
    }
    with open(os.path.join(tmp, "index.json"), "w") as f:
      json.dump(index, f)
    os.rename(tmp, entry)
  except OSError as e:
    if os.path.isdir(entry):
      logging.info("Decode cache %s was written by another run.", entry)
    else:
      logging.warning("Could not write decode cache %s (%s); continuing without it.", entry, e)
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)
