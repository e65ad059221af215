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
  """The model's outputs, `(N, units)`."""
  count = len(images)
  if not count:
    return np.zeros((0, model.outputs[0].shape[-1]), np.float32)  # Keras cannot predict on zero images
  filled = whole_batches(images, batch_size)
  if len(filled) == batch_size:
    outputs = model.predict_on_batch(filled)  # one batch: without `predict`'s per-call set-up
  else:
    outputs = model.predict(filled, batch_size=batch_size, verbose=0)
  return np.asarray(outputs)[:count].reshape(count, -1)
