"""Out-of-distribution score from the model itself: is this image like the X-rays it was trained on?

Three Gaussians are fitted to the train split (mean and Ledoit-Wolf shrinkage covariance, float64):
to the model's penultimate activations (the input of its final Dense layer), which see what the
model sees; to an 8x8 thumbnail of the image's grey levels, which sees the layout the features are
blind to (an image upside down, or its grey levels inverted); and to a 16-bin histogram of its grey
levels, which sees what neither does (a blank image, a photograph's exposure). Each Mahalanobis
distance is divided by its own 99th percentile on the validation split, and the score is the
largest of the three; the threshold is the 99th percentile of the validation split's scores, so
about 1% of in-distribution images are flagged. The run folder gets `ood.json` (method, threshold,
layers, dims, validation inside-rate) and `ood.npz` (the means and precisions). Two baselines from
the logits are kept for the benchmark: the energy score and max-softmax.
"""

import json
import os

import numpy as np

JSON, NPZ = "ood.json", "ood.npz"
METHOD = "mahalanobis"
PERCENTILE = 99.0
GRIDS = (8, 4, 2)  # the thumbnail's cells a side: the first that divides the input size ...
SAMPLES_PER_DIM = 10  # ... and has at least this many train images per cell for its Gaussian
BINS = 16  # the grey-level histogram's bins, each 16 levels wide (with 10 train images a bin, as above)
PARTS = {"thumb": "grid", "hist": "bins"}  # the image's own parts of the score, and the state key that sizes each
ARRAYS = ("mean", "precision", *(f"{p}_{k}" for p in PARTS for k in ("mean", "precision")))  # ood.npz's


def head_layer(model):
  """The final Dense classification layer: the last Dense layer of the (functional) model."""
  import keras

  for layer in reversed(model.layers):
    if isinstance(layer, keras.layers.Dense):
      return layer
  raise ValueError(f"{model.name} has no Dense classification layer to take features from.")


def feature_model(model):
  """`pixels -> (penultimate features, outputs)` sharing `model`'s layers."""
  import keras

  return keras.Model(model.inputs, [head_layer(model).input, model.outputs[0]], name=f"{model.name}_features")


def extractor(model, batch_size=64):
  """A function `images -> (features, logits)` as float64: the head's input and its pre-activation output.

  Whole batches through `predict_on_batch` (one traced shape), as `prediction.predict` does.
  """
  import keras

  from xray_keras.evaluation import prediction

  head = head_layer(model)
  both = feature_model(model)
  dims = int(head.input.shape[-1])
  kernel = np.asarray(keras.ops.convert_to_numpy(head.kernel), np.float64)
  bias = np.asarray(keras.ops.convert_to_numpy(head.bias), np.float64) if head.use_bias else 0.0

  def extract(images):
    count = len(images)
    if not count:
      return np.zeros((0, dims)), np.zeros((0, kernel.shape[1]))
    filled = prediction.whole_batches(np.asarray(images), batch_size)
    feats = [
      np.asarray(both.predict_on_batch(filled[i : i + batch_size])[0]) for i in range(0, len(filled), batch_size)
    ]
    feats = np.concatenate(feats)[:count].reshape(count, dims).astype(np.float64)
    return feats, feats @ kernel + bias

  return extract


def features(model, images, batch_size=64):
  """`(features, logits)` of `images` (see `extractor`)."""
  return extractor(model, batch_size)(images)


def ledoit_wolf(x):
  """`(mean, shrunk covariance)` of the rows of `x` (Ledoit and Wolf 2004, toward a scaled identity)."""
  x = np.asarray(x, np.float64)
  n, d = x.shape
  mean = x.mean(0)
  xc = x - mean
  sample = xc.T @ xc / n
  mu = np.trace(sample) / d
  delta = np.sum((sample - mu * np.eye(d)) ** 2) / d
  beta = min(delta, np.sum((xc**2).T @ (xc**2) / n - sample**2) / (d * n))
  shrinkage = beta / delta if delta > 0 else 1.0
  return mean, shrinkage * mu * np.eye(d) + (1 - shrinkage) * sample


def fit_gaussian(train_features):
  """`{mean, precision}` (float64) of the train features; a tiny ridge keeps the precision finite."""
  mean, cov = ledoit_wolf(train_features)
  cov += 1e-6 * max(np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov))
  return {"mean": mean, "precision": np.linalg.inv(cov)}


def whitening(precision):
  """`L` with `L @ L.T == precision`: the distance is `|(x - mean) @ L|`, stable in float32."""
  return np.linalg.cholesky((precision + precision.T) / 2)


def mahalanobis(features, mean, precision):
  d = np.asarray(features, np.float64) - mean
  return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def grid_for(size, train_n):
  """The thumbnail's cells a side for `size`-pixel inputs and `train_n` train images; None where no grid
  of GRIDS divides the size or the split is too small for its Gaussian (then the features alone count)."""
  return next((g for g in GRIDS if size % g == 0 and train_n >= SAMPLES_PER_DIM * g * g), None)


