"""Check there is room for a write before HDF5 starts it.

h5py crashes the process (a segmentation fault in `close`) when a weights file
cannot be written in full, on a full disk or past a file-size limit; checking
first turns that into one clear error, and earlier outputs stay as they were.
"""

import math
import os
import resource
import shutil

import keras

from xray_keras.errors import UserError

_MARGIN = 16 * 2**20


def weights_bytes(model):
  """Bytes of a model's weights, optimizer state included."""
  variables = list(model.weights)
  optimizer = getattr(model, "optimizer", None)
  if optimizer is not None:
    variables += list(optimizer.variables)
  return sum(math.prod(v.shape) * 4 for v in variables)


def check(folder, nbytes, what):
  """Raises `UserError` unless `folder` can take a file of `nbytes` (plus a margin)."""
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
  if limit != resource.RLIM_INFINITY and nbytes > limit:
    raise UserError(
      f"Cannot write {what}: it needs about {nbytes / 2**20:.1f} MB but the file-size limit "
      f"(ulimit -f) is {limit / 2**20:.2f} MB. File too large; raise the limit."
    )
  os.makedirs(folder, exist_ok=True)
  free = shutil.disk_usage(folder).free
  if free < nbytes + _MARGIN:
    raise UserError(
      f"Cannot write {what} in {folder}: it needs about {(nbytes + _MARGIN) / 2**20:.1f} MB and "
      f"{free / 2**20:.1f} MB are free. No space left on device; free some space or choose another --output_dir."
    )


class RoomCheck(keras.callbacks.Callback):
  """Before the epoch-end checkpoint and backup writes, checks their room (place it first)."""

  def __init__(self, folder, copies=3):
    super().__init__()
    self.folder, self.copies = folder, copies

  def on_epoch_end(self, epoch, logs=None):
    check(self.folder, self.copies * weights_bytes(self.model), "this epoch's checkpoints")
