"""Write-then-rename files and folders: a killed writer never leaves a visible half-written result.

Temporary folders are named `.tmp-<pid>-<random>` beside their target, so a later
writer can remove those left by processes that no longer exist.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile

PREFIX = ".tmp-"
TEMP = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


def temp_dir(parent):
  """A new hidden temporary folder in `parent`, after removing ones left by dead processes.

  Its mode is what `mkdir` gives under the current umask (not mkdtemp's 0700), so once renamed
  into place it is readable by other users, e.g. a TF Serving process running as another user.
  """
  os.makedirs(parent, exist_ok=True)
  remove_stale(parent)
  path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
  os.chmod(path, 0o777 & ~current_umask())
  return path


def current_umask():
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_json(path, obj):
  """Writes `obj` as JSON to `path` through a temporary file and a rename; on failure `path` is unchanged,
  no temporary file is left, and the `OSError` names `path`."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, allow_nan=True)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise OSError(e.errno, e.strerror, path) from None


def alive(pid):
  """Whether a process with this id exists."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale(parent, pattern=None):
  """Removes the files and folders in `parent` named by `pattern` (a regex whose first group is the writing
  process's id; default: this module's temporary folders) whose process has ended; returns how many."""
  pattern = pattern or TEMP
  removed = 0
  for name in os.listdir(parent):
    match = pattern.match(name)
    if not match or alive(int(match.group(1))):
      continue
    path = os.path.join(parent, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      with contextlib.suppress(OSError):
        os.remove(path)
    removed += 1
  return removed
