"""The co-evolution loop end to end through launch/train.py: artefacts, kill/resume, SIGTERM.

Every run here is the embedded default config (configs/arith_tiny.py, the same code path as
the README's main job) shrunk to tiny sizes, on a tiny base model built once per session.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rzero_jax import checkpoint
from rzero_jax.rzero import dataset, metrics, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

TINY = [
  "--config.iterations=1",
  "--config.challenger.steps=2",
  "--config.challenger.prompts_per_step=4",
  "--config.challenger.prompts_per_update=2",
  "--config.challenger.max_new_tokens=40",
  "--config.challenger.solver_samples=4",
  "--config.dataset.num_questions=64",
  "--config.dataset.solver_samples=4",
  "--config.dataset.band_low=0.0",
  "--config.dataset.band_high=1.0",
  "--config.solver.steps=2",
  "--config.solver.prompts_per_step=4",
  "--config.solver.prompts_per_update=4",
  "--config.solver.group_size=2",
  "--config.solver.min_questions=4",
  "--config.solver.max_new_tokens=40",
  "--config.sampling.answer_max_new_tokens=40",
  "--config.eval.limit=32",
  "--config.eval.max_new_tokens=40",
  "--config.eval.batch_size=2",
  # Small generate calls, so that the dataset (4 chunks) and each evaluation (16 chunks) are
  # saved in several pieces, as at paper scale.
  "--config.sampling.max_rows_per_call=64",
  "--config.challenger.learner.learning_rate=1e-4",
  "--config.solver.learner.learning_rate=1e-3",
]


def build_tiny_base(folder: str) -> str:
  """The shrunken runs' base model: tests/conftest.py's `tiny_base`, built once per session."""
  from configs import arith_tiny
  from rzero_jax.worlds import base_model

  # The default's corpus (its authors' shares included) at a tiny size and budget.
  corpus = {
    k: v
    for k, v in arith_tiny.get_config().world.base.items()
    if k.endswith(("_fraction", "_fractions", "_style"))
  }
  return base_model.build_base_model(
    folder,
    num_docs=4000,
    steps=300,
    batch_size=16,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    vocab_size=128,
    **corpus,
  )


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("xla"))


def _command(workdir, base, cache, iterations=1):
  return [
    sys.executable,
    "-m",
    "launch.train",
    f"--workdir={workdir}",
    f"--base_model={base}",
    f"--compilation_cache_dir={cache}",
    *[a for a in TINY if not a.startswith("--config.iterations=")],
    f"--config.iterations={iterations}",
  ]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _run(workdir, base, cache, timeout=900, iterations=1):
  proc = subprocess.run(
    _command(workdir, base, cache, iterations),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _final_solver_params(workdir, iteration=1):
  with checkpoint.CheckpointManager(
    os.path.join(workdir, "checkpoints", "solver_final"), async_save=False
  ) as mgr:
    restored = mgr.restore(iteration, {"params": None})
  return restored.items["params"]


@pytest.fixture(scope="session")
def reference_run(tiny_base, xla_cache, tmp_path_factory):
  """Two iterations: the compile-once test needs a second one in the same process, and the
  one-iteration runs below compare with its first (iteration t depends on nothing later)."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  proc = _run(workdir, tiny_base, xla_cache, timeout=1800, iterations=2)
  return workdir, proc


def test_end_to_end_artefacts(reference_run):
  workdir, proc = reference_run
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
  assert "Report:" in proc.stdout and "| base |" in proc.stdout
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


def _committed_step(workdir, role, step):
  def check():
    d = os.path.join(workdir, "checkpoints", role, str(step))
    return os.path.isdir(d) and os.path.exists(os.path.join(d, "commit_success.txt"))

  return check


def test_kill_and_resume_is_bit_identical(reference_run, tiny_base, xla_cache, tmp_path):
  workdir = str(tmp_path / "run")
  kill_points = [
    ("mid-Challenger step", _committed_step(workdir, "challenger", 1)),
    (
      "after the dataset, before the Solver phase",
      lambda: os.path.exists(os.path.join(workdir, "datasets", "iter_1.jsonl")),
    ),
    ("mid-Solver step", _committed_step(workdir, "solver", 1)),
  ]
  for _name, reached in kill_points:
    proc = subprocess.Popen(
      _command(workdir, tiny_base, xla_cache),
      cwd=REPO,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    try:
      _wait_for(reached, proc)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  _run(workdir, tiny_base, xla_cache)
  # Replayed steps replace their lines (the report counted killed steps twice).
  questions = [json.loads(l) for l in open(os.path.join(workdir, "questions.jsonl"))]
  assert sorted(q["step"] for q in questions) == [1, 2]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(r["iteration"], r["phase"], r["step"]) for r in lines]
  assert len(keys) == len(set(keys))
  ours = _final_solver_params(workdir)
  ref = _final_solver_params(reference_run[0])
  flat_ours, flat_ref = _flatten(ours), _flatten(ref)
  assert flat_ours.keys() == flat_ref.keys()
  for key in flat_ref:
    assert np.array_equal(flat_ours[key], flat_ref[key]), key


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = np.asarray(v)
  return out


