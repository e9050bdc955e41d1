"""The three phases of an R-Zero iteration, as plain functions over explicit state.

Device work (sampling, logprobs, train steps) is jitted elsewhere; everything here is host-side
glue: text, rewards, grading and datasets. No reward is computed inside jitted code.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import numpy as np
import tqdm

from rzero_jax import grading, multihost, sampling, sharding
from rzero_jax.rl import grpo, rollouts
from rzero_jax.rl.learner import LearnerConfig, batch_sharding
from rzero_jax.rzero import challenger, config, dataset
from rzero_jax.rzero.metrics import histogram

PHASE_IDS = {"challenger": 1, "dataset": 2, "solver": 3, "eval": 4}


def derive_seed(seed: int, iteration: int, phase: str, step: int = 0) -> int:
  """One seed per (run seed, iteration, phase, step): resumed steps replay exactly."""
  state = np.random.SeedSequence([seed, iteration, PHASE_IDS[phase], step]).generate_state(1)
  return int(state[0] & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class Env:
  """What every phase reads and never changes: model shape, tokenizer, prompts, mesh."""

  cfg: Any
  tokenizer: Any
  mesh: Any
  rules: Any
  prompt_set: Any  # module-like: challenger_messages(), solver_messages(question)
  stop_token_ids: tuple[int, ...]
  max_rows_per_call: int
  progress: bool = False  # tqdm bars (process 0 only)
  grader: str = "math_verify"  # answer equivalence for votes and Solver rewards (config.grader)

  def equiv(self):
    """The batch equivalence test of this run's grader."""
    return functools.partial(grading.is_equiv_batch, grader=self.grader)


@dataclasses.dataclass
class Role:
  """A role being trained: its learner config and the jitted functions bound to its shapes."""

  learner: LearnerConfig
  train_step: Callable  # (state, batch) -> (state, metrics)
  logprobs: Callable  # (params, tokens, kv_mask) -> logp [B, T-1]
  advantage_estimator: str = "grpo"


def completion_bucket(completions: Sequence[Sequence[int]], max_new_tokens: int) -> int:
  """Completion slots of a training batch: the longest completion rounded up to a power of two,
  at most max_new_tokens.

  Trailing padding changes no logprob of a real token (attention is causal and the loss is
  masked), so the update is the one a full max_new_tokens batch gives, for less compute when
  answers are short beside the budget. The train step compiles once per
  (prompt, completion) bucket, a handful per role.
  """
  longest = max((len(c) for c in completions), default=0)
  return min(max_new_tokens, sampling.prompt_bucket(longest, min_bucket=16))


