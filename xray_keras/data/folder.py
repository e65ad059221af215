"""Find and list the Kermany `chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}` layout, or flat class folders.

Copes with the real archive: the user may point at the archive's top, at
`chest_xray/`, or at a folder holding the splits; `__MACOSX/`, AppleDouble
`._*` files, `.DS_Store` and the nested duplicate `chest_xray/chest_xray/` are
never read as images. A folder with `NORMAL/` and `PNEUMONIA/` and no splits
(the layout of `keras.utils.image_dataset_from_directory`) is read as test images.
"""

import os
import stat

from absl import logging

from xray_keras.data import dicom, patients
from xray_keras.data.records import CLASS_NAMES, Record, Skipped
from xray_keras.errors import UserError

_PICTURE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
IMAGE_EXTENSIONS = _PICTURE_EXTENSIONS + dicom.EXTENSIONS
_JUNK_DIRS = ("__MACOSX",)
SPLITS = ("train", "val", "test")
_MAX_DEPTH = 4

DATASET_HELP = (
  "Expected the Kermany 'Chest X-Ray Images (Pneumonia)' layout chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/ "
  "at any level of the unzipped archive (a test/ alone, or NORMAL/ and PNEUMONIA/ without splits, is a set "
  "of test images to evaluate a model on), a labels.csv with path,label columns, or a MedMNIST .npz. "
  "--data_dir=kaggle downloads the Kermany images (Kaggle paultimothymooney/chest-xray-pneumonia, "
  "or Mendeley Data doi:10.17632/rscbjbr9sj.2)."
)


class DataError(UserError, ValueError):
  """The data given cannot be used; the message says what was expected."""


def _is_split_root(path, partial=False):
  if partial:  # one split is enough: an external site's test/ alone
    return any(os.path.isdir(os.path.join(path, split, name)) for split in SPLITS for name in CLASS_NAMES)
  return all(os.path.isdir(os.path.join(path, split, name)) for split in ("train", "test") for name in CLASS_NAMES)


def _is_class_root(path):
  """NORMAL/ or PNEUMONIA/ without splits above them: a set of test images."""
  return any(os.path.isdir(os.path.join(path, name)) for name in CLASS_NAMES)


def check_dir(data_dir):
  """Raises `DataError` unless `data_dir` is an existing folder."""
  if not os.path.exists(data_dir):
    raise DataError(f"Data directory {data_dir!r} does not exist. {DATASET_HELP}")
  if not os.path.isdir(data_dir):
    raise DataError(f"--data_dir {data_dir!r} is not a directory. {DATASET_HELP}")


def find_root(data_dir, one_split_enough=True):
  """Returns the shallowest folder under `data_dir` holding train/ and test/ splits, else (if
  `one_split_enough`) the shallowest holding any one split, else the shallowest holding NORMAL/ or
  PNEUMONIA/ (test images): the loader then names a needed split that is empty."""
  check_dir(data_dir)
  root = _search(data_dir, _is_split_root)
  if not root and one_split_enough:
    root = _search(data_dir, lambda path: _is_split_root(path, partial=True)) or _search(data_dir, _is_class_root)
  return root or _not_found(data_dir)


def _not_found(data_dir):
  if not any(os.scandir(data_dir)):
    raise DataError(f"Data directory {data_dir!r} is empty. {DATASET_HELP}")
  raise DataError(f"No train/ and test/ splits, nor NORMAL/ and PNEUMONIA/, under {data_dir!r}. {DATASET_HELP}")


def _search(data_dir, is_root):
  """Breadth first, at most `_MAX_DEPTH` folders down; None if no root."""
  frontier = [os.path.normpath(data_dir)]
  for _ in range(_MAX_DEPTH):
    found = sorted(path for path in frontier if is_root(path))
    if found:
      if len(found) > 1:
        logging.warning("Several dataset roots at the same depth; using %s", found[0])
      return found[0]
    next_frontier = []
    for path in frontier:
      try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
      except OSError:
        continue
      for entry in entries:
        if is_junk_folder(entry.name):
          continue
        if entry.is_dir(follow_symlinks=False):
          next_frontier.append(entry.path)
    frontier = next_frontier
  return None


def is_junk_folder(name):
  """A hidden folder or the archive's `__MACOSX/`: never holds images to read."""
  return name in _JUNK_DIRS or name.startswith(".")


def junk_reason(name, path=None):
  """Why a file is not an image to read, or None. A file named without an extension (as PACS exports
  name DICOM files) is read when `path` starts with the DICOM prefix."""
  if name.startswith("._"):
    return "AppleDouble metadata file (not an image)"
  if name.startswith("."):
    return "hidden file"
  if name.upper() == "DICOMDIR":
    return "DICOMDIR index of a DICOM export (not an image)"
  if name.lower().endswith(IMAGE_EXTENSIONS):
    return None
  if path and not os.path.splitext(name)[1] and dicom.file_is_dicom(path):
    return None
  return "not an image file extension"


def patient_of(path, name, salt_dir):
  """A DICOM file's salted PatientID hash where it has one, else the id in a Kermany file name."""
  if salt_dir and not name.lower().endswith(_PICTURE_EXTENSIONS):
    key = dicom.patient_key(path, salt_dir)
    if key:
      return key
  return patients.patient_id(name)


def file_problem(path):
  """Why the entry at `path` cannot be read as a file (links followed), or None."""
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    if os.path.islink(path):
      return f"broken symbolic link ({e.strerror})"
    return f"unreadable ({e.strerror})"
  if not stat.S_ISREG(mode):
    return "not a regular file"
  return None


def list_records(data_dir, salt_dir=None):
  """Lists the labelled images of every split under the dataset root.

  DICOM files are grouped by a salted hash of their PatientID (the salt kept in `salt_dir`).

  Returns:
    (root, records, skipped): the resolved root, a list of `Record` sorted by
    path (official `val` images have split `official_val`), and a list of
    `Skipped` for junk found in the class folders.
  """
  root = find_root(data_dir)
  if os.path.isdir(os.path.join(root, os.path.basename(root))):
    logging.info("Ignoring nested duplicate folder %s", os.path.join(root, os.path.basename(root)))
  records, skipped = [], []
  # flat class folders hold test images: "" stands for the missing split folder
  splits = SPLITS if _is_split_root(root, partial=True) else ("",)
  for split in splits:
    for label, class_name in enumerate(CLASS_NAMES):
      folder = os.path.join(root, split, class_name)
      if not os.path.isdir(folder):
        continue
      for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = os.path.join(split, class_name, entry.name)
        if entry.is_dir(follow_symlinks=False):
          continue
        reason = junk_reason(entry.name, entry.path) or file_problem(entry.path)
        if reason:
          skipped.append(Skipped(rel, reason))
          continue
        records.append(
          Record(
            path=rel,
            label=label,
            split={"val": "official_val", "": "test"}.get(split, split),
            patient=patient_of(entry.path, entry.name, salt_dir),
          )
        )
  return root, records, skipped
