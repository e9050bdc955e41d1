"""Every config file builds and keeps the schema of base_config; the paper configs change only
how the run is laid out."""

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


# How a run is laid out on its hardware, and what it is evaluated on: never the algorithm.
LAYOUT = ("model.", "mesh.", "checkpoint.", "eval.", "offload_idle", "sampling.max_rows_per_call")
LAYOUT_IN_A_ROLE = (".learner.micro_batches", ".learner.logprob_chunk")


@pytest.mark.parametrize("name", NAMES[2:])
def test_paper_configs_run_the_default_algorithm_on_their_hardware(name):
  """A paper config is base_config (the settings docs/ALGORITHM.md documents) laid out on a pod
  slice: every setting the algorithm reads is the default, and the whole config validates."""
  from rzero_jax.rzero import config as config_lib

  c = importlib.import_module(f"configs.{name}").get_config()
  config_lib.validate(c)
  ours, default = flatten(c.to_dict()), flatten(base_config().to_dict())
  changed = {k for k in default if ours[k] != default[k]}
  layout = {k for k in changed if k.startswith(LAYOUT) or k.endswith(LAYOUT_IN_A_ROLE)}
  assert changed - layout == set()


def test_every_switch_takes_both_values_and_refuses_others():
  """Each paper-vs-official switch (docs/ALGORITHM.md) validates with either value and refuses
  any other in one line naming the field."""
  from rzero_jax.rzero import config as config_lib

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
