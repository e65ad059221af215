"""The paper's ViT sizes, built from scratch with the ViT_scratch layers.

Defined at the standard 224x224 RGB input with 16x16 patches, where their
parameter counts are the paper's within 2% (`python -m xray_keras.models`).
"""

import dataclasses
import functools

from xray_keras.models.vit_scratch import vision_transformer


@dataclasses.dataclass(frozen=True)
class ViTSize:
  display_name: str
  num_layers: int
  hidden_dim: int
  mlp_dim: int
  num_heads: int


SIZES = {
  "vit_tiny_scratch": ViTSize("ViT-Tiny", 12, 192, 768, 3),
  "vit_base_scratch": ViTSize("ViT-Base", 12, 768, 3072, 12),
  "vit_large_scratch": ViTSize("ViT-Large", 24, 1024, 4096, 16),
  "vit_huge_scratch": ViTSize("ViT-Huge", 32, 1280, 5120, 16),
}


def build(size, input_shape=(224, 224, 3), patch_size=16, dropout=0.1):
  """Builds the from-scratch ViT `size` (a `SIZES` key) for `input_shape`."""
  s = SIZES[size]
  return vision_transformer(
    input_shape,
    patch_size,
    num_layers=s.num_layers,
    hidden_dim=s.hidden_dim,
    mlp_dim=s.mlp_dim,
    num_heads=s.num_heads,
    dropout=dropout,
    name=s.display_name,
  )


def builder(size):
  return functools.partial(build, size)
