"""DICOM radiographs: each storage variant decodes to the source pixels; what is not a radiograph is refused."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import dicom_files
from tests.conftest import REPO, _builtin, real_files, smoke_run_command
from xray_keras.data import decode, dicom, folder, loader

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _assert_refused(expected):
  """Each `{name: (dataset, reason)}` is refused by the decoder with exactly that reason."""
  for name, (ds, reason) in expected.items():
    with pytest.raises(decode.DecodeError) as raised:
      decode.decode_image(dicom_files.to_bytes(ds), 32)
    assert str(raised.value) == reason, name


def _image(index=0, split="train", class_name="NORMAL"):
  return _builtin()[(split, class_name)][real_files(split, class_name, index + 1)[index]]


@pytest.fixture(scope="module")
def variants():
  dicom_files.pydicom()
  return dicom_files.variants(_image())


@pytest.mark.parametrize(
  "name",
  [
    "monochrome2_8bit",
    "monochrome2_16bit",
    "monochrome2_12bit_signed",
    "monochrome1_12bit_rescaled_windowed",
    "rgb",
    "rle_lossless",
    "jpeg2000_lossless",
    "jpeg_lossless",
    "jpeg_baseline",
  ],
)
def test_each_dicom_variant_decodes_to_the_source_pixels(variants, name):
  data, expected, exact = variants[name]
  got = decode.decode_image(data, None, channels=1)[..., 0]
  difference = np.abs(got.astype(int) - expected.astype(int))
  # lossless syntaxes exactly; JPEG baseline against Pillow's decode of the same JPEG stream
  assert difference.max() == 0 if exact else difference.max() <= 1, (name, difference.max())
  # the same geometry, resize and channels as a JPEG or PNG of the same pixels
  import io

  from PIL import Image

  png = io.BytesIO()
  Image.fromarray(expected, "L").save(png, "PNG")
  for channels in (1, 3):
    want = decode.decode_image(png.getvalue(), 48, channels, "pad")
    got = decode.decode_image(data, 48, channels, "pad")
    assert got.shape == (48, 48, channels) and np.abs(got.astype(int) - want.astype(int)).max() <= (0 if exact else 1)


def test_a_linear_window_and_a_voi_lut_sequence_are_applied_as_a_viewer_applies_them():
  dicom_files.pydicom()
  from pydicom.dataset import Dataset

  stored = dicom_files.twelve_bit(_image())
  windowed = dicom_files.dataset(stored, bits_stored=12)
  windowed.WindowCenter, windowed.WindowWidth = [1500, 2048], [1000, 4096]  # the first window is the one read
  got = decode.decode_image(dicom_files.to_bytes(windowed), None)[..., 0]
  # PS3.3 C.11.2.1.2.1 (LINEAR), written out here, mapped onto 0..255
  x = stored.astype(np.float64)
  linear = np.where(
    x <= 1500 - 0.5 - 999 / 2, 0, np.where(x > 1500 - 0.5 + 999 / 2, 255, ((x - 1499.5) / 999 + 0.5) * 255)
  )
  np.testing.assert_array_equal(got, np.round(linear).astype(np.uint8))
  assert (got == 0).any() and (got == 255).any()  # the window clips at both ends on this image

  lut = dicom_files.dataset(stored, bits_stored=12)
  item = Dataset()
  item.LUTDescriptor = [4096, 0, 12]
  item.LUTData = np.arange(4095, -1, -1, dtype=np.uint16).tobytes()  # an inverting LUT with 12-bit output
  item["LUTData"].VR = "OW"
  lut.VOILUTSequence = [item]
  lut.WindowCenter, lut.WindowWidth = 10, 10  # a VOI LUT Sequence takes precedence over the window
  got = decode.decode_image(dicom_files.to_bytes(lut), None)[..., 0]
  np.testing.assert_array_equal(got, 255 - _image())


def test_a_ct_slice_a_multi_frame_file_and_a_file_without_pixels_are_refused_with_reasons():
  dicom_files.pydicom()
  image = _image()
  ct = dicom_files.dataset(image, modality="CT")
  frames = dicom_files.dataset(np.concatenate([image, image]), bits_stored=8)
  frames.Rows, frames.NumberOfFrames = image.shape[0], 2
  empty = dicom_files.dataset(image)
  del empty.PixelData
  whole = dicom_files.to_bytes(dicom_files.dataset(image))
  expected = {
    "ct": (ct, "DICOM modality CT, not a radiograph (CR, DX or DR)"),
    "frames": (frames, "multi-frame DICOM (2 frames): one radiograph per file is read"),
    "empty": (empty, "DICOM file without pixel data"),
  }
  _assert_refused(expected)
  cuts = {len(whole) - 100: "truncated DICOM file (less pixel data than its header declares)"}
  cuts[600] = "DICOM file without pixel data"  # cut inside the header: what is left has no pixels
  for cut, reason in cuts.items():
    with pytest.raises(decode.DecodeError) as raised:
      decode.decode_image(whole[:cut], 32)
    assert str(raised.value) == reason


def test_a_compressed_dicom_without_its_decoder_plugin_names_the_package_to_install(variants, tmp_path):
  path = tmp_path / "lossless.dcm"
  path.write_bytes(variants["jpeg_lossless"][0])
  blocker = tmp_path / "blocked"
  for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):
    (blocker / name).mkdir(parents=True)
    (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
  code = (
    "import sys\nfrom xray_keras.data import decode\n"
    f"try:\n  decode.decode_image(open({str(path)!r}, 'rb').read(), 32)\n"
    "except decode.DecodeError as e:\n  print(e)\n"
    "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
  )
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), REPO])}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  lines = result.stdout.strip().splitlines()
  assert lines[0] == (
    "DICOM transfer syntax JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]) "
    'needs a decoder plugin that is not installed: pip install "xray_keras[dicom]" '
    "(pylibjpeg with pylibjpeg-libjpeg, -openjpeg and -rle)"
  ), result.stderr[-2000:]
  assert lines[1] == "False False"  # DICOM decoding imports neither TensorFlow nor Keras


def _dicom_tree(root, per_class=4):
  """A Kermany-layout folder of real images as DICOM: .dcm names and PACS-style names without an extension.

  Patient ids: each train pair of files (0, 1), (2, 3) of a class shares one PatientID.
  """
  for split in ("train", "test"):
    for class_name in ("NORMAL", "PNEUMONIA"):
      target = os.path.join(root, split, class_name)
      os.makedirs(target)
      for index in range(per_class):
        ds = dicom_files.dataset(
          _image(index, split, class_name), patient_id=f"{dicom_files.PATIENT_ID}-{split}-{class_name}-{index // 2}"
        )
        name = f"IM{index:06d}" if index % 2 else f"image{index}.dcm"
        with open(os.path.join(target, name), "wb") as f:
          f.write(dicom_files.to_bytes(ds))
  with open(os.path.join(root, "train", "NORMAL", "DICOMDIR"), "wb") as f:
    f.write(bytes(128) + b"DICM")
  with open(os.path.join(root, "train", "NORMAL", "notes"), "wb") as f:
    f.write(b"not an image")
  return root


def test_a_dicom_folder_loads_grouped_by_a_salted_patient_hash(tmp_path):
  dicom_files.pydicom()
  root = _dicom_tree(str(tmp_path / "pacs"))
  cache_dir = str(tmp_path / "cache")
  _, records, skipped = folder.list_records(root, salt_dir=cache_dir)
  assert {s.reason for s in skipped} == {
    "DICOMDIR index of a DICOM export (not an image)",
    "not an image file extension",
  }
  assert len(records) == 16 and all(r.patient.startswith("dicom:") for r in records)
  by_patient = {}
  for r in records:
    by_patient.setdefault(r.patient, []).append(r.path)
  assert sorted(len(paths) for paths in by_patient.values()) == [2] * 8
  assert os.stat(os.path.join(cache_dir, "patient_salt")).st_mode & 0o777 == 0o600
  _, again, _ = folder.list_records(root, salt_dir=cache_dir)
  assert [r.patient for r in again] == [r.patient for r in records]  # the same salt: the same split
  _, other_salt, _ = folder.list_records(root, salt_dir=str(tmp_path / "elsewhere"))
  assert not {r.patient for r in other_salt} & {r.patient for r in records}
  assert not any(dicom_files.PATIENT_ID in r.patient for r in records)

  data = loader.load(loader.DataConfig(data_dir=root, image_size=32, cache_dir=cache_dir, val_fraction=0.5))
  counts = data.counts()
  assert counts["train"]["total"] + counts["val"]["total"] == 8 and data.validation == "patient"
  expected = decode.decode_image(dicom_files.to_bytes(dicom_files.dataset(_image(0, "test", "NORMAL"))), 32)
  test = data.splits["test"]
  first = [r.path for r in test.records].index(os.path.join("test", "NORMAL", "image0.dcm"))
  np.testing.assert_array_equal(test.images[first], expected)


def test_the_dicom_extension_list_and_the_module_agree():
  assert set(dicom.EXTENSIONS) <= set(folder.IMAGE_EXTENSIONS)
  assert folder.junk_reason("IM000001", None) == "not an image file extension"  # not read without a look inside


def _files_holding(folders, needles):
  """{file: needles found} for every file (and every member of a zip archive, such as model.keras) holding a needle."""
  import zipfile

  found = {}
  for top in folders:
    for dirpath, _, names in os.walk(top):
      for name in names:
        path = os.path.join(dirpath, name)
        blobs = [open(path, "rb").read()]
        if zipfile.is_zipfile(path):
          with zipfile.ZipFile(path) as archive:
            blobs += [archive.read(member) for member in archive.namelist()]
        held = {needle for needle in needles if any(needle.encode() in blob for blob in blobs)}
        if held:
          found[path] = held
  return found


@pytest.mark.slow
def test_a_run_on_dicom_files_trains_predicts_exports_and_writes_no_patient_data(tmp_path):
  dicom_files.pydicom()
  tree = _dicom_tree(str(tmp_path / "pacs"))
  ct = dicom_files.dataset(_image(5), modality="CT")
  with open(os.path.join(tree, "train", "PNEUMONIA", "ct_slice.dcm"), "wb") as f:
    f.write(dicom_files.to_bytes(ct))
  run_dir, export_dir, cache_dir = tmp_path / "run", tmp_path / "saved_models", tmp_path / "cache"
  common = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
  result = subprocess.run(
    smoke_run_command(tree, cache_dir, run_dir, "--export", f"--export_dir={export_dir}", "--val_fraction=0.5"),
    **common,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  skipped = (run_dir / "skipped_files.csv").read_text()
  assert "ct_slice.dcm" in skipped and "DICOM modality CT, not a radiograph (CR, DX or DR)" in skipped
  predictions = tmp_path / "predictions.csv"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.predict",
      f"--model={export_dir / 'vit_scratch'}",
      f"--output={predictions}",
      tree,
    ],
    **common,
  )
  assert result.returncode == 3, result.stderr[-3000:]  # 3: some inputs skipped, each named
  assert "ct_slice.dcm: DICOM modality CT, not a radiograph (CR, DX or DR)" in result.stderr
  assert re.search(
    r"Classified 16 images \(\d+ flagged out of distribution\), refused 0 \(--strict\), skipped 3", result.stderr
  )
  lines = predictions.read_text().splitlines()
  assert len(lines) == 1 + 16  # the header and every radiograph; the CT slice, DICOMDIR and notes skipped
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "xray_keras.evaluate",
      f"--model={run_dir}",
      f"--data_dir={tree}",
      f"--cache_dir={cache_dir}",
    ],
    **common,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "8 images: ROC-AUC" in result.stderr and (run_dir / "external" / "pacs" / "report.html").is_file()
  assert _files_holding([run_dir, export_dir, cache_dir, predictions], dicom_files.PHI) == {}
  # the check can fail: the DICOM files themselves hold every planted value
  assert set().union(*_files_holding([tree], dicom_files.PHI).values()) == set(dicom_files.PHI)


def test_a_voi_lut_with_8_bit_entries_maps_every_input_value():
  dicom_files.pydicom()
  stored = dicom_files.twelve_bit(_image())
  entries = np.round(np.arange(4096) * 255 / 4095)  # 12 bits onto 8: the LUT gives back the 8-bit image
  for packed in (False, True):  # one entry a 16-bit word (as pydicom reads it), or two a word
    ds = dicom_files.dataset(stored, bits_stored=12)
    ds.VOILUTSequence = [dicom_files.voi_lut_item(entries, 0, 8, packed=packed)]
    got = decode.decode_image(dicom_files.to_bytes(ds), None)[..., 0]
    np.testing.assert_array_equal(got, _image(), err_msg=f"packed={packed}")
  # the first mapped value, and inputs clipped below and above it, in 16-bit entries with 0 meaning 65536
  ds = dicom_files.dataset(np.array([[0, 99, 100, 101, 356, 65535]], np.uint16), bits_stored=16)
  ds.VOILUTSequence = [dicom_files.voi_lut_item(np.arange(65536) // 256 * 257, 100, 16)]
  assert ds.VOILUTSequence[0].LUTDescriptor[0] == 0
  assert decode.decode_image(dicom_files.to_bytes(ds), None)[0, :, 0].tolist() == [0, 0, 0, 0, 1, 255]


def test_a_dicom_without_its_preamble_is_read_wherever_dicom_is(tmp_path):
  dicom_files.pydicom()
  image = _image()
  want = decode.decode_image(dicom_files.to_bytes(dicom_files.dataset(image)), 32)
  (tmp_path / "NORMAL").mkdir()
  for implicit in (False, True):
    for meta in (True, False):
      data = dicom_files.without_preamble(dicom_files.dataset(image), implicit, meta)
      case = f"implicit={implicit} meta={meta}"
      assert dicom.is_dicom(data) and data[128:132] != b"DICM", case
      np.testing.assert_array_equal(decode.decode_image(data, 32), want, err_msg=case)
      path = tmp_path / "NORMAL" / f"IM{implicit:d}{meta:d}"
      path.write_bytes(data)
      assert folder.junk_reason(path.name, str(path)) is None, case
      assert dicom.patient_key(str(path), str(tmp_path / "cache")).startswith("dicom:"), case
  _, records, skipped = folder.list_records(str(tmp_path))
  assert len(records) == 4 and not skipped
  # what is not DICOM stays out: pictures, text, a group 0008 tag whose length runs past the end
  import io

  from PIL import Image

  png = io.BytesIO()
  Image.fromarray(image).save(png, "PNG")
  for other in (png.getvalue(), b"\x08\x00\x05\x00CS\xff\x00ISO_IR 100", b"plain text, no image", bytes(200)):
    assert not dicom.is_dicom(other), other[:16]


def test_one_function_decides_what_is_dicom():
  import inspect

  from xray_keras.data import label_list
  from xray_keras.serving import predict

  for module in (decode, folder, label_list, predict):
    source = inspect.getsource(module)
    assert "DICM" not in source and "dcmread" not in source, module.__name__
  assert "dicom.is_dicom(data)" in inspect.getsource(decode.decode_image)
  assert "dicom.is_dicom(data)" in inspect.getsource(predict.SavedModelPredictor.__call__)


def test_12_bit_pixels_declared_16_bits_stored_are_said_aloud(caplog):
  dicom_files.pydicom()
  image = _image()
  dark = dicom_files.to_bytes(dicom_files.dataset(dicom_files.twelve_bit(image), bits_stored=16))
  with caplog.at_level("WARNING"):
    dicom.read_pixels(dark, decode.MAX_PIXELS, name="pacs/IM0001")
    decode.decode_image(dark, None)
  lines = [r.getMessage() for r in caplog.records if "BitsStored 16" in r.getMessage()]
  assert len(lines) == 2 and all("\n" not in line and "12 bits" in line for line in lines), lines
  assert lines[0].startswith("pacs/IM0001: ") and "SHA-1" in lines[1]
  caplog.clear()
  with caplog.at_level("WARNING"):
    decode.decode_image(dicom_files.to_bytes(dicom_files.dataset(image.astype(np.uint16) * 257, bits_stored=16)), 8)
  assert not caplog.records  # 16 bits in use: nothing to say


def test_a_1_bit_dicom_and_a_body_part_other_than_chest_are_refused_with_reasons():
  dicom_files.pydicom()
  image = _image()
  bitmap = dicom_files.dataset(image)
  bitmap.BitsAllocated, bitmap.BitsStored, bitmap.HighBit = 1, 1, 0
  bitmap.PixelData = np.packbits(image > 127, bitorder="little").tobytes()
  hand = dicom_files.dataset(image)
  hand.BodyPartExamined = "Hand"
  skull = dicom_files.dataset(image, modality="CR")
  skull.BodyPartExamined = "SKULL"
  expected = {
    "1-bit": (bitmap, "1-bit DICOM (BitsAllocated 1), a bitmap rather than a radiograph"),
    "hand": (hand, "DICOM body part HAND, not a chest radiograph (CHEST)"),
    "skull": (skull, "DICOM body part SKULL, not a chest radiograph (CHEST)"),
  }
  _assert_refused(expected)
  chest = dicom_files.dataset(image)
  chest.BodyPartExamined = "chest "
  np.testing.assert_array_equal(decode.decode_image(dicom_files.to_bytes(chest), None)[..., 0], image)


def _agrees_with_dcmtk(seeds, tmp_path):
  if shutil.which("dcm2pnm") is None:
    pytest.skip("dcmtk's dcm2pnm is not installed (apt-get install -y dcmtk)")
  dicom_files.pydicom()
  worst = 0
  for seed in seeds:
    data, case = dicom_files.random_case(seed)
    got = dicom.read_pixels(data, decode.MAX_PIXELS).astype(int)  # full size, before any resizing
    difference = np.abs(got - dicom_files.dcmtk_grey(data, case, tmp_path)).max()
    # 1 grey level: the two round the same real value to 8 bits differently (dcmtk truncates in places)
    assert difference <= 1, (f"{difference} grey levels from dcmtk", case)
    worst = max(worst, difference)
  return worst


def test_decoded_dicom_pixels_agree_with_dcmtk(tmp_path):
  _agrees_with_dcmtk(range(30), tmp_path)


@pytest.mark.slow
def test_decoded_dicom_pixels_agree_with_dcmtk_on_500_files(tmp_path):
  _agrees_with_dcmtk(range(1000, 1500), tmp_path)


def test_a_file_dcmtk_rewrites_in_each_lossless_syntax_decodes_to_the_same_pixels(tmp_path):
  """RLE, JPEG lossless (SV1) and JPEG-LS lossless, written by dcmtk's own encoders: the same 8-bit image as the
  uncompressed original, and as dcmtk's own decompression of the same file."""
  if shutil.which("dcmcrle") is None:
    pytest.skip("dcmtk is not installed (apt-get install -y dcmtk)")
  dicom_files.pydicom()
  compared = 0
  for seed in range(16):
    data, case = dicom_files.random_case(seed)
    if case["preamble"] != "yes":
      continue
    original = dicom.read_pixels(data, decode.MAX_PIXELS)
    for syntax, (_, lossless) in dicom_files.DCMTK_SYNTAXES.items():
      encoded = dicom_files.dcmtk_encoded(data, syntax, tmp_path) if lossless else None
      if encoded is None:
        continue
      got = dicom.read_pixels(encoded, decode.MAX_PIXELS)
      np.testing.assert_array_equal(got, original, err_msg=f"{syntax} {case}")
      theirs = dicom.read_pixels(dicom_files.dcmtk_decoded(encoded, tmp_path), decode.MAX_PIXELS)
      np.testing.assert_array_equal(got, theirs, err_msg=f"{syntax} {case}")
      compared += 1
  assert compared >= 12, compared
