"""One model's training and inference speed in this process: ours (Keras) or the PyTorch peer.

The worker behind `cpu_vs_torch.py` and `gpu_vs_torch.py`, which run it once per framework and
model, so each figure comes from a fresh process (and its peak resident memory is that model's):

  KERAS_BACKEND=jax python benchmarks/step_speed.py --framework=keras --model=resnet50 --result=r.json

Both sides train the same architecture on the same in-memory batch of raw 0..255 grey pixels with
Adam (ours the package's, `--optimizer_update=keras` for Keras' own) and binary cross-entropy, and time whole steps (the loss is read back, so queued work is
done), after warm-up steps that absorb tracing and compilation.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def _time_steps(step, warmup, min_steps, min_seconds):
  """Runs `step` `warmup` times, then times it until both minimums are met; returns seconds per step."""
  first = time.perf_counter()
  for _ in range(warmup):
    step()
  warm_s = time.perf_counter() - first
  times = []
  while len(times) < min_steps or sum(times) < min_seconds:
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return warm_s, times


def _batch(size, batch, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 1)).astype("float32")
  labels = rng.integers(0, 2, (batch, 1)).astype("float32")
  return images, labels


def plain_backbone(model_name, size):
  """The bare `keras.applications` / keras-hub backbone on RGB input with a pooled sigmoid head: no
  grey-to-RGB, no preprocessing layer; what the wrapper costs is the difference to our model."""
  import keras

  from xray_keras.models import pretrained

  inputs = keras.Input((size, size, 3))
  if model_name == "resnet50":
    x = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(size, size, 3))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
  elif model_name == "vit_base":
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), **pretrained.VIT_BASE_ARCHITECTURE)
    x = backbone(inputs)[:, 0]
  else:
    raise ValueError(f"--plain applies to resnet50 and vit_base, not {model_name}")
  return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x))


def keras_speed(
  model_name,
  size,
  batch,
  precision,
  patch,
  warmup,
  min_steps,
  min_seconds,
  jit_compile,
  plain=False,
  flash_attention=False,
  optimizer_update="fused",
):
  import keras

  from xray_keras import models
  from xray_keras.models import fused_adam
  from xray_keras.training import testbed, trainer

  if precision == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  if flash_attention:
    keras.config.enable_flash_attention()
  jit_compile = trainer.resolve_jit(jit_compile)  # as the trainer's --jit_compile
  if plain:
    model = plain_backbone(model_name, size)
  else:
    model = models.build_model(model_name, (size, size, 1), patch_size=patch, weights="none")
  optimizer = keras.optimizers.Adam(1e-4) if optimizer_update == "keras" else fused_adam.FusedAdam(1e-4)
  model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(), jit_compile=jit_compile)
  images, labels = _batch(size, batch)
  if plain:
    images = images.repeat(3, axis=-1) / 127.5 - 1.0
  images, labels = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)
  train_warm, train = _time_steps(lambda: model.train_on_batch(images, labels), warmup, min_steps, min_seconds)
  peak = common.peak_rss_mb()
  infer_warm, infer = _time_steps(lambda: model.predict_on_batch(images), warmup, min_steps, min_seconds / 2)
  return {
    "framework": f"keras-{keras.backend.backend()}",
    "versions": testbed.describe()["versions"],
    "params": model.count_params(),
    "jit_compile": model.jit_compile,
    **_rates(batch, train_warm, train, infer_warm, infer),
    "peak_rss_mb": peak,
  }


def torch_step(model_name, size, batch, precision, patch, compile_model=False, device="cpu"):
  """The PyTorch peer on our batch: `(model, train_step, infer_step)`, Adam and binary cross-entropy,
  `torch.autocast` for bfloat16."""
  import contextlib

  import torch
  import torch_peers

  torch.manual_seed(0)
  model = torch_peers.build(model_name, size, patch).to(device)
  images, labels = _batch(size, batch)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  labels = torch.from_numpy(labels).to(device)
  runner = torch.compile(model) if compile_model else model
  optimizer = torch.optim.Adam(model.parameters(), 1e-4)
  loss_fn = torch.nn.BCEWithLogitsLoss()
  autocast = (
    (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16))
    if precision == "bfloat16"
    else contextlib.nullcontext
  )

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(runner(images).float(), labels)
    loss.backward()
    optimizer.step()
    return loss.item()

  def infer_step():
    with torch.inference_mode(), autocast():
      return runner(images).float().cpu()

  return model, train_step, infer_step


def torch_speed(model_name, size, batch, precision, patch, warmup, min_steps, min_seconds, compile_model, device):
  import torch

  model, train_step, infer_step = torch_step(model_name, size, batch, precision, patch, compile_model, device)
  params = sum(p.numel() for p in model.parameters())
  model.train()
  train_warm, train = _time_steps(train_step, warmup, min_steps, min_seconds)
  peak = common.peak_rss_mb()
  model.eval()
  infer_warm, infer = _time_steps(infer_step, warmup, min_steps, min_seconds / 2)
  return {
    "framework": "torch.compile" if compile_model else "torch",
    "versions": {"torch": torch.__version__},
    "params": params,
    "threads": torch.get_num_threads(),
    **_rates(batch, train_warm, train, infer_warm, infer),
    "peak_rss_mb": peak,
    "forward_flops_per_image": forward_flops(model_name, size, patch),
  }


def forward_flops(model_name, size, patch=None):
  """Forward-pass FLOPs per image of the architecture, counted by PyTorch on the peer (1 multiply-add = 2)."""
  import torch
  import torch_peers
  from torch.utils.flop_counter import FlopCounterMode

  model = torch_peers.build(model_name, size, patch).eval()
  counter = FlopCounterMode(display=False)
  with counter, torch.no_grad():
    model(torch.zeros(1, 1, size, size))
  return int(counter.get_total_flops())


def _rates(batch, train_warm, train, infer_warm, infer):
  train_s, infer_s = sorted(train)[len(train) // 2], sorted(infer)[len(infer) // 2]
  return {
    "warmup_train_s": train_warm,
    "train_step_s": train,
    "train_images_per_s": batch / train_s,
    "warmup_infer_s": infer_warm,
    "infer_step_s": infer,
    "infer_images_per_s": batch / infer_s,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--framework", choices=["keras", "torch", "torch.compile"], required=True)
  parser.add_argument("--model", required=True)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--patch", type=int, default=0)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--jit_compile", default="auto", help="Keras: auto (the package's choice), true or false")
  parser.add_argument("--device", default="cpu", help="PyTorch device")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--min_steps", type=int, default=3)
  parser.add_argument("--min_seconds", type=float, default=10.0)
  parser.add_argument("--result", required=True, help="JSON file for this run's figures")
  parser.add_argument("--plain", action="store_true", help="Keras: the bare backbone on RGB input (no wrapper)")
  parser.add_argument("--flash_attention", action="store_true", help="Keras: keras.config.enable_flash_attention()")
  parser.add_argument(
    "--optimizer_update",
    choices=["fused", "keras"],
    default="fused",
    help="Keras: the package's Adam (one kernel a variable on TensorFlow) or keras.optimizers.Adam",
  )
  flags = parser.parse_args()
  common_args = (
    flags.model,
    flags.size,
    flags.batch,
    flags.precision,
    flags.patch or None,
    flags.warmup,
    flags.min_steps,
    flags.min_seconds,
  )
  if flags.framework == "keras":
    row = keras_speed(*common_args, flags.jit_compile, flags.plain, flags.flash_attention, flags.optimizer_update)
    row["tensorflow_imported"] = "tensorflow" in sys.modules
    row.update(
      {
        "plain": flags.plain,
        "flash_attention": flags.flash_attention,
        "optimizer_update": flags.optimizer_update,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
      }
    )
  else:
    row = torch_speed(*common_args, flags.framework == "torch.compile", flags.device)
  row.update({"model": flags.model, "image_size": flags.size, "batch_size": flags.batch, "precision": flags.precision})
  with open(flags.result, "w") as f:
    json.dump(row, f, indent=2)


if __name__ == "__main__":
  main()
