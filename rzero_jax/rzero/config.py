"""The R-Zero run config, one section per concern.

Defaults follow one rule (docs/ALGORITHM.md): where the paper states a formula, the paper's form;
where the paper is silent, the official code's behaviour. Every switch between the two is a field
here. Config files in configs/ start from `base_config()` and override what differs. Every value
the loop reads is declared here, so `lock_config` turns a typo in an override into an error.
"""

from __future__ import annotations

import math

import ml_collections

from rzero_jax import grading, worlds
from rzero_jax.rl import grpo


def _learner(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-6,
      b1=0.9,
      b2=0.999,
      weight_decay=0.01,
      grad_clip=1.0,
      clip_low=0.2,
      clip_high=0.3,
      dual_clip=3.0,
      kl_coef=0.01,
      kl_clamp=10.0,
      # "seq-mean-token-mean": the paper's mean over sequences; "micro-token-mean": the official
      # run's token mean per micro-batch of aggregation_rows sequences; or "token-mean"
      aggregation="seq-mean-token-mean",
      aggregation_rows=2,
      advantage_estimator="grpo",
      micro_batches=1,
      logprob_chunk=256,
    )
  )
  c.update(overrides)
  return c


# The settings of every sampler: each role's rollouts, the dataset's questions, and the frozen
# Solver's answers (named "answer_" + field in c.sampling). phases passes them on by these names.
SAMPLER_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k")


def _sampler(
  prefix: str = "",
  *,
  top_p: float,
  top_k: int = 0,
  temperature: float = 1.0,
  max_new_tokens: int = 4096,
) -> dict:
  """One sampler's settings, each named prefix + field: unless given, the official budget of
  4,096 new tokens at temperature 1."""
  values = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
  return {prefix + k: v for k, v in values.items()}


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

  c.model = ml_collections.ConfigDict(dict(dtype="float32", param_dtype="float32", remat="none"))

  c.challenger = ml_collections.ConfigDict(
    dict(
      steps=5,
      prompts_per_step=512,  # rollout prompts per step (all the same Challenger prompt)
      group_size=4,  # G rollouts per prompt
      prompts_per_update=16,  # prompts per optimizer update (the code's mini-batch)
      **_sampler(top_p=0.99),
      solver_samples=10,  # m
      uncertainty_scale="paper",  # "paper": 1-2|p-1/2|; "code": min(p, 1-p)
      reward_form="paper",  # "paper": max(0, r_unc - r_rep), malformed 0; "code"
      repetition_threshold=0.5,
      learner=_learner(),
    )
  )

  c.dataset = ml_collections.ConfigDict(
    dict(
      num_questions=8000,
      # max_new_tokens is the Challenger's budget per question (the official 4,096)
      **_sampler(top_p=0.95),
      solver_samples=10,
      band_delta=0.25,  # keep |p_hat - 1/2| <= delta (the paper's [0.25, 0.75])
      band_low=-1.0,  # set both band_low and band_high (e.g. 0.3, 0.8, the code's)
      band_high=-1.0,  # to use an explicit range instead of band_delta
      max_solver_prompt_tokens=2048,  # drop a question whose Solver prompt is longer (official)
    )
  )

  c.solver = ml_collections.ConfigDict(
    dict(
      steps=15,
      prompts_per_step=512,
      group_size=5,
      prompts_per_update=128,
      **_sampler(top_p=0.99),
      reward_form="paper",  # "paper": 1 iff the answer matches the label; "code": 0.9 x
      # that + 0.1 x <think>...</think>...\boxed{} format
      min_questions=512,  # refuse a smaller dataset (the official asserts one batch of 512)
      learner=_learner(),
    )
  )

  # How the frozen Solver answers questions (reward and pseudo-labels): the code's settings.
  c.sampling = ml_collections.ConfigDict(
    dict(
      **_sampler("answer_", top_p=1.0, top_k=40),
      max_rows_per_call=4096,  # bounds the KV cache of one generate call
    )
  )

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.mesh.rules = ml_collections.ConfigDict()  # logical name -> mesh axes overrides

  c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2, async_save=True))

  c.eval = ml_collections.ConfigDict(
    dict(
      benchmarks="",  # comma-separated names for rzero_jax.evaluation; "" = none
      data_dir="",
      max_new_tokens=1024,
      limit=0,  # per benchmark; 0 = all
      batch_size=64,
    )
  )
  return c


