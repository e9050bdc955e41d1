"""Every config file builds, keeps the schema of base_config, and holds the paper's values."""
import importlib

import pytest

from rzero_jax.rzero.config import base_config
from rzero_jax.rzero.workdir import flatten

NAMES = ["arith_tiny", "smollm2_135m", "qwen3_4b_base", "qwen3_8b_base", "octothinker_3b",
         "octothinker_8b"]


@pytest.mark.parametrize("name", NAMES)
def test_config_keeps_the_schema(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  extra = set(flatten(c.to_dict())) - set(flatten(base_config().to_dict()))
  # Only a world may add settings of its own (how its base model is built).
  assert all(k.startswith("world.base.") for k in extra), extra
  assert c.challenger.group_size * c.challenger.prompts_per_step % (
      c.challenger.group_size * c.challenger.prompts_per_update) == 0
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
