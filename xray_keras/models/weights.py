"""`--weights`: ImageNet downloads, local files and presets, or random initialisation.

- `imagenet`: the libraries' own download and cache (keras.applications -> `$KERAS_HOME/models`,
  keras-hub -> the kagglehub cache). Offline, this fails within seconds with one message naming
  the missing file and where to put it.
- a path: a weights file (`.h5`, `.weights.h5`), a `.keras` model, or a local keras-hub preset
  directory.
- `none`: random initialisation.
"""

import contextlib
import os
import re
import socket

import keras

from xray_keras import atomic
from xray_keras.errors import UserError

DOWNLOAD_TIMEOUT_S = 20


class WeightsError(UserError):
  """Weights that cannot be found, downloaded or loaded."""


def is_path(weights):
  return weights not in ("imagenet", "none", "")


def check_path(weights):
  """Returns `weights` if it names an existing file or directory, else raises `WeightsError`."""
  if not os.path.exists(weights):
    raise WeightsError(
      f"--weights={weights}: no such file or directory. Expected imagenet, none, a weights file "
      "(.h5, .weights.h5), a .keras model or a local keras-hub preset directory."
    )
  return weights


def keras_cache_dir():
  """Where `keras.utils.get_file` keeps downloads (`$KERAS_HOME/models`, else ~/.keras/models)."""
  home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
  return os.path.join(home, "models")


def kagglehub_cache_dir(handle):
  """Where kagglehub keeps the model `handle` (`kaggle://owner/model/framework/variation/version`)."""
  root = os.environ.get("KAGGLEHUB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kagglehub")
  return os.path.join(root, "models", handle.removeprefix("kaggle://"))


def first_line(error, limit=240):
  """The first line of an error's message, cut to `limit` characters."""
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= limit else line[:limit] + "..."


@contextlib.contextmanager
def _download_timeout():
  previous = socket.getdefaulttimeout()
  socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
  try:
    yield
  finally:
    socket.setdefaulttimeout(previous)


def application_imagenet(constructor, name, **kwargs):
  """Calls a `keras.applications` constructor with `weights="imagenet"`, failing clearly offline.

  Keras re-downloads a cached file whose hash is not the one it expects and deletes it when that
  download fails; offline, such a file (a user's converted copy, or a link to one) is put back and named.
  """
  cache = keras_cache_dir()
  kept = _second_names(cache)
  try:
    with _download_timeout():
      return constructor(weights="imagenet", **kwargs)
  except Exception as e:  # get_file raises a bare Exception for every fetch failure
    failure = _fetch_failure(e)
    match = failure and re.search(r"(https?://\S+?):? ", str(failure))
    if not match:
      raise
    url = match.group(1)
    file_name = url.rsplit("/", 1)[-1]
    reason = str(failure).split(" -- ")[-1].strip()[:200]
    path = os.path.join(cache, file_name)
    if _put_back(kept.get(path), path):
      raise WeightsError(
        f"{path} is not the ImageNet file of {name} that Keras checks for (its hash differs), and a fresh "
        f"download failed ({reason}). The file is kept: pass --weights={path} to use it as it is, or replace "
        f"it with {url}, or pass --weights=none for random initialisation."
      ) from None
    raise WeightsError(
      f"Could not download the ImageNet weights of {name} ({reason}): "
      f"{file_name} is not in {cache}. Put the file there (from {url}), or pass "
      f"--weights=/path/to/{file_name}, or --weights=none for random initialisation."
    ) from None
  finally:
    for second, _ in kept.values():
      with contextlib.suppress(OSError):
        os.remove(second)


def _fetch_failure(error):
  """get_file's "URL fetch failure" exception: `error`, or the one it was raised while handling (Keras' own
  clean-up can fail after it, e.g. in a read-only folder); None if neither is one."""
  for e in (error, error.__context__):
    if e is not None and "fetch failure" in str(e):
      return e
  return None


KEPT = re.compile(r"^\..+\.kept-(\d+)$")


def _fingerprint(path):
  """What a started download would change: the entry's own (size, mtime) and, for a link, its target's."""
  own = os.lstat(path)
  target = os.stat(path) if os.path.islink(path) else own
  return own.st_size, own.st_mtime_ns, target.st_size, target.st_mtime_ns


