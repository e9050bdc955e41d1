"""Faults end in a recovery or one clear line (issue 29): config validation, final-checkpoint
fallbacks, dataset integrity, idempotent side files and the smaller error lines. The end-to-end
parts (SIGTERM in every phase, corrupt files of a finished run) are in test_rzero_run.py."""

import json
import os
import signal
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from configs import arith_tiny
from rzero_jax import checkpoint
from rzero_jax.rzero import config as config_lib, dataset, loop, metrics, workdir as wd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------ 2: config validation

BAD_VALUES = [
  ("challenger.group_size", 0),
  ("solver.group_size", 1),
  ("dataset.num_questions", 0),
  ("iterations", -1),
  ("challenger.steps", -1),
  ("solver.steps", 0),
  ("challenger.prompts_per_step", 0),
  ("solver.prompts_per_update", 3),
  ("challenger.max_new_tokens", 0),
  ("sampling.answer_max_new_tokens", -5),
  ("dataset.max_new_tokens", 0),
  ("eval.batch_size", 0),
  ("eval.limit", -1),
  ("challenger.temperature", 0.0),
  ("dataset.top_p", 1.5),
  ("sampling.answer_top_k", -1),
  ("dataset.band_delta", 0.7),
  ("challenger.repetition_threshold", 2.0),
  ("solver.learner.learning_rate", -1e-6),
  ("challenger.learner.kl_coef", -0.1),
  ("solver.learner.aggregation", "mean"),
  ("challenger.learner.advantage_estimator", "ppo"),
  ("model.dtype", "f32"),
  ("model.remat", "some"),
  ("prompts", "chat"),
  ("mode", "zero"),
  ("challenger.uncertainty_scale", "log"),
  ("challenger.reward_form", "x"),
  ("checkpoint.max_to_keep", 0),
  ("mesh.tensor", 0),
  ("sampling.max_rows_per_call", 0),
]


def _with(path, value):
  c = arith_tiny.get_config()
  node = c
  *parents, leaf = path.split(".")
  for p in parents:
    node = node[p]
  with c.unlocked():
    node[leaf] = value
  return c


def test_the_shipped_configs_pass():
  from configs import octothinker_8b, qwen3_4b_base, smollm2_135m

  for module in (arith_tiny, qwen3_4b_base, octothinker_8b, smollm2_135m):
    config_lib.validate(module.get_config())


@pytest.mark.parametrize("path, value", BAD_VALUES)
def test_every_bad_value_is_refused_naming_its_field(path, value):
  with pytest.raises(ValueError, match=f"config.{path}"):
    config_lib.validate(_with(path, value))


def test_an_inverted_or_half_set_band_is_refused():
  for lo, hi in ((0.9, 0.2), (-1.0, 0.5), (0.2, 1.5)):
    c = _with("dataset.band_low", lo)
    c.dataset.band_high = hi
    with pytest.raises(ValueError, match="band_low"):
      config_lib.validate(c)


def test_remat_choices_match_the_model_code():
  from rzero_jax.models import transformer

  assert set(config_lib.REMAT_CHOICES) == {"none", *transformer._REMAT_POLICIES}


# Every value's check is tested above; here, that the launcher runs them first: one field, and
# two that are wrong only together.
@pytest.mark.parametrize(
  "override",
  [
    ["--config.sampling.max_rows_per_call=0"],
    ["--config.dataset.band_low=0.9", "--config.dataset.band_high=0.2"],
  ],
)
def test_the_launcher_refuses_bad_values_before_the_model_code_loads(tmp_path, override):
  # The model code is made unimportable: a launcher that reached it before refusing the value
  # (seconds of jax/flax imports and more) would die with an ImportError traceback instead.
  argv = ["launch.train", f"--workdir={tmp_path / 'run'}", *override]
  code = (
    "import runpy, sys; sys.modules['rzero_jax.models'] = None; "
    f"sys.argv = {argv!r}; runpy.run_module('launch.train', run_name='__main__')"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: config."), proc.stderr
  assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- 4, 5: final checkpoints


def _setup(tmp_path):
  """The parts of loop.Setup that the final-checkpoint fallback reads, over a tiny pytree."""
  params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}
  ckpts = {
    "solver": loop.RoleCheckpoints(
      steps=checkpoint.CheckpointManager(tmp_path / "solver", max_to_keep=2, async_save=False),
      finals=checkpoint.CheckpointManager(
        tmp_path / "solver_final", max_to_keep=None, async_save=False
      ),
    )
  }
  env = types.SimpleNamespace(cfg=types.SimpleNamespace(to_hf_dict=lambda: {}))
  return types.SimpleNamespace(
    ckpts=ckpts,
    abstract_params=checkpoint.abstract_like(params),
    env=env,
    tok_path="tok",
    config_hash="h",
  ), params