def _chunk_saved(directory):
  return lambda: (
    os.path.isdir(directory) and any(f.startswith("chunk_") for f in os.listdir(directory))
  )


def test_sigterm_in_every_phase_exits_within_seconds_and_resumes_bit_identically(
  reference_run, tiny_base, xla_cache, tmp_path
):
  """A preemption notice gives about 30 s: SIGTERM once inside each phase, then finish."""
  workdir = str(tmp_path / "run")
  kill_points = [
    ("Challenger", lambda: os.path.exists(os.path.join(workdir, "eval", "iter_0.json"))),
    ("dataset", _chunk_saved(os.path.join(workdir, "datasets", "iter_1.chunks"))),
    ("Solver", _committed_step(workdir, "solver", 1)),
    ("evaluation", _chunk_saved(os.path.join(workdir, "eval", "iter_1.chunks"))),
  ]
  exit_seconds = {}
  for name, reached in kill_points:
    proc = subprocess.Popen(
      _command(workdir, tiny_base, xla_cache),
      cwd=REPO,
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    try:
      # The tiny model evaluates 16 chunks in a few seconds: poll often enough to land inside.
      _wait_for(reached, proc, poll=0.01)
      sent = time.perf_counter()
      proc.send_signal(signal.SIGTERM)
      _, err = proc.communicate(timeout=120)
      exit_seconds[name] = time.perf_counter() - sent
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM" in err, err[-3000:]
    print(f"SIGTERM inside the {name} phase: exited after {exit_seconds[name]:.2f} s")
  print("SIGTERM-to-exit seconds per phase:", {k: round(v, 2) for k, v in exit_seconds.items()})
  assert not os.path.exists(os.path.join(workdir, "eval", "iter_1.json"))  # really cut
  # The bound (a TPU preemption notice gives about 30 s).
  assert all(v < 10.0 for v in exit_seconds.values()), exit_seconds
  _run(workdir, tiny_base, xla_cache)
  ref = reference_run[0]
  flat_ours, flat_ref = _flatten(_final_solver_params(workdir)), _flatten(_final_solver_params(ref))
  assert flat_ours.keys() == flat_ref.keys()
  for key in flat_ref:
    assert np.array_equal(flat_ours[key], flat_ref[key]), key
  data = "datasets/iter_1.jsonl"
  assert open(os.path.join(workdir, data)).read() == open(os.path.join(ref, data)).read()
  for t in (0, 1):
    ours = json.load(open(os.path.join(workdir, "eval", f"iter_{t}.json")))["results"]
    theirs = json.load(open(os.path.join(ref, "eval", f"iter_{t}.json")))["results"]
    assert _same_scores(ours, theirs)
  assert not os.path.isdir(os.path.join(workdir, "datasets", "iter_1.chunks"))
  assert not os.path.isdir(os.path.join(workdir, "eval", "iter_1.chunks"))


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
    _command(str(workdir), "/wrong/path", ""),
    cwd=REPO,
    env=_env(),
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


def test_a_finished_run_with_corrupt_files_recovers(reference_run, tiny_base, xla_cache, tmp_path):
  """Corrupt finals fall back to their phase's last step, an emptied dataset is rebuilt, and
  a deleted config.json still guards against a changed config."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run[0], workdir)
  for role in ("challenger", "solver"):
    _truncate_data(os.path.join(workdir, "checkpoints", f"{role}_final", "2", "params"))
  open(os.path.join(workdir, "datasets", "iter_2.jsonl"), "w").close()
  os.remove(os.path.join(workdir, "config.json"))
  changed = subprocess.run(
    _command(workdir, tiny_base, xla_cache, iterations=2) + ["--config.solver.steps=3"],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert changed.returncode != 0 and "Traceback" not in changed.stderr, changed.stderr[-3000:]
  assert "config.json is missing" in changed.stderr
  proc = _run(workdir, tiny_base, xla_cache, iterations=2)
  assert "falling back to the last step" in proc.stderr
  flat_ours = _flatten(_final_solver_params(workdir, 2))
  flat_ref = _flatten(_final_solver_params(reference_run[0], 2))
  for key in flat_ref:
    assert np.array_equal(flat_ours[key], flat_ref[key]), key
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
