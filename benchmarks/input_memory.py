"""How much memory one input costs at the largest size the package accepts, on each path.

  python benchmarks/input_memory.py [--run_dir=<finished run>] [--quick]

Generates the largest legal inputs (`data/contract.py`'s MAX_PIXELS, a 5000 x 5000 image) in each
format and depth, and one just over the limit, and measures in a fresh process per case:

- serving: a SavedModel export of the run (`serving_default`, encoded bytes, as TF Serving calls it),
  the process's growth in resident memory for the request, after loading and one small request;
- host: `decode.decode_image` to the model's size (what `predict`, `evaluate`, the demo and training
  use), its growth in bytes per source pixel;
- evaluate (not in --quick): `python -m xray_keras.evaluate` on a label list of eight 25 Mpx 16-bit DICOM
  files, its peak resident memory with the decode threads it chose.

Peak memory is Linux's VmHWM, reset before each request (`/proc/self/clear_refs`). Targets from the
input contract: serving at most 300 MB for an accepted request and 64 MB for a refused one, host
decoding at most 8 bytes per source pixel, `evaluate` under 2 GB. Writes results/input_memory.json.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

SIDE = 5000  # 25,000,000 pixels: contract.MAX_PIXELS
TARGETS = {"serving_accepted_mb": 300, "serving_refused_mb": 64, "host_bytes_per_pixel": 8, "evaluate_peak_mb": 2048}


def _status_kb(field):
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak():
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def _image(kind, side):
  """Encoded bytes of a smooth `side` x `side` image (small files, every pixel decoded)."""
  from PIL import Image

  ramp = np.add.outer(np.arange(side), np.arange(side)) % 4096
  if kind == "dicom16":
    return _dicom((ramp * 16).astype(np.uint16))
  if kind == "png16_rgba":  # blocks of one value: a file of about 2 MB
    import zlib

    blocks = (np.add.outer(np.arange(side) // 50, np.arange(side) // 50) % 64) * 1000
    rgba = np.repeat(blocks.astype(">u2")[..., None], 4, axis=-1)
    rgba[..., 3] = 65535
    return _png_raw(rgba, zlib)
  grey = (ramp % 256).astype(np.uint8)
  buffer = io.BytesIO()
  if kind in ("png8_grey", "png8_grey_x4"):
    Image.fromarray(grey, "L").save(buffer, "PNG")
  elif kind == "bmp24":  # the largest file of a legal image: 75 MB, under the 80 MiB limit
    Image.fromarray(np.dstack([grey, grey[::-1], grey[:, ::-1]]), "RGB").save(buffer, "BMP")
  elif kind == "png8_rgb":
    Image.fromarray(np.dstack([grey, grey[::-1], grey[:, ::-1]]), "RGB").save(buffer, "PNG")
  elif kind == "jpeg_rgb":
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB").save(buffer, "JPEG", quality=90)
  elif kind == "jpeg_grey":
    Image.fromarray(grey, "L").save(buffer, "JPEG", quality=90)
  elif kind == "gif":
    Image.fromarray(grey, "L").save(buffer, "GIF")
  else:
    raise ValueError(kind)
  return buffer.getvalue()


def _png_raw(rgba16, zlib):
  """A 16-bit RGBA PNG written by hand (Pillow cannot write one)."""
  import struct

  height, width = rgba16.shape[:2]

  def chunk(tag, data):
    body = tag + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

  rows = b"".join(b"\x00" + rgba16[y].tobytes() for y in range(height))
  header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")


def _dicom(pixels):
  """A DX file (MONOCHROME2, 16 bits, explicit VR little endian) holding `pixels`."""
  import pydicom
  from pydicom.dataset import FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, generate_uid

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  ds.PixelData = pixels.tobytes()
  buffer = io.BytesIO()
  ds.save_as(buffer, enforce_file_format=True)
  return buffer.getvalue()


def worker(path, kind, export, size):
  """In a fresh process: one request of the file at `path`; prints a JSON line."""
  from xray_keras.data import decode

  data = open(path, "rb").read()
  small = _image("png8_grey", 64)
  if kind == "serving":
    import tensorflow as tf

    signature = tf.saved_model.load(export).signatures["serving_default"]
    signature(images=tf.constant([small]))  # warm: traced, allocated once
    batch = [data] * (4 if kind.endswith("_x4") else 1)
    call = lambda: signature(images=tf.constant(batch))  # noqa: E731
    refused = tf.errors.InvalidArgumentError
  else:
    decode.decode_image(small, size, 1)
    call = lambda: decode.decode_image(data, size, 1)  # noqa: E731
    refused = decode.DecodeError
  baseline = _status_kb("VmRSS")
  _reset_peak()
  outcome = "accepted"
  try:
    call()
  except refused as e:
    outcome = "refused: " + " ".join(str(getattr(e, "message", e)).split())[:160]
  growth_mb = (_status_kb("VmHWM") - baseline) / 1024
  print(json.dumps({"outcome": outcome, "growth_mb": round(growth_mb, 1)}))


EVALUATE_FILES = 8  # 25 Mpx DICOM files, 50 MB each, in one `evaluate` call


def _evaluate_peak(run_dir, work):
  """Peak resident memory (MB) of `python -m xray_keras.evaluate` on a label list of the largest legal DICOMs."""
  folder = os.path.join(work, "evaluate")
  os.makedirs(folder)
  data = _image("dicom16", SIDE)
  with open(os.path.join(folder, "labels.csv"), "w") as f:
    f.write("path,label\n")
    for i in range(EVALUATE_FILES):
      with open(os.path.join(folder, f"dx_{i}.dcm"), "wb") as image:
        image.write(data)
      f.write(f"dx_{i}.dcm,{('NORMAL', 'PNEUMONIA')[i % 2]}\n")
  # VmHWM, not ru_maxrss: Linux carries a forked child's ru_maxrss over from its parent (this process) across exec.
  code = (
    "import runpy, sys\n"
    "sys.argv = ['evaluate', *sys.argv[1:]]\n"
    "try:\n  runpy.run_module('xray_keras.evaluate', run_name='__main__')\n"
    "finally:\n  print('peak_kb', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
  )
  args = [f"--model={run_dir}", f"--data_dir={folder}/labels.csv", f"--output_dir={work}/evaluated"]
  result = subprocess.run(
    [sys.executable, "-c", code, *args, f"--cache_dir={work}/cache"], cwd=common.REPO, capture_output=True, text=True
  )
  peak = [line for line in result.stdout.splitlines() if line.startswith("peak_kb")]
  if result.returncode or not peak:
    return {"case": "evaluate_dicom16", "error": (result.stderr or result.stdout).strip()[-300:]}
  from xray_keras.data import cache

  return {"case": "evaluate_dicom16", "side": SIDE, "files": EVALUATE_FILES, "file_mb": round(len(data) / 2**20, 1),
          "path": "evaluate", "decode_threads": cache.default_workers(len(data)),
          "peak_mb": round(int(peak[0].split()[1]) / 1024, 1)}  # fmt: skip


def _export(run_dir, work):
  from xray_keras.serving import formats

  return formats.export(run_dir, "saved_model", export_dir=os.path.join(work, "export"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", default="", help="a finished run to export; empty: smoke.cfg's run")
  parser.add_argument("--quick", action="store_true", help="a 1000 x 1000 side instead of 5000 (CI)")
  parser.add_argument("--output", default=os.path.join(common.RESULTS, "input_memory.json"))
  args = parser.parse_args()
  side = 1000 if args.quick else SIDE
  rows = []
  with tempfile.TemporaryDirectory(prefix="input_memory_") as work:
    run_dir = args.run_dir
    if not run_dir:
      run_dir = os.path.join(work, "run")
      common.run_timing(["--flagfile=experiments/smoke.cfg", "--report=false"], run_dir, what="the smoke run")
    with open(os.path.join(run_dir, "metrics.json")) as f:
      size = json.load(f)["model"]["input_shape"][0]
    export = _export(run_dir, work)
    kinds = ("png8_grey", "png16_rgba", "jpeg_grey", "jpeg_rgb", "gif", "dicom16")
    if not args.quick:
      kinds += ("png8_rgb", "bmp24", "png8_grey_x4")
    cases = [(k, side) for k in kinds]
    cases.append(("png8_grey", side + 1))  # one pixel row over the limit
    for kind, n in cases:
      path = os.path.join(work, f"{kind}_{n}")
      with open(path, "wb") as f:
        f.write(_image(kind, n))
      for where in ("serving", "host"):
        if (where, kind) in (("serving", "dicom16"), ("host", "png8_grey_x4")):
          continue  # the serving graph does not decode DICOM (predict sends it its decoded pixels); x4: one request
        command = [sys.executable, os.path.abspath(__file__), "--worker", path, where, export, str(size)]
        result = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True)
        if result.returncode:
          rows.append({"case": kind, "pixels": n * n, "path": where, "error": result.stderr.strip()[-300:]})
          continue
        row = {"case": kind, "side": n, "pixels": n * n, "over_limit": n * n > SIDE * SIDE}
        row["file_kb"] = round(os.path.getsize(path) / 1024, 1)
        row.update({"path": where, **json.loads(result.stdout.strip().splitlines()[-1])})
        if where == "host":
          row["bytes_per_source_pixel"] = round(row["growth_mb"] * 2**20 / (n * n), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not args.quick:
      rows.append(_evaluate_peak(run_dir, work))
      print(json.dumps(rows[-1]), flush=True)
  payload = {"quick": args.quick, "model_input": size, "targets": TARGETS, "rows": rows}
  path = common.write_result("input_memory", payload, args.output)
  print(path)


if __name__ == "__main__":
  if len(sys.argv) == 6 and sys.argv[1] == "--worker":
    worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
  else:
    main()