def paper_config(
  *,
  tensor: int,
  max_rows_per_call: int,
  micro_batches: int,
  solver_micro_batches: int | None = None,
) -> ml_collections.ConfigDict:
  """The paper's run on a TPU pod slice: base_config plus bf16 compute over float32 master
  weights, rematerialised layers, FSDP and the seven math benchmarks.

  The per-model files in configs/ pick the mesh, rows per generate call and micro-batches
  from benchmarks/memory_plan.py's table (benchmarks/RESULTS.md). A micro-batch must split
  evenly over the batch shards: the Challenger's mini-batch is 64 rows (16 prompts x G=4), the
  Solver's 640 (128 x 5), hence a micro-batch count per role. The KL reference and the frozen
  other role are bf16 copies on the devices (`loop.frozen_copy`); offload_idle=True keeps the
  reference in host memory instead.
  """
  c = base_config()
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"
  c.offload_idle = False
  c.mesh.update(data=1, fsdp=-1, tensor=tensor)
  c.sampling.max_rows_per_call = max_rows_per_call
  for role, k in ((c.challenger, micro_batches), (c.solver, solver_micro_batches or micro_batches)):
    role.learner.micro_batches = k
    role.learner.logprob_chunk = 512
  c.eval.benchmarks = "math500,gsm8k,amc23,minerva,olympiadbench,aime24,aime25"
  c.eval.max_new_tokens = 4096
  return c


# ----------------------------------------------------------------------------- validation
# Every value a run reads is checked here, before anything touches the disk: a bad value found
# after a Challenger phase costs that phase, and one found in sampling.py costs a traceback.


# models.transformer's policies (a test keeps the two equal); named here so that a bad value is
# refused without importing flax, which takes seconds.
REMAT_CHOICES = ("none", "full", "dots")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(low):
  return (lambda v: _is_int(v) and v >= low), (f"an integer >= {low}")


def _number_in(low, high, *, low_open=False, high_open=False):
  def ok(v):
    if not _is_number(v):
      return False
    return ((v > low) if low_open else (v >= low)) and ((v < high) if high_open else (v <= high))

  left, right = "(" if low_open else "[", ")" if high_open else "]"
  hi = "inf" if high == math.inf else f"{high:g}"
  return ok, f"a number in {left}{low:g}, {hi}{right}"


def _one_of(*choices):
  return (lambda v: v in choices), f"one of {', '.join(repr(c) for c in choices)}"


_BOOL = ((lambda v: isinstance(v, bool)), "true or false")
_POSITIVE = _int_at_least(1)
_COUNT = _int_at_least(0)
_TOP_P = _number_in(0.0, 1.0, low_open=True)
_PROB = _number_in(0.0, 1.0)
_NONNEG = _number_in(0.0, math.inf)
_POSITIVE_NUMBER = _number_in(0.0, math.inf, low_open=True)


def _learner_rules(prefix: str) -> dict:
  return {
    f"{prefix}.learning_rate": _POSITIVE_NUMBER,
    f"{prefix}.b1": _number_in(0.0, 1.0, high_open=True),
    f"{prefix}.b2": _number_in(0.0, 1.0, high_open=True),
    f"{prefix}.weight_decay": _NONNEG,
    f"{prefix}.grad_clip": _NONNEG,
    f"{prefix}.clip_low": _NONNEG,
    f"{prefix}.clip_high": _NONNEG,
    f"{prefix}.dual_clip": _NONNEG,
    f"{prefix}.kl_coef": _NONNEG,
    f"{prefix}.kl_clamp": _POSITIVE_NUMBER,
    f"{prefix}.aggregation": _one_of(*grpo.AGGREGATIONS),
    f"{prefix}.advantage_estimator": _one_of(*grpo.ADVANTAGE_ESTIMATORS),
    f"{prefix}.micro_batches": _POSITIVE,
    f"{prefix}.logprob_chunk": _POSITIVE,
  }


