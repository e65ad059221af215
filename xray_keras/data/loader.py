"""Load any data source into train/val/test arrays with their records and skips.

Sources: `builtin` (the real images at 64 px, shipped in the package; the default),
`folder` (the Kermany layout; `--data_dir=kaggle` or `mendeley` downloads it first), `npz`
(PneumoniaMNIST / MedMNIST), `tfds` (the `chest_xray_pneumonia` builder) and `synthetic`.
"""

import collections
import csv
import dataclasses
import os

import numpy as np
from absl import logging

from xray_keras.data import builtin, cache, decode, download, folder, label_list, patients, preprocess, synthetic
from xray_keras.data.folder import DataError
from xray_keras.data.records import CLASS_NAMES, SPLITS, VALIDATION, Record, Skipped, printable

SOURCES = ("auto", "builtin", "folder", "csv", "npz", "tfds", "synthetic")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """How to find, split and decode the data."""

  source: str = "auto"
  data_dir: str = ""
  image_size: int = 224
  channels: int = 1
  resize_mode: str = "squash"
  val_fraction: float = 0.15
  split_seed: int = 42
  merge_official_val: bool = True
  max_images_per_split: int = 0
  cache_dir: str = ""
  synthetic_train_size: int = 800
  synthetic_test_size: int = 200
  tfds_data_dir: str = ""
  mendeley_url: str = download.MENDELEY_URL
  task: str = "binary"  # binary (NORMAL / PNEUMONIA) | three_class (NORMAL / BACTERIA / VIRUS)
  preprocess: tuple = ()  # --preprocess steps, see preprocess.py


@dataclasses.dataclass
class SplitArrays:
  images: np.ndarray
  labels: np.ndarray
  records: list


@dataclasses.dataclass
class StudyData:
  """Everything a run needs to know about its data."""

  source: str
  synthetic: bool
  name: str
  splits: dict
  skipped: list
  notes: list = dataclasses.field(default_factory=list)
  class_names: tuple = CLASS_NAMES
  validation: str = "patient"  # a key of records.VALIDATION

  def counts(self):
    out = {}
    for split, arrays in self.splits.items():
      per_class = np.bincount(arrays.labels.astype(int), minlength=len(self.class_names))
      out[split] = {name: int(n) for name, n in zip(self.class_names, per_class)}
      out[split]["total"] = int(len(arrays.labels))
    return out

  def summary(self):
    return {
      "source": self.source,
      "synthetic": self.synthetic,
      "name": self.name,
      "counts": self.counts(),
      "skipped_files": len(self.skipped),
      "notes": self.notes,
      "class_names": list(self.class_names),
      "validation": self.validation,
    }


def resolve_source(config):
  if config.source != "auto":
    return config.source
  if not config.data_dir:
    return "builtin"
  if config.data_dir.endswith(".npz"):
    return "npz"
  if label_list.is_label_list(config.data_dir):
    return "csv"
  return "folder"


def check_early(config):
  """The data checks that need neither decoding nor TensorFlow, so that a run with a missing folder or
  file, or a size the built-in data cannot give, stops within a second. `load` makes them again."""
  source = resolve_source(config)
  if source == "builtin" and config.image_size:
    _check_builtin_size(config.image_size)
  elif source == "folder" and config.data_dir not in download.SOURCES:
    folder.check_dir(config.data_dir)
  elif source == "npz":
    _check_npz_path(config.data_dir)


