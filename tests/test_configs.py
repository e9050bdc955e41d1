"""Every config file builds, keeps the schema of base_config, and holds the paper's values."""

import importlib

import pytest

from rzero_jax.rzero.config import base_config
from rzero_jax.rzero.workdir import flatten

NAMES = [
  "arith_tiny",
  "smollm2_135m",
  "qwen3_4b_base",
  "qwen3_8b_base",
  "octothinker_3b",
  "octothinker_8b",
]


@pytest.mark.parametrize("name", NAMES)
def test_config_keeps_the_schema(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  extra = set(flatten(c.to_dict())) - set(flatten(base_config().to_dict()))
  # Only a world may add settings of its own (how its base model is built).
  assert all(k.startswith("world.base.") for k in extra), extra
  assert (
    c.challenger.group_size
    * c.challenger.prompts_per_step
    % (c.challenger.group_size * c.challenger.prompts_per_update)
    == 0
  )
  assert c.solver.prompts_per_step % c.solver.prompts_per_update == 0


@pytest.mark.parametrize("name", NAMES[2:])
def test_paper_configs_hold_the_reference_hyperparameters(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  assert (c.challenger.group_size, c.challenger.steps, c.challenger.solver_samples) == (4, 5, 10)
  assert (c.solver.group_size, c.solver.steps) == (5, 15)
  assert c.dataset.num_questions == 8000 and c.dataset.band_delta == 0.25
  for role in (c.challenger, c.solver):
    lr = role.learner
    assert (lr.learning_rate, lr.weight_decay, lr.grad_clip, lr.kl_coef) == (1e-6, 0.01, 1.0, 0.01)
    assert (lr.clip_low, lr.clip_high, lr.dual_clip) == (0.2, 0.3, 3.0)
  assert c.model.dtype == "bfloat16" and c.model.param_dtype == "float32"


def test_switch_defaults_follow_the_rule_and_both_values_validate():
  """Paper form where the paper states a formula, the official code where it is silent
  (docs/ALGORITHM.md); every switch takes both values and refuses others in one line."""
  from rzero_jax.rzero import config as config_lib

  c = base_config()
  assert c.grader == "mathruler"  # paper silent: official
  assert c.solver.reward_form == "paper"  # paper: binary agreement
  assert c.challenger.learner.aggregation == "seq-mean-token-mean"  # paper: mean over sequences
  assert (c.dataset.max_new_tokens, c.dataset.max_solver_prompt_tokens) == (4096, 2048)
  assert c.solver.min_questions == 512
  switches = {
    "grader": ("mathruler", "math_verify"),
    "solver.reward_form": ("paper", "code"),
    "challenger.learner.aggregation": ("seq-mean-token-mean", "micro-token-mean"),
    "solver.learner.aggregation": ("seq-mean-token-mean", "micro-token-mean"),
  }
  for field, values in switches.items():
    for value in values + ("bogus",):
      c = base_config()
      *path, last = field.split(".")
      section = c
      for name in path:
        section = section[name]
      section[last] = value
      if value == "bogus":
        with pytest.raises(ValueError, match=rf"config\.{field}='bogus'; expected one of"):
          config_lib.validate(c)
      else:
        config_lib.validate(c)
  c = base_config()
  c.dataset.max_new_tokens = 0
  with pytest.raises(ValueError, match="config.dataset.max_new_tokens=0"):
    config_lib.validate(c)


@pytest.mark.parametrize("name", NAMES[2:])
def test_paper_configs_give_the_dataset_phase_the_official_budget(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  assert c.dataset.max_new_tokens == 4096 == c.challenger.max_new_tokens
  assert c.dataset.max_solver_prompt_tokens == 2048
