import numpy as np
import pytest
import tensorflow as tf

from xray_keras.data import feeder


def test_training_dataset_sees_every_image_once_per_epoch_in_whole_batches():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
  labels = np.arange(10) % 2
  ds = feeder.tf_dataset(images, labels, 3, training=True, seed=1)
  epochs = []
  for _ in range(2):
    batches = [x[:, 0, 0, 0].numpy().tolist() for x, _ in ds]
    assert [len(b) for b in batches] == [3, 3, 3, 3]  # the last batch filled up from the next shuffle
    seen = sum(batches, [])
    assert sorted(set(seen)) == list(range(10)) and len(set(seen[-2:])) == 2
    epochs.append(seen)
  assert epochs[0] != epochs[1]
  fewer = feeder.tf_dataset(images[:2], labels[:2], 3, training=True, seed=1)
  assert sorted(np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in fewer]).tolist()) == [0, 1]
  whole = feeder.tf_dataset(images, labels, 5, training=False)
  assert np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in whole]).tolist() == list(range(10))
  first = [x.dtype for x, _ in ds.take(1)][0]
  assert first == tf.float32


def test_tf_data_autotuning_is_off_so_an_epoch_ends_with_its_last_batch():
  images = np.zeros((10, 4, 4, 1), np.uint8)
  augmenter = feeder.augmentation(["affine", "contrast"], seed=0)
  for training in (True, False):
    ds = feeder.tf_dataset(images, np.arange(10) % 2, 3, training=training, seed=1, augmenter=augmenter)
    assert ds.options().autotune.enabled is False
    assert [len(x) for x, _ in ds] == ([3, 3, 3, 3] if training else [3, 3, 3, 1])


def test_augmentation_eager_and_in_tf_data_agree_on_shape_and_range():
  augmenter = feeder.augmentation(["rotation", "zoom", "translation", "contrast"], seed=0)
  images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 1)).astype(np.uint8)
  eager = np.asarray(augmenter(images.astype("float32"), training=True))
  ds = feeder.tf_dataset(images, np.zeros(8), 8, training=True, seed=0, augmenter=augmenter)
  graph = next(iter(ds))[0].numpy()
  for out in (eager, graph):
    assert out.shape == (8, 32, 32, 1)
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images)  # something changed


@pytest.mark.parametrize("name", ["brightness", "blur", "sharpness"])
def test_each_intensity_augmentation_changes_grey_images_within_range(name):
  yy, xx = np.mgrid[:32, :32]
  images = np.where((yy // 4 + xx // 4) % 2 == 0, 40, 220).astype(np.uint8)[None, :, :, None].repeat(8, 0)
  ds = feeder.tf_dataset(images, np.zeros(8), 8, training=True, seed=0, augmenter=feeder.augmentation([name], seed=0))
  out = next(iter(ds))[0].numpy()
  assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
  assert np.abs(out - images).mean() > 0.5


def test_no_augmentation_by_default_and_bad_names_fail():
  assert feeder.augmentation([]) is None
  with pytest.raises(ValueError, match="flip"):
    feeder.augmentation(["flip"])


def test_class_weights_balance_the_loss():
  w = feeder.class_weights([0, 1, 1, 1])
  assert w[0] * 1 == pytest.approx(w[1] * 3)
  assert (w[0] * 1 + w[1] * 3) / 4 == pytest.approx(1.0)


def _real_batch(count=16):
  from xray_keras.data import builtin

  return builtin.load()[0][:count].astype(np.float32)


def test_affine_with_zero_ranges_is_the_identity_and_inference_passes_images_through():
  from xray_keras.data.affine import RandomAffine

  images = _real_batch()
  np.testing.assert_allclose(np.asarray(RandomAffine(0.0, 0.0, 0.0, seed=1)(images, training=True)), images, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(RandomAffine(seed=1)(images, training=False)), images)


def test_affine_moves_each_image_by_its_own_amounts_as_far_as_the_three_layers_together():
  """One resampling with the ranges of rotation, zoom and translation: each image gets its own
  transform, and the pixels move about as much as through the three Keras layers in turn."""
  images = np.repeat(_real_batch(1), 64, axis=0)
  fused = next(iter(feeder.tf_dataset(images, np.zeros(64), 64, True, 0, feeder.augmentation(["affine"], seed=2))))[
    0
  ].numpy()
  chained = next(
    iter(
      feeder.tf_dataset(
        images, np.zeros(64), 64, True, 0, feeder.augmentation(["rotation", "zoom", "translation"], seed=2)
      )
    )
  )[0].numpy()
  assert fused.shape == images.shape and fused.min() >= 0 and fused.max() <= 255
  assert len({round(float(x), 3) for x in fused.mean(axis=(1, 2, 3))}) == 64  # a different transform per image
  moved_fused, moved_chained = np.abs(fused - images).mean(), np.abs(chained - images).mean()
  assert 0.5 < moved_fused / moved_chained < 2.0, (moved_fused, moved_chained)
  # Black corners where the image moved away, in about as many pixels as the chained layers leave.
  assert 0.5 < (fused < 0.5).mean() / max((chained < 0.5).mean(), 1e-6) < 2.0
