"""Writes real X-rays (the built-in images) into DICOM files the way scanners and PACS exports store them."""

import io
import pathlib
import subprocess

import numpy as np
import pytest

PATIENT_NAME = "Doe^Jane^Qx"
PATIENT_ID = "MRN-4417-2209"
ACCESSION = "ACC-99123-77"
INSTITUTION = "St. Elsewhere Hospital Radiology"
STUDY_DATE = "19710402"
PHI = (PATIENT_NAME, "Doe^Jane", PATIENT_ID, ACCESSION, INSTITUTION, "Elsewhere", STUDY_DATE)


def pydicom():
  return pytest.importorskip("pydicom", reason='reading DICOM needs pip install "xray_keras[dicom]"')


def dataset(stored, photometric="MONOCHROME2", bits_stored=8, signed=False, modality="DX", patient_id=PATIENT_ID):
  """An uncompressed DICOM dataset holding `stored` ((H, W) or (H, W, 3)) as its pixel data."""
  pydicom()
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
  ds.Modality = modality
  ds.PatientName, ds.PatientBirthDate, ds.StudyDate = PATIENT_NAME, "19500101", STUDY_DATE
  if patient_id:
    ds.PatientID = patient_id
  ds.AccessionNumber, ds.InstitutionName = ACCESSION, INSTITUTION
  ds.Rows, ds.Columns = stored.shape[:2]
  ds.SamplesPerPixel = 3 if stored.ndim == 3 else 1
  ds.PhotometricInterpretation = photometric
  if stored.ndim == 3:
    ds.PlanarConfiguration = 0
  ds.BitsAllocated = 8 if bits_stored <= 8 else 16
  ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
  ds.PixelRepresentation = 1 if signed else 0
  dtype = {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}[ds.BitsAllocated]
  ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
  return ds


def to_bytes(ds):
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


def twelve_bit(image):
  """An 8-bit image spread over 12 bits: read back over the full 12-bit range, it gives `image` again."""
  return np.round(image.astype(np.float64) * 4095 / 255).astype(np.uint16)


def monochrome1_windowed(image):
  """MONOCHROME1, 12 bits, Rescale Slope 2 / Intercept -1000, a LINEAR_EXACT window: shows as `image`."""
  ds = dataset(((255 - image.astype(np.uint16)) * 16), "MONOCHROME1", bits_stored=12)
  ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
  # values 2 * 16 * (255 - x) - 1000; the window's lower edge -1000, its width 32 * 255
  ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = -1000 + 16 * 255, 32 * 255, "LINEAR_EXACT"
  return ds


def variants(image):
  """{name: (DICOM bytes, the pixels it must decode to, exact)} for one (H, W) uint8 image."""
  from PIL import Image
  from pydicom.encaps import encapsulate
  from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, RLELossless

  rgb = np.stack([image] * 3, -1)
  out = {
    "monochrome2_8bit": (to_bytes(dataset(image)), image, True),
    "monochrome2_16bit": (to_bytes(dataset(image.astype(np.uint16) * 257, bits_stored=16)), image, True),
    "monochrome2_12bit_signed": (
      to_bytes(dataset(twelve_bit(image).astype(np.int16) - 2048, bits_stored=12, signed=True)),
      image,
      True,
    ),
    "monochrome1_12bit_rescaled_windowed": (to_bytes(monochrome1_windowed(image)), image, True),
    "rgb": (to_bytes(dataset(rgb, "RGB")), image, True),
  }
  rle = dataset(twelve_bit(image), bits_stored=12)
  rle.compress(RLELossless)
  out["rle_lossless"] = (to_bytes(rle), image, True)
  j2k = dataset(twelve_bit(image), bits_stored=12)
  try:
    j2k.compress(JPEG2000Lossless)
    out["jpeg2000_lossless"] = (to_bytes(j2k), image, True)
  except (RuntimeError, NotImplementedError, ImportError) as e:
    pytest.skip(f"no JPEG 2000 encoder to write the test file: {e}")
  jpeg = io.BytesIO()
  Image.fromarray(image, "L").save(jpeg, "JPEG", quality=95)
  baseline = dataset(image)
  baseline.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
  baseline.PixelData = encapsulate([jpeg.getvalue()])
  baseline["PixelData"].VR = "OB"
  baseline["PixelData"].is_undefined_length = True
  with Image.open(io.BytesIO(jpeg.getvalue())) as decoded:
    out["jpeg_baseline"] = (to_bytes(baseline), np.asarray(decoded.convert("L")), False)
  imagecodecs = pytest.importorskip("imagecodecs", reason="writing a lossless JPEG test file needs imagecodecs")
  lossless = dataset(twelve_bit(image), bits_stored=12)
  lossless.file_meta.TransferSyntaxUID = JPEGLosslessSV1
  lossless.PixelData = encapsulate(
    [imagecodecs.jpeg8_encode(twelve_bit(image), lossless=True, predictor=1, bitspersample=12)]
  )
  lossless["PixelData"].VR = "OB"
  lossless["PixelData"].is_undefined_length = True
  out["jpeg_lossless"] = (to_bytes(lossless), image, True)
  return out


