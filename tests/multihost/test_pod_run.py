"""One R-Zero run as a pod runs it: 2 processes (1 CPU device each, jax.distributed on
127.0.0.1) with a gs:// workdir on a local GCS emulator. Killed one process at a time and
restarted, it resumes and leaves the same datasets, questions, evaluations, metrics and final
params, bit for bit, as one process with 2 devices, the same mesh and a local-disk workdir. One
process killed alone ends the other, with a clear message, in bounded time.
"""

import importlib.util
import os
import subprocess
import time

import pytest

from rzero_jax import fileio, tokenizer as tokenizer_lib
from rzero_jax.evaluation import checkpoints as eval_checkpoints
from tests.multihost.conftest import REPO, assert_same_run, two_processes

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    importlib.util.find_spec("gcp_storage_emulator") is None,
    reason="needs the GCS emulator: pip install gcp-storage-emulator (in the `test` extra)",
  ),
]

# The survivor of a killed worker notices by missed heartbeats; the default 60 s would be idle
# waiting here. 20 s stays far above any scheduling delay of a busy 2-core machine.
PEER_TIMEOUT = "--peer_timeout_s=20"
_CLEAR_MESSAGES = ("another process of the run died or stopped responding", "another task died")


def _kill_one_and_check_the_other_stops(group, victim):
  group.kill(which=[victim])
  survivor = 1 - victim
  start = time.time()
  try:
    code = group.procs[survivor].wait(timeout=150)
  except subprocess.TimeoutExpired:
    group.kill()
    raise AssertionError(f"the survivor hung:\n{group.output(survivor)[-3000:]}") from None
  elapsed = time.time() - start
  out = group.output(survivor)
  assert code != 0, out[-3000:]
  # The bound the issue asks for: the survivor must not hang (2 minutes).
  assert elapsed < 120, f"took {elapsed:.0f} s to stop:\n{out[-3000:]}"
  assert any(m in out for m in _CLEAR_MESSAGES), out[-3000:]


def test_a_two_process_gcs_run_killed_one_process_at_a_time_finishes_as_one_process_does(
  bucket, tiny_base, tiny_xla_cache, logs, request, tmp_path
):
  """One run, killed twice: the worker alone inside the Challenger phase, then, restarted, the
  coordinator alone once the first Solver step is committed in the bucket. Each time the
  survivor stops by itself, with a clear message, in bounded time; restarted once more, the run
  resumes the Solver phase, finishes, and matches the reference bit for bit. (Every phase is
  thus run by two processes; an uninterrupted run added only its minutes.)"""
  workdir = f"gs://{bucket.name}/run"
  args = (tiny_base, tiny_xla_cache, logs)
  group = two_processes(workdir, *args, "worker_killed", PEER_TIMEOUT)
  group.wait_for(bucket.has("run/metrics.jsonl"))
  _kill_one_and_check_the_other_stops(group, victim=1)
  group = two_processes(workdir, *args, "coordinator_killed", PEER_TIMEOUT)
  group.wait_for(bucket.has("run/checkpoints/solver/1/commit_success.txt"))
  _kill_one_and_check_the_other_stops(group, victim=0)
  assert not bucket.has("run/eval/iter_1.json")()
  group = two_processes(workdir, *args, "restarted", PEER_TIMEOUT)
  group.wait_ok()
  assert "resuming the solver phase" in group.output(0)
  assert "process 1 of 2" in group.output(1) and "process 0 of 2" in group.output(0)
  assert f"Report: {workdir}/report.md" in group.output(0) and "Report:" not in group.output(1)
  assert not os.path.exists(os.path.join(REPO, "gs:")), "a local folder named gs: was made"
  assert not [name for name in bucket.objects("run/") if ".tmp" in name]
  # Built by the other worker meanwhile: asked for only now, so as not to wait idle for it.
  assert_same_run(workdir, request.getfixturevalue("tiny_reference"))
  # Copied down from the bucket, the workdir is evaluated from its own copy of the tokenizer.
  local = str(tmp_path / "copied")
  fileio.copy_tree(workdir, local)
  resolved = eval_checkpoints.resolve_checkpoint(local)
  assert resolved.tokenizer == os.path.join(local, "model")
  assert tokenizer_lib.load_tokenizer(resolved.tokenizer).encode("1+1")
