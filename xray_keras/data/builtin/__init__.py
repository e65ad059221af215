"""The built-in real data: all 5,856 Kermany chest X-rays at 64x64 grey, in the official split.

`chest_xray_64.zip` holds one PNG per image under `{train,val,test}/{NORMAL,PNEUMONIA}/`, named
after the original file (so patient ids parse as from the originals). Its SHA-256 is checked
before any image is read. Licence CC BY 4.0; see README.md beside this file.
"""

import hashlib
import io
import os
import zipfile

import numpy as np
from PIL import Image

from xray_keras.data import patients
from xray_keras.data.records import CLASS_NAMES, Record
from xray_keras.errors import UserError

ARCHIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chest_xray_64.zip")
ARCHIVE_SHA256 = "771a2900a63ace9c4d06c2cd80d6adc3d5a8046c137cac5e9610338f4443f77d"
IMAGE_SIZE = 64
NAME = "builtin:chest_xray_64"
FULL_DATA_HELP = (
  "For the full-resolution images use --data_dir=kaggle (downloads the Kaggle copy, about 1.2 GB) "
  "or --data_dir=<the unzipped Kermany archive>."
)
_SPLIT_OF = {"train": "train", "val": "official_val", "test": "test"}


class BuiltinDataError(UserError, ValueError):
  """The built-in archive is missing or altered."""


def sha256(path, chunk=1 << 20):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      digest.update(block)
  return digest.hexdigest()


def verified_archive(path=ARCHIVE, expected=None):
  """Opens the archive after checking its SHA-256; raises `BuiltinDataError` in one line."""
  expected = expected or ARCHIVE_SHA256
  if not os.path.isfile(path):
    raise BuiltinDataError(f"The built-in data file {path} is missing; reinstall xray_keras. {FULL_DATA_HELP}")
  actual = sha256(path)
  if actual != expected:
    raise BuiltinDataError(
      f"The built-in data file {path} is altered (SHA-256 {actual[:12]}..., expected {expected[:12]}...); "
      "reinstall xray_keras."
    )
  return zipfile.ZipFile(path)


def parse_name(name):
  """`train/NORMAL/IM-0115-0001.png` -> (split, label, file name), or None for other entries."""
  parts = name.split("/")
  if len(parts) != 3 or parts[0] not in _SPLIT_OF or parts[1] not in CLASS_NAMES or not parts[2]:
    return None
  return parts[0], CLASS_NAMES.index(parts[1]), parts[2]


def files(path=ARCHIVE, expected=None):
  """Yields `(archive name, split, label, PNG bytes)` for every image, in archive order."""
  with verified_archive(path, expected) as archive:
    for info in archive.infolist():
      parsed = parse_name(info.filename)
      if parsed:
        yield info.filename, parsed[0], parsed[1], archive.read(info)


def records(path=ARCHIVE, expected=None):
  """One `Record` per image, without decoding (see `load`)."""
  with verified_archive(path, expected) as archive:
    names = [(n, parse_name(n)) for n in archive.namelist()]
  return [Record(n, p[1], _SPLIT_OF[p[0]], patients.patient_id(n)) for n, p in names if p]


def load(path=ARCHIVE, expected=None):
  """Returns `(images, records)`: uint8 `(5856, 64, 64, 1)` and one `Record` per image.

  Records use the folder source's conventions: the official `val` split is `official_val`, and
  the patient id comes from the file name.
  """
  images, records = [], []
  for name, split, label, data in files(path, expected):
    with Image.open(io.BytesIO(data)) as image:
      images.append(np.asarray(image.convert("L"), dtype=np.uint8))
    records.append(Record(name, label, _SPLIT_OF[split], patients.patient_id(name)))
  return np.stack(images)[..., None], records
