"""Runs (or resumes) an R-Zero co-evolution run.

  python -m launch.train --workdir=runs/default                       # the embedded default
  python -m launch.train --config=configs/smollm2_135m.py --workdir=runs/smol \
      --config.solver.steps=15

Starting the same command again resumes where the run stopped.
"""
import ast
import logging as pylogging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rzero_jax.rzero import config as config_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs",
                               "arith_tiny.py")


def _error_text(e: Exception) -> str:
  """The exception's message as a person reads it: ml_collections nests reprs of strings
  (KeyError("'x'\\nDid you mean...")), which would print as escaped quotes and newlines."""
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  for _ in range(3):
    try:
      inner = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
    if not isinstance(inner, str):
      break
    text = inner
  return " ".join(text.split())


def _override_path(arg: str) -> str:
  return arg[len("--config."):].split("=", 1)[0]


def _is_field(path: str) -> bool:
  node = config_lib.base_config()
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def _bad_override(e: Exception, argv) -> str:
  text = _error_text(e)
  quoted = re.match(r"^'([^']+)'", text)
  key = quoted.group(1) if quoted else text
  # The override whose dotted path has the key as one of its fields (not as a substring:
  # an unknown "step" must not be blamed on --config.solver.steps).
  candidates = [a for a in argv[1:] if a.startswith("--config.")
                and key in _override_path(a).split(".")]
  # Of those, the one that names no field of the base config every config file starts from.
  culprit = [a for a in candidates if not _is_field(_override_path(a))] or candidates
  where = f" in {culprit[0]}" if culprit else ""
  return (f"error: invalid config override{where}: {type(e).__name__}: {text} "
          "(no such config field, or a value of the wrong type)")


try:
  # config_flags reads the --config.* overrides from sys.argv right here, at definition time.
  _CONFIG = config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT_CONFIG),
                                            "ml_collections config file.", lock_config=True)
except (AttributeError, KeyError, TypeError, ValueError) as _e:
  sys.exit(_bad_override(_e, sys.argv))
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, datasets, metrics).")
_BASE_MODEL = flags.DEFINE_string("base_model", None,
                                  "HF directory or .gguf file; overrides config.base_model.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False,
                                         "Resume a workdir even though its config changed.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", "~/.cache/rzero-jax/xla",
    "Persistent XLA compilation cache, so a rerun skips compiling; '' disables it.")
flags.mark_flag_as_required("workdir")


def _quiet_orbax(record) -> bool:
  # Orbax logs every save at INFO; keep its warnings, drop the chatter around our step lines.
  return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def _parse_flags(argv):
  """absl's parser, but a bad --config.* override is one clear line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(_bad_override(e, argv))


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  try:  # before anything slow (the model code imports flax): refused in seconds
    config_lib.validate(config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  import jax
  from rzero_jax.rzero import experiment
  logging.get_absl_handler().addFilter(_quiet_orbax)
  if _COMPILATION_CACHE.value:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(_COMPILATION_CACHE.value))
  if _MULTIHOST.value:
    jax.distributed.initialize()
  logging.info("process %d of %d; devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  if _BASE_MODEL.value:
    with config.unlocked():
      config.base_model = _BASE_MODEL.value
  try:
    summary = experiment.run(config, _WORKDIR.value,
                             allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except experiment.UserError as e:
    logging.debug("user error", exc_info=True)  # the traceback, for --verbosity=1
    sys.exit(f"error: {e}")
  except experiment.Preempted as e:
    logging.warning("%s", e)
    # Everything finished is on disk (the loop closed its checkpoints). A preemption notice
    # gives about 30 s, and the interpreter's teardown (XLA, worker pools) can take seconds
    # on a busy host: exit now.
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
  if summary:
    print(summary)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
