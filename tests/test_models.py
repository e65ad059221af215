import os

import keras
import numpy as np
import pytest

from xray_keras import models
from xray_keras.models import vit_layers

PAPER_PARAMS = {"cnn_scratch": 17_600_000, "vit_scratch": 155_700}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_count_at_default_input_within_5_percent(name):
  spec = models.get_spec(name)
  model = models.build_model(name, (spec.default_image_size, spec.default_image_size, 1))
  assert abs(model.count_params() / PAPER_PARAMS[name] - 1) <= 0.05


def test_vit_scratch_architecture_matches_the_paper():
  model = models.build_model("vit_scratch", (64, 64, 1))
  blocks = [layer for layer in model.layers if isinstance(layer, vit_layers.TransformerBlock)]
  assert len(blocks) == 4
  assert {(b.hidden_dim, b.mlp_dim, b.num_heads) for b in blocks} == {(56, 224, 4)}


@pytest.mark.parametrize("name, size", [("cnn_scratch", 64), ("vit_scratch", 32)])
def test_keras_round_trip_gives_identical_predictions(tmp_path, name, size):
  model = models.build_model(name, (size, size, 1))
  images = np.random.default_rng(0).integers(0, 255, (4, size, size, 1)).astype("float32")
  labels = np.array([0, 1, 0, 1], "float32")
  model.compile("adam", "binary_crossentropy")
  model.fit(images, labels, epochs=1, verbose=0)  # non-trivial BatchNorm statistics
  path = os.path.join(tmp_path, "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(model.predict(images, verbose=0), loaded.predict(images, verbose=0))


@pytest.mark.parametrize(
  "layer",
  [
    vit_layers.PatchEmbedding(4, 8),
    vit_layers.MultiHeadSelfAttention(2, 8, dropout=0.1),
    vit_layers.TransformerBlock(2, 8, 16, dropout=0.2),
    vit_layers.ClassTokenAndPosition(),
  ],
)
def test_layer_config_round_trip(layer):
  clone = layer.__class__.from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()


def test_patch_size_flag_changes_token_count():
  model = models.build_model("vit_scratch", (64, 64, 1), patch_size=16)
  assert model.get_layer("class_token_and_position").output.shape[1] == 17


def test_attention_probabilities_sum_to_one():
  layer = vit_layers.MultiHeadSelfAttention(4, 16)
  tokens = np.random.default_rng(0).normal(size=(2, 5, 16)).astype("float32")
  scores = keras.ops.convert_to_numpy(layer.attention_scores(tokens))
  assert scores.shape == (2, 4, 5, 5)
  np.testing.assert_allclose(scores.sum(-1), 1.0, rtol=1e-5)


def test_attention_uses_the_fused_op_unless_dropout_trains_and_both_paths_agree(monkeypatch):
  tokens = np.random.default_rng(0).normal(size=(2, 65, 56)).astype("float32")
  layer = vit_layers.MultiHeadSelfAttention(4, 56, dropout=0.5)
  fused_calls = []
  fused = keras.ops.dot_product_attention
  monkeypatch.setattr(keras.ops, "dot_product_attention", lambda *a, **k: fused_calls.append(1) or fused(*a, **k))
  explicit = keras.ops.convert_to_numpy(layer(tokens, training=True))  # attention dropout on the probabilities
  assert not fused_calls
  layer.dropout = 0.0
  no_dropout = keras.ops.convert_to_numpy(layer(tokens, training=True))
  inference = keras.ops.convert_to_numpy(layer(tokens, training=False))
  assert len(fused_calls) == 2
  # The explicit path without dropout: the rollout's probabilities times the values.
  query, key, value = layer._split_heads(tokens)
  context = keras.ops.einsum("bhqk,bkhd->bqhd", layer._probabilities(query, key), value)
  expected = keras.ops.convert_to_numpy(layer.output_projection(keras.ops.reshape(context, (2, 65, 56))))
  np.testing.assert_allclose(no_dropout, expected, atol=1e-6)
  np.testing.assert_allclose(inference, expected, atol=1e-6)
  assert np.abs(explicit - expected).max() > 1e-3


def test_bad_options_name_the_value():
  with pytest.raises(ValueError, match="multiple of patch_size.*patch_size=7"):
    models.build_model("vit_scratch", (64, 64, 1), patch_size=7)
  with pytest.raises(ValueError, match="Unknown model: 'resnet'.*cnn_scratch, vit_scratch"):
    models.get_spec("resnet")
  with pytest.raises(ValueError, match="divisible"):
    vit_layers.MultiHeadSelfAttention(3, 8)


def test_pneumonia_probability_from_sigmoid_softmax_and_no_images():
  np.testing.assert_allclose(models.pneumonia_probability(np.array([[0.2], [0.9]])), [0.2, 0.9])
  np.testing.assert_allclose(models.pneumonia_probability(np.array([[0.7, 0.2, 0.1]])), [0.3])
  assert models.pneumonia_probability(np.zeros((0, 1), np.float32)).shape == (0,)  # a split with no images
  assert models.pneumonia_probability(np.zeros((0, 3), np.float32)).shape == (0,)
