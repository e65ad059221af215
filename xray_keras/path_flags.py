"""String flags that hold paths: `~` and `$VARS` are expanded, as a shell would outside `--flag=`."""

import os
import sys

from absl import flags


def expand(path):
  """`~`, `~user` and `$VAR` / `${VAR}` expanded; anything else returned as given."""
  return os.path.expandvars(os.path.expanduser(path)) if path else path


class _PathParser(flags.ArgumentParser):
  def parse(self, argument):
    return expand(str(argument))

  def flag_type(self):
    return "string"


def DEFINE_path(name, default, help, **kwargs):  # noqa: N802  (absl's naming)
  """A string flag whose value (from the command line or a flagfile) has `~` and `$VARS` expanded.

  The flag belongs to the calling module, as a `DEFINE_string` there would (flags.txt and the study
  runner list flags by module).
  """
  kwargs.setdefault("module_name", sys._getframe(1).f_globals["__name__"])
  return flags.DEFINE(_PathParser(), name, default, help, serializer=flags.ArgumentSerializer(), **kwargs)
