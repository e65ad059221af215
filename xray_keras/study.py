"""The study runner: one run per model on one shared data split, into one study folder.

  python -m xray_keras.run --flagfile=experiments/study.cfg [--models=cnn_scratch,vit_scratch]

Each model runs as its own process (`python -m xray_keras.run
--flagfile=experiments/<model>.cfg` plus the study's own flags, which override
the model's) into `<study dir>/<model>/`. Rerunning the same command reuses
finished runs, resumes interrupted ones and runs the rest, so a killed study
continues where it stopped. Flags that only fit pretrained backbones
(`PRETRAINED_ONLY`) go to the pretrained models alone, and
`--override=<model>:<flag>=<value>` sets a flag for one model. `study.json`
lists every model's run and outcome;
`report.md`, `results.csv`/`results.json` and the figures are written at the end
(`report/`).
"""

import json
import os
import subprocess
import sys
import time

from absl import flags, logging

from xray_keras import atomic, choices
from xray_keras.console import STUDY_ENV
from xray_keras.errors import UserError
from xray_keras.training import run_dir as run_dirs

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
# Flags that belong to the study, or that each model's run sets itself.
_NOT_PASSED = {
  "models",
  "model",
  "experiment",
  "output_dir",
  "flagfile",
  "overwrite",
  "export_dir",
  "bootstrap_resamples",
  "override",
  "seeds",
}
# Flags of the two-phase fine-tuning of a pretrained backbone; a from-scratch model refuses them.
PRETRAINED_ONLY = ("head_epochs", "head_learning_rate", "unfreeze", "feature_cache", "weights")


def _passed_flags(module_name):
  """The study's explicitly set flags, as `(name, argument)` for each model's run."""
  out = []
  for flag in flags.FLAGS.get_flags_for_module(module_name):
    if flag.present and flag.name not in _NOT_PASSED and flag.serialize():
      out.append((flag.name, flag.serialize()))
  return out


def parse_overrides(overrides, study_models, known_flags):
  """`["model:flag=value", ...]` as `{model: ["--flag=value", ...]}`; a bad one is a `UserError`."""
  out = {}
  for item in overrides:
    key, eq, value = item.partition("=")
    model, sep, name = key.rpartition(":")
    name = name.lstrip("-")
    if not (sep and eq and model and name):
      raise UserError(f"--override={item}: expected <model>:<flag>=<value>, e.g. resnet50:head_epochs=1")
    if model not in study_models:
      raise UserError(f"--override={item}: {model} is not one of --models ({', '.join(study_models)})")
    if name not in known_flags or name in _NOT_PASSED:
      raise UserError(f"--override={item}: --{name} is not a per-model flag")
    out.setdefault(model, []).append(f"--{name}={value}")
  return out


def model_flags(model, passed, overrides=None):
  """The study-wide flags that fit `model`, then its own overrides; logs what was left out."""
  pretrained = choices.is_pretrained(model)
  out, left = [], []
  for name, argument in passed:
    (out if pretrained or name not in PRETRAINED_ONLY else left).append(argument)
  if left:
    logging.info("Study: %s fit pretrained backbones only; not passed to %s.", " ".join(left), model)
  return out + list((overrides or {}).get(model, []))


def _check_weights_path(models_, passed):
  weights = dict(passed).get("weights", "").split("=", 1)[-1]
  pretrained = [m for m in models_ if choices.is_pretrained(m)]
  if weights not in ("", "imagenet", "none") and len(pretrained) > 1:
    raise UserError(
      f"--weights={weights} is one file for {len(pretrained)} pretrained models; give each its own "
      f"with --override={pretrained[0]}:weights=PATH."
    )


def _model_args(model):
  cfg = os.path.join(EXPERIMENTS, f"{model}.cfg")
  return (
    [f"--flagfile={cfg}"]
    if os.path.isfile(cfg)
    else ["--flagfile=" + os.path.join(EXPERIMENTS, "base.cfg"), f"--model={model}"]
  )


def study_runs(models, seeds=()):
  """`(model, run name, seed or None)` for every run: with seeds, the first goes to `<model>`, the
  others to `<model>_seed<N>`."""
  if not seeds:
    return [(m, m.replace(":", "_"), None) for m in models]
  return [
    (m, m.replace(":", "_") + ("" if i == 0 else f"_seed{seed}"), seed) for m in models for i, seed in enumerate(seeds)
  ]


