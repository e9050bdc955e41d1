"""The co-evolution loop end to end through launch/train.py: artefacts, kill/resume, SIGTERM.

Every run here is the embedded default config (configs/arith_tiny.py, the same code path as
the README's main job) shrunk to tiny sizes, on a tiny base model built once per session.
"""
import json
import os
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
    "--config.challenger.steps=2", "--config.challenger.prompts_per_step=4",
    "--config.challenger.prompts_per_update=2", "--config.challenger.max_new_tokens=40",
    "--config.challenger.solver_samples=4",
    "--config.dataset.num_questions=64", "--config.dataset.solver_samples=4",
    "--config.dataset.band_low=0.0", "--config.dataset.band_high=1.0",
    "--config.solver.steps=2", "--config.solver.prompts_per_step=4",
    "--config.solver.prompts_per_update=4", "--config.solver.group_size=2",
    "--config.solver.min_questions=4",
    "--config.solver.max_new_tokens=40", "--config.sampling.answer_max_new_tokens=40",
    "--config.eval.limit=8", "--config.eval.max_new_tokens=40",
    "--config.challenger.learner.learning_rate=1e-4", "--config.solver.learner.learning_rate=1e-3",
]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
  from configs import arith_tiny
  from rzero_jax.worlds import base_model
  # The default's corpus (its authors' shares included) at a tiny size and budget.
  corpus = {k: v for k, v in arith_tiny.get_config().world.base.items()
            if k.endswith(("_fraction", "_fractions", "_style"))}
  return base_model.build_base_model(
      str(tmp_path_factory.mktemp("base")), num_docs=4000, steps=300, batch_size=16,
      hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
      head_dim=16, vocab_size=128, **corpus)


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("xla"))


def _command(workdir, base, cache):
  return [sys.executable, "-m", "launch.train", f"--workdir={workdir}", f"--base_model={base}",
          f"--compilation_cache_dir={cache}", *TINY]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _run(workdir, base, cache, timeout=900):
  proc = subprocess.run(_command(workdir, base, cache), cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _final_solver_params(workdir):
  with checkpoint.CheckpointManager(os.path.join(workdir, "checkpoints", "solver_final"),
                                    async_save=False) as mgr:
    restored = mgr.restore(1, {"params": None})
  return restored.items["params"]


@pytest.fixture(scope="session")
def reference_run(tiny_base, xla_cache, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  proc = _run(workdir, tiny_base, xla_cache)
  return workdir, proc


def test_end_to_end_artefacts(reference_run):
  workdir, proc = reference_run
  for role in ("challenger", "solver"):
    with checkpoint.CheckpointManager(os.path.join(workdir, "checkpoints", role),
                                      async_save=False) as mgr:
      meta = mgr.restore().metadata
    assert meta["iteration"] == 1 and meta["step"] == 2 and meta["role"] == role
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
  for key in ("reward_mean", "reward_std", "format_valid", "p_hat_hist", "repetition_penalty",
              "kl", "clip_frac", "tokens_per_s", "time_sampling", "time_grading",
              "time_training"):
    assert key in challenger_rec, key
  for t in (0, 1):
    result = json.load(open(os.path.join(workdir, "eval", f"iter_{t}.json")))
    assert 0.0 <= result["accuracy"] <= 1.0
  progress = json.load(open(os.path.join(workdir, "progress.json")))
  assert progress["iteration"] == 1 and progress["phase_done"] == "eval"
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
  truths = [(r["label"], r["meta"]["true_answer"]) for r in recs
            if r["meta"]["true_answer"] is not None]
  if truths:
    expected = np.mean([str(a).strip() == str(b) for a, b in truths])
    assert data["datasets"][1]["pseudo_label_accuracy"] == pytest.approx(expected)
  assert sorted(data["eval"]) == [0, 1]


def _wait_for(path_fn, proc, timeout=600):
  start = time.time()
  while time.time() - start < timeout:
    if path_fn():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc {proc.returncode}) before the kill point: "
                           f"{proc.stderr.read()[-3000:]}")
    time.sleep(0.2)
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
      ("after the dataset, before the Solver phase",
       lambda: os.path.exists(os.path.join(workdir, "datasets", "iter_1.jsonl"))),
      ("mid-Solver step", _committed_step(workdir, "solver", 1)),
  ]
  for _name, reached in kill_points:
    proc = subprocess.Popen(_command(workdir, tiny_base, xla_cache), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
      _wait_for(reached, proc)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
  _run(workdir, tiny_base, xla_cache)
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


def test_sigterm_saves_and_exits_cleanly(tiny_base, xla_cache, tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_command(workdir, tiny_base, xla_cache), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  # Once metrics exist the run is inside the Challenger phase: ask it to stop.
  _wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "SIGTERM" in err
  with checkpoint.CheckpointManager(os.path.join(workdir, "checkpoints", "challenger"),
                                    async_save=False) as mgr:
    restored = mgr.restore(target={"params": None})
  assert restored.metadata["iteration"] == 1 and restored.metadata["step"] >= 1


def test_report_titles_design_set_accuracy_apart_from_held_out():
  def data(prefix):
    evals = {t: {"accuracy": 0.5, f"{prefix}/2/accuracy": 0.25, f"{prefix}/10/accuracy": 0.75}
             for t in (0, 1)}
    return {"eval": evals, "datasets": {}}

  for prefix, title in (("arith", "Held-out Solver accuracy"),
                        ("arith_design", "training-distribution design sets")):
    table = report.summary_table(data(prefix))
    assert table.splitlines()[0] == "| model | overall | L2 | L10 |"
    assert "| iter 1 | 50.0 | 25.0 | 75.0 |" in table
    assert title in report.accuracy_title(data(prefix))
  assert "Held-out" not in report.accuracy_title(data("arith_design"))
