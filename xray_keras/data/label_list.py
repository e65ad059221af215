"""A label list as a data source: `--data_dir=labels.csv` with columns `path,label` and optional
`patient_id`, `split` and `subtype`, for sites whose images are not sorted into class folders.

Paths are relative to the CSV's folder; labels NORMAL/PNEUMONIA or 0/1. Without a `split` column
every row is a test image (a set to evaluate a trained model on). A missing column, an unknown
label or split, or a file listed twice (however its path is written) stops with one line; a row whose file is missing or not an
image is listed in skipped_files.csv with its reason. Patient ids are stored as a salted hash.
"""

import csv
import os

from xray_keras.data import dicom, folder
from xray_keras.data.folder import DataError
from xray_keras.data.records import Record, Skipped

REQUIRED = ("path", "label")
OPTIONAL = ("patient_id", "split", "subtype")
_LABELS = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}
_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def is_label_list(data_dir):
  return data_dir.lower().endswith(".csv")


def _rows(path):
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
      rows = [{k: (v or "").strip() for k, v in zip(columns, row.values())} for row in reader]
  except FileNotFoundError:
    raise DataError(f"Label list {path!r} does not exist.") from None
  except (UnicodeDecodeError, csv.Error) as e:
    raise DataError(f"Label list {path!r} is not a readable UTF-8 CSV file ({e}).") from None
  missing = [c for c in REQUIRED if c not in columns]
  if missing:
    # The first row may be data (no header): name only header-like cells, never a patient id or a path.
    named = [c for c in columns if c.replace("_", "").isalpha() and len(c) <= 20]
    others = len(columns) - len(named)
    shown = ", ".join(named) + (f"{', ' if named else ''}{others} other(s) not shown" if others else "")
    raise DataError(
      f"Label list {path!r} has no {' or '.join(repr(c) for c in missing)} column (its first row: "
      f"{shown or 'empty'}); expected a header row path,label and optionally {','.join(OPTIONAL)}."
    )
  return columns, rows


def list_records(path, salt_dir):
  """`(root, records, skipped)` for the rows of a label list, like `folder.list_records`."""
  columns, rows = _rows(path)
  root = os.path.dirname(os.path.abspath(path))
  records, skipped, seen = [], [], {}
  for number, row in enumerate(rows, start=2):  # row 1 is the header
    where = f"{os.path.basename(path)} row {number}"
    label = _LABELS.get(row["label"].lower())
    if label is None:
      raise DataError(f"{where}: unknown label {row['label']!r} (expected NORMAL, PNEUMONIA, 0 or 1).")
    split = _SPLITS.get(row.get("split", "test").lower()) if "split" in columns else "test"
    if split is None:
      raise DataError(f"{where}: unknown split {row['split']!r} (expected train, val or test).")
    if not row["path"]:
      raise DataError(f"{where}: empty path.")
    rel = os.path.normpath(row["path"])
    full = os.path.join(root, rel)
    key = os.path.realpath(full)  # relative, absolute or through a link: one file
    if key in seen:
      raise DataError(f"{where}: {row['path']!r} is listed twice (first on row {seen[key]}).")
    seen[key] = number
    name = os.path.basename(rel)
    reason = folder.file_problem(full) if os.path.lexists(full) else "no such file"
    reason = reason or folder.junk_reason(name, full)
    if reason:
      skipped.append(Skipped(rel, reason))
      continue
    patient = row.get("patient_id", "")
    patient = dicom.hashed_patient("csv:", patient, salt_dir) if patient else folder.patient_of(full, name, salt_dir)
    records.append(Record(path=rel, label=label, split=split, patient=patient, subtype=row.get("subtype", "").upper()))
  if not records:
    raise DataError(f"Label list {path!r} lists no readable image ({len(skipped)} rows skipped).")
  return root, records, skipped
