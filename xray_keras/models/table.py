"""The paper's "Models Parameters" table, computed from the built models."""

import gc

import keras

from xray_keras import models
from xray_keras.models import vit_family
from xray_keras.models.pretrained import backbone_of
from xray_keras.models.vit_layers import TransformerBlock

# (registry name, input shape): the study's four models at their design inputs, then the ViT sizes.
ROWS = (
  ("cnn_scratch", (224, 224, 1)),
  ("vit_scratch", (64, 64, 1)),
  ("resnet50", (224, 224, 1)),
  ("vit_base", (224, 224, 1)),
  *((name, (224, 224, 3)) for name in vit_family.SIZES),
)
PAPER_PARAMS = {
  "CNN_scratch": 17.6e6,
  "ViT_scratch": 155.7e3,
  "ResNet50": 23.5e6,
  "ViT_Base": 86e6,
  "ViT-Tiny": 5.5e6,
  "ViT-Base": 86e6,
  "ViT-Large": 307e6,
  "ViT-Huge": 632e6,
}
COLUMNS = ("model", "layers", "hidden_size", "mlp_size", "heads", "params")


def describe(model):
  """One table row for a built model."""
  blocks = [l for l in model.layers if isinstance(l, TransformerBlock)]
  backbone = backbone_of(model)
  if blocks:
    c = blocks[0].get_config()
    return dict(layers=len(blocks), hidden_size=c["hidden_dim"], mlp_size=c["mlp_dim"], heads=c["num_heads"])
  if backbone is not None and hasattr(backbone, "num_layers"):  # keras-hub ViT
    return dict(
      layers=backbone.num_layers, hidden_size=backbone.hidden_dim, mlp_size=backbone.mlp_dim, heads=backbone.num_heads
    )
  inner = backbone._flatten_layers() if backbone is not None else model._flatten_layers()
  # Depth as ResNets count it: main-path convolutions and dense layers (not projection shortcuts).
  depth = sum(1 for l in inner if isinstance(l, keras.layers.Conv2D) and not l.name.endswith("_0_conv"))
  depth += sum(1 for l in model.layers if isinstance(l, keras.layers.Dense))
  return dict(layers=depth, hidden_size=None, mlp_size=None, heads=None)


def rows(names=None):
  """Table rows (dicts with `COLUMNS` keys), each from a model built with random weights."""
  out = []
  for name, shape in ROWS:
    if names and name not in names:
      continue
    model = models.build_model(name, shape, weights="none")
    out.append({"model": model.name, **describe(model), "params": int(model.count_params())})
    del model
    keras.backend.clear_session()
    gc.collect()
  return out


def _human(n):
  for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.1f}{unit}"
  return str(n)


def format_text(table):
  """A plain-text table with the paper's parameter counts alongside."""
  header = ("model", "layers", "hidden size", "MLP size", "heads", "params", "paper", "diff")
  lines = []
  for r in table:
    paper = PAPER_PARAMS.get(r["model"])
    cells = [r["model"]] + ["-" if r[k] is None else str(r[k]) for k in COLUMNS[1:5]]
    cells += [
      f"{r['params']:,} ({_human(r['params'])})",
      _human(paper) if paper else "-",
      f"{100 * (r['params'] - paper) / paper:+.1f}%" if paper else "-",
    ]
    lines.append(cells)
  widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
  fmt = "  ".join(f"{{:<{w}}}" for w in widths)
  return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in lines])
