"""GPU training images/s of the four study models: Keras on JAX (bf16) vs PyTorch with torch.compile.

For an H100/H200 machine with JAX (CUDA) and PyTorch; TensorFlow is not needed (keras, keras-hub,
namex and optree installed from their wheels are enough):

  KERAS_BACKEND=jax python3 benchmarks/gpu_vs_torch.py --output=gpu_vs_torch.json

Each (framework, model) runs `step_speed.py` in its own process on the same 224 px batch, with
mixed bfloat16 on both sides (Keras `mixed_bfloat16`; torch autocast), ours first. Reports
training and inference images/s, `ratio_vs_peer` = ours / torch.compile, and model FLOPs
utilisation: forward FLOPs per image (counted by PyTorch on the peer) x 3 for a training step x
images/s / the GPU's dense bf16 peak. The result file is rewritten after every row, so a run cut
short keeps what finished; no row starts after `--budget_s` (290 s), so a run fits 5 minutes. `--quick` checks the
script on the CPU at 32 px with the eager PyTorch peer.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import cpu_vs_torch  # noqa: E402

# model -> (batch size, patch size) on the GPU.
PLAN = {"resnet50": (256, 0), "vit_base": (128, 0), "cnn_scratch": (256, 0), "vit_scratch": (256, 16)}
# Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's data sheets, by device-name fragment.
PEAK_BF16 = {
  "H200": 989.4e12,
  "H100 80GB HBM3": 989.4e12,
  "H100 SXM": 989.4e12,
  "H100 PCIe": 756.0e12,
  "H100 NVL": 835.0e12,
  "A100": 312.0e12,
  "L4": 121.0e12,
  "T4": 65.0e12,
}


def device_and_peak():
  try:
    import torch

    if torch.cuda.is_available():
      name = torch.cuda.get_device_name(0)
      return name, next((p for k, p in PEAK_BF16.items() if k in name), None)
  except ImportError:
    pass
  return "cpu", None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(PLAN))
  parser.add_argument("--peer", default="torch.compile", choices=["torch.compile", "torch"])
  parser.add_argument("--budget_s", type=float, default=290.0, help="stop starting new runs after this")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  os.environ["KERAS_BACKEND"] = "jax"
  device, peak = device_and_peak()
  size = 32 if flags.quick else 224
  timing = (
    ["--warmup=1", "--min_steps=1", "--min_seconds=0"]
    if flags.quick
    else ["--warmup=3", "--min_steps=10", "--min_seconds=4"]
  )
  torch_device = ["--device=cuda"] if device != "cpu" else []
  start, rows, skipped = time.perf_counter(), [], []
  for model in flags.models.split(","):
    batch, patch = PLAN[model]
    batch = 2 if flags.quick else batch
    for framework, backend in [("keras", "jax"), (flags.peer, None)]:
      if time.perf_counter() - start > flags.budget_s:
        skipped.append(f"{model} {framework}")
        continue
      row = cpu_vs_torch.run_worker(
        framework, backend, model, "bfloat16", size, batch, patch, timing, torch_device if backend is None else []
      )
      rows.append(row)
      print(
        f"  {model} {row['framework']}: train {row['train_images_per_s']:.0f} img/s, "
        f"infer {row['infer_images_per_s']:.0f} img/s",
        flush=True,
      )
      flops = {r["model"]: r["forward_flops_per_image"] for r in rows if "forward_flops_per_image" in r}
      for r in rows:
        if r["model"] in flops:
          r["forward_flops_per_image"] = flops[r["model"]]
          r["mfu"] = 3 * flops[r["model"]] * r["train_images_per_s"] / peak if peak else None
      cpu_vs_torch.add_ratios(rows, flags.peer)
      path = common.write_result(
        "gpu_vs_torch",
        {
          "quick": flags.quick,
          "device": device,
          "peak_bf16_flops": peak,
          "precision": "mixed_bfloat16",
          "image_size": size,
          "rows": rows,
          "skipped_for_time": skipped,
          "tensorflow_imported": any(r.get("tensorflow_imported") for r in rows),
        },
        flags.output,
      )
  cpu_vs_torch.print_table(rows)
  for r in rows:
    if r.get("mfu") is not None:
      print(f"  MFU {r['model']} {r['framework']}: {100 * r['mfu']:.1f}%")
  if skipped:
    print("skipped for time:", ", ".join(skipped))
  print("wrote", path)


if __name__ == "__main__":
  main()
