"""A model's outputs on many images, in whole batches only: one batch shape, so the prediction
step is traced (and, with XLA, compiled) once; a partial batch would do it again, seconds for a
large model."""

import numpy as np


def whole_batches(images, batch_size):
  """`images` as float32 with the last batch filled up by copies of the last image."""
  count = len(images)
  filled = np.empty((count + -count % batch_size, *images.shape[1:]), np.float32)
  filled[:count] = images
  filled[count:] = images[-1]
  return filled


def predict(model, images, batch_size):
  """The model's outputs, `(N, units)`, one `predict_on_batch` call per whole batch.

  Not `model.predict`: on TensorFlow its tf.data pipeline autotunes, and the end of each call waited
  for the autotuning thread's next wake-up (see `data/feeder.tf_dataset`).
  """
  count = len(images)
  if not count:
    return np.zeros((0, model.outputs[0].shape[-1]), np.float32)  # Keras cannot predict on zero images
  filled = whole_batches(images, batch_size)
  outputs = [np.asarray(model.predict_on_batch(filled[i : i + batch_size])) for i in range(0, len(filled), batch_size)]
  return np.concatenate(outputs)[:count].reshape(count, -1)
