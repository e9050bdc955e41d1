"""The co-evolution loop end to end through launch/train.py: artefacts, kill/resume, SIGTERM.

Every run here is the shrunken default run of tests/tiny_run.py, on the session's tiny base
model, compile cache and reference run (tests/conftest.py).
"""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from rzero_jax import checkpoint
from rzero_jax.rzero import dataset, metrics, report
from tests import conftest, tiny_run

pytestmark = pytest.mark.slow


def _run(workdir, base, cache, timeout=900, iterations=1):
  proc = subprocess.run(
    tiny_run.command(workdir, base, cache, iterations=iterations),
    cwd=tiny_run.REPO,
    env=tiny_run.env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


@pytest.fixture(scope="module")
def reference_run(tiny_reference):
  """tests/conftest.py's reference, two iterations: the compile-once test needs a second one in
  the same process, and the one-iteration runs below compare with its first (iteration t
  depends on nothing later)."""
  with open(os.path.join(os.path.dirname(tiny_reference), conftest.REFERENCE_OUTPUT)) as f:
    return tiny_reference, f.read()


def test_end_to_end_artefacts(reference_run):
  workdir, stdout = reference_run
  for role in ("challenger", "solver"):
    with checkpoint.CheckpointManager(
      os.path.join(workdir, "checkpoints", role), async_save=False
    ) as mgr:
      meta = mgr.restore().metadata
    assert meta["iteration"] == 2 and meta["step"] == 2 and meta["role"] == role
    assert meta["model_config"]["model_type"] == "qwen3"
  records = dataset.read_jsonl(os.path.join(workdir, "datasets", "iter_1.jsonl"))
  for r in records:
    assert set(r) >= {"question", "label", "p_hat", "answers", "meta"}
    assert len(r["answers"]) == 4
  recs = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  phases = [(r["phase"], r["step"]) for r in recs]
  assert phases[:2] == [("eval", 0), ("challenger", 1)]
  assert ("challenger", 2) in phases and ("dataset", 0) in phases
  challenger_rec = next(r for r in recs if r["phase"] == "challenger")
  for key in (
    "reward_mean",
    "reward_std",
    "format_valid",
    "p_hat_hist",
    "repetition_penalty",
    "kl",
    "clip_frac",
    "tokens_per_s",
    "time_sampling",
    "time_grading",
    "time_training",
  ):
    assert key in challenger_rec, key
  for t in (0, 1, 2):
    result = json.load(open(os.path.join(workdir, "eval", f"iter_{t}.json")))
    assert 0.0 <= result["accuracy"] <= 1.0
  progress = json.load(open(os.path.join(workdir, "progress.json")))
  assert progress["iteration"] == 2 and progress["phase_done"] == "eval"
  text = open(os.path.join(workdir, "report.md")).read()
  for heading in ("Held-out Solver accuracy", "Challenger steps", "Datasets"):
    assert heading in text
  assert os.path.getsize(os.path.join(workdir, "progress.png")) > 1000
  assert "Report:" in stdout and "| base |" in stdout
  assert os.path.isdir(os.path.join(workdir, "tb"))
  leftovers = [f for _, _, files in os.walk(workdir) for f in files if f.startswith(".tmp")]
  assert not leftovers


def test_report_matches_the_workdir(reference_run):
  workdir, _ = reference_run
  data = report.collect(workdir)
  recs = dataset.read_jsonl(os.path.join(workdir, "datasets", "iter_1.jsonl"))
  assert data["datasets"][1]["kept"] == len(recs)
  truths = [
    (r["label"], r["meta"]["true_answer"]) for r in recs if r["meta"]["true_answer"] is not None
  ]
  if truths:
    expected = np.mean([str(a).strip() == str(b) for a, b in truths])
    assert data["datasets"][1]["pseudo_label_accuracy"] == pytest.approx(expected)
  assert sorted(data["eval"]) == [0, 1, 2]


def _wait_for(path_fn, proc, timeout=600, poll=0.2):
  start = time.time()
  while time.time() - start < timeout:
    if path_fn():
      return
    if proc.poll() is not None:
      raise AssertionError(
        f"run ended (rc {proc.returncode}) before the kill point: {proc.stderr.read()[-3000:]}"
      )
    time.sleep(poll)
  raise AssertionError("kill point never reached")


def _chunk_saved(directory):
  return lambda: (
    os.path.isdir(directory) and any(f.startswith("chunk_") for f in os.listdir(directory))
  )


def _exists(*parts):
  return lambda: os.path.exists(os.path.join(*parts))


def test_killed_or_preempted_in_every_phase_resumes_bit_identically(
  reference_run, tiny_base, tiny_xla_cache, tmp_path
):
  """One run, stopped five times on its way: SIGTERM (a preemption notice gives about 30 s)
  once inside each phase, which must exit 0 within seconds (the Challenger's once its first step
  is committed, so that the rerun resumes mid-phase), and SIGKILL between the dataset and the
  Solver phase. Restarted once more, it finishes as the uninterrupted run did, bit for bit, with
  no step counted twice. (SIGKILL between two steps: tests/multihost.)"""
  workdir = str(tmp_path / "run")
  stops = [
    ("Challenger", signal.SIGTERM, tiny_run.committed_step(workdir, "challenger", 1)),
    ("dataset", signal.SIGTERM, _chunk_saved(os.path.join(workdir, "datasets", "iter_1.chunks"))),
    ("after the dataset", signal.SIGKILL, _exists(workdir, "datasets", "iter_1.jsonl")),
    ("Solver", signal.SIGTERM, tiny_run.committed_step(workdir, "solver", 1)),
    ("evaluation", signal.SIGTERM, _chunk_saved(os.path.join(workdir, "eval", "iter_1.chunks"))),
  ]
  exit_seconds = {}
  for name, sig, reached in stops:
    proc = subprocess.Popen(
      tiny_run.command(workdir, tiny_base, tiny_xla_cache),
      cwd=tiny_run.REPO,
      env=tiny_run.env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    try:
      # The tiny model evaluates its chunks in a second or two: poll often enough to land inside.
      _wait_for(reached, proc, poll=0.01)
      sent = time.perf_counter()
      proc.send_signal(sig)
      _, err = proc.communicate(timeout=120)
      exit_seconds[name] = time.perf_counter() - sent
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    if sig == signal.SIGTERM:
      assert proc.returncode == 0, err[-3000:]
      assert "SIGTERM" in err, err[-3000:]
      print(f"SIGTERM inside the {name} phase: exited after {exit_seconds[name]:.2f} s")
  assert not os.path.exists(os.path.join(workdir, "eval", "iter_1.json"))  # really cut
  # The bound (a TPU preemption notice gives about 30 s).
  preempted = {name: exit_seconds[name] for name, sig, _ in stops if sig == signal.SIGTERM}
  assert all(v < 10.0 for v in preempted.values()), preempted
  _run(workdir, tiny_base, tiny_xla_cache)
  ref = reference_run[0]
  tiny_run.assert_same_params(
    tiny_run.final_params(workdir, 1, ["solver"]), tiny_run.final_params(ref, 1, ["solver"])
  )
  data = "datasets/iter_1.jsonl"
  assert open(os.path.join(workdir, data)).read() == open(os.path.join(ref, data)).read()
  for t in (0, 1):
    ours = json.load(open(os.path.join(workdir, "eval", f"iter_{t}.json")))["results"]
    theirs = json.load(open(os.path.join(ref, "eval", f"iter_{t}.json")))["results"]
    assert _same_scores(ours, theirs)
  assert not os.path.isdir(os.path.join(workdir, "datasets", "iter_1.chunks"))
  assert not os.path.isdir(os.path.join(workdir, "eval", "iter_1.chunks"))
  # Replayed steps replace their lines (the report counted killed steps twice).
  questions = [json.loads(l) for l in open(os.path.join(workdir, "questions.jsonl"))]
  assert sorted(q["step"] for q in questions) == [1, 2]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(r["iteration"], r["phase"], r["step"]) for r in lines]
  assert len(keys) == len(set(keys))


def _same_scores(a, b):
  """Every score and count of two evaluation results (their timings aside)."""
  strip = lambda r: {
    n: {k: v for k, v in e.items() if not k.endswith("_seconds")}
    for n, e in r["benchmarks"].items()
  }
  return strip(a) == strip(b)


def test_a_failed_start_leaves_nothing_that_refuses_the_corrected_rerun(tiny_base, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
    tiny_run.command(str(workdir), "/wrong/path", ""),
    cwd=tiny_run.REPO,
    env=tiny_run.env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "/wrong/path" in proc.stderr, proc.stderr[-2000:]
  assert not (workdir / "config.json").exists()
  from configs import arith_tiny
  from rzero_jax.rzero import loop

  s = loop.setup(arith_tiny.get_config(), str(workdir), base_model=tiny_base)
  for ck in s.ckpts.values():
    ck.close()
  assert (workdir / "config.json").exists()


def test_a_finished_run_with_corrupt_files_recovers(
  reference_run, tiny_base, tiny_xla_cache, tmp_path
):
  """Corrupt finals fall back to their phase's last step, an emptied dataset is rebuilt, and
  a deleted config.json still guards against a changed config."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run[0], workdir)
  for role in ("challenger", "solver"):
    _truncate_data(os.path.join(workdir, "checkpoints", f"{role}_final", "2", "params"))
  open(os.path.join(workdir, "datasets", "iter_2.jsonl"), "w").close()
  os.remove(os.path.join(workdir, "config.json"))
  changed = subprocess.run(
    tiny_run.command(workdir, tiny_base, tiny_xla_cache, "--config.solver.steps=3", iterations=2),
    cwd=tiny_run.REPO,
    env=tiny_run.env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert changed.returncode != 0 and "Traceback" not in changed.stderr, changed.stderr[-3000:]
  assert "config.json is missing" in changed.stderr
  proc = _run(workdir, tiny_base, tiny_xla_cache, iterations=2)
  assert "falling back to the last step" in proc.stderr
  tiny_run.assert_same_params(
    tiny_run.final_params(workdir, 2, ["solver"]),
    tiny_run.final_params(reference_run[0], 2, ["solver"]),
  )
  data = "datasets/iter_2.jsonl"
  assert (
    open(os.path.join(workdir, data)).read() == open(os.path.join(reference_run[0], data)).read()
  )


def _truncate_data(item_dir):
  data_dir = os.path.join(item_dir, "d")
  path = max((os.path.join(data_dir, f) for f in os.listdir(data_dir)), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(10)


def test_every_step_function_compiles_once_per_shape_across_iterations(reference_run):
  """Two iterations of the shrunken default in one process: every phase of both reuses the
  run's jitted train step, logprob function and sampler, so no (function, input signature) is
  ever compiled twice. Before the functions were cached, each phase built a new train step and
  logprob function, and iteration 2 compiled them again for shapes iteration 1 had seen."""
  workdir, _ = reference_run
  recs = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  steps = [r for r in recs if r["phase"] in ("challenger", "solver")]
  assert {r["iteration"] for r in steps} == {1, 2}
  last = steps[-1]
  for name in ("learner_train_step", "learner_logprobs", "prefill", "decode"):
    # At least one program each; as many programs as distinct input signatures.
    assert last[f"compiles/{name}"] >= 1, (name, last)
    assert last[f"compiles/{name}"] == last[f"compiles/{name}/signatures"], (name, last)
  assert last["recompiles"] == 0, last
  # The counter only grows, and every record carries it.
  counts = [r["compiles/total"] for r in recs if "compiles/total" in r]
  assert len(counts) >= len(steps) and counts == sorted(counts)


def test_report_titles_design_set_accuracy_apart_from_held_out():
  def data(prefix):
    evals = {
      t: {"accuracy": 0.5, f"{prefix}/2/accuracy": 0.25, f"{prefix}/10/accuracy": 0.75}
      for t in (0, 1)
    }
    return {"eval": evals, "datasets": {}}

  for prefix, title in (
    ("arith", "Held-out Solver accuracy"),
    ("arith_design", "training-distribution design sets"),
  ):
    table = report.summary_table(data(prefix))
    assert table.splitlines()[0] == "| model | overall | L2 | L10 |"
    assert "| iter 1 | 50.0 | 25.0 | 75.0 |" in table
    assert title in report.accuracy_title(data(prefix))
  assert "Held-out" not in report.accuracy_title(data("arith_design"))
