"""launch/train.py on bad input: one clear error line, no traceback, nonzero exit."""

import json
import os
import subprocess
import sys

import pytest

from rzero_jax.rzero import workdir as wd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "launch.train", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _assert_one_line_error(proc, *needles):
  assert proc.returncode != 0, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  for needle in needles:
    assert needle in proc.stderr, proc.stderr


def test_missing_base_model_is_refused(tmp_path):
  proc = _train(f"--workdir={tmp_path / 'run'}", "--config.world.name=")
  _assert_one_line_error(proc, "error: no base model", "--base_model")


def test_unsupported_architecture_is_refused(tmp_path):
  model = tmp_path / "gpt2"
  model.mkdir()
  (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
  proc = _train(f"--workdir={tmp_path / 'run'}", f"--base_model={model}")
  _assert_one_line_error(proc, "error:", "gpt2", "qwen3, qwen2, llama")


def test_changed_config_on_resume_is_refused(tmp_path):
  run = tmp_path / "run"
  wd.check_or_store_config(str(run), {"seed": 0, "solver": {"steps": 15}})
  before = (run / "config.json").read_text()
  with pytest.raises(wd.ConfigChangedError, match=r"solver\.steps: 15 -> 3"):
    wd.check_or_store_config(str(run), {"seed": 0, "solver": {"steps": 3}})
  assert (run / "config.json").read_text() == before
  wd.check_or_store_config(str(run), {"seed": 0, "solver": {"steps": 3}}, allow_change=True)
  assert json.loads((run / "config.json").read_text())["solver"]["steps"] == 3


def test_changed_config_via_the_launcher(tmp_path):
  from configs import arith_tiny

  run = tmp_path / "run"
  config = arith_tiny.get_config()
  wd.check_or_store_config(str(run), config.to_dict())
  steps = config.solver.steps + 1
  proc = _train(f"--workdir={run}", f"--config.solver.steps={steps}")
  _assert_one_line_error(
    proc, "error:", f"solver.steps: {config.solver.steps} -> {steps}", "--allow_config_change"
  )


def test_bad_base_model_spec_is_refused_before_writing(tmp_path):
  proc = _train(f"--workdir={tmp_path / 'run'}", "--config.world.base.guess_style=shrug")
  _assert_one_line_error(proc, "error: build_base_model: guess_style='shrug'", "give_up")
  assert not (tmp_path / "run").exists()
