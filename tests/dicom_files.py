"""Writes real X-rays (the built-in images) into DICOM files the way scanners and PACS exports store them."""

import io

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
  dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
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
