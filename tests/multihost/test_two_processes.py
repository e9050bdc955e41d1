"""One R-Zero run across 2 processes (1 CPU device each, jax.distributed on 127.0.0.1) gives
the same datasets, questions, evaluations, metrics and final params, bit for bit, as one
process with 2 devices and the same mesh, after being killed and restarted. One process
killed alone ends the other, with a clear message, in bounded time.
"""

import os
import shutil
import subprocess
import time

import pytest

from rzero_jax import tokenizer as tokenizer_lib
from rzero_jax.evaluation import checkpoints as eval_checkpoints
from tests import tiny_run
from tests.multihost.conftest import assert_same_run, two_processes

pytestmark = pytest.mark.slow


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


def test_a_two_process_run_killed_one_process_at_a_time_finishes_as_one_process_does(
  tiny_reference, tiny_base, tiny_xla_cache, logs, tmp_path
):
  """One run, killed twice: the worker alone inside the Challenger phase, then, restarted, the
  coordinator alone mid-Solver. Each time the survivor stops by itself, with a clear message, in
  bounded time; restarted once more, the run finishes and matches the reference bit for bit.
  (Every phase is thus run by two processes; an uninterrupted run added only its minutes.)"""
  workdir = str(tmp_path / "run")
  group = two_processes(workdir, tiny_base, tiny_xla_cache, logs, "worker_killed", PEER_TIMEOUT)
  group.wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")))
  _kill_one_and_check_the_other_stops(group, victim=1)
  group = two_processes(
    workdir, tiny_base, tiny_xla_cache, logs, "coordinator_killed", PEER_TIMEOUT
  )
  group.wait_for(tiny_run.committed_step(workdir, "solver", 1))
  _kill_one_and_check_the_other_stops(group, victim=0)
  assert not os.path.exists(os.path.join(workdir, "eval", "iter_1.json"))
  group = two_processes(workdir, tiny_base, tiny_xla_cache, logs, "restarted", PEER_TIMEOUT)
  group.wait_ok()
  assert "process 1 of 2" in group.output(1) and "process 0 of 2" in group.output(0)
  assert "Report:" in group.output(0) and "Report:" not in group.output(1)
  assert_same_run(workdir, tiny_reference)
  leftovers = [f for _, _, files in os.walk(workdir) for f in files if ".tmp" in f]
  assert not leftovers
  moved = str(tmp_path / "moved")
  shutil.move(workdir, moved)
  resolved = eval_checkpoints.resolve_checkpoint(moved)
  assert resolved.tokenizer == os.path.join(moved, "model")
  assert tokenizer_lib.load_tokenizer(resolved.tokenizer).encode("1+1")
