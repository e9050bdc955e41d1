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
_CONFIG = config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT_CONFIG),
                                          "ml_collections config file.", lock_config=True)
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
  app.run(main)
