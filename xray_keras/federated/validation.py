"""Whether a site's reply can be aggregated: the model's arrays, finite, and a bounded update."""

import statistics

import numpy as np


def refusal(arrays, shapes, dtypes=None):
  """Why `arrays` cannot be aggregated into a model of `shapes` and `dtypes`, or "" if they can."""
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
  return ""


def norm(arrays, reference=None):
  """The L2 norm over all `arrays`, or of `arrays - reference`, in float64 (finite for any finite float32)."""
  if reference is None:
    reference = [0.0] * len(arrays)
  return float(np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(arrays, reference))))


RECENT_ROUNDS = 3  # rounds of accepted update norms that join a round's own in the reference


def update_bound(update_norms, global_norm, max_update_norm=0.0, max_update_ratio=0.0, recent=()):
  """The largest update norm a round accepts, and how it was set; `(inf, "")` without a bound.

  `max_update_norm` is an absolute bound. `max_update_ratio` bounds an update by that many times the
  round's reference norm: the lower median of the well-formed replies' update norms, with the norms
  accepted in the last `RECENT_ROUNDS` rounds (`recent`), when there are two or more (a minority of
  sites cannot raise it; a round with one reply is held to the ones before), else the global
  weights' own norm. Both set: the smaller bound applies.
  """
  bounds = []
  if max_update_norm:
    bounds.append((max_update_norm, f"--max_update_norm={max_update_norm:g}"))
  if max_update_ratio:
    pool = [*update_norms, *recent]
    if len(pool) >= 2:
      what = "the median update norm of this round" + (" and the last ones" if recent else "")
      reference = statistics.median_low(pool)
    else:
      reference, what = global_norm, "the global weights' norm"
    bounds.append((max_update_ratio * reference, f"{max_update_ratio:g} x {what} {reference:.4g}"))
  return min(bounds) if bounds else (float("inf"), "")
