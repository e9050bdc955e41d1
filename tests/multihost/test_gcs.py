"""A run whose workdir is on GCS (gs://), against a local GCS emulator on 127.0.0.1: it runs,
resumes after a kill, and leaves the same files and params as a local-disk run.

gcsfs (etils.epath's backend) reads STORAGE_EMULATOR_HOST; Orbax writes arrays through
TensorStore, whose GCS driver has its own endpoint setting, TENSORSTORE_GCS_HTTP_URL.
"""

import importlib.util
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests import tiny_run
from tests.multihost.conftest import REPO, assert_same_run, free_port, one_process

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    importlib.util.find_spec("gcp_storage_emulator") is None,
    reason="needs the GCS emulator: pip install gcp-storage-emulator (in the `test` extra)",
  ),
]
BUCKET = "rzero-test"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  port = free_port()
  data = tmp_path_factory.mktemp("gcs")
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "tests.multihost.gcs_emulator",
      "start",
      "--host=127.0.0.1",
      f"--port={port}",
      f"--default-bucket={BUCKET}",
    ],
    cwd=str(data),
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
  os.environ.update(env)  # for this process's own reads of the bucket
  try:
    yield env
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


def _object_exists(emulator_env, name):
  """Asks the emulator itself (gcsfs in this process caches listings, which could go stale)."""
  url = (
    f"{emulator_env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o/"
    f"{urllib.parse.quote(name, safe='')}"
  )

  def check():
    try:
      with urllib.request.urlopen(url, timeout=5) as r:
        return r.status == 200
    except OSError:
      return False

  return check


def test_gcs_workdir_runs_resumes_and_matches_local_disk(
  emulator, tiny_reference, tiny_base, tiny_xla_cache, logs
):
  workdir = f"gs://{BUCKET}/run"
  env = tiny_run.env(**emulator)
  group = one_process(workdir, tiny_base, tiny_xla_cache, logs, "gcs", env=env)
  # Killed once the first Solver step's checkpoint is committed in the bucket.
  group.wait_for(_object_exists(emulator, "run/checkpoints/solver/1/commit_success.txt"))
  group.kill()
  resumed = one_process(workdir, tiny_base, tiny_xla_cache, logs, "gcs_resumed", env=env)
  resumed.wait_ok()
  assert "resuming the solver phase" in resumed.output(0)
  assert f"Report: {workdir}/report.md" in resumed.output(0)
  assert not os.path.exists(os.path.join(REPO, "gs:")), "a local folder named gs: was made"
  assert_same_run(workdir, tiny_reference)
