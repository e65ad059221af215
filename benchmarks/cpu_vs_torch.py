"""CPU training and inference images/s of the four study models: Keras (TensorFlow and JAX) vs PyTorch.

  python benchmarks/cpu_vs_torch.py [--precisions=float32,bfloat16] [--models=...] [--quick]

Each (framework, model, precision) runs `step_speed.py` in its own process, one after another in
the same script run, on the same 224 px batch of grey images (ViT_scratch with 16 px patches there,
the token count of ViT-B/16; its study recipe is 64 px with 8 px patches). The peer is PyTorch
eager with its default threads (`torch_peers.py`: torchvision ResNet50, timm ViT-B/16 and the two
scratch models written in torch). Writes results/cpu_vs_torch.json with `ratio_vs_peer` = ours /
PyTorch (higher is better) for training and inference, and each process's peak resident memory.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# model -> (batch size, patch size) on the CPU: batches a 2-core machine steps through in seconds.
PLAN = {"cnn_scratch": (32, 0), "vit_scratch": (32, 16), "resnet50": (16, 0), "vit_base": (8, 0)}
FRAMEWORKS = [("keras", "tensorflow"), ("keras", "jax"), ("torch", None)]
NAMES = {"cnn_scratch": "CNN_scratch", "vit_scratch": "ViT_scratch", "resnet50": "ResNet50", "vit_base": "ViT_Base"}


def run_worker(framework, backend, model, precision, size, batch, patch, timing_args, extra=()):
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    args = [
      sys.executable,
      os.path.join(HERE, "step_speed.py"),
      f"--framework={framework}",
      f"--model={model}",
      f"--size={size}",
      f"--batch={batch}",
      f"--patch={patch}",
      f"--precision={precision}",
      f"--result={out.name}",
      *timing_args,
      *extra,
    ]
    env = {**os.environ, **({"KERAS_BACKEND": backend} if backend else {})}
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode:
      raise RuntimeError(f"{framework} {backend or ''} {model} {precision} failed:\n{result.stderr[-3000:]}")
    with open(out.name) as f:
      return json.load(f)


def add_ratios(rows, peer_framework):
  """Sets train/infer `ratio_vs_peer` on every row against the peer row of the same model and precision."""
  peers = {(r["model"], r["precision"]): r for r in rows if r["framework"] == peer_framework}
  for row in rows:
    peer = peers.get((row["model"], row["precision"]))
    if peer and row["framework"] != peer_framework:
      row["peer"] = {
        "framework": peer_framework,
        "train_images_per_s": peer["train_images_per_s"],
        "infer_images_per_s": peer["infer_images_per_s"],
      }
      row["ratio_vs_peer"] = {
        "train": row["train_images_per_s"] / peer["train_images_per_s"],
        "infer": row["infer_images_per_s"] / peer["infer_images_per_s"],
      }


def print_table(rows):
  print(
    f"{'model':<13}{'framework':<31}{'precision':<10}{'batch':>6}{'train img/s':>13}{'ratio':>7}"
    f"{'infer img/s':>13}{'ratio':>7}{'peak RSS MB':>13}"
  )
  for r in rows:
    ratio = r.get("ratio_vs_peer", {})
    print(
      f"{NAMES.get(r['model'], r['model']):<13}{r['framework']:<31}{r['precision']:<10}{r['batch_size']:>6}"
      f"{r['train_images_per_s']:>13.1f}{ratio.get('train', 1.0):>7.2f}{r['infer_images_per_s']:>13.1f}"
      f"{ratio.get('infer', 1.0):>7.2f}{r['peak_rss_mb']:>13.0f}"
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(PLAN))
  parser.add_argument("--precisions", default="float32")
  parser.add_argument("--backends", default="tensorflow,jax")
  parser.add_argument("--min_seconds", type=float, default=15.0)
  parser.add_argument("--quick", action="store_true", help="32 px, batch 2, one timed step: checks the script runs")
  parser.add_argument(
    "--keras_adam", action="store_true", help="also a TensorFlow row with keras.optimizers.Adam (the unfused update)"
  )
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  size = 32 if flags.quick else 224
  timing = (
    ["--warmup=1", "--min_steps=1", "--min_seconds=0"]
    if flags.quick
    else ["--warmup=2", "--min_steps=3", f"--min_seconds={flags.min_seconds}"]
  )
  backends = flags.backends.split(",")
  rows = []
  for model in flags.models.split(","):
    batch, patch = PLAN[model]
    batch = 2 if flags.quick else batch
    for precision in flags.precisions.split(","):
      for framework, backend in FRAMEWORKS:
        if backend and backend not in backends:
          continue
        extras = [()] + ([("--optimizer_update=keras",)] if flags.keras_adam and backend == "tensorflow" else [])
        for extra in extras:
          row = run_worker(framework, backend, model, precision, size, batch, patch, timing, extra)
          if extra:
            row["framework"] += " (Keras Adam)"
          print(
            f"  {model} {row['framework']} {precision}: train {row['train_images_per_s']:.1f} img/s, "
            f"infer {row['infer_images_per_s']:.1f} img/s",
            flush=True,
          )
          rows.append(row)
  add_ratios(rows, "torch")
  print_table(rows)
  path = common.write_result("cpu_vs_torch", {"quick": flags.quick, "image_size": size, "rows": rows}, flags.output)
  print("wrote", path)


if __name__ == "__main__":
  main()