def thumbnail(pixels, grid):
  """`(N, grid * grid)` float64: the mean grey level (0..1) of each cell of the images `(N, S, S, C)`."""
  pixels = np.asarray(pixels)
  n, size = len(pixels), pixels.shape[1]
  out = np.empty((n, grid * grid), np.float64)
  for start in range(0, n, 256):  # a float64 copy of a whole split would be gigabytes at 224 px
    x = pixels[start : start + 256].astype(np.float64).mean(-1)
    cells = x.reshape(len(x), grid, size // grid, grid, size // grid).mean((2, 4))
    out[start : start + 256] = cells.reshape(len(x), grid * grid) / 255.0
  return out


def bin_shares(grey, bins, xp=np):
  """`(N, bins)`: per row of `grey` `(N, P)`, the mean over its values of each bin's membership
  `ramp(lo) - ramp(lo + width)`, `ramp(t) = clip(v - t + 1, 0, 1)`: 1 for an integer grey level inside
  the bin [lo, lo + width), 0 outside, in between for a fraction. One ramp per bin edge, averaged before
  the differences (the mean is linear), and arithmetic only (no comparisons or bool casts), so every
  export runs it, LiteRT's integer-only files included; `xp` is NumPy or keras.ops."""
  width = 256 // bins
  edges = xp.reshape(xp.arange(bins, dtype="float32") * width, (1, 1, bins))
  above = xp.mean(xp.clip(xp.expand_dims(grey, -1) - edges + 1.0, 0.0, 1.0), axis=1)  # share >= each edge
  return above - xp.concatenate([above[:, 1:], xp.zeros_like(above[:, :1])], axis=1)


def histogram(pixels, bins=BINS):
  """`(N, bins)` float64: the share of each image's grey levels (the channels' mean) in each bin."""
  pixels = np.asarray(pixels)
  out = np.empty((len(pixels), bins), np.float64)
  for start in range(0, len(pixels), 8):  # 8 images x pixels x bins float32 at a time
    chunk = pixels[start : start + 8]
    grey = chunk.astype(np.float32).mean(-1).reshape(len(chunk), -1)
    out[start : start + 8] = bin_shares(grey, bins)
  return out


def _part(state, name, pixels):
  if name == "thumb":
    return thumbnail(pixels, int(state["grid"]))
  return histogram(pixels, int(state["bins"]))


def combine(state, feature_distance, pixels):
  """The score: the largest of the feature distance and the image parts' distances the state has (the
  thumbnail's, the histogram's), each over its validation 99th percentile; a state from before the
  parts: the feature distance itself."""
  parts = [name for name in PARTS if f"{name}_mean" in state]
  if not parts:
    return np.asarray(feature_distance, np.float64)
  scores = [np.asarray(feature_distance, np.float64) / state["feature_scale"]]
  for name in parts:
    distance = mahalanobis(_part(state, name, pixels), state[f"{name}_mean"], state[f"{name}_precision"])
    scores.append(distance / state[f"{name}_scale"])
  return np.maximum.reduce(scores)


def centred_logits(logits):
  """Softmax logits; a one-unit sigmoid logit z is the two-class softmax of (-z/2, z/2)."""
  logits = np.asarray(logits, np.float64)
  return np.concatenate([-logits / 2, logits / 2], 1) if logits.shape[1] == 1 else logits


def energy(logits):
  """The energy score -logsumexp(logits): higher is further out (Liu et al. 2020)."""
  z = centred_logits(logits)
  top = z.max(1)
  return -(top + np.log(np.exp(z - top[:, None]).sum(1)))


def max_softmax(logits):
  """1 - the largest softmax probability: higher is further out (Hendrycks and Gimpel 2017)."""
  z = centred_logits(logits)
  p = np.exp(z - z.max(1, keepdims=True))
  return 1.0 - (p / p.sum(1, keepdims=True)).max(1)


def threshold_of(val_scores, percentile=PERCENTILE):
  """The `percentile`-th percentile of the validation scores (never the test split's)."""
  return float(np.percentile(np.asarray(val_scores, np.float64), percentile))


def fit(model, train_images, val_images, batch_size=64, extract=None):
  """`(state, val_scores)`: the Gaussian on train features and the threshold on validation scores."""
  extract = extract or extractor(model, batch_size)
  train_features = extract(train_images)[0]
  if len(train_features) < 2 or not len(val_images):
    raise ValueError("The OOD score needs at least 2 train images and 1 validation image.")
  state = fit_gaussian(train_features)
  val_scores = mahalanobis(extract(val_images)[0], **state)
  grid = grid_for(int(np.shape(train_images)[1]), len(train_features))
  if grid:
    state["grid"] = grid
  if len(train_features) >= SAMPLES_PER_DIM * BINS:
    state["bins"] = BINS
  parts = [name for name, key in PARTS.items() if key in state]
  if parts:
    state["feature_scale"] = threshold_of(val_scores)
  for name in parts:
    fitted = fit_gaussian(_part(state, name, train_images))
    state[f"{name}_mean"], state[f"{name}_precision"] = fitted["mean"], fitted["precision"]
    state[f"{name}_scale"] = threshold_of(mahalanobis(_part(state, name, val_images), **fitted))
  if parts:
    val_scores = combine(state, val_scores, val_images)
  state["threshold"] = threshold_of(val_scores)
  state["layer"], state["head"] = _input_layer(model), head_layer(model).name
  state["train_n"], state["val_n"] = len(train_features), len(val_scores)
  return state, val_scores


def _input_layer(model):
  """The name of the layer whose output feeds the final Dense layer."""
  history = getattr(head_layer(model).input, "_keras_history", None)
  return history[0].name if history else head_layer(model).name + "_input"


def scores(model, state, images, batch_size=64, extract=None):
  """The OOD scores of `images` (pixels as the model takes them) under a fitted `state`."""
  extract = extract or extractor(model, batch_size)
  return combine(state, mahalanobis(extract(images)[0], state["mean"], state["precision"]), images)


def assess(model, state, pixels, batch_size=64):
  """`(PNEUMONIA probability, ood_score, flagged)` of a batch of pixels for a `.keras` model and its `state`
  (`load(run_dir)`); the probability is the model's own, before any temperature."""
  from xray_keras import models

  probability = models.pneumonia_probability(model.predict_on_batch(np.asarray(pixels, np.float32)))
  ood_scores = scores(model, state, pixels, batch_size)
  return probability, ood_scores, ood_scores > state["threshold"]


def assess_run(run_dir, pixels, batch_size=64):
  """`assess` with the run folder's `model.keras`, OOD state and temperature (as its exports give them);
  ValueError if the run has no OOD score. `pixels` are after the run's `--preprocess` steps."""
  from xray_keras import models
  from xray_keras.evaluation import calibration, clinical

  state = load(run_dir)
  if state is None:
    raise ValueError(f"{run_dir} has no {NPZ}: run it with --ood (the default) to fit an OOD score.")
  probability, ood_scores, flagged = assess(
    models.load_model(os.path.join(run_dir, "model.keras")), state, pixels, batch_size
  )
  temperature = clinical.temperature(run_dir)
  if temperature:
    probability = calibration.apply_temperature(probability, temperature)
  return probability, ood_scores, flagged


def describe(state, val_scores):
  val_scores = np.asarray(val_scores)
  return {
    "method": METHOD,
    "threshold": float(state["threshold"]),
    "threshold_rule": f"{PERCENTILE:g}th percentile of the validation split's scores",
    "feature_layer": state["layer"],
    "features": f"the input of the final Dense layer {state['head']!r}",
    "dims": int(len(state["mean"])),
    "covariance": "Ledoit-Wolf shrinkage, fitted on the train split",
    **({"feature_scale": float(state["feature_scale"])} if "feature_scale" in state else {}),
    **(
      {
        "thumbnail": f"the mean grey level of each cell of a {state['grid']}x{state['grid']} grid over the image",
        "grid": int(state["grid"]),
        "thumb_scale": float(state["thumb_scale"]),
      }
      if "thumb_mean" in state
      else {}
    ),
    **(
      {
        "histogram": f"the share of the grey levels in each of {state['bins']} equal bins",
        "bins": int(state["bins"]),
        "hist_scale": float(state["hist_scale"]),
      }
      if "hist_mean" in state
      else {}
    ),
    **(
      {"combined": "the largest of the distances (features, thumbnail, histogram), each over its scale"}
      if "feature_scale" in state
      else {}
    ),
    "train_n": int(state["train_n"]),
    "val_n": int(state["val_n"]),
    "val_inside_rate": float(np.mean(val_scores <= state["threshold"])) if len(val_scores) else None,
  }


def load(run_dir):
  """`{mean, precision, threshold, ...}` of the run's OOD score, or None if the run has none."""
  npz, summary = os.path.join(run_dir, NPZ), os.path.join(run_dir, JSON)
  if not (os.path.isfile(npz) and os.path.isfile(summary)):
    return None
  with open(summary) as f:
    state = json.load(f)
  with np.load(npz, allow_pickle=False) as arrays:
    for name in ARRAYS:
      if name in arrays.files:
        state[name] = arrays[name].astype(np.float64)
  for part, key in PARTS.items():
    if f"{part}_mean" in state and not {key, "feature_scale", f"{part}_scale"} <= set(state):
      raise ValueError(f"{summary} lacks the {key} or scales that {npz} needs.")
  return state
