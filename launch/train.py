"""Runs (or resumes) an R-Zero co-evolution run.

  python -m launch.train --workdir=runs/default                       # the embedded default
  python -m launch.train --config=configs/smollm2_135m.py --workdir=runs/smol \
      --config.solver.steps=15

Starting the same command again resumes where the run stopped.
"""
import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs",
                               "arith_tiny.py")


def _bad_override(e: Exception, argv) -> str:
  key = str(e).strip("'\"")
  culprit = [a for a in argv[1:] if a.startswith("--config") and key and key in a]
  where = f" in {culprit[0]}" if culprit else ""
  return (f"error: invalid config override{where}: {type(e).__name__}: {key} "
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
  config = _CONFIG.value
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
    sys.exit(0)
  if summary:
    print(summary)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