def load(config, need=("train", "test")):
  """Loads the configured source. Raises `DataError` with a one-line reason (also when a split in
  `need` is empty)."""
  source = resolve_source(config)
  if source in ("folder", "csv", "npz", "tfds") and not config.data_dir:
    raise DataError(f"--data_source={source} needs --data_dir. {folder.DATASET_HELP}")
  if source == "folder" and config.data_dir in download.SOURCES:
    fetched = download.fetch(config.data_dir, config.cache_dir or cache.default_cache_dir(), config.mendeley_url)
    config = dataclasses.replace(config, data_dir=fetched)
  loader = {
    "builtin": _load_builtin,
    "folder": _load_folder,
    "csv": _load_label_list,
    "npz": _load_npz,
    "tfds": _load_tfds,
    "synthetic": _load_synthetic,
  }
  data = loader[source](config)
  if config.task == "three_class":
    _three_class(data)
  if config.preprocess:
    steps = preprocess.parse(config.preprocess)
    for arrays in data.splits.values():
      arrays.images = preprocess.apply(arrays.images, steps)
    data.notes.append(f"Preprocessing (--preprocess): {', '.join(config.preprocess)}.")
  for split in need:
    if not len(data.splits[split].labels):
      hint = {
        "csv": " (a label list without a split column holds test images only)",
        "folder": " (a folder without train/ holds test images, for python -m xray_keras.evaluate)",
      }.get(source, "")
      raise DataError(f"The {split} split is empty after loading {data.name}{hint}.")
  counts = data.counts()
  tag = "SYNTHETIC data" if data.synthetic else f"data from {data.name}"
  for split in SPLITS:
    logging.info("%s: %s %s", tag, split, counts[split])
  if data.skipped:
    logging.warning("Skipped %d files (listed in skipped_files.csv)", len(data.skipped))
  return data


def _three_class(data):
  """Relabels every split NORMAL / BACTERIA / VIRUS from the file names (Kermany et al. 2018's
  three classes); PNEUMONIA images whose name says neither are skipped and counted."""
  dropped = 0
  for split, arrays in data.splits.items():
    names = [patients.subtype(r.path, r.label) for r in arrays.records]
    keep = [i for i, n in enumerate(names) if n != "UNKNOWN"]
    for i in sorted(set(range(len(names))) - set(keep)):
      data.skipped.append(
        Skipped(arrays.records[i].path, "--task=three_class: PNEUMONIA file name says neither bacteria nor virus")
      )
    dropped += len(names) - len(keep)
    labels = np.array([patients.SUBTYPES.index(names[i]) for i in keep], dtype=np.int32)
    data.splits[split] = SplitArrays(arrays.images[keep], labels, [arrays.records[i] for i in keep])
  if dropped:
    logging.warning("--task=three_class: skipped %d PNEUMONIA images whose file name gives no subtype.", dropped)
  data.class_names = patients.SUBTYPES


def select(records, config):
  """Merges or drops the official val, carves validation by patient, applies the cap."""
  if config.merge_official_val:
    records = [dataclasses.replace(r, split="train") if r.split == "official_val" else r for r in records]
  else:
    records = [r for r in records if r.split != "official_val"]
  if not any(r.split == "val" for r in records):
    records = patients.carve_validation(records, config.val_fraction, config.split_seed)
  if config.max_images_per_split:
    records = _cap(records, config.max_images_per_split, config.split_seed)
  return records


def _select_arrays(images, records, config):
  """`select` for sources whose images are already decoded: returns the kept images and records."""
  index = {r.path: i for i, r in enumerate(records)}
  records = select(records, config)
  return images[[index[r.path] for r in records]], records


def _cap(records, cap, seed):
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r.split, r.label)].append(r)
  rng = np.random.default_rng(seed)
  kept = set()
  for key in sorted(groups):
    group = groups[key]
    chosen = rng.permutation(len(group))[:cap]
    kept.update(group[i].path for i in chosen)
  return [r for r in records if r.path in kept]


def _arrays(images, records):
  labels = np.array([r.label for r in records], dtype=np.int32)
  return SplitArrays(images, labels, list(records))


def _by_split(images, records):
  splits = {}
  for split in SPLITS:
    index = [i for i, r in enumerate(records) if r.split == split]
    splits[split] = _arrays(images[index], [records[i] for i in index])
  return splits


def _load_label_list(config):
  return _load_folder(config, label_list.list_records, "csv")


