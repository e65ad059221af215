"""The package's folders import one way: data < models < evaluation < training < report < serving,
with the commands (run, evaluate, pipeline, study, federated, ...) above them all; evaluation
computes and writes no file; a run folder holds what run_dir.py says it does."""

import ast
import os

import pytest

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "xray_keras")
# Lowest first; a folder may import only from folders before it (and from the top-level helpers).
LAYERS = ("data", "models", "evaluation", "training", "report", "serving")
HELPERS = {"errors", "atomic", "choices", "config", "console", "path_flags"}
# Calls that write a file, by the name they are called with.
WRITES = {"write_json", "savez", "savez_compressed", "save", "savefig", "to_csv", "replace", "makedirs"}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        yield os.path.relpath(path, PACKAGE).split(os.sep), ast.parse(open(path, encoding="utf-8").read())


def _imported_folders(tree):
  """`(line, folder or top-level module)` for every import of our package, lazy ones included."""
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xray_keras":
      parts = node.module.split(".")
      for name in [parts[1]] if len(parts) > 1 else [a.name for a in node.names]:
        yield node.lineno, name
    elif isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == "xray_keras" and len(parts) > 1:
          yield node.lineno, parts[1]


def test_every_layer_imports_only_the_layers_below_it():
  upward = []
  for parts, tree in _modules():
    if len(parts) < 2 or parts[0] not in LAYERS:
      continue
    level = LAYERS.index(parts[0])
    for line, target in _imported_folders(tree):
      allowed = target in HELPERS or target in LAYERS[: level + 1]
      if not allowed:
        upward.append(f"{'/'.join(parts)}:{line} imports xray_keras.{target}")
  assert not upward, "\n".join(upward)


def test_training_reaches_neither_serving_nor_report():
  found = [
    f"{'/'.join(parts)}:{line}"
    for parts, tree in _modules()
    if parts[0] == "training"
    for line, target in _imported_folders(tree)
    if target in ("serving", "report", "pipeline")
  ]
  assert not found, found


def test_evaluation_writes_no_file():
  writes = []
  for parts, tree in _modules():
    if parts[0] != "evaluation":
      continue
    for node in ast.walk(tree):
      if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in WRITES and not (
          name == "replace" and getattr(func, "value", None) is not None and not _is_os(func.value)
        ):
          writes.append(f"{'/'.join(parts)}:{node.lineno} {name}()")
        if name == "open" and any(
          isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax+")
          for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
        ):
          writes.append(f"{'/'.join(parts)}:{node.lineno} open(..., write)")
  assert not writes, "\n".join(writes)


def _is_os(node):
  """`os` in `os.replace`: the file rename (not `str.replace` or `dataclasses.replace`)."""
  return isinstance(node, ast.Name) and node.id == "os"


@pytest.mark.parametrize("layer", LAYERS)
def test_the_layer_check_can_fail(layer, tmp_path):
  """Each layer's rule sees an upward import when there is one (the check is not vacuous)."""
  above = LAYERS[LAYERS.index(layer) + 1 :] or ("pipeline",)
  tree = ast.parse(f"def f():\n  from xray_keras.{above[0]} import x\n")
  assert [t for _, t in _imported_folders(tree)] == [above[0]]


def test_a_finished_run_folder_holds_what_run_dir_lists(tiny_run):
  from xray_keras.training import run_dir as run_dirs

  _, _, run_dir, _ = tiny_run
  listed = set(run_dirs.FINISHED_FILES)
  present = {name for name in os.listdir(run_dir) if name != "external"}  # tests may add external/
  assert listed | {"ood.json", "ood.npz"} | set(run_dirs.REPORT_FILES) <= present, listed - present
  others = present - listed - set(run_dirs.OPTIONAL_FILES) - set(run_dirs.REPORT_FILES)
  assert others and all(name.endswith(".png") for name in others), others  # the report's figures
  assert not {"checkpoints", run_dirs.BACKUP_DIR} & present  # only an unfinished run keeps them
