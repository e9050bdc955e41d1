"""Runs (or resumes) an R-Zero co-evolution run.

  python -m launch.train --workdir=runs/default                       # the embedded default
  python -m launch.train --config=configs/smollm2_135m.py --workdir=runs/smol \
      --config.solver.steps=15

Starting the same command again resumes where the run stopped.

On a TPU pod slice the same command runs on every host (README, "TPU pod slice"); with
--multihost and no address, jax.distributed finds its peers itself. Elsewhere (GPUs, CPU tests):
  python -m launch.train --workdir=gs://BUCKET/run --coordinator_address=HOST0:PORT \
      --num_processes=2 --process_id=I
"""

import ast
import logging as pylogging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rzero_jax.rzero import config as config_lib

_DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "arith_tiny.py"
)


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
  return arg[len("--config.") :].split("=", 1)[0]


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
  candidates = [
    a for a in argv[1:] if a.startswith("--config.") and key in _override_path(a).split(".")
  ]
  # Of those, the one that names no field of the base config every config file starts from.
  culprit = [a for a in candidates if not _is_field(_override_path(a))] or candidates
  where = f" in {culprit[0]}" if culprit else ""
  return (
    f"error: invalid config override{where}: {type(e).__name__}: {text} "
    "(no such config field, or a value of the wrong type)"
  )


try:
  # config_flags reads the --config.* overrides from sys.argv right here, at definition time.
  _CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.normpath(_DEFAULT_CONFIG), "ml_collections config file.", lock_config=True
  )
except (AttributeError, KeyError, TypeError, ValueError) as _e:
  sys.exit(_bad_override(_e, sys.argv))
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, datasets, metrics).")
_BASE_MODEL = flags.DEFINE_string(
  "base_model", None, "HF directory or .gguf file; overrides config.base_model."
)
_MULTIHOST = flags.DEFINE_bool(
  "multihost",
  False,
  "Call jax.distributed.initialize() first; on TPU VMs it finds the "
  "coordinator and the process ids itself. Implied by --coordinator_address.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "HOST:PORT of process 0's coordination service, passed to "
  "jax.distributed.initialize (with --num_processes and --process_id).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. N-1.")
_PEER_TIMEOUT = flags.DEFINE_integer(
  "peer_timeout_s",
  60,
  "With several processes: seconds without a heartbeat after which a "
  "peer counts as dead and the run stops with an error, instead of waiting forever.",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change", False, "Resume a workdir even though its config changed."
)
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache_dir",
  "~/.cache/rzero-jax/xla",
  "Persistent XLA compilation cache, so a rerun skips compiling; '' disables it.",
)
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


def _distributed_args():
  """jax.distributed.initialize's arguments, or None for a single-process run."""
  given = {
    "coordinator_address": _COORDINATOR.value,
    "num_processes": _NUM_PROCESSES.value,
    "process_id": _PROCESS_ID.value,
  }
  if not _MULTIHOST.value and all(v is None for v in given.values()):
    return None
  if any(v is not None for v in given.values()):
    missing = [f"--{k}" for k, v in given.items() if v is None]
    if missing:
      sys.exit(
        f"error: {', '.join(missing)} missing: pass --coordinator_address, "
        "--num_processes and --process_id together (or none of them, on TPU VMs)"
      )
    if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
      sys.exit(
        f"error: --process_id={_PROCESS_ID.value}; expected 0 .. "
        f"{_NUM_PROCESSES.value - 1} for --num_processes={_NUM_PROCESSES.value}"
      )
  else:
    given = {}  # auto-detection (TPU VMs, SLURM, ...)
  timeout = max(int(_PEER_TIMEOUT.value), 1)
  return {
    **given,
    "heartbeat_timeout_seconds": timeout,
    "initialization_timeout": 10 * timeout,
    "shutdown_timeout_seconds": timeout,
  }


def _exit_peer_lost(e: BaseException) -> None:
  """A dead peer ends this process at once, with one clear line. os._exit: the normal exit
  would wait at jax.distributed's shutdown barrier for the process that is gone."""
  logging.debug("peer failure", exc_info=True)
  print(
    f"error: another process of the run died or stopped responding, so this one stops "
    f"too ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). Restart "
    "all processes with the same command to resume from the last checkpoint.",
    file=sys.stderr,
    flush=True,
  )
  os._exit(1)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  try:  # before anything slow (the model code imports flax): refused in seconds
    config_lib.validate(config)
  except ValueError as e:
    sys.exit(f"error: {e}")
  import jax

  from rzero_jax import multihost
  from rzero_jax.rzero import experiment

  logging.get_absl_handler().addFilter(_quiet_orbax)
  if _COMPILATION_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILATION_CACHE.value))
  dist = _distributed_args()
  if dist is not None:
    jax.distributed.initialize(**dist)
  logging.info(
    "process %d of %d; local devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  if _BASE_MODEL.value:
    with config.unlocked():
      config.base_model = _BASE_MODEL.value
  try:
    summary = experiment.run(config, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
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
  except Exception as e:  # noqa: BLE001 - only a peer's death is turned into one line
    if jax.process_count() > 1 and multihost.is_peer_failure(e):
      _exit_peer_lost(e)
    raise
  if summary:
    print(summary)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
