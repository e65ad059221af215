"""FLOPs of one training step of a study model, counted by XLA from the compiled step (JAX backend).

  KERAS_BACKEND=jax python benchmarks/train_flops.py --model=vit_scratch --image_size=64 --batch_size=32

The step is the trainer's: forward, binary cross-entropy, gradients of the trainable weights (for a
pretrained model, those that `--unfreeze` leaves trainable) and the optimizer update. Two counts
per training image: `flops_per_image`, XLA's cost analysis of the compiled program (2 FLOPs per
multiply-add, and every elementwise operation, dropout's random bits included), and
`matmul_flops_per_image`, 2 x the multiply-adds of the program's matrix products and convolutions
(the model FLOPs a roofline compares with a matmul peak). Prints one JSON object.
"""

import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_TYPES = re.compile(r":\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)\s*->\s*(tensor<[^>]*>)")


def _shape(tensor_type):
  return [int(d) for d in tensor_type[len("tensor<") : -1].split("x")[:-1]]


def matmul_flops(stablehlo):
  """2 x the multiply-adds of every dot_general and convolution in a lowered (StableHLO) program."""
  total = 0
  for line in stablehlo.splitlines():
    kind = "dot" if "stablehlo.dot_general" in line else "conv" if "stablehlo.convolution" in line else None
    types = _TYPES.search(line) if kind else None
    if not types:
      continue
    lhs, rhs, out = (_shape(t) for t in types.groups())
    if kind == "dot":
      contracting = re.search(r"contracting_dims = \[([\d, ]*)\]", line).group(1)
      per_output = math.prod(lhs[int(d)] for d in contracting.split(",") if d.strip())
    else:
      rhs_labels = re.search(r"x\[([^\]]*)\]->", line).group(1).replace(" ", "").split(",")
      groups = int(re.search(r"feature_group_count = (\d+)", line).group(1))
      per_output = math.prod(rhs) // rhs[rhs_labels.index("o")] // max(groups, 1) * max(groups, 1)
    total += 2 * math.prod(out) * per_output
  return total


def _dims(line, name):
  found = re.search(name + r" = \[([\d, ]*)\] x \[([\d, ]*)\]", line)
  if not found:
    return [], []
  return ([int(d) for d in side.split(",") if d.strip()] for side in found.groups())


def dots(stablehlo):
  """Every dot_general of a lowered program: lhs and rhs shapes, batching and contracting dims."""
  found = []
  for line in stablehlo.splitlines():
    types = _TYPES.search(line) if "stablehlo.dot_general" in line else None
    if not types:
      continue
    lhs, rhs, _ = (_shape(t) for t in types.groups())
    (lhs_batch, rhs_batch), (lhs_contract, rhs_contract) = _dims(line, "batching_dims"), _dims(line, "contracting_dims")
    found.append({"lhs": lhs, "rhs": rhs, "batch": [lhs_batch, rhs_batch], "contract": [lhs_contract, rhs_contract]})
  return found


def lower_step(model_name, image_size, batch_size, patch_size=0, unfreeze="all"):
  """The jitted training step of a study model, lowered for a (batch_size, image_size) batch."""
  import jax
  import keras
  import numpy as np

  from xray_keras import models
  from xray_keras.training import transfer

  model = models.build_model(model_name, (image_size, image_size, 1), patch_size=patch_size or None, weights="none")
  if models.get_spec(model_name).pretrained:
    transfer.set_trainable(model, unfreeze, freeze_batchnorm=False)
  optimizer = keras.optimizers.Adam(1e-4)
  optimizer.build(model.trainable_variables)
  loss_object = keras.losses.BinaryCrossentropy()

  def loss_fn(trainable, non_trainable, x, y):
    y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
    return loss_object(y, y_pred), non_trainable

  def step(trainable, non_trainable, optimizer_vars, x, y):
    (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, non_trainable, x, y)
    trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
    return loss, trainable, non_trainable, optimizer_vars

  x = np.zeros((batch_size, image_size, image_size, 1), np.float32)
  y = np.zeros((batch_size, 1), np.float32)
  state = (
    [v.value for v in model.trainable_variables],
    [v.value for v in model.non_trainable_variables],
    [v.value for v in optimizer.variables],
  )
  return jax.jit(step).lower(*state, x, y), model


def count(model_name, image_size, batch_size, patch_size=0, unfreeze="all", with_dots=False):
  """The step's FLOPs per image (XLA's cost analysis, and the matrix products); `with_dots`: each product too."""
  import jax
  import numpy as np

  lowered, model = lower_step(model_name, image_size, batch_size, patch_size, unfreeze)
  analysis = lowered.compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  flops = float(analysis["flops"])
  text = lowered.as_text()
  matmul = matmul_flops(text)
  out = {
    "model": model_name,
    "image_size": image_size,
    "batch_size": batch_size,
    "unfreeze": unfreeze,
    "flops_per_image": flops / batch_size,
    "matmul_flops_per_image": matmul / batch_size,
    "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
    "counted_by": f"XLA cost analysis, jax {jax.__version__}",
  }
  if with_dots:
    out.update(dots=dots(text), matmul_flops=matmul)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True)
  parser.add_argument("--image_size", type=int, required=True)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--patch_size", type=int, default=0)
  parser.add_argument("--unfreeze", default="all")
  parser.add_argument("--dots", action="store_true", help="also print the step's matrix products")
  args = parser.parse_args()
  print(json.dumps(count(args.model, args.image_size, args.batch_size, args.patch_size, args.unfreeze, args.dots)))


if __name__ == "__main__":
  main()