def _load_folder(config, lister=folder.list_records, source="folder"):
  cache_dir = config.cache_dir or cache.default_cache_dir()
  root, records, skipped = lister(config.data_dir, salt_dir=cache_dir)
  own_val = any(r.split == "val" for r in records)
  records = select(records, config) if any(r.split == "train" for r in records) else records
  images, kept, bad, digests = cache.load_or_decode(
    root,
    [r.path for r in records],
    config.image_size,
    config.channels,
    config.resize_mode,
    cache_dir,
  )
  by_path = {r.path: r for r in records}
  kept_records = [by_path[p] for p in kept]
  data = StudyData(
    source=source,
    synthetic=False,
    name=os.path.basename(config.data_dir) if source == "csv" else os.path.basename(os.path.normpath(root)),
    splits=_by_split(images, kept_records),
    skipped=skipped + bad,
    validation="file" if own_val else "patient",
  )
  _note_duplicates(data, kept_records, digests)
  _note_patient_overlap(data, kept_records)
  return data


def _note_duplicates(data, records, digests):
  """Logs byte-identical images that sit in different splits (a possible leak)."""
  seen = {}
  crossing = 0
  for record, digest in zip(records, digests):
    other = seen.setdefault(digest, record)
    if other is not record and other.split != record.split:
      crossing += 1
  if crossing:
    note = f"{crossing} byte-identical image(s) appear in more than one split"
    logging.warning(note)
    data.notes.append(note)


def _note_patient_overlap(data, records):
  """The official train/test split is not patient-disjoint; say how far."""
  sides = collections.defaultdict(set)
  for r in records:
    sides[r.patient].add("test" if r.split == "test" else "train+val")
  shared = sum(1 for s in sides.values() if len(s) > 1)
  if shared:
    note = f"{shared} patient id(s) appear in both the official train and test splits"
    logging.info(note)
    data.notes.append(note)


def _check_npz_path(path):
  if not os.path.isfile(path):
    raise DataError(
      f"npz file {path!r} does not exist. Expected a MedMNIST file such as pneumoniamnist.npz "
      "with keys train_images, train_labels, val_images, val_labels, test_images, test_labels."
    )


def _load_npz(config):
  path = config.data_dir
  _check_npz_path(path)
  arrays = _read_npz(path)
  name = os.path.basename(path)
  labels = {split: _check_npz_split(path, split, *pair) for split, pair in arrays.items()}
  notes = []
  pixels, note = _npz_pixels({split: pair[0] for split, pair in arrays.items()})
  if note:
    logging.info("%s: %s", name, note)
    notes.append(f"{name}: {note}")
  records, images = [], []
  for split in arrays:
    images.append(decode.resize_array(pixels[split], config.image_size, config.channels, config.resize_mode))
    for i, label in enumerate(labels[split]):
      records.append(Record(f"{name}:{split}/{i}", int(label), split, f"{name}:{split}/{i}"))
  validation = "file"
  if not len(labels.get("val", ())):
    validation = "image"
    why = "no val_images" if "val" not in arrays else "empty val_images"
    note = f"{name} has {why}: validation is {VALIDATION['image']}."
    logging.warning(note)
    notes.append(note)
  images, records = _select_arrays(np.concatenate(images), records, config)
  return StudyData(
    source="npz",
    synthetic=False,
    name=name,
    splits=_by_split(images, records),
    skipped=[],
    notes=notes,
    validation=validation,
  )


UNIT_OVERSHOOT = 1.5  # float 0..1 images resized with bicubic or Lanczos filters overshoot 1 slightly


def _npz_pixels(images):
  """{split: uint8 images} from checked npz arrays, and a note on how float pixels were read.

  Float pixels that sit in 0..1 (as many PneumoniaMNIST copies are saved) are intensities, scaled
  by 255: all of them within 0..1, or at least 99.9% of them with none above `UNIT_OVERSHOOT`
  (the overshoot of a bicubic resize, clipped). Other float pixels are read as 0..255. Float pixels
  are rounded, not truncated.
  """
  floats = [a for a in images.values() if np.issubdtype(a.dtype, np.floating) and a.size]
  if not floats:
    return {split: a.astype(np.uint8, copy=False) for split, a in images.items()}, ""
  count = sum(a.size for a in floats)
  above = sum(int(np.count_nonzero(a > 1.0)) for a in floats)
  below = sum(int(np.count_nonzero(a < 0.0)) for a in floats)
  unit = above == 0 or (above <= count * 1e-3 and max(float(a.max()) for a in floats) <= UNIT_OVERSHOOT)
  scale = 255.0 if unit else 1.0
  out = {}
  for split, a in images.items():
    if np.issubdtype(a.dtype, np.floating):
      a = np.clip(np.round(a.astype(np.float64) * scale), 0, 255)
    out[split] = a.astype(np.uint8)
  if unit:
    clipped = f"; {above + below} of {count} pixels outside 0..1 clipped" if above + below else ""
    return out, f"float pixels in 0..1, read as intensities: scaled by 255 and rounded to 0..255{clipped}."
  return out, "float pixels in 0..255: rounded to the nearest integer."


