"""Read a DICOM radiograph (pydicom) into 8-bit grey or RGB pixels, as a viewer shows it.

The transform, in order (DICOM PS3.3 C.11): the stored values through the Modality LUT (Rescale
Slope/Intercept or a Modality LUT Sequence); then the VOI LUT: a VOI LUT Sequence if the file has
one, else the first Window Center/Width (VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID) mapped
straight onto 0..255, else the whole range the stored bits can hold; MONOCHROME1 is then inverted
(255 - v), so it looks like MONOCHROME2. RGB is read as stored (YBR converted to RGB).

Refused with a one-line reason (`DecodeError`): no pixel data, several frames, a modality other
than CR, DX or DR, a body part other than CHEST, 1-bit pixels, a compressed transfer syntax no
installed plugin decodes. Nothing from the header leaves this module except `patient_key`, a
salted hash of PatientID. The contract: docs/inputs.md, "DICOM".
"""

import hashlib
import io
import os
import secrets
import struct

import numpy as np
from absl import logging

RADIOGRAPHY = ("CR", "DX", "DR")  # computed, digital, and (some vendors') direct radiography
EXTENSIONS = (".dcm", ".dicom")
INSTALL = 'pip install "xray_keras[dicom]"'
SNIFF_BYTES = 4096  # what `file_is_dicom` reads: the preamble, or the first element of a preamble-less file
_GROUPS = (0x0002, 0x0008)  # a preamble-less file starts with its file meta group or the identifying group
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VRS = _LONG_VRS | set(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())


class DicomError(ValueError):
  """A DICOM file that is not a usable radiograph (the message is the reason)."""


def _has_preamble(data):
  return len(data) >= 132 and data[128:132] == b"DICM"


def _starts_with_element(data, explicit):
  """Whether `data` starts with a whole group 0002 or 0008 element, then a greater tag or the end."""
  group, element = struct.unpack_from("<HH", data)
  if group not in _GROUPS:
    return False
  if explicit:
    vr = data[4:6]
    long = vr in _LONG_VRS
    if vr not in _VRS or (long and (len(data) < 12 or data[6:8] != b"\0\0")):
      return False
    header, length = (12, struct.unpack_from("<I", data, 8)[0]) if long else (8, struct.unpack_from("<H", data, 6)[0])
  else:
    header, length = 8, struct.unpack_from("<I", data, 4)[0]
  end = header + length
  if length % 2 or end > len(data):  # also refuses undefined length (0xFFFFFFFF)
    return False
  return len(data) < end + 4 or struct.unpack_from("<HH", data, end) > (group, element)


def is_dicom(data):
  """Whether `data` is DICOM: the preamble and `DICM`, or (without them, as older exports write it)
  a whole group 0002 or 0008 element in explicit or implicit VR little endian at the start.

  The one test of "is this DICOM?" for bytes; `file_is_dicom` applies it to a file's first bytes.
  """
  if _has_preamble(data):
    return True
  if len(data) < 8:
    return False
  return _starts_with_element(data, explicit=True) or _starts_with_element(data, explicit=False)


def file_is_dicom(path):
  """`is_dicom` on the file's first `SNIFF_BYTES` (False where it cannot be read)."""
  try:
    with open(path, "rb") as f:
      return is_dicom(f.read(SNIFF_BYTES))
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
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=not _has_preamble(data))
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else ""
    raise DicomError(f"not a readable DICOM file ({type(e).__name__}: {reason})") from None
  if "TransferSyntaxUID" not in ds.file_meta:  # no file meta group: the syntax the dataset was read in
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if not little:
      raise DicomError("DICOM data set in big endian without a file meta group, which is not read")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
  return ds


def _check(ds):
  modality = str(ds.get("Modality", "")).upper()
  if modality and modality not in RADIOGRAPHY:
    raise DicomError(f"DICOM modality {modality}, not a radiograph (CR, DX or DR)")
  body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
  if body_part and body_part != "CHEST":
    raise DicomError(f"DICOM body part {body_part}, not a chest radiograph (CHEST)")
  if "PixelData" not in ds:
    raise DicomError("DICOM file without pixel data")
  frames = int(ds.get("NumberOfFrames", 1) or 1)
  if frames > 1:
    raise DicomError(f"multi-frame DICOM ({frames} frames): one radiograph per file is read")
  if int(ds.get("BitsAllocated", 0) or 0) == 1:
    raise DicomError("1-bit DICOM (BitsAllocated 1), a bitmap rather than a radiograph")
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


