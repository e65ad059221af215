"""ViT_scratch (and CNN_scratch) training speed per lever on the CPU, each against the same baseline.

  python benchmarks/cpu_levers.py [--model=vit_scratch] [--levers=baseline,jit,...] [--epochs=3] [--quick]
  python benchmarks/cpu_levers.py --model=cnn_scratch --data_dir=kaggle

Every lever is a real run of `python -m xray_keras.run --flagfile=experiments/<model>.cfg` on the
built-in real X-rays (or --data_dir) in its own process (so thread and oneDNN settings take effect before
TensorFlow starts), with the lever's flags and environment on top of the baseline's. The figure is
the median train img/s of the epochs after the first (which traces and compiles), from the run's
timing.json: augmentation, the feeder and callbacks included, validation excluded. Levers that
change what is learned (batch size, dropout, augmentation) are measured here for speed only; the
recipe chooses among them on validation. Writes results/cpu_levers_<model>.json.
"""

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

# name -> (extra flags, extra environment, what it is)
LEVERS = {
  "baseline": (
    [],
    {},
    "the cfg as committed before these levers: TensorFlow, no XLA, batch 32, four Keras augmentation layers",
  ),
  "no_augmentation": (["--augment="], {}, "no augmentation (its cost)"),
  "affine_augmentation": (
    ["--augment=affine,contrast"],
    {},
    "rotation, zoom and translation fused into one resampling",
  ),
  "steps_per_execution_8": (["--steps_per_execution=8"], {}, "8 train steps per compiled call"),
  "threads_2_1": ([], {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"}, "intra-op 2, inter-op 1 threads"),
  "threads_1_2": ([], {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}, "intra-op 1, inter-op 2 threads"),
  "onednn_off": ([], {"TF_ENABLE_ONEDNN_OPTS": "0"}, "oneDNN graph rewrites off"),
  "jit": (["--jit_compile=true"], {}, "XLA jit_compile of the train step"),
  "dropout_0": (["--dropout=0"], {}, "no dropout (its cost)"),
  "jit_dropout_0": (["--jit_compile=true", "--dropout=0"], {}, "XLA and no dropout"),
  "batch_128": (["--batch_size=128"], {}, "batch 128"),
  "jit_dropout_0_batch_128": (
    ["--jit_compile=true", "--dropout=0", "--batch_size=128"],
    {},
    "XLA, no dropout, batch 128",
  ),
  "jit_dropout_0_batch_128_affine": (
    ["--jit_compile=true", "--dropout=0", "--batch_size=128", "--augment=affine,contrast"],
    {},
    "XLA, no dropout, batch 128, fused affine augmentation",
  ),
  "jit_dropout_0_affine": (
    ["--jit_compile=true", "--dropout=0", "--augment=affine,contrast"],
    {},
    "XLA, no dropout, batch 32, fused affine augmentation",
  ),
  "jit_dropout_0_affine_steps_4": (
    ["--jit_compile=true", "--dropout=0", "--augment=affine,contrast", "--steps_per_execution=4"],
    {},
    "XLA, no dropout, batch 32, fused affine augmentation, 4 train steps per compiled call",
  ),
  "mixed_bfloat16": (["--mixed_precision=mixed_bfloat16"], {}, "bfloat16 compute (AVX-512 BF16 / AMX where present)"),
  "jax": ([], {"KERAS_BACKEND": "jax"}, "the JAX backend (jit), its device feeder"),
}


def run_lever(model, name, epochs, base_flags, out):
  flags_, env, _ = LEVERS[name]
  args = [
    f"--flagfile=experiments/{model}.cfg",
    f"--epochs={epochs}",
    "--noreport",
    "--compilation_cache=false",
    *base_flags,
    *flags_,
  ]
  timing = common.run_timing(args, out, env, name)
  steady = [e["train_images_per_s"] for e in timing["epochs"][1:]]
  return {
    "lever": name,
    "what": LEVERS[name][2],
    "flags": flags_,
    "env": env,
    "train_images_per_s": statistics.median(steady),
    "epoch_train_s": [e["train_s"] for e in timing["epochs"]],
    "first_step_s": timing["first_step_s"],
    "batch_size": timing["batch_size"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vit_scratch", choices=["vit_scratch", "cnn_scratch"])
  parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated; baseline is always first")
  parser.add_argument("--epochs", type=int, default=3, help="epochs per lever; the first is not counted")
  parser.add_argument(
    "--data_dir",
    default="",
    help="empty: the built-in 64 px X-rays (CNN_scratch's 128 px needs the full-resolution data)",
  )
  parser.add_argument("--quick", action="store_true", help="32 px, 16 images per split and class, 2 epochs")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  names = ["baseline"] + [n for n in flags.levers.split(",") if n and n != "baseline"]
  unknown = sorted(set(names) - set(LEVERS))
  if unknown:
    parser.error(f"unknown lever(s) {unknown}; known: {', '.join(LEVERS)}")
  # The baseline pins what the cfgs set before the levers, so later cfg changes do not move it.
  base_flags = [
    "--jit_compile=false",
    "--augment=rotation,zoom,translation,contrast",
    "--batch_size=32",
    "--steps_per_execution=1",
    "--tta=1",
  ]
  if flags.model == "vit_scratch":
    base_flags.append("--dropout=0.1")
  if flags.data_dir:
    base_flags.append(f"--data_dir={flags.data_dir}")
  if flags.quick:
    base_flags += ["--image_size=32", "--max_images_per_split=16"]
  epochs = 2 if flags.quick else flags.epochs
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      row = run_lever(flags.model, name, epochs, base_flags, os.path.join(tmp, name))
      row["ratio_vs_baseline"] = row["train_images_per_s"] / (
        rows[0]["train_images_per_s"] if rows else row["train_images_per_s"]
      )
      rows.append(row)
      print(f"{name:<32} {row['train_images_per_s']:8.1f} img/s  x{row['ratio_vs_baseline']:.2f}", flush=True)
  path = common.write_result(
    f"cpu_levers_{flags.model}",
    {"quick": flags.quick, "model": flags.model, "epochs": epochs, "baseline_flags": base_flags, "rows": rows},
    flags.output,
  )
  print("wrote", path)


if __name__ == "__main__":
  main()