def _even_split(total: int, most: int) -> list[int]:
  """total as the fewest parts of at most `most`, their sizes within one of each other."""
  parts = -(-total // most)
  size, extra = divmod(total, parts)
  return [size + (k < extra) for k in range(parts)]


def generate_rows(
  env: Env,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  n: int,
  seed: int,
  max_new_tokens: int,
  temperature: float,
  top_p: float,
  top_k: int,
  desc: str = "sampling",
):
  """sampling.generate of n samples per prompt, split so no call exceeds max_rows_per_call rows
  (which bounds the KV cache). Row i*n+j is sample j of prompt i, as in one big call."""
  limit = env.max_rows_per_call
  # (prompt indices, samples per prompt) of each call: whole prompts while they fit, else
  # one prompt's samples in pieces (e.g. 8,000 dataset questions from the one Challenger prompt).
  calls = []
  # The limit holds after `generate` pads the prompt count to its bucket, and the pieces are of
  # equal size (to one), so they share one shape and one compiled program. `generate` pads even
  # one prompt to a multiple of the batch shards, so whole prompts fit only when that many
  # prompts' samples do (m=10 answers on 16 shards would decode 160 rows, 150 of them padding).
  copies = sampling.batch_bucket(1, _batch_shards(env))
  if copies * n <= limit:
    per_call = sampling.prompts_per_call(limit, n, env.mesh, env.rules or sharding.DEFAULT_RULES)
    start = 0
    for size in _even_split(len(prompts), per_call):
      calls.append((list(range(start, start + size)), n))
      start += size
  else:
    # One prompt's samples in pieces. A call's prompt count is padded to a multiple of the
    # mesh's batch shards, so a piece goes as that many copies of the prompt, each sampled
    # a share of the piece: every decoded row is a real sample and no call exceeds the limit.
    for i in range(len(prompts)):
      for size in _even_split(n, max(copies, limit // copies * copies)):
        calls.append(([i] * copies, -(-size // copies), size))
  tokens, logprobs, finish = [], [], []
  for k, call in enumerate(
    tqdm.tqdm(
      calls, desc=desc, unit="call", leave=False, disable=not env.progress or len(calls) < 2
    )
  ):
    idx, samples = call[:2]
    out = sampling.generate(
      env.cfg,
      params,
      [prompts[i] for i in idx],
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=top_p,
      top_k=top_k,
      n=samples,
      seed=seed + 7919 * k,
      stop_token_ids=env.stop_token_ids,
      mesh=env.mesh,
    )
    keep = call[2] if len(call) > 2 else len(out.tokens)
    tokens += out.tokens[:keep]
    logprobs += out.logprobs[:keep]
    finish += out.finish_reasons[:keep]
  return tokens, logprobs, finish


def _batch_shards(env: Env) -> int:
  """How many ways the mesh splits rows (1 without a mesh)."""
  if env.mesh is None:
    return 1
  spec = sharding.logical_to_spec(("batch",), env.rules or sharding.DEFAULT_RULES, env.mesh)
  axes = (spec[0],) if isinstance(spec[0], str) else tuple(spec[0] or ())
  return int(np.prod([env.mesh.shape[a] for a in axes]))


def _on_mesh(env: Env, tree):
  """Host batch arrays -> global arrays split by rows, as the jitted learner expects (numpy
  cannot be passed to a jit with sharded in_shardings across processes)."""
  if env.mesh is None:
    return tree
  return multihost.to_global(tree, batch_sharding(env.mesh, env.rules or sharding.DEFAULT_RULES))


def sampler_settings(section, prefix: str = "") -> dict:
  """A config section's sampler settings (config.SAMPLER_FIELDS, each named prefix + field
  there) as generate_rows' keywords."""
  return {k: getattr(section, prefix + k) for k in config.SAMPLER_FIELDS}


def decode(env: Env, rows: Sequence[Sequence[int]]) -> list[str]:
  stops = set(env.stop_token_ids)
  return [env.tokenizer.decode([t for t in row if t not in stops]) for row in rows]


def solver_prompt_ids(env: Env, questions: Sequence[str]) -> list[list[int]]:
  return [env.tokenizer.encode_chat(env.prompt_set.solver_messages(q)) for q in questions]


def challenger_prompt_ids(env: Env) -> list[int]:
  return env.tokenizer.encode_chat(env.prompt_set.challenger_messages())


def answer_questions(
  env: Env, solver_params, questions: Sequence[str], *, m: int, seed: int, sampling_cfg
) -> list[list[str | None]]:
  """m sampled Solver answers per question, each the content of its last \\boxed{} or None."""
  if not questions:
    return []
  rows, _, _ = generate_rows(
    env,
    solver_params,
    solver_prompt_ids(env, questions),
    n=m,
    seed=seed,
    desc="solver answers",
    **sampler_settings(sampling_cfg, "answer_"),
  )
  texts = decode(env, rows)
  answers = [grading.extract_boxed(t) for t in texts]
  return [answers[i * m : (i + 1) * m] for i in range(len(questions))]


def grpo_update(
  env: Env,
  role: Role,
  state,
  ref_params,
  prompts: Sequence[Sequence[int]],
  completions,
  sampler_logprobs,
  rewards: np.ndarray,
  *,
  group_size: int,
  max_new_tokens: int,
  rows_per_update: int,
):
  """Advantages, packing, pi_old / pi_ref logprobs, then one optimizer update per mini-batch."""
  adv = np.asarray(
    grpo.group_advantages(
      np.asarray(rewards, np.float32), group_size, estimator=role.advantage_estimator
    )
  )
  prompt_len = sampling.prompt_bucket(max(len(p) for p in prompts), min_bucket=16)
  batch = rollouts.pack(
    prompts,
    completions,
    sampler_logprobs,
    adv,
    prompt_len=prompt_len,
    max_new_tokens=completion_bucket(completions, max_new_tokens),
    pad_id=getattr(env.tokenizer, "pad_id", 0) or 0,
  )
  # pi_old is recomputed by the trainer (one PPO epoch, as the reference stack does), for every
  # mini-batch before the first update: later mini-batches' ratios measure their drift from the
  # policy that sampled them, not from the one the previous update left. A batch that makes a
  # single update is on-policy and leaves pi_old to the train step (rl.learner), which saves a
  # forward pass.
  minibatches = list(rollouts.minibatches(batch, rows_per_update))
  # An offloaded reference comes back to device memory (same sharding) for this update only.
  ref_params = multihost.onload(ref_params) if role.learner.kl_coef > 0 else None
  for mb in minibatches:
    tokens, kv_mask = _on_mesh(env, (mb["tokens"], mb["kv_mask"]))
    if len(minibatches) == 1:
      del mb["old_logp"]
    else:
      mb["old_logp"] = multihost.to_host(role.logprobs(state.params, tokens, kv_mask))
    if role.learner.kl_coef > 0:
      mb["ref_logp"] = multihost.to_host(role.logprobs(ref_params, tokens, kv_mask))
  del ref_params
  all_metrics = []
  for mb in minibatches:
    state, metrics = role.train_step(state, _on_mesh(env, mb))
    all_metrics.append({k: float(v) for k, v in multihost.to_host(metrics).items()})
  merged = merge_update_metrics(all_metrics)
  merged["zero_std_groups"] = float(
    np.mean(np.std(np.asarray(rewards).reshape(-1, group_size), axis=1) == 0)
  )
  return state, merged


_SUMMED = ("count", "skipped_updates")  # counts over the step's updates, not means


def merge_update_metrics(updates: Sequence[dict[str, float]]) -> dict[str, float]:
  """One record for a step's updates, each metric combined as a full-batch one would be: a
  mean with its count ("K/count") as sum(value * count) / sum(count), a maximum ("K/max") as
  the maximum, counts (and skipped updates) summed; the rest (grad_norm, a per-update quantity) averaged."""
  merged = {}
  for k in updates[0]:
    values = np.asarray([u[k] for u in updates], np.float64)
    counts = [u.get(f"{k}/count") for u in updates]
    if k in _SUMMED or k.endswith("/count"):
      merged[k] = float(values.sum())
    elif k.endswith("/max"):
      merged[k] = float(values.max())
    elif k == "loss" or None not in counts:
      weights = np.asarray([u["count"] for u in updates] if k == "loss" else counts, np.float64)
      merged[k] = float((values * weights).sum() / max(weights.sum(), 1.0))
    else:
      merged[k] = float(values.mean())
  return merged


# ----------------------------------------------------------------------------- Challenger


def challenger_step(
  env: Env, role: Role, state, ref_params, solver_params, ccfg, sampling_cfg, *, seed: int
):
  """One Challenger GRPO step against the frozen Solver. Returns (state, metrics record)."""
  t0 = time.perf_counter()
  prompt = challenger_prompt_ids(env)
  rollouts_n = ccfg.prompts_per_step * ccfg.group_size
  rows, logps, _ = generate_rows(
    env,
    state.params,
    [prompt],
    n=rollouts_n,
    seed=seed,
    **sampler_settings(ccfg),
  )
  texts = decode(env, rows)
  questions = [challenger.parse_question(t) for t in texts]
  valid = [i for i, q in enumerate(questions) if q is not None]
  t1 = time.perf_counter()
  # Malformed questions are never sent to the Solver (they earn 0 under the paper's form).
  answers = answer_questions(
    env,
    solver_params,
    [questions[i] for i in valid],
    m=ccfg.solver_samples,
    seed=seed + 1,
    sampling_cfg=sampling_cfg,
  )
  t2 = time.perf_counter()
  solver_answers: list[Any] = [None] * len(rows)
  for i, ans in zip(valid, answers):
    solver_answers[i] = ans
  # Process 0's verdicts for all: symbolic grading has a wall-clock timeout, so two hosts
  # could disagree, and the rewards decide the update every process must run.
  scores = multihost.agree(
    challenger.score_challenger_rollouts(
      texts,
      solver_answers,
      form=ccfg.reward_form,
      scale=ccfg.uncertainty_scale,
      bleu_threshold=ccfg.repetition_threshold,
      equiv=env.equiv(),
    )
  )
  rewards = scores.rewards
  p_hat = np.array([np.nan if p is None else p for p in scores.p_hats])
  penalty = scores.penalties
  t3 = time.perf_counter()
  state, train_metrics = grpo_update(
    env,
    role,
    state,
    ref_params,
    [prompt] * len(rows),
    rows,
    logps,
    rewards,
    group_size=ccfg.group_size,
    max_new_tokens=ccfg.max_new_tokens,
    rows_per_update=ccfg.prompts_per_update * ccfg.group_size,
  )
  t4 = time.perf_counter()
  n_tokens = sum(len(r) for r in rows)
  record = dict(
    reward_mean=float(np.mean(rewards)),
    reward_std=float(np.std(rewards)),
    format_valid=len(valid) / len(rows),
    p_hat_mean=float(np.nanmean(p_hat)) if valid else None,
    p_hat_hist=histogram(p_hat[valid]),
    repetition_penalty=float(np.mean(penalty[valid])) if valid else 0.0,
    questions=[questions[i] for i in valid],
    tokens_per_s=n_tokens / max(t1 - t0, 1e-9),
    time_sampling=(t1 - t0) + (t2 - t1),
    time_grading=t3 - t2,
    time_training=t4 - t3,
    **_train_fields(train_metrics),
  )
  return state, record


def _train_fields(m: dict) -> dict:
  keep = (
    "loss",
    "kl",
    "clip_frac/low",
    "clip_frac/high",
    "clip_frac/dual",
    "entropy",
    "grad_norm",
    "logprob_diff/mean",
    "logprob_diff/max",
    "ratio/max",
    "zero_std_groups",
    "skipped_updates",
  )
  out = {k: m[k] for k in keep if k in m}
  out["clip_frac"] = sum(
    m.get(k, 0.0) for k in ("clip_frac/low", "clip_frac/high", "clip_frac/dual")
  )
  return out


# ----------------------------------------------------------------------------- Dataset


def dataset_chunk_questions(dcfg, max_rows_per_call: int) -> int:
  """Questions per dataset chunk: their m answers fill one generate call, so a chunk (saved
  on its own) takes about one call's time, and a SIGTERM loses at most that."""
  return max(1, max_rows_per_call // dcfg.solver_samples)


def build_dataset(
  env: Env,
  challenger_params,
  solver_params,
  dcfg,
  sampling_cfg,
  *,
  seed: int,
  annotate: Callable[[str], dict] | None = None,
  exclude: Callable[[str], bool] | None = None,
  chunks=None,
):
  """N Challenger questions, m Solver answers each, majority labels, band filter.

  The Challenger writes with dataset.max_new_tokens (the official 4,096); a question whose whole
  Solver prompt exceeds dataset.max_solver_prompt_tokens is dropped, as the official Solver
  trainer drops overlong prompts (docs/ALGORITHM.md, "Dataset").
  The N questions are made in chunks, each sampled and answered from its own seed: a chunk
  found in `chunks` (an object with load(k) -> dict | None and save(k, dict)) is reused, so a
  killed phase continues where it stopped and gives the same dataset. challenger_params and
  solver_params may be callables returning the params, called only if a chunk is computed.
  `annotate(question)` may attach report-only fields (e.g. the true answer in a synthetic
  world); they are stored under `meta` and never used to filter or to train.
  Returns (records, stats).
  """
  get_challenger = challenger_params if callable(challenger_params) else lambda: challenger_params
  get_solver = solver_params if callable(solver_params) else lambda: solver_params
  sizes = _even_split(dcfg.num_questions, dataset_chunk_questions(dcfg, env.max_rows_per_call))
  candidates: list[str] = []
  answers: list[list[str | None]] = []
  generated = overlong = 0
  t_sampling = 0.0
  for k, size in enumerate(sizes):
    done = chunks.load(k) if chunks is not None else None
    if done is None:
      t0 = time.perf_counter()
      done = _dataset_chunk(
        env,
        get_challenger(),
        get_solver(),
        dcfg,
        sampling_cfg,
        size,
        seed=seed + 7919 * k,
        exclude=exclude,
      )
      t_sampling += time.perf_counter() - t0
      if chunks is not None:
        chunks.save(k, done)
    candidates += done["candidates"]
    answers += done["answers"]
    generated += done["generated"]
    overlong += done["overlong"]
  t2 = time.perf_counter()
  band = (dcfg.band_low, dcfg.band_high) if dcfg.band_low >= 0 and dcfg.band_high >= 0 else None
  meta = [annotate(q) for q in candidates] if annotate else None
  # Majority votes compare answers symbolically under a timeout: process 0 decides for all.
  records, stats = multihost.agree(
    dataset.build_dataset(
      candidates, answers, delta=dcfg.band_delta, band=band, meta=meta, equiv=env.equiv()
    )
  )
  stats = dict(stats)
  stats.update(
    generated=generated,
    well_formed=len(candidates) + overlong,
    overlong_prompts=overlong,
    chunks=len(sizes),
    time_sampling=t_sampling,
    time_grading=time.perf_counter() - t2,
  )
  return records, stats


def _dataset_chunk(
  env: Env, challenger_params, solver_params, dcfg, sampling_cfg, n: int, *, seed: int, exclude
) -> dict:
  """One chunk: n Challenger questions, the well-formed ones with m Solver answers each."""
  prompt = challenger_prompt_ids(env)
  rows, _, _ = generate_rows(
    env,
    challenger_params,
    [prompt],
    n=n,
    seed=seed,
    desc="dataset questions",
    **sampler_settings(dcfg),
  )
  texts = decode(env, rows)
  candidates, overlong = [], 0
  for text in texts:
    # The dataset keeps only questions that also carry a \boxed{} answer (docs/ALGORITHM.md).
    if challenger.is_well_formed(text, require_boxed=True):
      q = challenger.parse_question(text)
      # A world's held-out questions must never become training data (decided from the
      # question text alone, never from a label).
      if exclude is not None and exclude(q):
        continue
      if len(solver_prompt_ids(env, [q])[0]) <= dcfg.max_solver_prompt_tokens:
        candidates.append(q)
      else:
        overlong += 1
  answers = answer_questions(
    env, solver_params, candidates, m=dcfg.solver_samples, seed=seed + 1, sampling_cfg=sampling_cfg
  )
  return {
    "candidates": candidates,
    "answers": answers,
    "generated": len(rows),
    "overlong": overlong,
  }


# ----------------------------------------------------------------------------- Solver


def solver_batch(
  records: Sequence[dict], step: int, prompts_per_step: int, seed: int, min_questions: int = 1
):
  """The step's questions, as the official data loader deals them: a fresh shuffle of the dataset
  every epoch, the last partial batch dropped. Each epoch's shuffle depends on (seed, epoch) only,
  so a resumed step replays. Fewer than `min_questions` (solver.min_questions) or than one full
  batch is refused, as the official run asserts at least one batch."""
  n = len(records)
  if n < max(min_questions, prompts_per_step):
    raise ValueError(
      f"the dataset kept {n} questions; solver.min_questions={min_questions} and "
      f"solver.prompts_per_step={prompts_per_step} need at least "
      f"{max(min_questions, prompts_per_step)} (raise dataset.num_questions, widen the band, "
      "or lower solver.min_questions)"
    )
  per_epoch = n // prompts_per_step
  epoch, k = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  return [records[i] for i in order[k * prompts_per_step : (k + 1) * prompts_per_step]]


def solver_step(
  env: Env,
  role: Role,
  state,
  ref_params,
  records: Sequence[dict],
  scfg,
  *,
  step: int,
  seed: int,
  data_seed: int,
):
  """One Solver GRPO step on the pseudo-labelled dataset. Returns (state, metrics record)."""
  t0 = time.perf_counter()
  batch = solver_batch(records, step, scfg.prompts_per_step, data_seed, scfg.min_questions)
  prompts = solver_prompt_ids(env, [r["question"] for r in batch])
  g = scfg.group_size
  rows, logps, _ = generate_rows(
    env,
    state.params,
    prompts,
    n=g,
    seed=seed,
    **sampler_settings(scfg),
  )
  t1 = time.perf_counter()
  texts = decode(env, rows)
  labels = [r["label"] for r in batch for _ in range(g)]
  # Process 0's verdicts for all (grading runs under a wall-clock timeout).
  rewards = np.asarray(
    multihost.agree(
      grading.solver_rewards(texts, labels, form=scfg.reward_form, grader=env.grader)
    ),
    np.float32,
  )
  t2 = time.perf_counter()
  state, train_metrics = grpo_update(
    env,
    role,
    state,
    ref_params,
    [p for p in prompts for _ in range(g)],
    rows,
    logps,
    rewards,
    group_size=g,
    max_new_tokens=scfg.max_new_tokens,
    rows_per_update=scfg.prompts_per_update * g,
  )
  t3 = time.perf_counter()
  n_tokens = sum(len(r) for r in rows)
  record = dict(
    reward_mean=float(np.mean(rewards)),
    reward_std=float(np.std(rewards)),
    tokens_per_s=n_tokens / max(t1 - t0, 1e-9),
    time_sampling=t1 - t0,
    time_grading=t2 - t1,
    time_training=t3 - t2,
    **_train_fields(train_metrics),
  )
  return state, record