def _read_npz(path):
  """{split: (images, labels)} from a MedMNIST-style npz; any damage is one `DataError` line."""
  with open(path, "rb") as f:
    if f.read(4) != b"PK\x03\x04":
      raise DataError(
        f"npz file {path!r} is not an npz archive (no zip header); expected a file written by numpy.savez."
      )
  try:
    with np.load(path, allow_pickle=False) as archive:
      keys = set(archive.files)
      missing = [f"{s}_{k}" for s in ("train", "test") for k in ("images", "labels") if f"{s}_{k}" not in keys]
      if missing:
        raise DataError(f"npz file {path!r} lacks keys {missing}; it has {sorted(keys)}.")
      if ("val_images" in keys) != ("val_labels" in keys):
        raise DataError(f"npz file {path!r} has only one of val_images and val_labels; give both or neither.")
      return {s: (archive[f"{s}_images"], archive[f"{s}_labels"]) for s in SPLITS if f"{s}_images" in keys}
  except DataError:
    raise
  except ValueError as e:
    if "allow_pickle" not in str(e):
      raise DataError(f"Cannot read npz file {path!r}: {str(e).splitlines()[0]}.") from None
    raise DataError(
      f"npz file {path!r} holds object (pickled) arrays, which are not read: unpickling can run any code "
      "the file's author chose. Save plain numeric arrays (numpy.savez with uint8 or float images)."
    ) from None
  except Exception as e:  # zipfile.BadZipFile, EOFError, zlib.error, ...
    reason = str(e).splitlines()[0] if str(e) else ""
    raise DataError(
      f"Cannot read npz file {path!r}: damaged or not an npz archive ({type(e).__name__}: {reason})."
    ) from None


def _check_npz_split(path, split, images, labels):
  """Refuses arrays that would train on something else than the file says; returns labels as (N,) ints."""
  where = f"npz file {path!r}: {split}_images {images.shape} {images.dtype}"
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
    raise DataError(f"{where}: expected (N, H, W) or (N, H, W, 1 or 3) images.")
  if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)) or images.dtype == bool:
    raise DataError(f"{where}: expected integer pixels in 0..255, or float pixels in 0..1 or 0..255.")
  if images.size:
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
      raise DataError(f"{where}: holds NaN or infinite pixels.")
    low, high = images.min(), images.max()
    floor = 1.0 - UNIT_OVERSHOOT if np.issubdtype(images.dtype, np.floating) else 0  # a resize's undershoot
    if low < floor or high > 255:
      raise DataError(f"{where}: pixels range from {low.item()} to {high.item()}; expected 0..255.")
  labels = np.asarray(labels)
  shape = f"{split}_labels {labels.shape}"
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1:
    raise DataError(
      f"{where} vs {shape}: expected one 0/1 label per image, shape (N,) or (N, 1) "
      "(one-hot and multi-label arrays are not accepted)."
    )
  if len(labels) != len(images):
    raise DataError(f"{where} vs {shape}: {len(images)} images but {len(labels)} labels.")
  if labels.dtype == bool or not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
    raise DataError(
      f"npz file {path!r}: {shape} {labels.dtype}: labels must be the numbers 0 (NORMAL) or 1 (PNEUMONIA)."
    )
  bad = ~np.isin(labels, (0, 1))
  if bad.any():
    raise DataError(
      f"npz file {path!r}: {shape} holds {int(bad.sum())} label(s) other than 0 (NORMAL) or 1 "
      f"(PNEUMONIA), e.g. {labels[bad][0].item()!r}."
    )
  return labels.astype(int)


