"""TFDS builder `chest_xray_pneumonia` over the manually downloaded Kermany archive.

Importing this module registers the builder, after which
`tfds.load("chest_xray_pneumonia", download_and_prepare_kwargs=...)` works the
TFDS way. Needs TensorFlow and tensorflow-datasets.
"""

import os

import tensorflow_datasets as tfds
from absl import logging

from xray_keras.data import decode, folder
from xray_keras.data.records import CLASS_NAMES

_CITATION = """\
@article{kermany2018identifying,
  title={Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author={Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and others},
  journal={Cell}, volume={172}, number={5}, pages={1122--1131}, year={2018}
}"""


class ChestXrayPneumonia(tfds.core.GeneratorBasedBuilder):
  """Kermany pediatric chest X-rays, NORMAL vs PNEUMONIA, official splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download "Chest X-Ray Images (Pneumonia)" from Kaggle
(paultimothymooney/chest-xray-pneumonia) or Mendeley Data (doi:10.17632/rscbjbr9sj.2),
unzip it, and place the unzipped folder (the one holding chest_xray/, or chest_xray/ itself,
with train/, val/ and test/ each holding NORMAL/ and PNEUMONIA/) in `manual_dir`.
"""

  def _info(self):
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 1)),
          "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
          "patient": tfds.features.Text(),
          "file_name": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://data.mendeley.com/datasets/rscbjbr9sj/2",
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    manual_dir = dl_manager.manual_dir
    try:
      root, records, skipped = folder.list_records(os.fspath(manual_dir))
    except folder.DataError as e:
      raise AssertionError(
        f"{e}\nPlace the files in manual_dir={manual_dir}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
      ) from None
    if skipped:
      logging.info("chest_xray_pneumonia: skipping %d junk files", len(skipped))
    by_split = {"train": [], "val": [], "test": []}
    for record in records:
      by_split["val" if record.split == "official_val" else record.split].append(record)
    return {split: self._generate_examples(root, split_records) for split, split_records in by_split.items()}

  def _generate_examples(self, root, records):
    bad = 0
    for record in records:
      with open(os.path.join(root, record.path), "rb") as f:
        data = f.read()
      try:
        image = decode.decode_image(data, size=None, channels=1)
      except decode.DecodeError as e:
        bad += 1
        logging.warning("chest_xray_pneumonia: skipping %s: %s", record.path, e)
        continue
      yield (
        record.path,
        {
          "image": image,
          "label": record.label,
          "patient": record.patient,
          "file_name": record.path,
        },
      )
    if bad:
      logging.warning("chest_xray_pneumonia: skipped %d undecodable files", bad)
