"""Training speed on a GPU machine without TensorFlow: JAX backend, bf16, 2 epochs on real data.

On an H100/H200 device (JAX with CUDA; carry the keras, keras-hub, namex and optree wheels and a
copy of the dataset in a git-ignored folder such as .data/chest_xray_224):

  KERAS_BACKEND=jax python benchmarks/gpu_jax_train.py --data_dir=.data/chest_xray_224 --output=$OUT/gpu.json

Models: ViT_scratch (64 px) and ResNet50 from keras.applications with random weights (224 px).
Reports per-epoch time and training images/s (epoch 2 is steady state: epoch 1 compiles).
`--quick` runs both on tiny synthetic data on the CPU, to check the script itself.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import common  # noqa: E402
from xray_keras import models  # noqa: E402
from xray_keras.data import feeder, loader  # noqa: E402
from xray_keras.training.timing import TimingCallback  # noqa: E402


def resnet50(size):
  inputs = keras.Input((size, size, 1), name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
  x = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(size, size, 1), pooling="avg")(x)
  outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
  return keras.Model(inputs, outputs, name="ResNet50")


def bench(name, build, size, batch, epochs, data_config):
  data = loader.load(loader.DataConfig(**{**data_config, "image_size": size}))
  train = data.splits["train"]
  model = build(size)
  model.compile(keras.optimizers.Adam(1e-4), "binary_crossentropy")
  timing = TimingCallback(len(train.labels), batch)
  start = time.perf_counter()
  model.fit(feeder.ArrayFeeder(train.images, train.labels, batch, training=True), epochs=epochs, verbose=0,
            callbacks=[timing])
  summary = timing.summary()
  row = {"model": name, "image_size": size, "batch_size": batch, "params": model.count_params(),
         "train_images": len(train.labels), "fit_s": time.perf_counter() - start,
         "epoch_s": [e["wall_s"] for e in summary["epochs"]],
         "train_images_per_s": summary["epochs"][-1]["train_images_per_s"],
         "synthetic": data.synthetic}
  print(f"{name:<12}{size:>5}px batch {batch:<5} epochs {['%.1fs' % s for s in row['epoch_s']]}  "
        f"{row['train_images_per_s']:.0f} img/s (last epoch)")
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=common.REAL_DATA)
  parser.add_argument("--cache_dir", default="/tmp/xray_keras_cache")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  if flags.quick:
    data_config = {"synthetic_train_size": 32, "synthetic_test_size": 8, "val_fraction": 0.0}
    plan = [("ViT_scratch", lambda s: models.build_model("vit_scratch", (s, s, 1)), 32, 8),
            ("ResNet50", resnet50, 32, 8)]
  else:
    data_config = {"data_dir": flags.data_dir, "cache_dir": flags.cache_dir}
    plan = [("ViT_scratch", lambda s: models.build_model("vit_scratch", (s, s, 1)), 64, 512),
            ("ResNet50", resnet50, 224, 256)]
  import jax

  print("devices:", jax.devices(), "backend:", keras.backend.backend(), "policy: mixed_bfloat16")
  rows = [bench(name, build, size, batch, 1 if flags.quick else flags.epochs, data_config)
          for name, build, size, batch in plan]
  path = common.write_result("gpu_jax_train", {
      "quick": flags.quick, "devices": [str(d) for d in jax.devices()], "precision": "mixed_bfloat16",
      "rows": rows, "tensorflow_imported": "tensorflow" in sys.modules,
  }, flags.output)
  print("wrote", path)


if __name__ == "__main__":
  main()