def _load_tfds(config):
  import tensorflow_datasets as tfds  # Only this source needs TF.

  from xray_keras.data import tfds_builder  # noqa: F401  (registers the builder)

  folder.find_root(config.data_dir, one_split_enough=False)  # our one-line message before TFDS's own, longer one
  builder = tfds.builder("chest_xray_pneumonia", data_dir=config.tfds_data_dir or None)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=config.data_dir))
  except AssertionError as e:
    raise DataError(str(e).splitlines()[0]) from None
  records, images = [], []
  for tfds_split, split in (("train", "train"), ("val", "official_val"), ("test", "test")):
    for example in tfds.as_numpy(builder.as_dataset(split=tfds_split)):
      image = decode.resize_array(example["image"][None], config.image_size, config.channels, config.resize_mode)
      images.append(image[0])
      records.append(Record(example["file_name"].decode(), int(example["label"]), split, example["patient"].decode()))
  order = np.argsort([r.path for r in records], kind="stable")
  records = [records[i] for i in order]
  skipped = _tfds_left_out(config.data_dir, {r.path for r in records})
  images, records = _select_arrays(np.stack(images)[order], records, config)
  return StudyData(
    source="tfds",
    synthetic=False,
    name="tfds:chest_xray_pneumonia",
    splits=_by_split(images, records),
    skipped=skipped,
  )


def _tfds_left_out(manual_dir, kept):
  """What the builder found in manual_dir but did not turn into examples, each with its reason."""
  root, listed, skipped = folder.list_records(manual_dir)
  for record in listed:
    if record.path in kept:
      continue
    try:
      decode.decode_image(decode.read_file(os.path.join(root, record.path)), None, 1)
      reason = "left out by the TFDS builder (prepared before this file was added?)"
    except (OSError, decode.DecodeError) as e:
      reason = str(e)
    skipped.append(Skipped(record.path, reason))
  return skipped


def _check_builtin_size(size):
  if size > builtin.IMAGE_SIZE:
    raise DataError(
      f"--image_size={size} is larger than the built-in data ({builtin.IMAGE_SIZE}x"
      f"{builtin.IMAGE_SIZE}). {builtin.FULL_DATA_HELP}"
    )


def _load_builtin(config):
  _check_builtin_size(config.image_size)
  logging.info("No --data_dir given: using the built-in real X-rays (%d px).", builtin.IMAGE_SIZE)
  images, records = _select_arrays(*builtin.load(), config)  # then resize only the images kept
  images = decode.resize_array(images, config.image_size, config.channels, config.resize_mode)
  data = StudyData(
    source="builtin",
    synthetic=False,
    name=builtin.NAME,
    splits=_by_split(images, records),
    skipped=[],
  )
  _note_patient_overlap(data, records)
  return data


def _load_synthetic(config):
  logging.info("--data_source=synthetic: using the built-in SYNTHETIC chest-X-ray-like data.")
  parts = [
    synthetic.generate(split, n, config.image_size, config.channels, config.split_seed)
    for split, n in (("train", config.synthetic_train_size), ("test", config.synthetic_test_size))
  ]
  images, records = _select_arrays(np.concatenate([p[0] for p in parts]), parts[0][2] + parts[1][2], config)
  return StudyData(
    source="synthetic",
    synthetic=True,
    name="synthetic",
    splits=_by_split(images, records),
    skipped=[],
    validation="image",
  )


def write_manifest(data, path):
  """Writes `file,class,split,patient` for every image used."""
  with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "class", "split", "patient"])
    for split in SPLITS:
      for r in data.splits[split].records:
        writer.writerow([printable(r.path), r.class_name, split, printable(r.patient)])


def write_skipped(skipped, path):
  """Writes `file,reason` for every file found but not used."""
  with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "reason"])
    for s in skipped:
      writer.writerow([printable(s.path), printable(s.reason)])
