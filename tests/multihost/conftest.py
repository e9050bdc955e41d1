"""tests/multihost: R-Zero runs as a pod runs them, several processes with a gs:// workdir.

Every run is the shrunken default run of tests/tiny_run.py, launched through
`python -m launch.train` in subprocesses: 2 processes of 1 CPU device each, joined by
jax.distributed on 127.0.0.1 (gloo collectives), writing to a local GCS emulator. They must
match the first iteration of the session's reference run (tests/conftest.py: 1 process with 2
virtual CPU devices and the same (data=1, fsdp=2, tensor=1) mesh, on local disk) bit for bit.
Every wait is bounded; a test that times out kills what it started.

gcsfs (etils.epath's backend) reads STORAGE_EMULATOR_HOST; Orbax writes arrays through
TensorStore, whose GCS driver has its own endpoint setting, TENSORSTORE_GCS_HTTP_URL.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests import tiny_run

REPO = tiny_run.REPO
RUN_TIMEOUT_S = 1200  # one shrunken run on a busy 2-core machine takes 3-8 minutes
ITERATIONS = 1  # of each run here; the reference has more, and iteration t depends on nothing later


def free_port() -> int:
  with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


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
    tiny_run.command(
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
  return Group(cmds, env or tiny_run.env(devices=1), log_dir, name)


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


def run_files(workdir, iterations: int = ITERATIONS) -> dict:
  """Everything a run leaves up to `iterations` that must not depend on how it was spread over
  processes: the datasets and questions byte for byte; evaluations, dataset stats and metrics
  without timings; the workdir's copy of the model files."""
  from rzero_jax import fileio
  from rzero_jax.rzero import metrics

  out = {}
  for sub in ("datasets", "eval", "model"):
    folder = fileio.join(workdir, sub)
    for path in fileio.glob(folder, "*"):
      name = f"{sub}/{os.path.basename(path)}"
      iteration = re.match(r"iter_(\d+)\.", os.path.basename(path))
      if iteration and int(iteration.group(1)) > iterations:
        continue
      if path.endswith(".json"):
        out[name] = _untimed(json.loads(fileio.read_text(path)))
      else:
        out[name] = fileio.read_bytes(path)
  lines = fileio.read_text(fileio.join(workdir, "questions.jsonl")).splitlines()
  out["questions.jsonl"] = [l for l in lines if json.loads(l)["iteration"] <= iterations]
  out["metrics"] = [
    _untimed(r)
    for r in metrics.read_metrics(fileio.join(workdir, "metrics.jsonl"))
    if r["iteration"] <= iterations
  ]
  return out


def assert_same_run(ours, reference):
  """Bit-identical up to iteration ITERATIONS, the reference's later ones aside: files (timings
  aside) and final params of both roles."""
  a, b = run_files(ours), run_files(reference)
  assert sorted(a) == sorted(b)
  for name in b:
    assert a[name] == b[name], f"{name} differs from the reference run"
  tiny_run.assert_same_params(
    tiny_run.final_params(ours, ITERATIONS), tiny_run.final_params(reference, ITERATIONS)
  )


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
  return str(tmp_path_factory.mktemp("logs"))


class Bucket:
  """The emulator's bucket, asked directly (gcsfs in this process caches listings, which could
  go stale while the runs write)."""

  def __init__(self, url: str, name: str):
    self.url, self.name = url, name

  def has(self, obj: str):
    """A check that the object exists (a kill point)."""
    quoted = urllib.parse.quote(obj, safe="")

    def check():
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.name}/o/{quoted}", timeout=5):
          return True
      except OSError:
        return False

    return check

  def objects(self, prefix: str) -> list[str]:
    names, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, "pageToken": token})
      with urllib.request.urlopen(
        f"{self.url}/storage/v1/b/{self.name}/o?{query}", timeout=30
      ) as r:
        page = json.load(r)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return names


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """A local GCS emulator with one bucket; the environment that points a run at it is set in
  this process too, for its own reads of the bucket."""
  port = free_port()
  name = "rzero-test"
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "tests.multihost.gcs_emulator",
      "start",
      "--host=127.0.0.1",
      f"--port={port}",
      f"--default-bucket={name}",
    ],
    cwd=str(tmp_path_factory.mktemp("gcs")),
    env=dict(os.environ, PYTHONPATH=REPO),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2)
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail("the GCS emulator did not start within 60 s")
      time.sleep(0.3)
  env = {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    # gcsfs's zonal/HNS probe asks real GCS for the bucket type; the emulator has none.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "GOOGLE_CLOUD_PROJECT": "test",
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield Bucket(url, name)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    proc.terminate()
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
