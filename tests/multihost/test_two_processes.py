"""One R-Zero run across 2 processes (1 CPU device each, jax.distributed on 127.0.0.1) gives
the same datasets, questions, evaluations, metrics and final params, bit for bit, as one
process with 2 devices and the same mesh: uninterrupted, and after being killed and restarted.
One process killed alone ends the other, with a clear message, in bounded time.
"""

import os
import shutil
import subprocess
import time

import pytest

from rzero_jax import tokenizer as tokenizer_lib
from rzero_jax.evaluation import checkpoints as eval_checkpoints
from tests.multihost.conftest import assert_same_run, committed_step, two_processes

pytestmark = pytest.mark.slow


def test_two_processes_match_one_process_bit_for_bit(
  reference_run, tiny_base, xla_cache, logs, tmp_path
):
  workdir = str(tmp_path / "run")
  group = two_processes(workdir, tiny_base, xla_cache, logs, "two")
  group.wait_ok()
  assert "process 1 of 2" in group.output(1) and "process 0 of 2" in group.output(0)
  # Process 0 alone writes the report and prints the summary.
  assert "Report:" in group.output(0) and "Report:" not in group.output(1)
  assert_same_run(workdir, reference_run)
  leftovers = [f for _, _, files in os.walk(workdir) for f in files if ".tmp" in f]
  assert not leftovers
  # Self-contained: moved elsewhere, its checkpoints find their tokenizer in the workdir.
  moved = str(tmp_path / "moved")
  shutil.move(workdir, moved)
  resolved = eval_checkpoints.resolve_checkpoint(moved)
  assert resolved.tokenizer == os.path.join(moved, "model")
  assert tokenizer_lib.load_tokenizer(resolved.tokenizer).encode("1+1")


# The survivor notices in one of two ways: a collective whose peer is gone fails at once (the
# launcher prints its own line), or, while it is busy elsewhere (compiling, say), the
# coordination service misses the peer's heartbeats for --peer_timeout_s and jax ends the
# process with its own message.
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


def test_one_process_killed_alone_stops_the_other_and_the_restarted_run_matches(
  reference_run, tiny_base, xla_cache, logs, tmp_path
):
  """One run, killed twice: the worker alone inside the Challenger phase, then, restarted, the
  coordinator alone mid-Solver. Each time the survivor stops by itself, with a clear message, in
  bounded time; restarted once more, the run finishes and matches the reference bit for bit."""
  workdir = str(tmp_path / "run")
  group = two_processes(workdir, tiny_base, xla_cache, logs, "worker_killed")
  # Inside the Challenger phase, where collectives run all the time.
  group.wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")))
  _kill_one_and_check_the_other_stops(group, victim=1)
  group = two_processes(workdir, tiny_base, xla_cache, logs, "coordinator_killed")
  # Solver step 1 of iteration 1 is committed: the run is inside the Solver phase.
  group.wait_for(committed_step(workdir, "solver", 1))
  _kill_one_and_check_the_other_stops(group, victim=0)
  assert not os.path.exists(os.path.join(workdir, "eval", "iter_1.json"))
  two_processes(workdir, tiny_base, xla_cache, logs, "restarted").wait_ok()
  assert_same_run(workdir, reference_run)
