"""Settings for every test process: the fast, sharded and multihost groups, and the launcher
subprocesses they start (which inherit the environment set here).

Most of a test's time goes into XLA compiling small programs that then run for milliseconds.
The tests compile at backend optimisation level 0 (no LLVM optimisation passes) and with XLA's
older CPU emitters instead of its MLIR fusion pipeline (benchmarks/RESULTS.md). Fast-math
is off either way, and every test holds as with the defaults. Programs that two tests (or two
launcher starts) build alike come from one persistent cache, removed when the session ends.
"""

import atexit
import collections
import os
import shutil
import subprocess
import sys
import tempfile

import pytest


def _fast_compile_flags() -> str:
  """The fast-compile XLA flags this jaxlib knows (XLA aborts on an unknown one): probed once,
  by the session's first process, whose workers and launchers inherit the answer."""
  if "RZERO_TEST_FAST_COMPILE_FLAGS" not in os.environ:
    flags = "--xla_backend_optimization_level=0"
    older_emitters = f"{flags} --xla_cpu_use_fusion_emitters=false"
    probe = subprocess.run(
      [sys.executable, "-c", "import jax; jax.devices('cpu')"],
      env=dict(os.environ, XLA_FLAGS=older_emitters, JAX_PLATFORMS="cpu"),
      capture_output=True,
      timeout=300,
    )
    os.environ["RZERO_TEST_FAST_COMPILE_FLAGS"] = older_emitters if probe.returncode == 0 else flags
  return os.environ["RZERO_TEST_FAST_COMPILE_FLAGS"]


# Read when jax creates its CPU backend: pytest imports this file before any test module.
FAST_COMPILE_FLAGS = _fast_compile_flags()
if FAST_COMPILE_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rzero-jax-test-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a child process with `devices` virtual CPU devices, keeping the fast compile."""
  return f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count={devices}"


# xdist hands each worker two files to start with, in this order, then one more per file done.
# The first builds the session's reference run (tiny_reference); the other worker meanwhile runs
# the smoke test and the multihost run, which asks for the reference only at its end.
FIRST_FILES = (
  "test_rzero_run.py",
  "test_smollm2_smoke.py",
  "multihost/test_pod_run.py",
)


def pytest_collection_modifyitems(config, items):
  """The longest files first, so that xdist's two workers finish together: FIRST_FILES, other
  files with a slow test, then the rest by number of tests. xdist hands out whole files in this
  order when run with --no-loadscope-reorder (the Makefile's); by default it sorts them by their
  number of tests alone, which left the single-test multihost files, the longest, for last."""
  del config
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  counts = collections.Counter(item.path for item in items)

  def rank(item):
    name = item.path.as_posix()
    first = [i for i, f in enumerate(FIRST_FILES) if name.endswith("/tests/" + f)]
    return (
      first[0] if first else len(FIRST_FILES),
      item.path not in slow_files,
      -counts[item.path],
    )

  items.sort(key=rank)  # stable: each file's own order is kept


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


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
  """The shrunken runs' base model (tests/tiny_run.py), for test_rzero_run.py and multihost."""
  from tests import tiny_run

  return built_once(tmp_path_factory, "tiny-base", tiny_run.build_tiny_base)


@pytest.fixture(scope="session")
def tiny_xla_cache(tmp_path_factory):
  """One persistent compile cache for every shrunken run of the session, whichever worker
  starts it: they all compile the same programs. RZERO_TEST_XLA_CACHE keeps it across
  sessions, e.g. while working on these tests."""
  return os.environ.get("RZERO_TEST_XLA_CACHE") or built_once(
    tmp_path_factory, "tiny-xla-cache", lambda folder: folder
  )


REFERENCE_OUTPUT = "stdout.txt"  # the reference launcher's stdout, beside its workdir


@pytest.fixture(scope="session")
def tiny_reference(tiny_base, tiny_xla_cache, tmp_path_factory):
  """The shrunken run, uninterrupted, in one process: what the killed, preempted, corrupted,
  multi-process and gs:// runs must end as. Its workdir; the launcher's output is in
  REFERENCE_OUTPUT beside it."""
  from tests import tiny_run

  def run(folder):
    workdir = os.path.join(folder, "run")
    cmd = tiny_run.command(
      workdir, tiny_base, tiny_xla_cache, iterations=tiny_run.REFERENCE_ITERATIONS
    )
    proc = subprocess.run(
      cmd, cwd=tiny_run.REPO, env=tiny_run.env(), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(folder, REFERENCE_OUTPUT), "w") as f:
      f.write(proc.stdout)
    return workdir

  return built_once(tmp_path_factory, "tiny-reference", run)
