"""Read a DICOM radiograph (pydicom) into 8-bit grey or RGB pixels, as a viewer shows it.

The transform, in order (DICOM PS3.3 C.11): the stored values through the Modality LUT (Rescale
Slope/Intercept or a Modality LUT Sequence); then the VOI LUT: a VOI LUT Sequence if the file has
one, else the first Window Center/Width (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID) mapped
straight onto 0..255, else the whole range the stored bits can hold; MONOCHROME1 is then inverted
(255 - v), so it looks like MONOCHROME2. RGB is read as stored (YBR converted to RGB).

Refused with a one-line reason (`DecodeError`): no pixel data, several frames, a modality other
than CR, DX or DR, a compressed transfer syntax no installed plugin decodes. Nothing from the
header leaves this module except `patient_key`, a salted hash of PatientID.
"""

import hashlib
import io
import os
import secrets

import numpy as np

RADIOGRAPHY = ("CR", "DX", "DR")  # computed, digital, and (some vendors') direct radiography
EXTENSIONS = (".dcm", ".dicom")
INSTALL = 'pip install "xray_keras[dicom]"'


class DicomError(ValueError):
  """A DICOM file that is not a usable radiograph (the message is the reason)."""


def is_dicom(data):
  """Whether `data` starts with the DICOM preamble and its `DICM` prefix."""
  return len(data) >= 132 and data[128:132] == b"DICM"


def file_is_dicom(path):
  """Whether the file at `path` starts with the DICOM prefix (False where it cannot be read)."""
  try:
    with open(path, "rb") as f:
      return is_dicom(f.read(132))
  except OSError:
    return False


def _pydicom():
  try:
    import pydicom
  except ImportError:
    raise DicomError(f"a DICOM file; reading DICOM needs pydicom: {INSTALL}") from None
  return pydicom


def _read(data, stop_before_pixels=False):
  pydicom = _pydicom()
  try:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=not is_dicom(data))
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else ""
    raise DicomError(f"not a readable DICOM file ({type(e).__name__}: {reason})") from None


def _check(ds):
  modality = str(ds.get("Modality", "")).upper()
  if modality and modality not in RADIOGRAPHY:
    raise DicomError(f"DICOM modality {modality}, not a radiograph (CR, DX or DR)")
  if "PixelData" not in ds:
    raise DicomError("DICOM file without pixel data")
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise DicomError(f"multi-frame DICOM ({frames} frames): one radiograph per file is read")
  meta = getattr(ds, "file_meta", None)
  syntax = meta.get("TransferSyntaxUID") if meta is not None else None
  if syntax is not None and syntax.is_compressed:
    from pydicom.pixels import get_decoder

    try:
      decoder = get_decoder(syntax)
    except NotImplementedError:
      raise DicomError(f"DICOM transfer syntax {syntax.name} ({syntax}), which no decoder reads") from None
    if not decoder.is_available:
      raise DicomError(
        f"DICOM transfer syntax {syntax.name} needs a decoder plugin that is not installed: {INSTALL} "
        "(pylibjpeg with pylibjpeg-libjpeg, -openjpeg and -rle)"
      )


def _window_to_8bit(values, center, width, function):
  if function == "SIGMOID":
    return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
  if function == "LINEAR_EXACT":
    return np.clip((values - (center - width / 2)) / width, 0, 1) * 255.0
  if width <= 1:  # LINEAR: PS3.3 C.11.2.1.2.1
    return np.where(values > center - 0.5, 255.0, 0.0)
  return np.clip(((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0, 255)


def _first(value):
  return float(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)


def _grey_to_8bit(ds, stored):
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  values = apply_modality_lut(stored, ds).astype(np.float64)
  if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
    lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64) * 255.0 / (2**lut_bits - 1)
  elif "WindowCenter" in ds and "WindowWidth" in ds:
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    out = _window_to_8bit(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
  else:
    bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    low, high = sorted(apply_modality_lut(np.array([low, high]), ds).astype(np.float64))
    out = (values - low) * 255.0 / max(high - low, 1)
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  return 255 - out if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1" else out


def read_pixels(data, max_pixels):
  """`(H, W)` (grey) or `(H, W, 3)` (RGB) uint8 pixels of a single-frame DICOM radiograph."""
  ds = _read(data)
  _check(ds)
  rows, columns = int(ds.Rows), int(ds.Columns)
  if rows * columns > max_pixels:
    raise DicomError(f"image too large ({columns}x{rows} pixels)")
  try:
    stored = ds.pixel_array
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "less than expected" in reason:
      raise DicomError("truncated DICOM file (less pixel data than its header declares)") from None
    raise DicomError(f"DICOM pixel data that cannot be decoded ({type(e).__name__}: {reason[:200]})") from None
  photometric = str(ds.PhotometricInterpretation).upper()
  if photometric in ("MONOCHROME1", "MONOCHROME2"):
    return _grey_to_8bit(ds, stored)
  if stored.ndim == 3 and stored.shape[-1] == 3:  # RGB, or YBR that pydicom has converted to RGB
    bits = int(ds.BitsStored)
    scaled = stored if bits <= 8 else np.round(stored.astype(np.float64) * 255.0 / (2**bits - 1))
    return np.asarray(scaled, dtype=np.uint8)
  raise DicomError(f"DICOM photometric interpretation {photometric}, which is not read (MONOCHROME1/2, RGB)")


def _salt(cache_dir):
  """This installation's secret salt (made once, mode 0600, under the cache folder)."""
  path = os.path.join(cache_dir, "patient_salt")
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    os.makedirs(cache_dir, exist_ok=True)
    salt = secrets.token_bytes(32)
    try:
      descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
      with open(path, "rb") as f:
        return f.read()
    with os.fdopen(descriptor, "wb") as f:
      f.write(salt)
    return salt


def patient_key(path, cache_dir):
  """`dicom:` and a salted hash of the file's PatientID, or None (no id, or not DICOM)."""
  if not file_is_dicom(path):
    return None
  try:
    ds = _pydicom().dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
  except Exception:
    return None
  patient = str(ds.get("PatientID", "") or "").strip()
  return hashed_patient("dicom:", patient, cache_dir) if patient else None


def hashed_patient(prefix, patient, cache_dir):
  """`prefix` and 16 hex digits of the salted SHA-256 of a patient id."""
  return prefix + hashlib.sha256(_salt(cache_dir) + patient.encode("utf-8")).hexdigest()[:16]
