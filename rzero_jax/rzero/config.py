"""The R-Zero run config, one section per concern.

Defaults follow one rule (docs/ALGORITHM.md): where the paper states a formula, the paper's form;
where the paper is silent, the official code's behaviour. Every switch between the two is a field
here. Config files in configs/ start from `base_config()` and override what differs. Every value
the loop reads is declared here, so `lock_config` turns a typo in an override into an error.
"""
from __future__ import annotations

import ml_collections

from rzero_jax import grading
from rzero_jax.rl import grpo


def _learner(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      learning_rate=1e-6, b1=0.9, b2=0.999, weight_decay=0.01, grad_clip=1.0,
      clip_low=0.2, clip_high=0.3, dual_clip=3.0, kl_coef=0.01, kl_clamp=10.0,
      # "seq-mean-token-mean": the paper's mean over sequences; "micro-token-mean": the official
      # run's token mean per micro-batch of aggregation_rows sequences; or "token-mean"
      aggregation="seq-mean-token-mean", aggregation_rows=2, advantage_estimator="grpo",
      micro_batches=1, logprob_chunk=256))
  c.update(overrides)
  return c


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.iterations = 3
  # An HF directory (config.json + safetensors) or a GGUF file; --base_model overrides it.
  c.base_model = ""
  # "paper": the competition-math prompts (docs/ALGORITHM.md); or a world's name: its prompts.
  c.prompts = "paper"
  # "base_challenger": the baseline whose Solver phase uses questions of the untrained model.
  c.mode = "rzero"
  # Answer equivalence of votes and Solver rewards: "mathruler" (the official grader; the paper
  # names none) or "math_verify" (more lenient; the evaluation's grader).
  c.grader = "mathruler"
  # Move idle models (the frozen Solver, the KL reference) to host memory between uses.
  c.offload_idle = False

  # A registered synthetic world (worlds.names()) supplies its own cached base model,
  # evaluation and report-only annotations; "" means a real base model (--base_model).
  c.world = ml_collections.ConfigDict(dict(name="", cache_dir=""))

  c.model = ml_collections.ConfigDict(dict(dtype="float32", param_dtype="float32",
                                           remat="none"))

  c.challenger = ml_collections.ConfigDict(dict(
      steps=5,
      prompts_per_step=512,       # rollout prompts per step (all the same Challenger prompt)
      group_size=4,               # G rollouts per prompt
      prompts_per_update=16,      # prompts per optimizer update (the code's mini-batch)
      max_new_tokens=4096,
      temperature=1.0, top_p=0.99, top_k=0,
      solver_samples=10,          # m
      uncertainty_scale="paper",  # "paper": 1-2|p-1/2|; "code": min(p, 1-p)
      reward_form="paper",        # "paper": max(0, r_unc - r_rep), malformed 0; "code"
      repetition_threshold=0.5,
      learner=_learner()))

  c.dataset = ml_collections.ConfigDict(dict(
      num_questions=8000,
      temperature=1.0, top_p=0.95, top_k=0,
      solver_samples=10,
      band_delta=0.25,            # keep |p_hat - 1/2| <= delta (the paper's [0.25, 0.75])
      band_low=-1.0,              # set both band_low and band_high (e.g. 0.3, 0.8, the code's)
      band_high=-1.0,             # to use an explicit range instead of band_delta
      max_new_tokens=4096,        # the Challenger's budget per question (the official 4,096)
      max_solver_prompt_tokens=2048))  # drop a question whose Solver prompt is longer (official)

  c.solver = ml_collections.ConfigDict(dict(
      steps=15,
      prompts_per_step=512,
      group_size=5,
      prompts_per_update=128,
      max_new_tokens=4096,
      temperature=1.0, top_p=0.99, top_k=0,
      reward_form="paper",        # "paper": 1 iff the answer matches the label; "code": 0.9 x
                                  # that + 0.1 x <think>...</think>...\boxed{} format
      min_questions=512,          # refuse a smaller dataset (the official asserts one batch of 512)
      learner=_learner()))

  # How the frozen Solver answers questions (reward and pseudo-labels): the code's settings.
  c.sampling = ml_collections.ConfigDict(dict(
      answer_temperature=1.0, answer_top_p=1.0, answer_top_k=40,
      answer_max_new_tokens=4096,
      max_rows_per_call=4096))    # bounds the KV cache of one generate call

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.mesh.rules = ml_collections.ConfigDict()   # logical name -> mesh axes overrides

  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, async_save=True))

  c.eval = ml_collections.ConfigDict(dict(
      benchmarks="",              # comma-separated names for rzero_jax.evaluation; "" = none
      data_dir="",
      max_new_tokens=1024,
      limit=0,                    # per benchmark; 0 = all
      batch_size=64))
  return c


def paper_config(*, tensor: int, max_rows_per_call: int, micro_batches: int
                 ) -> ml_collections.ConfigDict:
  """The paper's run on a TPU pod slice: base_config plus bf16 compute over float32 master
  weights, rematerialised layers, FSDP, idle models in host memory, and the seven math
  benchmarks. The per-model files in configs/ pick the mesh and batch splitting."""
  c = base_config()
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"
  c.offload_idle = True
  c.mesh.update(data=1, fsdp=-1, tensor=tensor)
  c.sampling.max_rows_per_call = max_rows_per_call
  for role in (c.challenger, c.solver):
    role.learner.micro_batches = micro_batches
    role.learner.logprob_chunk = 512
  c.eval.benchmarks = "math500,gsm8k,amc23,minerva,olympiadbench,aime24,aime25"
  c.eval.max_new_tokens = 4096
  return c


def validate(config) -> None:
  """Refuses values that would otherwise fail deep inside a run, naming the field."""
  rows = config.sampling.max_rows_per_call
  if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
    raise ValueError(f"config.sampling.max_rows_per_call={rows!r}; expected a positive "
                     "integer (the most rows one generate call may decode)")
  validate_choices(config)


def validate_choices(config) -> None:
  """Refuses an unknown value of a paper-vs-official switch (docs/ALGORITHM.md), naming the field."""
  def check(name, value, allowed):
    if value not in allowed:
      raise ValueError(f"config.{name}={value!r}; expected one of {tuple(allowed)}")

  check("grader", config.grader, grading.GRADERS)
  check("solver.reward_form", config.solver.reward_form, grading.SOLVER_REWARD_FORMS)
  for role in ("challenger", "solver"):
    lc = config[role].learner
    check(f"{role}.learner.aggregation", lc.aggregation, grpo.AGGREGATIONS)
    rows = lc.aggregation_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
      raise ValueError(f"config.{role}.learner.aggregation_rows={rows!r}; expected a positive "
                       "integer (sequences per micro-batch of 'micro-token-mean')")
  for name in ("dataset.max_new_tokens", "dataset.max_solver_prompt_tokens",
               "solver.min_questions"):
    section, field = name.split(".")
    value = config[section][field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{name}={value!r}; expected a positive integer")
