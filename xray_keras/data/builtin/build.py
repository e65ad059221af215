"""Rebuild `chest_xray_64.zip` from a Kermany folder (the 224 px copy or the original archive).

  python -m xray_keras.data.builtin.build --data_dir=../shared/data/chest_xray_224 --output=chest_xray_64.zip

Each image goes through the package's own decoder (`decode.decode_image`, grey, squash to 64 px),
so the built-in pixels equal what `--data_dir=<that folder> --image_size=64` decodes. The archive
is deterministic (sorted names, fixed timestamps): the same input gives the same SHA-256.
"""

import io
import os
import zipfile

from absl import app
from PIL import Image

from xray_keras import path_flags
from xray_keras.data import decode, folder
from xray_keras.data.builtin import IMAGE_SIZE, sha256

_DATA_DIR = path_flags.DEFINE_path("data_dir", None, "A Kermany folder with train/, val/ and test/.", required=True)
_OUTPUT = path_flags.DEFINE_path("output", "chest_xray_64.zip", "Archive to write.")


def build(data_dir, output):
  root, records, skipped = folder.list_records(data_dir)
  if skipped:
    raise SystemExit(f"error: {len(skipped)} files in {root} are not images, e.g. {skipped[0].path}")
  with zipfile.ZipFile(output, "w", zipfile.ZIP_STORED) as archive:
    for record in sorted(records, key=lambda r: r.path):
      with open(os.path.join(root, record.path), "rb") as f:
        array = decode.decode_image(f.read(), IMAGE_SIZE, 1, "squash")
      png = io.BytesIO()
      Image.fromarray(array[:, :, 0], "L").save(png, "PNG", optimize=True)
      stem = os.path.splitext(record.path)[0].replace(os.sep, "/")
      archive.writestr(zipfile.ZipInfo(stem + ".png", date_time=(2018, 1, 1, 0, 0, 0)), png.getvalue())
  return len(records)


def main(argv):
  del argv
  count = build(_DATA_DIR.value, _OUTPUT.value)
  print(
    f"{count} images -> {_OUTPUT.value} ({os.path.getsize(_OUTPUT.value) / 1e6:.1f} MB, sha256 {sha256(_OUTPUT.value)})"
  )


if __name__ == "__main__":
  app.run(main)