def _save_phase(s, iteration, steps, params):
  ck = s.ckpts["solver"]
  for k in range(1, steps + 1):
    ck.steps.save(
      (iteration - 1) * steps + k, {"params": params}, metadata={"iteration": iteration, "step": k}
    )
  ck.finals.save(iteration, {"params": params}, metadata={"iteration": iteration})


def _truncate_item(step_dir):
  data_dir = os.path.join(step_dir, "params", "d")
  path = max((os.path.join(data_dir, f) for f in os.listdir(data_dir)), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(10)


def test_a_corrupt_final_falls_back_to_the_last_step_of_its_phase(tmp_path):
  s, params = _setup(tmp_path)
  _save_phase(s, 1, 2, params)
  _truncate_item(str(tmp_path / "solver_final" / "1"))
  got = loop._restore_final(s, "solver", 1, 2, may_rerun=True)
  np.testing.assert_array_equal(got["w"], params["w"])
  # The final was written again from the step, so the next read needs no fallback.
  again = s.ckpts["solver"].finals.restore(1, {"params": s.abstract_params})
  np.testing.assert_array_equal(again.items["params"]["w"], params["w"])


def test_a_corrupt_final_without_its_steps_reruns_the_phase_or_says_what_to_delete(tmp_path):
  s, params = _setup(tmp_path)
  _save_phase(s, 1, 2, params)
  _save_phase(s, 2, 2, params)  # keep-2: iteration 1's steps are gone
  _truncate_item(str(tmp_path / "solver_final" / "1"))
  with pytest.raises(loop.CheckpointsLost, match=r"solver_final/1 is corrupt .* delete "):
    loop._restore_final(s, "solver", 1, 2, may_rerun=False)
  _truncate_item(str(tmp_path / "solver_final" / "2"))
  for step in s.ckpts["solver"].steps.all_steps():
    _truncate_item(str(tmp_path / "solver" / str(step)))
  # The newest final: set aside, and the phase reruns.
  assert loop._restore_final(s, "solver", 2, 2, may_rerun=True) is None
  assert s.ckpts["solver"].finals.all_steps() == [1]


def test_experiment_errors_are_user_errors():
  from rzero_jax.rzero import experiment

  assert issubclass(loop.CheckpointsLost, experiment.DAMAGED_WORKDIR_ERRORS)
  assert issubclass(dataset.CorruptDatasetError, experiment.DAMAGED_WORKDIR_ERRORS)


# ------------------------------------------------------------------------ 5: dataset integrity

RECORDS = [
  {"question": f"q{i}", "label": str(i), "p_hat": 0.5, "answers": [str(i)] * 2} for i in range(3)
]


def test_an_emptied_or_edited_dataset_is_caught_and_rebuilt(tmp_path):
  path = str(tmp_path / "iter_1.jsonl")
  dataset.write_jsonl_atomic(path, RECORDS)
  assert dataset.read_jsonl(path, require_header=True) == RECORDS
  text = open(path).read()
  open(path, "w").write(text.replace('"label": "1"', '"label": "7"'))
  with pytest.raises(dataset.CorruptDatasetError, match="cut or edited"):
    dataset.read_jsonl(path)
  open(path, "w").close()  # emptied
  with pytest.raises(dataset.CorruptDatasetError, match="no integrity line"):
    dataset.read_jsonl(path, require_header=True)
  assert loop._read_dataset(path) is None  # the loop rebuilds it
  assert not os.path.exists(path)
  assert any(".corrupt-" in f for f in os.listdir(tmp_path))


def test_an_empty_kept_set_is_recorded_as_empty(tmp_path):
  path = str(tmp_path / "iter_1.jsonl")
  dataset.write_jsonl_atomic(path, [])
  assert loop._read_dataset(path) == []


def test_chunks_left_by_a_kill_after_the_phase_file_was_written_are_removed_on_resume(tmp_path):
  # SIGKILL cannot be deferred: it may land between writing a phase's file and removing its
  # chunks. The rerun finds the file, reuses it and removes the leftovers.
  workdir = str(tmp_path)
  data, result = wd.dataset_path(workdir, 1), wd.eval_path(workdir, 1)
  os.makedirs(os.path.dirname(data))
  os.makedirs(os.path.dirname(result))
  dataset.write_jsonl_atomic(data, RECORDS)
  wd.atomic_write_json(result, {"results": {}})
  for leftover in (data.replace(".jsonl", ".chunks"), result.replace(".json", ".chunks")):
    os.makedirs(leftover)
    wd.atomic_write_json(os.path.join(leftover, "chunk_0.json"), {"done": True})
  s = types.SimpleNamespace(workdir=workdir, is_writer=True, evaluate=lambda *a: 1 / 0)
  with loop._SigtermFlag() as sigterm:
    assert loop._dataset_phase(s, 1, None, None, None, sigterm) == RECORDS
    assert loop._evaluate(s, 1, None, sigterm) == {"results": {}}
  assert sorted(os.listdir(os.path.dirname(data))) == ["iter_1.jsonl"]
  assert sorted(os.listdir(os.path.dirname(result))) == ["iter_1.json"]


# ------------------------------------------------------------------- 6: idempotent side files


def test_a_replayed_step_replaces_its_lines(tmp_path):
  loop._log_questions(str(tmp_path), 1, 1, ["a", "b"])
  loop._log_questions(str(tmp_path), 1, 2, ["c"])
  loop._log_questions(str(tmp_path), 1, 1, ["a", "b"])  # step 1 replayed after a kill
  lines = [json.loads(l) for l in open(tmp_path / "questions.jsonl")]
  assert [(r["step"], r["questions"]) for r in lines] == [(2, ["c"]), (1, ["a", "b"])]
  writer = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  for step in (1, 2, 1):
    writer.write({"iteration": 1, "phase": "solver", "step": step, "loss": float(step)})
  assert len(open(tmp_path / "metrics.jsonl").readlines()) == 2


# ------------------------------------------------------------- 5: config guard via checkpoints


def test_the_config_guard_survives_a_deleted_config_json(tmp_path):
  run = tmp_path / "run"
  ck = checkpoint.CheckpointManager(run / "checkpoints" / "solver", async_save=False)
  ck.save(1, {"params": {"w": jnp.ones(2)}}, metadata={"config_hash": wd.config_hash({"a": 1})})
  ck.close()
  assert loop._stored_config_hash(str(run))[1] == wd.config_hash({"a": 1})
  assert wd.config_hash({"a": 1}) != wd.config_hash({"a": 2})


# ---------------------------------------------------------------------------------- 8: smaller


def _train(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.train", *args],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_an_unknown_override_is_blamed_on_itself_in_plain_text(tmp_path):
  proc = _train(f"--workdir={tmp_path}", "--config.challenger.steps=2", "--config.steps=3")
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  assert "in --config.steps=3:" in proc.stderr, proc.stderr
  assert not os.listdir(tmp_path)
  proc = _train(f"--workdir={tmp_path}", "--config.solver.step=3")
  assert "in --config.solver.step=3:" in proc.stderr and "\\'" not in proc.stderr
  assert "\\n" not in proc.stderr, proc.stderr


def test_evaluate_refuses_an_existing_output_file_before_any_work(tmp_path):
  out = tmp_path / "out.txt"
  out.write_text("x")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.evaluate",
      "--checkpoint=/nowhere",
      "--benchmarks=arith",
      f"--output={out}",
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  assert f"--output={out} is an existing file" in proc.stderr


def test_a_non_utf8_benchmark_file_is_named(tmp_path):
  from rzero_jax.evaluation import loaders

  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"problem": "caf\xe9", "answer": "1"}\n')
  with pytest.raises(ValueError, match="bad.jsonl: not UTF-8"):
    list(loaders.read_records(str(path)))


def test_a_sigterm_turned_into_another_error_by_the_code_it_interrupted_is_a_preemption():
  """The handler raises Preempted wherever the main thread is. Code that handles it by raising
  something else (jax's tree_map raised UnboundLocalError, in CI) must not turn a SIGTERM into a
  crash with exit code 1; a real error without a SIGTERM passes through untouched."""
  with pytest.raises(loop.Preempted) as info:
    with loop._SigtermFlag() as flag:
      try:
        flag._handle(signal.SIGTERM, None)  # what the signal does, without the watchdog
      except loop.Preempted:
        raise UnboundLocalError("cannot access local variable 'r2'") from None
  assert isinstance(info.value.__cause__, UnboundLocalError)
  with pytest.raises(KeyError):
    with loop._SigtermFlag():
      raise KeyError("a real bug")