def _check_seed(out, seed):
  """A finished run reused for `--seeds` must have been trained with that seed."""
  if seed is None:
    return
  had = run_dirs.read_flags(os.path.join(out, "flags.txt")).get("seed")
  if had is not None and int(had) != seed:
    raise UserError(
      f"{out} holds a finished run with --seed={had}, not {seed}; list --seeds with {had} first, or pass --overwrite."
    )


def _run_model(args, where):
  """Runs one model's process, passing its stderr through (its progress lines); returns the exit code
  and its `error:` lines."""
  env = {**os.environ, STUDY_ENV: json.dumps(where)}
  errors = []
  with subprocess.Popen(args, stderr=subprocess.PIPE, text=True, errors="replace", env=env) as child:
    for line in child.stderr:
      sys.stderr.write(line)
      if line.startswith("error:"):
        errors.append(line.rstrip("\n"))
  return child.returncode, errors


def run(models, study_dir, module_name, overwrite=False, resamples=1000, overrides=(), seeds=()):
  """Runs every model of the study (each seed of `seeds`) and writes its report; returns the study folder.

  Raises `UserError` if any run failed (after reporting the others).
  """
  passed = _passed_flags(module_name)
  _check_weights_path(models, passed)
  known = {f.name for f in flags.FLAGS.get_flags_for_module(module_name)}
  overrides = parse_overrides(overrides, models, known)
  plan = study_runs(models, seeds)
  names = [name for _, name, _ in plan]
  os.makedirs(study_dir, exist_ok=True)
  status = {}
  took = {}  # model -> seconds its last run took: the estimate for its later runs (other seeds)
  for position, (model, name, seed) in enumerate(plan):
    out = os.path.join(study_dir, name)
    finished = os.path.isfile(os.path.join(out, run_dirs.FINISHED_MARKER))
    if finished and not overwrite:
      _check_seed(out, seed)
      logging.info("Study: %s finished earlier in %s; reusing it.", name, out)
      status[name] = {"run_dir": os.path.basename(out), "outcome": "reused"}
      atomic.write_json(os.path.join(study_dir, "study.json"), {"models": names, "runs": status})
      continue
    args = [
      sys.executable,
      "-m",
      "xray_keras.run",
      *_model_args(model),
      *model_flags(model, passed, overrides),
      f"--output_dir={out}",
    ] + ([f"--seed={seed}"] if seed is not None else [])
    if overwrite:
      args.append("--overwrite")
    index = len(status) + 1
    logging.info("Study: model %d/%d, running %s into %s", index, len(plan), name, out)
    start = time.perf_counter()
    later = [m for m, _, _ in plan[position + 1 :]]
    where = {
      "index": index,
      "count": len(plan),
      "name": name,
      "later_s": sum(took.get(m, 0.0) for m in later),
      "later_untimed": sum(m not in took for m in later),
    }
    returncode, errors = _run_model(args, where)
    if returncode:
      reason = errors[-1] if errors else f"exit code {returncode}; see {os.path.join(out, 'run.log')}"
      logging.error("Study: %s failed: %s", name, reason)
      status[name] = {"run_dir": os.path.basename(out), "outcome": "failed", "error": reason}
    else:
      took[model] = time.perf_counter() - start
      status[name] = {"run_dir": os.path.basename(out), "outcome": "finished", "wall_s": took[model]}
    atomic.write_json(os.path.join(study_dir, "study.json"), {"models": names, "runs": status})
  if any(s["outcome"] != "failed" for s in status.values()):
    from xray_keras.models import table
    from xray_keras.report import write

    write.write_report(study_dir, resamples, parameter_table=table.rows(models), ensemble=True)
  failed = [m for m, s in status.items() if s["outcome"] == "failed"]
  if failed:
    raise UserError(
      f"Study: {len(failed)} of {len(plan)} runs failed ({', '.join(failed)}); rerun the same "
      f"command to retry them, finished runs are reused. Details in {study_dir}/study.json"
    )
  logging.info("Study done: %s", ", ".join(f"{m} {s['outcome']}" for m, s in status.items()))
  return study_dir