def _second_names(folder):
  """`{path: (a hard link to it, its fingerprint)}` for each .h5 file or link in `folder` (none where links
  fail); first removes the second names that ended processes left behind."""
  try:
    atomic.remove_stale(folder, KEPT)
    entries = list(os.scandir(folder))
  except OSError:
    return {}
  out = {}
  for entry in entries:
    if (entry.is_symlink() or entry.is_file(follow_symlinks=False)) and entry.name.endswith(".h5"):
      second = os.path.join(folder, f".{entry.name}.kept-{os.getpid()}")
      with contextlib.suppress(OSError):
        before = _fingerprint(entry.path)
        os.link(entry.path, second, follow_symlinks=False)
        out[entry.path] = (second, before)
  return out


def _put_back(kept, path):
  """True if `path` is still the file it was before the call, or was deleted unchanged and is renamed back."""
  if kept is None:
    return False
  second, before = kept
  try:
    if os.path.lexists(path):  # Keras could not delete it (a read-only folder)
      return _fingerprint(path) == before
    if _fingerprint(second) != before:  # a download began and truncated it
      return False
    os.replace(second, path)
  except OSError:
    return False
  return True


def hub_from_preset(cls, preset, what, **kwargs):
  """`cls.from_preset(preset)`, failing with one clear message when a named preset cannot be fetched."""
  if os.path.isdir(preset):
    try:
      return cls.from_preset(preset, **kwargs)
    except Exception as e:
      raise WeightsError(f"Could not load the keras-hub preset directory {preset}: {first_line(e)}") from None
  handle = _preset_handle(preset)
  try:
    with _download_timeout():
      return cls.from_preset(preset, **kwargs)
  except Exception as e:
    where = kagglehub_cache_dir(handle) if handle else "the kagglehub cache"
    raise WeightsError(
      f"Could not get the keras-hub preset {preset!r} for {what} ({type(e).__name__}: {first_line(e)[:200]}). "
      f"Offline, download it elsewhere (keras_hub.models.Backbone.from_preset({preset!r}) fills {where}), "
      "copy that folder here, or pass a local preset directory with --weights=<dir>; "
      "--weights=none gives random initialisation."
    ) from None


def _preset_handle(preset):
  import keras_hub

  for cls in _all_subclasses(keras_hub.models.Backbone):
    info = getattr(cls, "presets", {}).get(preset)
    if info:
      return info.get("kaggle_handle")
  return None


def _all_subclasses(cls):
  seen = []
  for sub in cls.__subclasses__():
    seen.append(sub)
    seen.extend(_all_subclasses(sub))
  return seen


def load_into(model, path, backbone=None):
  """Loads `path` (`.keras` or `.weights.h5`) into `model`, or into its `backbone` if that is what matches."""
  check_path(path)
  if path.endswith(".weights.h5"):
    targets = [model] + ([backbone] if backbone is not None else [])
    for target in targets:
      try:
        target.load_weights(path)
        return
      except Exception:  # a mismatch: try the next target
        continue
    raise WeightsError(f"--weights={path}: its layers match neither this model nor its backbone.")
  if not path.endswith(".keras"):
    raise WeightsError(f"--weights={path}: expected a .keras model or a .weights.h5 file for this model.")
  from xray_keras import models

  source = models.load_model(path, compile=False)
  values = source.get_weights()
  for target in [model] + ([backbone] if backbone is not None else []):
    if [tuple(w.shape) for w in target.weights] == [tuple(v.shape) for v in values]:
      target.set_weights(values)
      return
  raise WeightsError(
    f"--weights={path}: its {len(values)} weight tensors ({source.count_params():,} parameters) "
    f"match neither this model ({model.count_params():,}) nor its backbone."
  )


def without_top(model):
  """The feature-map part of a classification model: everything before its last global pooling."""
  pools = [
    l for l in model.layers if isinstance(l, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D))
  ]
  if not pools:
    raise WeightsError(f"Cannot find the pooling layer that starts the classification top of {model.name}.")
  return keras.Model(model.inputs, pools[-1].input, name=model.name)
