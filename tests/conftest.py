"""Settings for every test process: the fast, sharded and multihost groups, and the launcher
subprocesses they start (which inherit the environment set here).

Most of a test's time goes into XLA compiling small programs that then run for milliseconds,
and much of a CPU compile is LLVM's optimisation. The tests compile at backend optimisation
level 1 instead of 2; fast-math is off at both, and every test holds as at level 2 (level 0
moved a gradient past a 1e-6 parity in its last bits). Programs that two tests (or two
launcher starts) build alike come from one persistent cache, removed when the session ends.
"""

import atexit
import os
import shutil
import tempfile

# Read when jax creates its CPU backend: pytest imports this file before any test module.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=1"
if FAST_COMPILE_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rzero-jax-test-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a child process with `devices` virtual CPU devices, keeping the fast compile."""
  return f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count={devices}"


def pytest_collection_modifyitems(config, items):
  """Files with a slow test run first. xdist hands out whole files in collection order, and a
  long file left for the end keeps one worker busy while the other idles (CI: one worker at
  86% CPU and the other at 41% over the last minutes)."""
  del config
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)  # stable: file order kept otherwise


def built_once(tmp_path_factory, name: str, build, timeout_s: float = 1800) -> str:
  """`build(folder) -> str` run once per test session and shared by xdist's workers: the first
  worker to ask builds under a file lock while the others wait, then all read its result.

  For what several files need and each worker would otherwise build again (the shrunken runs'
  base model, the multihost reference run). A failed build leaves nothing a later one reuses.
  """
  import filelock

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's folder, above every worker's own
  folder = root / f"built-{name}"
  result = root / f"built-{name}.result"
  with filelock.FileLock(f"{folder}.lock", timeout=timeout_s):
    if not result.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      result.write_text(build(str(folder)))
    return result.read_text()