def voi_lut_item(entries, first_mapped, bits, signed=False, packed=False):
  """A VOI LUT Sequence item: `entries` (8- or 16-bit) one a 16-bit word, or two a word where `packed`."""
  from pydicom.dataset import Dataset

  item = Dataset()
  count = len(entries)
  item.LUTDescriptor = [count % 65536, first_mapped if signed else first_mapped % 65536, bits]
  item["LUTDescriptor"].VR = "SS" if signed else "US"
  entries = np.asarray(entries, np.uint16)
  if packed:
    data = entries.astype(np.uint8).tobytes()
    data += b"\0" * (len(data) % 2)
  else:
    data = entries.astype("<u2").tobytes()
  item.LUTData = data
  item["LUTData"].VR = "OW"
  return item


def without_preamble(ds, implicit=False, meta=True):
  """`ds` written without the 128-byte preamble and `DICM`: with its file meta group, or the bare data set."""
  from pydicom.filewriter import dcmwrite
  from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

  ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
  if meta:
    return to_bytes(ds)[132:]
  out = io.BytesIO()
  saved = ds.file_meta
  del ds.file_meta
  try:
    dcmwrite(out, ds, implicit_vr=implicit, little_endian=True)
  finally:
    ds.file_meta = saved
  return out.getvalue()


