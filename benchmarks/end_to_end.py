"""End-to-end: a real-data training epoch versus the pure-compute time of the same steps.

  python benchmarks/end_to_end.py [--data_dir=../shared/data/chest_xray_224] [--quick]

For each study experiment that trains from scratch (its cfg's image size, batch and
augmentation), in this process and with the trainer's own compile settings:
- end-to-end: `fit` on the real train split through the package's feeder (shuffle, augmentation,
  batching);
- pure compute: the same number of steps of the same shapes, on one batch already in memory
  (no feeder work).
After a warm-up epoch, the two alternate for `--epochs` epochs each; the fastest epoch of each counts.
`ratio` = end-to-end / compute (target at most 1.1: the input pipeline is hidden). The
process's peak resident memory after both is recorded too. Writes results/end_to_end.json.
"""

import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import common  # noqa: E402

# experiment -> (model, image size, patch size, batch size): as in experiments/<name>.cfg.
EXPERIMENTS = {"vit_scratch": ("vit_scratch", 64, 8, 32), "cnn_scratch": ("cnn_scratch", 128, 0, 32)}


def repeated_batch(images, labels, steps, last):
  """The same in-memory batch `steps` times, the last cut to `last` images: a feed with no work."""
  import keras

  full, tail = (images, labels), (images[:last], labels[:last])
  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    from xray_keras.data import feeder

    feed = tf.data.Dataset.from_tensors(full).repeat(steps - 1).concatenate(tf.data.Dataset.from_tensors(tail))
    return feed.with_options(feeder.pipeline_options())  # as the package's: an autotuned pass can end late
  batches = [full] * (steps - 1) + [tail]

  class Feed(keras.utils.PyDataset):
    def __len__(self):
      return len(batches)

    def __getitem__(self, i):
      return batches[i]

  return Feed()


def run_experiment(name, data_config, epochs=2, image_size=0):
  import keras
  import numpy as np

  from xray_keras import models
  from xray_keras.data import feeder, loader
  from xray_keras.training import trainer
  from xray_keras.training.timing import TimingCallback

  model_name, size, patch, batch = EXPERIMENTS[name]
  size = image_size or size
  data = loader.load(loader.DataConfig(**data_config, image_size=size))
  train = data.splits["train"]
  count = len(train.labels)
  model = models.build_model(model_name, (size, size, 1), patch_size=patch or None)
  jit = trainer.resolve_jit("auto")
  model.compile(**trainer.compile_kwargs(keras.optimizers.Adam(1e-4), jit))
  augmenter = feeder.augmentation(feeder.GEOMETRIC_AND_CONTRAST, seed=0)

  def timed_fit(dataset, epochs):
    timing = TimingCallback(count, batch)
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[timing], shuffle=False)
    return [e["train_s"] for e in timing.epochs]

  real = feeder.make_feeder(train.images, train.labels, batch, True, 0, augmenter)
  images = train.images[:batch].astype(np.float32)
  labels = train.labels[:batch].astype(np.float32)
  steps = math.ceil(count / batch)
  compute = repeated_batch(images, labels, steps, count - batch * (steps - 1))
  timed_fit(real, 1)  # warm-up: tracing, compilation, first shuffle
  real_s, compute_s = [], []
  for _ in range(epochs):  # alternated, so a disturbance hits both sides alike; the fastest of each counts
    real_s += timed_fit(real, 1)
    compute_s += timed_fit(compute, 1)
  real_s, compute_s = min(real_s), min(compute_s)
  return {
    "experiment": name,
    "model": model_name,
    "image_size": size,
    "batch_size": batch,
    "train_images": count,
    "steps": steps,
    "augmentation": list(feeder.GEOMETRIC_AND_CONTRAST),
    "jit_compile": jit,
    "end_to_end_epoch_s": real_s,
    "compute_epoch_s": compute_s,
    "ratio": real_s / compute_s,
    "end_to_end_images_per_s": count / real_s,
    "compute_images_per_s": count / compute_s,
    "peak_rss_mb": common.peak_rss_mb(),
    "target_ratio": 1.1,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=common.REAL_DATA)
  parser.add_argument("--experiments", default=",".join(EXPERIMENTS))
  parser.add_argument("--epochs", type=int, default=2, help="timed epochs of each kind")
  parser.add_argument("--quick", action="store_true", help="32 px, 20 images per split, 1 epoch each")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  import keras

  data_config = {"data_dir": flags.data_dir}
  if flags.quick:
    data_config["max_images_per_split"] = 20
  rows = []
  for name in flags.experiments.split(","):
    row = run_experiment(
      name, data_config, epochs=1 if flags.quick else flags.epochs, image_size=32 if flags.quick else 0
    )
    rows.append(row)
    print(
      f"{name:<12} {row['image_size']:>4}px: end-to-end {row['end_to_end_epoch_s']:.1f} s "
      f"({row['end_to_end_images_per_s']:.0f} img/s), compute {row['compute_epoch_s']:.1f} s "
      f"({row['compute_images_per_s']:.0f} img/s), ratio {row['ratio']:.2f}",
      flush=True,
    )
  path = common.write_result(
    "end_to_end", {"quick": flags.quick, "backend": keras.backend.backend(), "rows": rows}, flags.output
  )
  print("wrote", path)


if __name__ == "__main__":
  main()
