"""How fast a study model's training step could be if only its matrix products cost time.

  python benchmarks/matmul_ceiling.py [--model=vit_scratch] [--quick]

Takes every matrix product of the compiled training step (`train_flops.py --dots`, the cfg's size,
batch and patch), times each shape alone with TensorFlow and XLA on all cores (eight different
input pairs per compiled call, so the call overhead is shared; the median of the repeats), and adds
them up: the step's time if every elementwise op, reduction, copy and the optimizer were free, and
the convolutions (the patch embedding) ran at the peak. That time, as images/s and as a fraction of
the float32 matmul peak measured in the same run, is the most the step can reach on this CPU with
these shapes and TensorFlow's products; the real step (`cpu_roofline.measure`, in-memory batches) is
timed in the same run beside it. Writes results/matmul_ceiling.json.
"""

import argparse
import collections
import json
import os
import statistics
import string
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import cpu_roofline  # noqa: E402

PAIRS = 8


def einsum_equation(dot):
  """The einsum of a dot_general: output is batch dims, then lhs free dims, then rhs free dims."""
  letters = iter(string.ascii_lowercase)
  (lhs_batch, rhs_batch), (lhs_contract, rhs_contract) = dot["batch"], dot["contract"]
  shared = {}
  lhs, rhs = [], []
  for i in range(len(dot["lhs"])):
    shared[("lhs", i)] = next(letters)
    lhs.append(shared[("lhs", i)])
  for i in range(len(dot["rhs"])):
    if i in rhs_batch:
      rhs.append(lhs[lhs_batch[rhs_batch.index(i)]])
    elif i in rhs_contract:
      rhs.append(lhs[lhs_contract[rhs_contract.index(i)]])
    else:
      rhs.append(next(letters))
  out = [lhs[i] for i in lhs_batch]
  out += [c for i, c in enumerate(lhs) if i not in lhs_batch and i not in lhs_contract]
  out += [c for i, c in enumerate(rhs) if i not in rhs_batch and i not in rhs_contract]
  return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def dot_flops(dot):
  contracted = 1
  for i in dot["contract"][0]:
    contracted *= dot["lhs"][i]
  out = 1
  for i, n in enumerate(dot["lhs"]):
    if i not in dot["contract"][0]:
      out *= n
  for i, n in enumerate(dot["rhs"]):
    if i not in dot["batch"][1] + dot["contract"][1]:
      out *= n
  return 2 * out * contracted


def time_dot(dot, repeats):
  """Seconds of one product of this shape: a compiled call of PAIRS products, median of `repeats`, / PAIRS."""
  import tensorflow as tf

  equation = einsum_equation(dot)
  lhs = [tf.random.normal(dot["lhs"]) for _ in range(PAIRS)]
  rhs = [tf.random.normal(dot["rhs"]) for _ in range(PAIRS)]
  products = tf.function(lambda a, b: [tf.einsum(equation, x, y) for x, y in zip(a, b)], jit_compile=True)
  products(lhs, rhs)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    outputs = products(lhs, rhs)
    outputs[-1].numpy()
    times.append(time.perf_counter() - start)
  return statistics.median(times) / PAIRS, equation


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="vit_scratch")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--quick", action="store_true", help="32 px, two repeats: checks the script runs")
  parser.add_argument("--output", default=None)
  flags = parser.parse_args()
  cfg = cpu_roofline.read_cfg(flags.model)
  size = 32 if flags.quick else int(cfg.get("image_size", 224))
  batch = int(cfg.get("batch_size", 32))
  patch = int(cfg.get("patch_size", 0))
  repeats = 2 if flags.quick else flags.repeats
  found = cpu_roofline.count_flops(flags.model, size, batch, patch, dots=True)
  peak = cpu_roofline.peak_gflops(1024 if flags.quick else 4096, repeats=2 if flags.quick else 5)
  print(f"float32 matmul peak: {peak:.0f} GFLOP/s", flush=True)

  shapes = collections.Counter(json.dumps(d, sort_keys=True) for d in found["dots"])
  rows = []
  for key, count in shapes.items():
    dot = json.loads(key)
    seconds, equation = time_dot(dot, repeats)
    flops = dot_flops(dot)
    rows.append(
      {
        "lhs": dot["lhs"],
        "rhs": dot["rhs"],
        "einsum": equation,
        "count_in_step": count,
        "flops": flops,
        "seconds": seconds,
        "gflops_per_s": flops / seconds / 1e9,
        "fraction_of_peak": flops / seconds / 1e9 / peak,
      }
    )
    print(
      f"  {equation:<22} {str(dot['lhs']):<18} x {str(dot['rhs']):<18} x{count:<3}"
      f" {flops / seconds / 1e9:7.1f} GFLOP/s ({flops / seconds / 1e9 / peak:.0%} of peak)",
      flush=True,
    )
  dot_total = sum(r["flops"] * r["count_in_step"] for r in rows)
  other_flops = found["matmul_flops"] - dot_total  # convolutions: counted at the peak
  step_s = sum(r["seconds"] * r["count_in_step"] for r in rows) + other_flops / (peak * 1e9)
  ceiling = {
    "step_seconds": step_s,
    "train_images_per_s": batch / step_s,
    "model_flops_per_image": found["matmul_flops"] / batch,
    "gflops_per_s": found["matmul_flops"] / step_s / 1e9,
    "fraction_of_peak": found["matmul_flops"] / step_s / 1e9 / peak,
    "convolution_flops_at_peak": other_flops,
  }
  step = cpu_roofline.measure(flags.model, cfg, common.REAL_DATA, flags.quick, 0, flops=found)
  ceiling["step_in_memory_images_per_s"] = step["in_memory_images_per_s"]
  ceiling["step_fraction_of_ceiling"] = step["in_memory_images_per_s"] / ceiling["train_images_per_s"]
  ceiling["step_fraction_of_peak"] = step["in_memory_images_per_s"] * ceiling["model_flops_per_image"] / 1e9 / peak
  print(
    f"the step itself: {step['in_memory_images_per_s']:.0f} train img/s in memory, "
    f"{ceiling['step_fraction_of_peak']:.1%} of the peak, {ceiling['step_fraction_of_ceiling']:.0%} of the ceiling"
  )
  print(
    f"ceiling: {ceiling['train_images_per_s']:.0f} train img/s, {ceiling['gflops_per_s']:.0f} GFLOP/s, "
    f"{ceiling['fraction_of_peak']:.1%} of the peak"
  )
  payload = {
    "quick": flags.quick,
    "model": flags.model,
    "image_size": size,
    "batch_size": batch,
    "patch_size": patch,
    "peak_gflops": peak,
    "peak_by": f"TensorFlow float32 matmul {1024 if flags.quick else 4096}, best of {2 if flags.quick else 5}",
    "vector_extensions": cpu_roofline.vector_extensions(),
    "products_timed_by": f"TensorFlow XLA einsum, {PAIRS} products a call, median of {repeats} calls",
    "products": rows,
    "ceiling": ceiling,
  }
  print("wrote", common.write_result("matmul_ceiling", payload, flags.output))


if __name__ == "__main__":
  main()
