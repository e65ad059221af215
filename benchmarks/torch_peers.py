"""PyTorch peers of the four study models, for the speed benchmarks only.

Same architectures and input as ours: one-channel raw 0..255 pixels in, one logit out.
CNN_scratch and ViT_scratch are written here layer for layer after `xray_keras.models`;
ResNet50 is torchvision's and ViT-B/16 is timm's, each behind the same grey-to-RGB and
normalisation step that our pretrained classifiers carry inside the model.
"""

import torch
from torch import nn
from torch.nn import functional as F


class CNNScratch(nn.Module):
  """4 x [conv 3x3, BN, ReLU, max-pool 2], flatten, dropout, dense 688, dropout, dense 1."""

  def __init__(self, size=224, filters=(32, 64, 128, 128), dense_units=688, dropout=0.5):
    super().__init__()
    blocks, channels = [], 1
    for n in filters:
      blocks += [
        nn.Conv2d(channels, n, 3, padding=1, bias=False),
        nn.BatchNorm2d(n, momentum=0.1),
        nn.ReLU(),
        nn.MaxPool2d(2),
      ]
      channels = n
    self.features = nn.Sequential(*blocks)
    side = size // 2 ** len(filters)
    self.head = nn.Sequential(
      nn.Flatten(),
      nn.Dropout(dropout),
      nn.Linear(channels * side * side, dense_units),
      nn.ReLU(),
      nn.Dropout(dropout),
      nn.Linear(dense_units, 1),
    )

  def forward(self, images):
    return self.head(self.features(images / 255.0))


class Block(nn.Module):
  """Pre-norm encoder block with fused QKV and PyTorch's scaled dot-product attention."""

  def __init__(self, dim, heads, mlp, dropout):
    super().__init__()
    self.heads, self.dropout = heads, dropout
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
    self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, dim))
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    b, n, d = x.shape
    q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
    x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, n, d)))
    return x + self.drop(self.mlp(self.norm2(x)))


class ViTScratch(nn.Module):
  """Patch embedding, class token, learned positions, pre-norm blocks, class-token head."""

  def __init__(self, size=64, patch=8, layers=4, dim=56, mlp=224, heads=4, dropout=0.1):
    super().__init__()
    self.embed = nn.Conv2d(1, dim, patch, stride=patch)
    self.cls = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
    self.blocks = nn.Sequential(*[Block(dim, heads, mlp, dropout) for _ in range(layers)])
    self.norm, self.drop, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Dropout(dropout), nn.Linear(dim, 1)

  def forward(self, images):
    x = self.embed(images / 255.0).flatten(2).transpose(1, 2)
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
    return self.head(self.drop(self.norm(self.blocks(x))[:, 0]))


class GreyToRGB(nn.Module):
  """Repeats the grey channel and applies ImageNet mean/std, then runs `backbone`."""

  def __init__(self, backbone):
    super().__init__()
    self.backbone = backbone
    self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
    self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

  def forward(self, images):
    return self.backbone((images.expand(-1, 3, -1, -1) - self.mean) / self.std)


def build(name, size, patch=None):
  """The peer of our model `name` for `size` x `size` x 1 input."""
  if name == "cnn_scratch":
    return CNNScratch(size)
  if name == "vit_scratch":
    return ViTScratch(size, patch or 8)
  if name == "resnet50":
    import torchvision

    return GreyToRGB(torchvision.models.resnet50(weights=None, num_classes=1))
  if name == "vit_base":
    import timm

    return GreyToRGB(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1, img_size=size))
  raise ValueError(f"No PyTorch peer for {name!r}")
