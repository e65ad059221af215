"""The records every data source produces: one labelled image with its split and patient."""

import dataclasses

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "val", "test")
# Where a run's validation split came from (`StudyData.validation`), in the words its report uses.
VALIDATION = {
  "patient": "carved from train by patient (all of a patient's images on one side)",
  "image": (
    "carved from train per image: the source has no patient ids, so one patient's images can fall on both "
    "sides and validation scores can be optimistic"
  ),
  "file": "the file's own validation split",
}


def printable(path):
  """`path` for CSV files and logs: bytes of a non-UTF-8 file name appear as \\xNN escapes."""
  return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclasses.dataclass(frozen=True)
class Record:
  """One image known to a data source.

  Attributes:
    path: str. Relative path under the data root (or a synthetic/npz id).
    label: int. 0 = NORMAL, 1 = PNEUMONIA.
    split: str. `train`, `val`, `test`, or `official_val` before merging.
    patient: str. Patient id parsed from the file name (or a salted hash of a DICOM's or a label list's).
    subtype: str. A label list's `subtype` column; empty where the source has none.
  """

  path: str
  label: int
  split: str
  patient: str
  subtype: str = ""

  @property
  def class_name(self):
    return CLASS_NAMES[self.label]


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A file that was found but not used, and why."""

  path: str
  reason: str
