"""Generated inputs through every decoder and against reference decoders: how many, and what disagreed.

  python benchmarks/input_fuzz.py [--images=3000] [--dicoms=1000] [--quick]

Images (`tests/image_files.generated`: format x mode x bit depth x size x EXIF orientation, in JPEG APP1 and
PNG eXIf with and without its "Exif\\0\\0" prefix, x JPEG quality and progressive x truncation), each at a
random model size, channel count and resize mode, through:

- the host decoder, `decode.decode_image`: what training, `evaluate`, `predict` (model.keras and every
  export: ONNX Runtime, LiteRT and OpenVINO get these pixels) and the demo page read;
- the serving graph (`serving/graph.py`), what the SavedModel and TF Serving run on the bytes;
- Pillow's own reading at full size (`ImageOps.exif_transpose`, then the contract's conversions).

DICOM (`tests/dicom_files.random_case`: bits allocated and stored x signedness x photometric x rescale x
window / VOI LUT with 8- and 16-bit entries x preamble x VR encoding) through the host decoder at full size
against dcmtk's `dcm2pnm` (the serving graph takes no DICOM: `predict` sends it decoded pixels); and each
file with a preamble rewritten by dcmtk (dcmcrle, dcmcjpeg lossless SV1 and baseline, dcmcjpls lossless)
and decoded by us against the original and against dcmtk's own decompression.

Each input must give the same pixels or the same refusal; the counts and every disagreement go to
results/input_fuzz.json.
"""

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from tests import dicom_files, image_files  # noqa: E402


def fuzz_images(count, seed):
  from xray_keras.data import decode

  rng = np.random.default_rng(seed)
  outcomes, kinds, findings = collections.Counter(), collections.Counter(), []
  for i in range(count):
    name, data = image_files.generated(rng)
    channels, size = int(rng.choice([1, 3])), int(rng.choice([32, 48, 64, 224]))
    mode = str(rng.choice(decode.RESIZE_MODES))
    outcome, detail = image_files.compare(data, channels, size, mode, name)
    outcomes[outcome] += 1
    kinds[name.split("_")[0] + ("_cut" if "_cut" in name else "")] += 1
    if outcome not in image_files.DOCUMENTED[:2]:  # every other outcome is listed, documented ones too
      findings.append({"input": i, "name": name, "channels": channels, "size": size, "mode": mode,
                       "outcome": outcome, "detail": detail})  # fmt: skip
  undocumented = sum(1 for f in findings if f["outcome"] not in image_files.DOCUMENTED)
  return {"inputs": count, "seed": seed, "by_kind": dict(kinds), "outcomes": dict(outcomes),
          "undocumented": undocumented, "findings": findings}  # fmt: skip


def fuzz_dicom(count, first_seed, scratch):
  """Each generated file: its 8-bit grey image against dcm2pnm's (the VOI the package picks), and, for a file
  with the preamble, the same file rewritten by dcmtk in a random transfer syntax: decoded by us against the
  uncompressed original and against dcmtk's own decompression."""
  from xray_keras.data import decode, dicom

  worst, outcomes, findings, pixels, off = 0, collections.Counter(), [], 0, 0
  syntaxes = collections.defaultdict(lambda: {"files": 0, "max_vs_original": 0, "max_vs_dcmtk_decoded": 0})
  for seed in range(first_seed, first_seed + count):
    data, case = dicom_files.random_case(seed)
    try:
      ours = dicom.read_pixels(data, decode.MAX_PIXELS).astype(int)
    except dicom.DicomError as e:
      outcomes["refused"] += 1
      findings.append({"seed": seed, "outcome": "refused", "detail": str(e)})
      continue
    gap = np.abs(ours - dicom_files.dcmtk_grey(data, case, scratch))
    difference, pixels, off = int(gap.max()), pixels + gap.size, off + int(np.count_nonzero(gap))
    worst = max(worst, difference)
    outcomes[f"max {difference} grey levels from dcmtk"] += 1
    if difference > 1:
      findings.append({"seed": seed, "outcome": f"{difference} grey levels from dcmtk", "case": str(case)})
    if case["preamble"] != "yes":
      continue
    syntax = list(dicom_files.DCMTK_SYNTAXES)[seed % len(dicom_files.DCMTK_SYNTAXES)]
    encoded = dicom_files.dcmtk_encoded(data, syntax, scratch)
    if encoded is None:
      syntaxes[syntax]["dcmtk does not encode"] = syntaxes[syntax].get("dcmtk does not encode", 0) + 1
      continue
    compressed = dicom.read_pixels(encoded, decode.MAX_PIXELS).astype(int)
    theirs = dicom.read_pixels(dicom_files.dcmtk_decoded(encoded, scratch), decode.MAX_PIXELS).astype(int)
    entry = syntaxes[syntax]
    entry["files"] += 1
    entry["max_vs_original"] = max(entry["max_vs_original"], int(np.abs(compressed - ours).max()))
    entry["max_vs_dcmtk_decoded"] = max(entry["max_vs_dcmtk_decoded"], int(np.abs(compressed - theirs).max()))
    lossless = dicom_files.DCMTK_SYNTAXES[syntax][1]
    if lossless and (entry["max_vs_original"] or entry["max_vs_dcmtk_decoded"]):
      findings.append({"seed": seed, "outcome": f"{syntax} differs", "case": str(case)})
  return {"inputs": count, "first_seed": first_seed, "outcomes": dict(outcomes), "worst_grey_levels": worst,
          "pixels": pixels, "pixels_off_by_one": off, "transfer_syntaxes": dict(syntaxes),
          "findings": findings}  # fmt: skip


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=3000)
  parser.add_argument("--dicoms", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=2026)
  parser.add_argument("--quick", action="store_true", help="40 images and 12 DICOM files (CI)")
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "input_fuzz.json"))
  args = parser.parse_args()
  images, dicoms = (40, 12) if args.quick else (args.images, args.dicoms)
  start = time.perf_counter()
  payload = {"quick": args.quick, "images": fuzz_images(images, args.seed)}
  print({k: v for k, v in payload["images"].items() if k != "findings"}, flush=True)
  if shutil.which("dcm2pnm") is None:
    payload["dicom"] = "not run: dcmtk's dcm2pnm is not installed (apt-get install -y dcmtk)"
  else:
    dicom_files.pydicom()
    with tempfile.TemporaryDirectory(prefix="input_fuzz_") as scratch:
      payload["dicom"] = fuzz_dicom(dicoms, 10_000 + args.seed, scratch)
  payload["seconds"] = round(time.perf_counter() - start, 1)
  print(common.write_result("input_fuzz", payload, args.output))


if __name__ == "__main__":
  main()
