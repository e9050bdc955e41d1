"""tests/multihost: R-Zero runs that span processes, each started with devices of its own.

Every run is the shrunken default run of tests/test_rzero_run.py, launched through
`python -m launch.train` in subprocesses: either 2 processes of 1 CPU device each, joined by
jax.distributed on 127.0.0.1 (gloo collectives), or 1 process with 2 virtual CPU devices and the
same (data=1, fsdp=2, tensor=1) mesh, the reference the others must match bit for bit. Every
wait is bounded; a test that times out kills what it started.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import conftest
from tests.test_rzero_run import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TIMEOUT_S = 1200  # one shrunken run on a busy 2-core machine takes 3-8 minutes


def free_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(devices: int = 1, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = conftest.xla_flags(devices)
  env.update(extra)
  return env


def command(workdir, base, cache, *extra):
  return [
    sys.executable,
    "-m",
    "launch.train",
    f"--workdir={workdir}",
    f"--base_model={base}",
    f"--compilation_cache_dir={cache}",
    *TINY,
    *extra,
  ]


class Group:
  """Processes of one run, their output in files (a pipe nobody reads could block them)."""

  def __init__(self, commands, env, log_dir, name):
    os.makedirs(log_dir, exist_ok=True)
    self.logs = [os.path.join(log_dir, f"{name}_{i}.log") for i in range(len(commands))]
    self.procs = []
    for cmd, log in zip(commands, self.logs):
      with open(log, "ab") as f:
        self.procs.append(
          subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        )

  def output(self, i) -> str:
    with open(self.logs[i], errors="replace") as f:
      return f.read()

  def tails(self) -> str:
    return "\n".join(
      f"--- process {i} ---\n{self.output(i)[-3000:]}" for i in range(len(self.procs))
    )

  def wait(self, timeout=RUN_TIMEOUT_S) -> list[int]:
    deadline = time.time() + timeout
    try:
      return [p.wait(timeout=max(deadline - time.time(), 1)) for p in self.procs]
    except subprocess.TimeoutExpired:
      self.kill()
      raise AssertionError(f"run did not finish within {timeout} s:\n{self.tails()}") from None

  def wait_ok(self, timeout=RUN_TIMEOUT_S) -> None:
    codes = self.wait(timeout)
    assert codes == [0] * len(codes), f"exit codes {codes}:\n{self.tails()}"

  def wait_for(self, reached, timeout=RUN_TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
      if reached():
        return
      if any(p.poll() is not None for p in self.procs):
        self.kill()
        raise AssertionError(f"a process ended before the kill point:\n{self.tails()}")
      time.sleep(0.2)
    self.kill()
    raise AssertionError(f"kill point not reached within {timeout} s:\n{self.tails()}")

  def kill(self, which=None) -> None:
    for i, p in enumerate(self.procs):
      if (which is None or i in which) and p.poll() is None:
        p.send_signal(signal.SIGKILL)
        p.wait()


def two_processes(workdir, base, cache, log_dir, name, *extra, env=None):
  port = free_port()
  cmds = [
    command(
      workdir,
      base,
      cache,
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
      *extra,
    )
    for i in range(2)
  ]
  return Group(cmds, env or child_env(devices=1), log_dir, name)


def one_process(workdir, base, cache, log_dir, name, *extra, env=None):
  return Group([command(workdir, base, cache, *extra)], env or child_env(devices=2), log_dir, name)


def committed_step(workdir, role, step):
  def check():
    d = os.path.join(workdir, "checkpoints", role, str(step))
    return os.path.exists(os.path.join(d, "commit_success.txt"))

  return check


# ----------------------------------------------------------------------------- comparison


def _is_timing(key: str) -> bool:
  """How the run went rather than what it computed: timings, and the compile counter (a
  restarted process compiles again; each process counts its own programs)."""
  return (
    key.startswith(("time", "compiles/"))
    or key.endswith("_seconds")
    or key in ("tokens_per_s", "recompiles")
  )


def _untimed(obj):
  if isinstance(obj, dict):
    return {k: _untimed(v) for k, v in obj.items() if not _is_timing(k)}
  if isinstance(obj, list):
    return [_untimed(v) for v in obj]
  return obj


def run_files(workdir) -> dict:
  """Everything a run leaves that must not depend on how it was spread over processes: the
  datasets and questions byte for byte; evaluations, dataset stats and metrics without
  timings; the workdir's copy of the model files."""
  from rzero_jax import fileio
  from rzero_jax.rzero import metrics

  out = {}
  for sub in ("datasets", "eval", "model"):
    folder = fileio.join(workdir, sub)
    for path in fileio.glob(folder, "*"):
      name = f"{sub}/{os.path.basename(path)}"
      if path.endswith(".json"):
        out[name] = _untimed(json.loads(fileio.read_text(path)))
      else:
        out[name] = fileio.read_bytes(path)
  out["questions.jsonl"] = fileio.read_bytes(fileio.join(workdir, "questions.jsonl"))
  out["metrics"] = [
    _untimed(r) for r in metrics.read_metrics(fileio.join(workdir, "metrics.jsonl"))
  ]
  return out


def final_params(workdir) -> dict:
  """Both roles' params after iteration 1, read onto this process's one device (whatever
  mesh wrote them)."""
  import jax
  import orbax.checkpoint as ocp

  from rzero_jax import checkpoint, fileio

  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  out = {}
  for role in ("challenger", "solver"):
    folder = fileio.join(workdir, "checkpoints", f"{role}_final")
    saved = ocp.StandardCheckpointHandler().metadata(fileio.path(folder) / "1" / "params").tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    with checkpoint.CheckpointManager(folder, async_save=False, read_only=True) as mgr:
      params = mgr.restore(1, {"params": target}).items["params"]
    out.update(_flatten(params, f"{role}/"))
  return out


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def assert_same_run(ours, reference):
  """Bit-identical: files (timings aside) and final params of both roles."""
  a, b = run_files(ours), run_files(reference)
  assert sorted(a) == sorted(b)
  for name in b:
    assert a[name] == b[name], f"{name} differs from the reference run"
  pa, pb = final_params(ours), final_params(reference)
  assert pa.keys() == pb.keys()
  for key in pb:
    assert pa[key].dtype == pb[key].dtype and np.array_equal(pa[key], pb[key]), key


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
  # Shared by every run of the session, whichever worker starts it: the gs:// run compiles what
  # the reference (one process, 2 devices) did, and restarted runs compile nothing new.
  # RZERO_TEST_XLA_CACHE keeps it across sessions, e.g. while working on these tests.
  return os.environ.get("RZERO_TEST_XLA_CACHE") or conftest.built_once(
    tmp_path_factory, "multihost-xla-cache", lambda folder: folder
  )


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
  return str(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def reference_run(tiny_base, xla_cache, logs, tmp_path_factory):
  """One process, 2 virtual devices, the same mesh as the 2-process runs: their reference."""

  def run(folder):
    workdir = os.path.join(folder, "run")
    one_process(workdir, tiny_base, xla_cache, logs, "reference").wait_ok()
    return workdir

  return conftest.built_once(tmp_path_factory, "multihost-reference", run)
