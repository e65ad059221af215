"""How long the end of an epoch waits for tf.data's autotuning thread, and what turning it off gives.

experiments/vit_scratch.cfg's model, batch, XLA setting, steps per call and augmentation train on
the built-in train images through the package's feeder (`feeder.tf_dataset`: autotuning off, fixed
parallelism) and through the same pipeline with tf.data's autotuning on (as it was before), with
validation each epoch as in a run. The two alternate one epoch at a time, so both see the same
machine. Each epoch is timed from its start to the end of its validation; an epoch counts as held
when it takes at least 1.5 times the median epoch of the autotuning-off pipeline.

It also times prediction on the validation images: Keras' `model.predict` (its own tf.data
pipeline, autotuning on) against `evaluation.prediction.predict` (one `predict_on_batch` per
batch, no tf.data).

  python benchmarks/epoch_end_wait.py [--epochs=12] [--quick]

Writes results/epoch_end_wait.json.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from cpu_roofline import read_cfg  # noqa: E402

HELD = 1.5  # an epoch this many times the median autotuning-off epoch waited


def _pipelines(train, val, batch, augmenter, seed):
  """`{name: (train dataset, validation dataset)}`: the package's, and the same with autotuning on."""
  import tensorflow as tf

  from xray_keras.data import feeder

  def autotuned(ds):
    options = tf.data.Options()
    options.autotune.enabled = True
    return ds.with_options(options)

  ours = (
    feeder.tf_dataset(train.images, train.labels, batch, True, seed, augmenter),
    feeder.tf_dataset(val.images, val.labels, batch, False),
  )
  return {"autotune_on": tuple(autotuned(ds) for ds in ours), "autotune_off (the package)": ours}


def _model(cfg, steps_per_epoch, epochs):
  import keras

  from xray_keras import models
  from xray_keras.config import TrainConfig
  from xray_keras.training import trainer

  model = models.build_model(
    "vit_scratch", (int(cfg["image_size"]),) * 2 + (1,), patch_size=int(cfg["patch_size"]), dropout=0.0, weights="none"
  )
  train = TrainConfig(
    epochs=epochs,
    learning_rate=float(cfg["learning_rate"]),
    optimizer=cfg["optimizer"],
    weight_decay=float(cfg["weight_decay"]),
    schedule=cfg["schedule"],
    warmup_epochs=1,
  )
  model.compile(
    **trainer.compile_kwargs(trainer.make_optimizer(train, steps_per_epoch), cfg["jit_compile"] == "true"),
    steps_per_execution=int(cfg["steps_per_execution"]),
  )
  keras.utils.set_random_seed(0)
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=12, help="epochs per pipeline")
  parser.add_argument("--predictions", type=int, default=10, help="prediction calls per method")
  parser.add_argument("--quick", action="store_true", help="2 epochs of 256 images: checks that it runs")
  parser.add_argument("--output", default=None, help="output path (default results/epoch_end_wait.json)")
  args = parser.parse_args()

  import dataclasses

  import numpy as np

  from xray_keras.data import feeder, loader
  from xray_keras.evaluation import prediction

  cfg = read_cfg("vit_scratch")
  batch, epochs = int(cfg["batch_size"]), 2 if args.quick else args.epochs
  data = loader.load(loader.DataConfig(image_size=int(cfg["image_size"])))
  train, val = data.splits["train"], data.splits["val"]
  if args.quick:
    train = dataclasses.replace(train, images=train.images[:256], labels=train.labels[:256])
    val = dataclasses.replace(val, images=val.images[:64], labels=val.labels[:64])
  augmenter = feeder.augmentation(cfg["augment"].split(","), seed=0)
  pipelines = _pipelines(train, val, batch, augmenter, seed=0)
  steps = -(-len(train.labels) // batch)
  runs = {name: (_model(cfg, steps, epochs + 1), ds) for name, ds in pipelines.items()}
  for model, (train_ds, val_ds) in runs.values():  # tracing and compilation, not timed
    model.fit(train_ds, validation_data=val_ds, epochs=1, verbose=0, shuffle=False)
  seconds = {name: [] for name in runs}
  for epoch in range(1, epochs + 1):
    for name, (model, (train_ds, val_ds)) in runs.items():
      start = time.perf_counter()
      model.fit(train_ds, validation_data=val_ds, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False)
      seconds[name].append(round(time.perf_counter() - start, 3))
      print(f"epoch {epoch} {name}: {seconds[name][-1]:.2f}s", flush=True)

  baseline = statistics.median(seconds["autotune_off (the package)"])
  train_images = steps * batch
  epochs_out = {}
  for name, times in seconds.items():
    epochs_out[name] = {
      "epoch_s": times,
      "median_epoch_s": statistics.median(times),
      "mean_epoch_s": round(statistics.fmean(times), 3),
      "held_epochs": sum(t >= HELD * baseline for t in times),
      "train_images_per_s": round(train_images * len(times) / sum(times), 1),
    }
  for name in epochs_out:
    epochs_out[name]["x_autotune_on"] = round(
      epochs_out[name]["train_images_per_s"] / epochs_out["autotune_on"]["train_images_per_s"], 3
    )

  model = runs["autotune_off (the package)"][0]
  images = prediction.whole_batches(val.images, batch)
  predict_s = {"model.predict": [], "prediction.predict": []}
  model.predict(images, batch_size=batch, verbose=0)  # tracing and compilation, not timed
  prediction.predict(model, images, batch)
  for _ in range(args.predictions):
    start = time.perf_counter()
    keras_out = model.predict(images, batch_size=batch, verbose=0)
    predict_s["model.predict"].append(round(time.perf_counter() - start, 3))
    start = time.perf_counter()
    ours = prediction.predict(model, images, batch)
    predict_s["prediction.predict"].append(round(time.perf_counter() - start, 3))
  np.testing.assert_allclose(ours, keras_out, atol=1e-5)
  predictions = {
    name: {
      "call_s": times,
      "median_call_s": statistics.median(times),
      "images_per_s": round(len(images) * len(times) / sum(times), 1),
    }
    for name, times in predict_s.items()
  }
  for name in predictions:
    predictions[name]["x_model_predict"] = round(
      predictions[name]["images_per_s"] / predictions["model.predict"]["images_per_s"], 3
    )
  path = common.write_result(
    "epoch_end_wait",
    {
      "what": "epochs of experiments/vit_scratch.cfg's step (train + validation) with tf.data autotuning on and "
      "off, alternating; prediction of the validation images by model.predict and prediction.predict",
      "quick": args.quick,
      "train_images": len(train.labels),
      "val_images": len(val.labels),
      "batch": batch,
      "held_means": f"an epoch of at least {HELD} x the median autotuning-off epoch ({baseline:.2f} s)",
      "epochs": epochs_out,
      "predictions": predictions,
    },
    args.output,
  )
  for name, r in epochs_out.items():
    print(
      f"{name}: median epoch {r['median_epoch_s']:.2f}s, mean {r['mean_epoch_s']:.2f}s, held {r['held_epochs']} "
      f"of {len(r['epoch_s'])}, {r['train_images_per_s']:.0f} train img/s ({r['x_autotune_on']:.2f}x)"
    )
  for name, r in predictions.items():
    print(f"{name}: median call {r['median_call_s']:.3f}s, {r['images_per_s']:.0f} img/s ({r['x_model_predict']:.2f}x)")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
