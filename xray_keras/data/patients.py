"""Patient ids from Kermany file names, and the patient-grouped validation split."""

import collections
import dataclasses
import os
import re

import numpy as np

# person1000_bacteria_2931.jpeg, person1_virus_6.jpeg, IM-0115-0001.jpeg,
# IM-0117-0001-0002.jpeg, NORMAL2-IM-1427-0001.jpeg
_PATTERNS = (
  re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
  re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),
)


def patient_id(file_name):
  """Returns the patient id in a Kermany file name, or the file stem if none."""
  stem = os.path.splitext(os.path.basename(file_name))[0]
  for pattern in _PATTERNS:
    match = pattern.match(stem)
    if match:
      return match.group(1).lower()
  return "file:" + stem


SUBTYPES = ("NORMAL", "BACTERIA", "VIRUS")


def subtype(file_name, label):
  """NORMAL, BACTERIA or VIRUS from a Kermany file name and its 0/1 label; UNKNOWN for a PNEUMONIA
  image whose name says neither."""
  if int(label) == 0:
    return "NORMAL"
  stem = os.path.basename(str(file_name)).lower()
  if "_bacteria_" in stem:
    return "BACTERIA"
  if "_virus_" in stem:
    return "VIRUS"
  return "UNKNOWN"


def carve_validation(records, fraction, seed):
  """Moves whole patients from `train` to `val`, stratified by class.

  For each class, patients (of that class) are shuffled with `seed` and moved
  to validation until at least `fraction` of the class's training images are
  there. Each patient ends up on exactly one side.

  Args:
    records: list of `Record`. Only those with split `train` are considered.
    fraction: float in [0, 1). Target fraction of each class for validation.
    seed: int. Shuffle seed.

  Returns:
    A new list of records with some `train` records re-labelled `val`.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1). Received: {fraction}")
  by_patient = collections.defaultdict(list)
  for index, record in enumerate(records):
    if record.split == "train":
      by_patient[record.patient].append(index)
  val_indices = set()
  rng = np.random.default_rng(seed)
  for label in sorted({records[i].label for ids in by_patient.values() for i in ids}):
    # A patient belongs to the class most of their images carry.
    patients = sorted(
      p
      for p, ids in by_patient.items()
      if collections.Counter(records[i].label for i in ids).most_common(1)[0][0] == label
    )
    total = sum(len(by_patient[p]) for p in patients)
    target = fraction * total
    taken = 0
    for p in rng.permutation(patients):
      if taken >= target:
        break
      val_indices.update(by_patient[p])
      taken += len(by_patient[p])
  return [dataclasses.replace(r, split="val") if i in val_indices else r for i, r in enumerate(records)]
