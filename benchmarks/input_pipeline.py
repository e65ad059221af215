"""Input pipeline: decode + cache of all real images (cold and warm), feeder images/s, start-up time.

  python benchmarks/input_pipeline.py [--data_dir=../shared/data/chest_xray_224] [--quick]

1. Loads the dataset twice through `loader.load`: into an empty cache folder (cold: every JPEG
   decoded and resized) and again (warm: the cache read back and checked).
2. The training feeder's steady-state images/s over the train split (the backend's own feeder:
   tf.data on TensorFlow, `ArrayFeeder` on JAX), with and without augmentation, next to the
   training images/s each study model consumes (read from results/cpu_vs_torch.json when it is
   there): `headroom` = feeder / model (above 1, the feeder keeps up even on its own core budget).
3. Start-up: the wall time from launching `python -m xray_keras.run` with a warm cache to its
   log line "First training step done" (the target is 10 s), for the study's scratch models.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import common  # noqa: E402


def load_twice(data_config, cache_dir):
  from xray_keras.data import loader

  rows = []
  for kind in ("cold", "warm"):
    start = time.perf_counter()
    data = loader.load(loader.DataConfig(**data_config, cache_dir=cache_dir))
    seconds = time.perf_counter() - start
    images = sum(len(s.labels) for s in data.splits.values()) + len(data.skipped)
    rows.append({"cache": kind, "seconds": seconds, "images": images, "images_per_s": images / seconds})
  return data, rows


def feeder_rate(split, batch, augment, epochs=2):
  import keras

  from xray_keras.data import feeder

  augmenter = feeder.augmentation(feeder.GEOMETRIC_AND_CONTRAST if augment else (), seed=0)
  feed = feeder.make_feeder(split.images, split.labels, batch, True, 0, augmenter)
  seconds = []
  for _ in range(epochs):  # the first pass includes tracing the augmentation
    start = time.perf_counter()
    if keras.backend.backend() == "tensorflow":
      for _ in feed:
        pass
    else:
      for i in range(len(feed)):
        feed[i]
      feed.on_epoch_end()
    seconds.append(time.perf_counter() - start)
  return {"augment": augment, "batch_size": batch, "epoch_s": seconds, "images_per_s": len(split.labels) / seconds[-1]}


def first_step_s(flagfile, data_args, cache_dir, out):
  """Seconds from launching the CLI to its first-training-step log line (the run is then stopped)."""
  args = [
    sys.executable,
    "-m",
    "xray_keras.run",
    f"--flagfile={flagfile}",
    *data_args,
    f"--cache_dir={cache_dir}",
    "--epochs=1",
    f"--output_dir={out}",
    "--overwrite",
  ]
  start = time.perf_counter()
  proc = subprocess.Popen(args, cwd=os.path.dirname(HERE), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  seconds, lines = None, []
  for line in proc.stderr:
    lines.append(line)
    if "First training step done" in line:
      seconds = time.perf_counter() - start
      break
  proc.kill()
  proc.wait()
  if seconds is None:
    raise RuntimeError(f"{flagfile} never reached its first step:\n{''.join(lines[-20:])}")
  return seconds


def consumers(size):
  path = os.path.join(common.RESULTS, "cpu_vs_torch.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    result = json.load(f)
  return {
    f"{r['model']} ({r['framework']}, {result['image_size']} px)": r["train_images_per_s"]
    for r in result["rows"]
    if r["framework"].startswith("keras") and result["image_size"] == size
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=common.REAL_DATA)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--quick", action="store_true", help="32 px, 20 images per split")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  size = 32 if flags.quick else flags.image_size
  data_config = {"data_dir": flags.data_dir, "image_size": size}
  if flags.quick:
    data_config["max_images_per_split"] = 20
  with tempfile.TemporaryDirectory() as tmp:
    data, loads = load_twice(data_config, os.path.join(tmp, "cache"))
    for row in loads:
      print(
        f"load, {row['cache']} cache: {row['seconds']:.1f} s, {row['images_per_s']:.0f} img/s ({row['images']} images)"
      )
    feeds = [feeder_rate(data.splits["train"], flags.batch_size, augment) for augment in (False, True)]
    for row in feeds:
      print(f"feeder {'with' if row['augment'] else 'without'} augmentation: {row['images_per_s']:.0f} img/s")
    eaten = consumers(size)
    headroom = {name: feeds[1]["images_per_s"] / rate for name, rate in eaten.items()}
    for name, ratio in headroom.items():
      print(f"  headroom over {name}: {ratio:.1f}x")
    # Start-up with a warm cache, at each experiment's own image size.
    data_args = [f"--data_dir={flags.data_dir}"] + (
      ["--image_size=32", "--max_images_per_split=20"] if flags.quick else []
    )
    startup = []
    cfgs = ["experiments/vit_scratch.cfg"] + ([] if flags.quick else ["experiments/cnn_scratch.cfg"])
    for cfg in cfgs:
      if not flags.quick:  # fills the cache at the cfg's own image size (quick mode's is filled above)
        first_step_s(cfg, data_args, os.path.join(tmp, "cache"), os.path.join(tmp, "warmup"))
      seconds = first_step_s(cfg, data_args, os.path.join(tmp, "cache"), os.path.join(tmp, "run"))
      startup.append({"experiment": cfg, "warm_cache_first_step_s": seconds, "target_s": 10.0})
      print(f"start-up to first training step, warm cache, {cfg}: {seconds:.1f} s")
  path = common.write_result(
    "input_pipeline",
    {
      "quick": flags.quick,
      "image_size": size,
      "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
      "loads": loads,
      "feeder": feeds,
      "model_train_images_per_s": eaten,
      "headroom": headroom,
      "startup": startup,
    },
    flags.output,
  )
  print("wrote", path)


if __name__ == "__main__":
  main()