def random_case(seed):
  """A small seeded random grey DICOM: (bytes, {parameter: value}), over bits allocated and stored,
  signedness, photometric interpretation, rescale, window, VOI LUT (8- or 16-bit entries), preamble
  and VR encoding."""
  from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

  rng = np.random.default_rng(seed)
  allocated = int(rng.choice([8, 16]))
  stored_bits = 8 if allocated == 8 else int(rng.choice([8, 10, 12, 16]))
  signed = bool(rng.integers(2))
  low, high = (-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed else (0, 2**stored_bits - 1)
  rows, columns = (int(v) for v in rng.integers(4, 25, 2))
  pixels = rng.integers(low, high + 1, (rows, columns))
  pixels.flat[:2] = low, high  # both ends of the range: the clipping is exercised
  case = {
    "seed": seed,
    "allocated": allocated,
    "stored": stored_bits,
    "signed": signed,
    "photometric": str(rng.choice(["MONOCHROME1", "MONOCHROME2"])),
    "rescale": None,
    "voi": str(rng.choice(["none", "window", "lut8", "lut16"])),
    "preamble": str(rng.choice(["yes", "no", "no meta"])),
    "implicit": bool(rng.integers(2)),
  }
  ds = dataset(pixels.astype(np.int64), case["photometric"], stored_bits, signed)
  if allocated == 16 and stored_bits == 8:
    ds.BitsAllocated, ds.PixelData = 16, pixels.astype(np.int16 if signed else np.uint16).tobytes()
  slope, intercept = 1.0, 0.0
  if rng.integers(2):
    slope, intercept = float(rng.choice([1, 2, 3])), float(rng.integers(-2048, 2049))
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    case["rescale"] = (slope, intercept)
  lowest, highest = low * slope + intercept, high * slope + intercept
  if case["voi"] == "window" or (case["voi"] != "none" and rng.integers(2)):  # beside a VOI LUT, the LUT wins
    width = float(rng.integers(2, max(3, int(highest - lowest) * 2)))
    center = float(rng.integers(int(lowest), int(highest) + 1))
    ds.WindowCenter, ds.WindowWidth = center, width
    case["window"] = (center, width)
  if case["voi"].startswith("lut"):
    bits = 8 if case["voi"] == "lut8" else 16
    count = int(rng.choice([0, 256, 4096, int(rng.integers(2, 3000))])) if bits == 16 else int(rng.integers(2, 4097))
    first = int(rng.integers(int(lowest) - 200, int(highest) + 1))
    first = max(min(first, 32767), -32768) if (signed or lowest < 0) else max(0, min(first, 65535))
    entries = rng.integers(0, 2**bits, count or 65536)
    packed = bits == 8 and bool(rng.integers(2))
    ds.VOILUTSequence = [voi_lut_item(entries, first, bits, signed or lowest < 0, packed)]
    case["lut"] = (count or 65536, first, bits, "packed" if packed else "a word each")
  implicit = case["implicit"]
  if case["preamble"] == "yes":
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return to_bytes(ds), case
  return without_preamble(ds, implicit, meta=case["preamble"] == "no"), case


def dcmtk_grey(data, case, folder):
  """dcm2pnm's 8-bit grey image of `data` with the VOI the package applies: VOI LUT, else window, else none."""
  source, target = pathlib.Path(folder) / "in.dcm", pathlib.Path(folder) / "out.pgm"
  source.write_bytes(data)
  voi = ["+Wl", "1"] if case["voi"].startswith("lut") else ["+Wi", "1"] if case["voi"] == "window" else ["-W"]
  result = subprocess.run(
    ["dcm2pnm", "--quiet", *voi, "+op", str(source), str(target)], capture_output=True, text=True, timeout=60
  )
  if result.returncode:
    raise RuntimeError(f"dcm2pnm failed on {case}: {result.stderr[-1000:]}")
  raw = target.read_bytes()
  magic, width, height, maximum = raw.split(maxsplit=4)[:4]
  if magic != b"P5" or maximum != b"255":
    raise RuntimeError(f"dcm2pnm wrote {raw[:20]!r}, not an 8-bit PGM")
  width, height = int(width), int(height)
  return np.frombuffer(raw[-width * height :], np.uint8).reshape(height, width)


# dcmtk's encoders (Debian's dcmtk) for the transfer syntaxes a generated file is rewritten in.
DCMTK_SYNTAXES = {
  "rle": (["dcmcrle"], True),
  "jpeg_lossless": (["dcmcjpeg", "+e1"], True),  # JPEG lossless, first-order prediction (SV1)
  "jpeg_ls_lossless": (["dcmcjpls", "+el"], True),
  "jpeg_baseline": (["dcmcjpeg", "+eb", "+q", "90"], False),  # 8 bits stored only
}


def dcmtk_encoded(data, syntax, folder):
  """`data` (a file with its preamble and meta group) rewritten by dcmtk in `syntax`, or None where dcmtk
  does not encode it (e.g. JPEG baseline of more than 8 bits)."""
  command, _ = DCMTK_SYNTAXES[syntax]
  source, target = pathlib.Path(folder) / "plain.dcm", pathlib.Path(folder) / f"{syntax}.dcm"
  source.write_bytes(data)
  target.unlink(missing_ok=True)
  result = subprocess.run([*command, str(source), str(target)], capture_output=True, text=True, timeout=60)
  return target.read_bytes() if result.returncode == 0 and target.is_file() else None


def dcmtk_decoded(data, folder):
  """dcmtk's own decompression of `data` to explicit VR little endian (dcmdjpeg, dcmdjpls or dcmdrle by syntax)."""
  source, target = pathlib.Path(folder) / "compressed.dcm", pathlib.Path(folder) / "decompressed.dcm"
  source.write_bytes(data)
  for tool in ("dcmdjpeg", "dcmdjpls", "dcmdrle"):
    target.unlink(missing_ok=True)
    if subprocess.run([tool, str(source), str(target)], capture_output=True, timeout=60).returncode == 0:
      return target.read_bytes()
  raise RuntimeError("no dcmtk decompressor read the file")
