import numpy as np
import pytest
import tensorflow as tf

from xray_keras.data import feeder


def test_training_dataset_sees_every_image_once_per_epoch():
  images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 4, 4, 1), np.uint8)
  labels = np.arange(10) % 2
  ds = feeder.tf_dataset(images, labels, 3, training=True, seed=1)
  for _ in range(2):
    seen = np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in ds])
    assert sorted(seen.tolist()) == list(range(10))
  first = [x.dtype for x, _ in ds.take(1)][0]
  assert first == tf.float32


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
