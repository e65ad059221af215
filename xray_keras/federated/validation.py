"""Whether a site's reply can be aggregated: the model's arrays, finite, and a bounded update."""

import numpy as np


def refusal(arrays, shapes, dtypes=None, sent=None, max_update_norm=0.0):
  """Why `arrays` cannot be aggregated into a model of `shapes` and `dtypes`, or "" if they can.

  `sent` is the round's global weights: with `max_update_norm`, the L2 norm of `arrays - sent`
  over all arrays must not exceed it.
  """
  shapes = shapes or [a.shape for a in sent or arrays]
  if len(arrays) != len(shapes):
    return f"{len(arrays)} arrays, the model has {len(shapes)}"
  for i, (a, shape) in enumerate(zip(arrays, shapes)):
    if tuple(a.shape) != tuple(shape):
      return f"array {i} has shape {tuple(a.shape)}, the model's is {tuple(shape)}"
    if dtypes and a.dtype != dtypes[i]:
      return f"array {i} is {a.dtype}, the model's is {np.dtype(dtypes[i])}"
    if not np.issubdtype(a.dtype, np.number):
      return f"array {i} is not numeric"
    if not np.isfinite(a).all():
      return f"array {i} holds NaN or infinity"
  if max_update_norm and sent is not None:
    norm = float(np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(arrays, sent))))
    if norm > max_update_norm:
      return f"update norm {norm:.4g} exceeds --max_update_norm={max_update_norm:g}"
  return ""
