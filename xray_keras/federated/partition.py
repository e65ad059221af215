"""Patient-disjoint partitions of the train split into K sites: iid, label_skew and size_skew.

Every patient's images go to one site. `iid` deals patients out so that sites have near-equal
image counts; `label_skew` gives each class its own Dirichlet(alpha) shares over the sites;
`size_skew` draws the sites' sizes from Dirichlet(alpha) with classes mixed as in the split.
"""

import collections
import csv

import numpy as np

from xray_keras.data.records import printable
from xray_keras.errors import UserError

SCHEMES = ("iid", "label_skew", "size_skew")
_TRIES = 100


def _patients(records):
  """`{patient: [indices]}` in first-seen order, and each patient's majority label."""
  groups = collections.defaultdict(list)
  for i, r in enumerate(records):
    groups[r.patient].append(i)
  labels = {p: int(np.bincount([records[i].label for i in idx]).argmax()) for p, idx in groups.items()}
  return groups, labels


def _fill(patients, groups, shares, sites):
  """Deals `patients` (in order) to sites so that site k's image count tracks `shares[k]`."""
  total = sum(len(groups[p]) for p in patients)
  target = np.asarray(shares, dtype=float) * total
  counts = np.zeros(len(shares))
  for p in patients:
    k = int(np.argmax(target - counts))  # the site furthest below its share
    sites[p] = k
    counts[k] += len(groups[p])


def partition(records, sites, scheme="iid", alpha=0.5, seed=0):
  """Site index (0..sites-1) of every record, as an int array.

  Args:
    records: the train split's records (`.patient`, `.label`).
    sites: int. K >= 2.
    scheme: one of SCHEMES.
    alpha: float. Dirichlet concentration of label_skew and size_skew (smaller: more skewed).
    seed: int.

  Raises:
    UserError: fewer patients than sites, an unknown scheme, or no draw giving every site an image.
  """
  if scheme not in SCHEMES:
    raise UserError(f"Unknown partition {scheme!r}; expected one of {', '.join(SCHEMES)}.")
  if sites < 2:
    raise UserError(f"--sites must be at least 2 (got {sites}).")
  groups, labels = _patients(records)
  if len(groups) < sites:
    raise UserError(f"{len(groups)} patients cannot fill {sites} sites (every site needs its own patients).")
  if alpha <= 0:
    raise UserError(f"--partition_alpha must be positive (got {alpha}).")
  rng = np.random.default_rng(seed)
  for _ in range(_TRIES):
    patients = list(groups)
    rng.shuffle(patients)
    assigned = {}
    if scheme == "iid":
      _fill(patients, groups, np.full(sites, 1.0 / sites), assigned)
    elif scheme == "size_skew":
      _fill(patients, groups, rng.dirichlet(np.full(sites, alpha)), assigned)
    else:
      for c in sorted(set(labels.values())):
        _fill([p for p in patients if labels[p] == c], groups, rng.dirichlet(np.full(sites, alpha)), assigned)
    site_of = np.empty(len(records), dtype=int)
    for p, idx in groups.items():
      site_of[idx] = assigned[p]
    if len(np.unique(site_of)) == sites:
      return site_of
  raise UserError(
    f"No {scheme} draw with alpha={alpha} gave all {sites} sites an image in {_TRIES} tries; "
    "raise --partition_alpha or lower --sites."
  )


def describe(records, site_of, class_names):
  """Per site: image count, count of each class and patients."""
  rows = []
  for k in range(int(site_of.max()) + 1):
    idx = np.flatnonzero(site_of == k)
    labels = np.array([records[i].label for i in idx], dtype=int)
    row = {"site": k, "images": int(len(idx)), "patients": len({records[i].patient for i in idx})}
    row.update({name: int((labels == c).sum()) for c, name in enumerate(class_names)})
    rows.append(row)
  return rows


def write_manifest(path, records, site_of):
  """site_manifest.csv: `file,class,patient,site` for every train image."""
  with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "class", "patient", "site"])
    for r, k in zip(records, site_of):
      writer.writerow([printable(r.path), r.class_name, printable(r.patient), int(k)])
