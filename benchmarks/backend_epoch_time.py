"""ViT_scratch epoch time on the CPU: TensorFlow vs JAX backend, with and without XLA, and JAX's two feeders.

  python benchmarks/backend_epoch_time.py [--data_dir=../shared/data/chest_xray_224] [--quick] [--configs=0,3,4]

Each configuration runs the real CLI (experiments/vit_scratch.cfg) for 2 epochs in its own
process and reads its timing.json; epoch 2 is the steady-state figure (epoch 1 includes tracing
and compilation). Writes results/backend_epoch_time.json; ratios are against TensorFlow without
XLA from the same script run. JAX without jit runs Keras' train step op by op (about 5 minutes an
epoch here), so that configuration trains on a capped subset (`--eager_cap` per class); compare
its images/s, not its epoch time. JAX with jit runs twice: `--feeder=host` (NumPy batches augmented
eagerly) and `--feeder=device` (the split on the device, augmentation inside the compiled step).
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# (backend, XLA, feeder)
CONFIGS = [
  ("tensorflow", False, "host"),
  ("tensorflow", True, "host"),
  ("jax", False, "host"),
  ("jax", True, "host"),
  ("jax", True, "device"),
]


def run_one(backend, jit, feeder, data_args, out, eager_cap):
  if backend == "jax" and not jit and eager_cap:
    data_args = data_args + [f"--max_images_per_split={eager_cap}"]
  args = [
    "--flagfile=experiments/vit_scratch.cfg",
    *data_args,
    "--epochs=2",
    "--noreport",
    f"--jit_compile={str(jit).lower()}",
    f"--feeder={feeder}",
  ]
  timing = common.run_timing(args, out, {"KERAS_BACKEND": backend}, f"{backend} jit={jit}")
  last = timing["epochs"][-1]
  return {
    "backend": backend,
    "jit_compile": jit,
    "feeder": feeder,
    "first_step_s": timing["first_step_s"],
    "epoch1_s": timing["epochs"][0]["wall_s"],
    "epoch2_s": last["wall_s"],
    "epoch2_train_images_per_s": last["train_images_per_s"],
    "train_images": timing["train_images_per_epoch"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=common.REAL_DATA)
  parser.add_argument(
    "--quick", action="store_true", help="32 px, 16 images per split and class: checks the script runs"
  )
  parser.add_argument("--output", default=None)
  parser.add_argument("--eager_cap", type=int, default=250, help="images per class for JAX without jit")
  parser.add_argument(
    "--configs",
    default=",".join(str(i) for i in range(len(CONFIGS))),
    help="indices into CONFIGS; the first is the ratios' baseline",
  )
  flags = parser.parse_args()
  data_args = ["--image_size=32", "--max_images_per_split=16"] if flags.quick else [f"--data_dir={flags.data_dir}"]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in (int(c) for c in flags.configs.split(",")):
      backend, jit, feeder = CONFIGS[i]
      rows.append(
        run_one(backend, jit, feeder, data_args, os.path.join(tmp, str(i)), 0 if flags.quick else flags.eager_cap)
      )
  base = rows[0]["epoch2_train_images_per_s"]
  for row in rows:
    row["ratio_vs_first"] = row["epoch2_train_images_per_s"] / base
  print(
    f"{'backend':<11}{'xla':<6}{'feeder':<8}{'first step s':>13}{'epoch 1 s':>11}{'epoch 2 s':>11}{'img/s':>9}{'ratio':>7}"
  )
  for r in rows:
    print(
      f"{r['backend']:<11}{str(r['jit_compile']):<6}{r['feeder']:<8}{r['first_step_s']:>13.1f}{r['epoch1_s']:>11.1f}"
      f"{r['epoch2_s']:>11.1f}{r['epoch2_train_images_per_s']:>9.1f}{r['ratio_vs_first']:>7.2f}"
    )
  path = common.write_result(
    "backend_epoch_time",
    {"quick": flags.quick, "model": "vit_scratch", "baseline": rows[0], "rows": rows},
    flags.output,
  )
  print("wrote", path)


if __name__ == "__main__":
  main()