def _rules() -> dict:
  # Sampling temperatures of a trained role must be > 0 (its logprobs are divided by it);
  # answers and dataset questions may be greedy (0).
  rules = {
    "seed": _COUNT,
    "iterations": _POSITIVE,
    "prompts": _one_of("paper", *worlds.names()),
    "mode": _one_of("rzero", "base_challenger"),
    "offload_idle": _BOOL,
    "model.dtype": _one_of("float32", "bfloat16", "float16"),
    "model.param_dtype": _one_of("float32", "bfloat16", "float16"),
    "model.remat": _one_of(*REMAT_CHOICES),
    "challenger.uncertainty_scale": _one_of("paper", "code"),
    "challenger.reward_form": _one_of("paper", "code"),
    "challenger.repetition_threshold": _PROB,
    "challenger.solver_samples": _POSITIVE,
    "dataset.num_questions": _POSITIVE,
    "dataset.solver_samples": _POSITIVE,
    "dataset.temperature": _NONNEG,
    "dataset.top_p": _TOP_P,
    "dataset.top_k": _COUNT,
    "dataset.band_delta": _number_in(0.0, 0.5),
    "dataset.max_new_tokens": _POSITIVE,
    "dataset.max_solver_prompt_tokens": _POSITIVE,
    "sampling.answer_temperature": _NONNEG,
    "sampling.answer_top_p": _TOP_P,
    "sampling.answer_top_k": _COUNT,
    "sampling.answer_max_new_tokens": _POSITIVE,
    "sampling.max_rows_per_call": _POSITIVE,
    "checkpoint.max_to_keep": _POSITIVE,
    "checkpoint.async_save": _BOOL,
    "eval.max_new_tokens": _POSITIVE,
    "eval.limit": _COUNT,
    "eval.batch_size": _POSITIVE,
  }
  for role in ("challenger", "solver"):
    rules.update(
      {
        f"{role}.steps": _POSITIVE,
        f"{role}.prompts_per_step": _POSITIVE,
        f"{role}.group_size": _int_at_least(2),
        f"{role}.prompts_per_update": _POSITIVE,
        f"{role}.max_new_tokens": _POSITIVE,
        f"{role}.temperature": _POSITIVE_NUMBER,
        f"{role}.top_p": _TOP_P,
        f"{role}.top_k": _COUNT,
        **_learner_rules(f"{role}.learner"),
      }
    )
  for axis in ("data", "fsdp", "tensor"):
    rules[f"mesh.{axis}"] = (
      (lambda v: _is_int(v) and (v >= 1 or v == -1)),
      "a positive integer, or -1 (the remaining devices)",
    )
  return rules


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def validate(config) -> None:
  """Refuses a value that would otherwise fail deep inside a run (or train nothing), with one
  line naming the field and the expected range. Touches nothing on disk."""
  for path, (ok, expected) in _rules().items():
    try:
      value = _get(config, path)
    except (KeyError, AttributeError):
      continue  # a config built without that section (a caller's own, smaller config)
    if not ok(value):
      raise ValueError(f"config.{path}={value!r}; expected {expected}")
  for role in ("challenger", "solver"):
    section = config[role]
    if section.prompts_per_step % section.prompts_per_update:
      raise ValueError(
        f"config.{role}.prompts_per_update={section.prompts_per_update!r}; expected a divisor "
        f"of config.{role}.prompts_per_step={section.prompts_per_step} (whole mini-batches)"
      )
  d = config.dataset
  lo, hi = d.band_low, d.band_high
  if not (lo == -1.0 and hi == -1.0):  # -1, -1: the band comes from band_delta
    if not (_is_number(lo) and _is_number(hi) and 0.0 <= lo <= hi <= 1.0):
      raise ValueError(
        f"config.dataset.band_low={lo!r}, band_high={hi!r}; expected "
        "0 <= band_low <= band_high <= 1, or both -1 to use band_delta"
      )
  axes = [config.mesh[a] for a in ("data", "fsdp", "tensor")]
  if axes.count(-1) > 1:
    raise ValueError(f"config.mesh: data, fsdp, tensor = {axes}; expected at most one -1")
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
      raise ValueError(
        f"config.{role}.learner.aggregation_rows={rows!r}; expected a positive "
        "integer (sequences per micro-batch of 'micro-token-mean')"
      )
  for name in (
    "dataset.max_new_tokens",
    "dataset.max_solver_prompt_tokens",
    "solver.min_questions",
  ):
    section, field = name.split(".")
    value = config[section][field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{name}={value!r}; expected a positive integer")
