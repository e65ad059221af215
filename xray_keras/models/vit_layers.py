"""Vision Transformer layers written with `keras.ops` (backend-agnostic)."""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="xray_keras")
class PatchEmbedding(layers.Layer):
  """Splits an image into non-overlapping patches and projects each to `hidden_dim`.

  A strided convolution with kernel = stride = `patch_size` is exactly a linear
  projection of each flattened patch.
  """

  def __init__(self, patch_size, hidden_dim, **kwargs):
    super().__init__(**kwargs)
    self.patch_size = patch_size
    self.hidden_dim = hidden_dim
    self.projection = layers.Conv2D(hidden_dim, patch_size, strides=patch_size, padding="valid", name="projection")

  def build(self, input_shape):
    self.projection.build(input_shape)

  def call(self, images):
    patches = self.projection(images)
    batch, rows, cols = ops.shape(patches)[0], ops.shape(patches)[1], ops.shape(patches)[2]
    # An explicit token count (not -1), so an empty batch keeps its shape.
    return ops.reshape(patches, (batch, rows * cols, self.hidden_dim))

  def compute_output_shape(self, input_shape):
    grid = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
    return (input_shape[0], grid, self.hidden_dim)

  def get_config(self):
    config = super().get_config()
    config.update({"patch_size": self.patch_size, "hidden_dim": self.hidden_dim})
    return config


@keras.saving.register_keras_serializable(package="xray_keras")
class ClassTokenAndPosition(layers.Layer):
  """Prepends a learned class token and adds learned position embeddings."""

  def build(self, input_shape):
    _, num_patches, hidden_dim = input_shape
    self.class_token = self.add_weight(shape=(1, 1, hidden_dim), initializer="zeros", name="class_token")
    self.position_embedding = self.add_weight(
      shape=(1, num_patches + 1, hidden_dim),
      initializer=keras.initializers.RandomNormal(stddev=0.02),
      name="position_embedding",
    )

  def call(self, tokens):
    batch = ops.shape(tokens)[0]
    cls = ops.broadcast_to(ops.cast(self.class_token, tokens.dtype), (batch, 1, ops.shape(tokens)[2]))
    tokens = ops.concatenate([cls, tokens], axis=1)
    return tokens + ops.cast(self.position_embedding, tokens.dtype)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[1] + 1, input_shape[2])


@keras.saving.register_keras_serializable(package="xray_keras")
class MultiHeadSelfAttention(layers.Layer):
  """Multi-head self-attention: one QKV projection, scaled dot product, output projection."""

  def __init__(self, num_heads, hidden_dim, dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    if hidden_dim % num_heads:
      raise ValueError(
        f"hidden_dim must be divisible by num_heads. Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
      )
    self.num_heads = num_heads
    self.hidden_dim = hidden_dim
    self.dropout = dropout
    self.head_dim = hidden_dim // num_heads
    self.qkv = layers.Dense(3 * hidden_dim, name="qkv")
    self.output_projection = layers.Dense(hidden_dim, name="output")
    self.attention_dropout = layers.Dropout(dropout, name="attention_dropout")

  def build(self, input_shape):
    self.qkv.build(input_shape)
    self.output_projection.build(input_shape)

  def attention_scores(self, tokens):
    """Returns `(batch, heads, tokens, tokens)` attention probabilities (for rollout)."""
    query, key, _ = self._split_heads(tokens)
    return self._probabilities(query, key)

  def _probabilities(self, query, key):
    logits = ops.einsum("bqhd,bkhd->bhqk", query, key) * ops.cast(self.head_dim**-0.5, query.dtype)
    return ops.softmax(logits, axis=-1)

  def _split_heads(self, tokens):
    batch, length = ops.shape(tokens)[0], ops.shape(tokens)[1]
    qkv = ops.reshape(self.qkv(tokens), (batch, length, 3, self.num_heads, self.head_dim))
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def call(self, tokens, training=None):
    batch, length = ops.shape(tokens)[0], ops.shape(tokens)[1]
    query, key, value = self._split_heads(tokens)  # one QKV projection for scores and values
    if training and self.dropout:
      probs = self.attention_dropout(self._probabilities(query, key), training=training)
      context = ops.einsum("bhqk,bkhd->bqhd", probs, value)
    else:
      # The same product as above; Keras' fused op lowers to a faster XLA program (docs/performance.md).
      context = ops.dot_product_attention(query, key, value)
    return self.output_projection(ops.reshape(context, (batch, length, self.hidden_dim)))

  def get_config(self):
    config = super().get_config()
    config.update({"num_heads": self.num_heads, "hidden_dim": self.hidden_dim, "dropout": self.dropout})
    return config


@keras.saving.register_keras_serializable(package="xray_keras")
class TransformerBlock(layers.Layer):
  """Pre-norm encoder block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, num_heads, hidden_dim, mlp_dim, dropout=0.0, **kwargs):
    super().__init__(**kwargs)
    self.num_heads = num_heads
    self.hidden_dim = hidden_dim
    self.mlp_dim = mlp_dim
    self.dropout = dropout
    self.norm1 = layers.LayerNormalization(epsilon=1e-6, name="norm1")
    self.attention = MultiHeadSelfAttention(num_heads, hidden_dim, dropout, name="attention")
    self.norm2 = layers.LayerNormalization(epsilon=1e-6, name="norm2")
    self.mlp_in = layers.Dense(mlp_dim, activation="gelu", name="mlp_in")
    self.mlp_out = layers.Dense(hidden_dim, name="mlp_out")
    self.drop = layers.Dropout(dropout, name="dropout")

  def build(self, input_shape):
    self.norm1.build(input_shape)
    self.attention.build(input_shape)
    self.norm2.build(input_shape)
    self.mlp_in.build(input_shape)
    self.mlp_out.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

  def call(self, x, training=None):
    # Attention sub-block with residual.
    x = x + self.drop(self.attention(self.norm1(x), training=training), training=training)
    # MLP sub-block with residual.
    h = self.mlp_out(self.drop(self.mlp_in(self.norm2(x)), training=training))
    return x + self.drop(h, training=training)

  def get_config(self):
    config = super().get_config()
    config.update(
      {
        "num_heads": self.num_heads,
        "hidden_dim": self.hidden_dim,
        "mlp_dim": self.mlp_dim,
        "dropout": self.dropout,
      }
    )
    return config