def _lut_entries(item, count, bits, little_endian):
  """The VOI LUT's `count` entries: one a 16-bit word, or (8-bit entries in half as many words) two a word."""
  data = item.LUTData
  if isinstance(data, bytes):
    words = np.frombuffer(data[: len(data) // 2 * 2], "<u2" if little_endian else ">u2").astype(np.int64)
  else:
    words = np.atleast_1d(np.asarray(data, dtype=np.int64)) & 0xFFFF
  if len(words) < count and bits == 8 and 2 * len(words) >= count:
    words = np.stack([words & 0xFF, words >> 8], -1).reshape(-1)  # the first entry in the low byte
  if len(words) < count:
    raise DicomError(f"DICOM VOI LUT with {len(words)} entries where its descriptor declares {count}")
  return words[:count] & (0xFF if bits == 8 else 0xFFFF)


def _apply_voi_lut(values, ds, low):
  """The first VOI LUT Sequence item on modality values, mapped onto 0..255 (PS3.3 C.11.2.1.1).

  `low` is the least modality value: below 0, the descriptor's first mapped value is signed.
  """
  item = ds.VOILUTSequence[0]
  count, first, bits = (int(v) & 0xFFFF for v in item.LUTDescriptor)
  count = count or 65536
  if first >= 32768 and low < 0:
    first -= 65536
  if not 8 <= bits <= 16:
    raise DicomError(f"DICOM VOI LUT with {bits}-bit entries, which is not read (8 to 16)")
  entries = _lut_entries(item, count, bits, ds.original_encoding[1] is not False)
  index = np.clip(np.floor(values) - first, 0, count - 1).astype(np.int64)  # clipped below and above
  return entries[index].astype(np.float64) * 255.0 / (2**bits - 1)


STRIP = 1 << 18  # pixels converted at a time: float64 work arrays of 2 MB, not 8 bytes a pixel


def _grey_to_8bit(ds, stored, name):
  """Stored grey values to 0..255 uint8: modality LUT, then VOI LUT or window (or the stored range),
  then MONOCHROME1 inverted; in strips, every step elementwise, so the result is that of one pass."""
  from pydicom.pixels import apply_modality_lut

  bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
  low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
  low, high = sorted(apply_modality_lut(np.array([low, high]), ds).astype(np.float64))
  voi = "VOILUTSequence" in ds and len(ds.VOILUTSequence)
  window = not voi and "WindowCenter" in ds and "WindowWidth" in ds
  if (
    not (voi or window) and bits == 16 and stored.size and stored.max() < 4096 and (not signed or stored.min() >= -4096)
  ):
    logging.warning(
      "%s: BitsStored 16 but every pixel within 12 bits (< 4096) and no window or VOI LUT: "
      "shown over the full 16-bit range, it decodes dark",
      name,
    )
  if window:
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
  flat = stored.reshape(-1)
  out = np.empty(flat.shape, np.uint8)
  for start in range(0, len(flat), STRIP):
    values = apply_modality_lut(flat[start : start + STRIP], ds).astype(np.float64)
    if voi:
      strip = _apply_voi_lut(values, ds, low)
    elif window:
      strip = _window_to_8bit(values, center, width, function)
    else:
      strip = (values - low) * 255.0 / max(high - low, 1)
    out[start : start + STRIP] = np.clip(np.round(strip), 0, 255).astype(np.uint8)
  out = out.reshape(stored.shape)
  return 255 - out if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1" else out


def read_pixels(data, max_pixels, name=None):
  """`(H, W)` (grey) or `(H, W, 3)` (RGB) uint8 pixels of a single-frame DICOM radiograph, full size.

  `name` names the file in warnings (else its SHA-1, 12 hex digits).
  """
  ds = _read(data)
  _check(ds)
  rows, columns = int(ds.Rows), int(ds.Columns)
  if rows * columns > max_pixels:
    raise DicomError(f"image too large: larger than {max_pixels} pixels")
  try:
    stored = ds.pixel_array
  except Exception as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "less than expected" in reason:
      raise DicomError("truncated DICOM file (less pixel data than its header declares)") from None
    raise DicomError(f"DICOM pixel data that cannot be decoded ({type(e).__name__}: {reason[:200]})") from None
  photometric = str(ds.PhotometricInterpretation).upper()
  if photometric in ("MONOCHROME1", "MONOCHROME2"):
    name = name or f"DICOM file with SHA-1 {hashlib.sha1(data).hexdigest()[:12]}"
    return _grey_to_8bit(ds, stored, name)
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
    ds = _pydicom().dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"], force=True)
  except Exception:
    return None
  patient = str(ds.get("PatientID", "") or "").strip()
  return hashed_patient("dicom:", patient, cache_dir) if patient else None


def hashed_patient(prefix, patient, cache_dir):
  """`prefix` and 16 hex digits of the salted SHA-256 of a patient id."""
  return prefix + hashlib.sha256(_salt(cache_dir) + patient.encode("utf-8")).hexdigest()[:16]
