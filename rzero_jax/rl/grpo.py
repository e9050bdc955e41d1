"""GRPO maths: group advantages, the clipped policy loss and its metrics.

Everything here is a pure `jax.numpy` function of static-shape arrays, so the learner can call it
inside one jitted, sharded train step. Python branches only look at configuration (strings and
floats fixed at trace time), never at array values.

Losses and metrics are returned as *sums with their counts*, never as means: summing the pairs
over micro-batches (and, through global `jnp.sum`, over devices) and dividing once at the end
gives exactly the full-batch value. The definitions follow verl's `compute_policy_loss` /
`kl_penalty("low_var_kl")` (docs/ALGORITHM.md, "GRPO").
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

# verl clamps log-ratios to this range before exponentiating; beyond it both PPO branches are
# clipped anyway, and without it exp() overflows to inf and poisons the gradient with NaN.
_LOG_RATIO_LIMIT = 20.0


# --------------------------------------------------------------------------------------------
# Metrics that aggregate exactly
# --------------------------------------------------------------------------------------------
class SumMetric(NamedTuple):
  """A mean kept as (total, count), so partial results can be added before dividing."""

  total: jax.Array
  count: jax.Array

  def merge(self, other: "SumMetric") -> "SumMetric":
    return SumMetric(self.total + other.total, self.count + other.count)

  def value(self) -> jax.Array:
    # An empty batch reports 0 rather than NaN, so a logged metric never breaks plots.
    return self.total / jnp.maximum(self.count, 1.0)


class MaxMetric(NamedTuple):
  """A running maximum of a non-negative quantity (0 is the identity, e.g. for no tokens)."""

  max: jax.Array

  def merge(self, other: "MaxMetric") -> "MaxMetric":
    return MaxMetric(jnp.maximum(self.max, other.max))

  def value(self) -> jax.Array:
    return self.max


Metrics = dict[str, SumMetric | MaxMetric]


def merge_metrics(
  a: Mapping[str, SumMetric | MaxMetric], b: Mapping[str, SumMetric | MaxMetric]
) -> Metrics:
  """Combines the metrics of two micro-batches (same keys): sums add, maxima take the max."""
  if set(a) != set(b):
    raise ValueError(f"merge_metrics: key sets differ: {sorted(set(a) ^ set(b))}")
  return {k: a[k].merge(b[k]) for k in a}


def metric_values(metrics: Mapping[str, SumMetric | MaxMetric]) -> dict[str, jax.Array]:
  """Final scalar per metric (means divided out, maxima as they are), for logging."""
  return {k: m.value() for k, m in metrics.items()}


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------
def _grpo_advantages(grouped: jax.Array, eps: float) -> jax.Array:
  group_size = grouped.shape[1]
  centred = grouped - grouped.mean(axis=1, keepdims=True)
  # The reference (verl, torch.std) uses the unbiased, n-1 standard deviation.
  std = jnp.sqrt(jnp.sum(centred * centred, axis=1, keepdims=True) / (group_size - 1))
  return centred / (std + eps)


def _dr_grpo_advantages(grouped: jax.Array, eps: float) -> jax.Array:
  del eps  # Dr. GRPO drops the std division on purpose: it biases toward easy/hard groups.
  return grouped - grouped.mean(axis=1, keepdims=True)


def _rloo_advantages(grouped: jax.Array, eps: float) -> jax.Array:
  del eps
  group_size = grouped.shape[1]
  others_mean = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)
  return grouped - others_mean


# name -> (fn(grouped [n_groups, G], eps) -> [n_groups, G], smallest group size it is defined for)
ADVANTAGE_ESTIMATORS: dict[str, tuple[Callable[[jax.Array, float], jax.Array], int]] = {
  "grpo": (_grpo_advantages, 2),
  "dr_grpo": (_dr_grpo_advantages, 1),
  "rloo": (_rloo_advantages, 2),
}


def group_advantages(
  rewards, group_size: int, eps: float = 1e-6, estimator: str = "grpo"
) -> jax.Array:
  """Per-sample advantages from per-sample scalar rewards, normalised within each group.

  Args:
    rewards: [N] rewards, N = n_groups * group_size; row i*G+j is sample j of prompt i.
    group_size: G, the number of samples per prompt.
    eps: added to the std in the "grpo" estimator.
    estimator: "grpo" ((r - mean) / (unbiased std + eps)), "dr_grpo" (r - mean) or
      "rloo" (r - mean of the other G-1 samples).

  Returns:
    float32 [N]. A group whose rewards are all equal gets exactly 0 under every estimator
    (floating-point means of equal values need not equal them, so this is enforced).
  """
  if estimator not in ADVANTAGE_ESTIMATORS:
    raise ValueError(
      f"group_advantages: estimator={estimator!r}; expected one of {sorted(ADVANTAGE_ESTIMATORS)}"
    )
  _, min_group = ADVANTAGE_ESTIMATORS[estimator]
  if not isinstance(group_size, int) or group_size < min_group:
    raise ValueError(
      f"group_advantages: group_size={group_size!r}; estimator {estimator!r} "
      f"needs an int >= {min_group}"
    )
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim != 1 or rewards.shape[0] % group_size:
    raise ValueError(
      f"group_advantages: rewards must be 1-D with a length divisible by "
      f"group_size={group_size}; got shape {rewards.shape}"
    )
  return _advantages(rewards, group_size, eps, estimator)


# One program per (shape, settings): called eagerly, the few ops above would each compile on
# their own, for every batch shape of every run.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _advantages(rewards: jax.Array, group_size: int, eps: float, estimator: str) -> jax.Array:
  fn, _ = ADVANTAGE_ESTIMATORS[estimator]
  grouped = rewards.reshape(-1, group_size)
  all_equal = jnp.max(grouped, axis=1, keepdims=True) == jnp.min(grouped, axis=1, keepdims=True)
  return jnp.where(all_equal, 0.0, fn(grouped, eps)).reshape(-1)


# --------------------------------------------------------------------------------------------
# Aggregation of per-token values into (sum, count)
# --------------------------------------------------------------------------------------------
def _token_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  return jnp.sum(values * mask), jnp.sum(mask)


def _seq_mean_token_mean(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  tokens_per_seq = jnp.sum(mask, axis=1)
  per_seq_mean = jnp.sum(values * mask, axis=1) / jnp.maximum(tokens_per_seq, 1.0)
  # A sequence with no completion tokens contributes neither to the sum nor to the count.
  return jnp.sum(per_seq_mean), jnp.sum((tokens_per_seq > 0).astype(jnp.float32))


def _micro_token_mean(values: jax.Array, mask: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
  # The official trainer's loss: a token mean over each micro-batch of `rows` consecutive
  # sequences, then the mean over micro-batches (EasyR1's loss / gradient_accumulation).
  batch = values.shape[0]
  if batch % rows:
    raise ValueError(
      f"aggregation 'micro-token-mean' needs a batch that splits into groups of "
      f"aggregation_rows={rows} sequences; got {batch} rows"
    )
  grouped_sum = jnp.sum((values * mask).reshape(batch // rows, -1), axis=1)
  grouped_count = jnp.sum(mask.reshape(batch // rows, -1), axis=1)
  means = grouped_sum / jnp.maximum(grouped_count, 1.0)
  return jnp.sum(means), jnp.sum((grouped_count > 0).astype(jnp.float32))


AGGREGATIONS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
  "token-mean": _token_mean,
  "seq-mean-token-mean": _seq_mean_token_mean,
  "micro-token-mean": _micro_token_mean,
}


def aggregate(
  values: jax.Array, mask: jax.Array, aggregation: str = "seq-mean-token-mean", rows: int = 2
) -> tuple[jax.Array, jax.Array]:
  """[B, T] per-token values -> (sum, count) under the named aggregation mode. `rows` is the
  micro-batch size of "micro-token-mean" (2 in the official Challenger run)."""
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation={aggregation!r}; expected one of {sorted(AGGREGATIONS)}")
  if aggregation == "micro-token-mean":
    return _micro_token_mean(values, mask, rows)
  return AGGREGATIONS[aggregation](values, mask)


def _token_metric(values: jax.Array, mask: jax.Array) -> SumMetric:
  return SumMetric(jnp.sum(values * mask), jnp.sum(mask))


def _token_fraction(flags: jax.Array, mask: jax.Array) -> SumMetric:
  return _token_metric(flags.astype(jnp.float32), mask)


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------
def k3_kl(logp: jax.Array, ref_logp: jax.Array, clamp: float = 10.0) -> jax.Array:
  """Per-token k3 estimate of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1, clamped."""
  log_ratio = jnp.clip(ref_logp - logp, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
  return jnp.clip(jnp.exp(log_ratio) - log_ratio - 1.0, -clamp, clamp)


def _check_token_array(name: str, x, shape) -> jax.Array:
  x = jnp.asarray(x)
  if x.shape != shape:
    raise ValueError(f"policy_loss: {name} must have shape {shape} (like logp); got {x.shape}")
  return x.astype(jnp.float32)


def policy_loss(
  logp,
  old_logp,
  ref_logp,
  advantages,
  mask,
  *,
  clip_low: float = 0.2,
  clip_high: float = 0.3,
  dual_clip: float | None = 3.0,
  kl_coef: float = 0.01,
  kl_clamp: float = 10.0,
  aggregation: str = "seq-mean-token-mean",
  aggregation_rows: int = 2,
  entropy=None,
) -> tuple[jax.Array, jax.Array, Metrics]:
  """The GRPO objective of one (micro-)batch, as (loss_sum, count, metrics).

  Per token: ratio = exp(logp - old_logp) and the clip-higher PPO surrogate
  max(-A*ratio, -A*clip(ratio, 1-clip_low, 1+clip_high)); for A < 0 it is also capped at
  -A*dual_clip. Plus kl_coef * k3 KL to the reference. The loss is loss_sum / count, after
  summing both over micro-batches.

  Args:
    logp: [B, T] float32 log-probs of the completion tokens under the policy being trained.
    old_logp: [B, T] log-probs under the policy that sampled (treated as constant).
    ref_logp: [B, T] log-probs under the frozen reference, or None when kl_coef == 0.
    advantages: [B] one advantage per sequence.
    mask: [B, T] 1 on completion tokens, 0 on prompt and padding. Values at masked-out
      positions are ignored entirely (even NaN or inf there do not reach loss or gradient).
    clip_low, clip_high, dual_clip: epsilon_low, epsilon_high and c of the surrogate
      (dual_clip=None disables the cap).
    kl_coef, kl_clamp: beta and the symmetric clamp of the per-token k3 KL.
    aggregation: "seq-mean-token-mean" (mean over each sequence's tokens, then over
      sequences that have tokens; the paper's mean over sequences), "token-mean" (over all
      tokens of the batch) or "micro-token-mean" (a token mean over each run of
      `aggregation_rows` consecutive sequences, then the mean over those runs: the official
      Challenger run, with 2).
    entropy: optional [B, T] per-token policy entropy; only reported as a metric.

  Returns:
    loss_sum, count: scalars; metrics: name -> SumMetric/MaxMetric (see `merge_metrics`).
  """
  if aggregation not in AGGREGATIONS:
    raise ValueError(
      f"policy_loss: aggregation={aggregation!r}; expected one of {sorted(AGGREGATIONS)}"
    )
  if not (0.0 <= clip_low < 1.0 and clip_high >= 0.0):
    raise ValueError(
      f"policy_loss: need 0 <= clip_low < 1 and clip_high >= 0; got "
      f"clip_low={clip_low}, clip_high={clip_high}"
    )
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"policy_loss: dual_clip={dual_clip} must be > 1 (or None to disable)")
  if kl_coef < 0.0:
    raise ValueError(f"policy_loss: kl_coef={kl_coef} must be >= 0")
  if kl_coef > 0.0 and ref_logp is None:
    raise ValueError(
      "policy_loss: ref_logp is None but kl_coef > 0; pass the reference "
      "model's log-probs or set kl_coef=0"
    )
  logp = jnp.asarray(logp)
  if logp.ndim != 2:
    raise ValueError(f"policy_loss: logp must be [batch, time]; got shape {logp.shape}")
  shape = logp.shape
  logp = logp.astype(jnp.float32)
  old_logp = _check_token_array("old_logp", old_logp, shape)
  mask_bool = _check_token_array("mask", mask, shape) > 0
  mask = mask_bool.astype(jnp.float32)
  advantages = jnp.asarray(advantages, jnp.float32)
  if advantages.shape != shape[:1]:
    raise ValueError(
      f"policy_loss: advantages must have shape {shape[:1]} (one per "
      f"sequence); got {advantages.shape}"
    )

  # Zero the inputs at masked positions *before* computing with them: multiplying a NaN loss by a
  # zero mask gives NaN, and so does backpropagating a zero cotangent through exp(inf).
  def sanitize(x):
    return jnp.where(mask_bool, x, 0.0)

  logp = sanitize(logp)
  old_logp = jax.lax.stop_gradient(sanitize(old_logp))
  adv = advantages[:, None]

  log_ratio = jnp.clip(logp - old_logp, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
  ratio = jnp.exp(log_ratio)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  ppo = jnp.maximum(unclipped, clipped)
  if dual_clip is None:
    pg_loss, dual_clipped = ppo, jnp.zeros(shape, bool)
  else:
    dual_cap = -adv * dual_clip
    pg_loss = jnp.where(adv < 0.0, jnp.minimum(ppo, dual_cap), ppo)
    dual_clipped = (adv < 0.0) & (ppo > dual_cap)

  token_loss = pg_loss
  metrics: Metrics = {}
  if kl_coef > 0.0:
    ref_logp = jax.lax.stop_gradient(sanitize(_check_token_array("ref_logp", ref_logp, shape)))
    kl = k3_kl(logp, ref_logp, kl_clamp)
    token_loss = pg_loss + kl_coef * kl
    metrics["kl"] = _token_metric(kl, mask)
    metrics["loss/kl"] = SumMetric(*aggregate(kl, mask, aggregation, aggregation_rows))

  loss_sum, count = aggregate(token_loss, mask, aggregation, aggregation_rows)

  # Which branch is active: these are the cheap alarms for a policy drifting off its sampler.
  ppo_clipped = clipped > unclipped
  metrics["loss/policy"] = SumMetric(*aggregate(pg_loss, mask, aggregation, aggregation_rows))
  metrics["clip_frac/low"] = _token_fraction(ppo_clipped & (ratio < 1.0), mask)
  metrics["clip_frac/high"] = _token_fraction(ppo_clipped & (ratio > 1.0), mask)
  metrics["clip_frac/dual"] = _token_fraction(dual_clipped, mask)
  metrics["ratio/mean"] = _token_metric(ratio, mask)
  metrics["ratio/max"] = MaxMetric(jnp.max(ratio * mask))
  metrics["response_length"] = SumMetric(jnp.sum(mask), jnp.float32(shape[0]))
  if entropy is not None:
    entropy = sanitize(_check_token_array("entropy", entropy, shape))
    metrics["entropy"] = _token_metric(jax.lax.stop_gradient(entropy), mask)
  return loss_sum, count, metrics


def logprob_mismatch(sampler_logp, trainer_logp, mask) -> Metrics:
  """Mean and max |sampler logprob - trainer logprob| over completion tokens.

  A large gap means the sampler and the trainer disagree about the policy (numerics, a
  temperature mismatch, stale weights), which silently biases the importance ratio.
  """
  trainer_logp = jnp.asarray(trainer_logp, jnp.float32)
  sampler_logp = jnp.asarray(sampler_logp, jnp.float32)
  mask_bool = jnp.asarray(mask) > 0
  if not (sampler_logp.shape == trainer_logp.shape == mask_bool.shape):
    raise ValueError(
      f"logprob_mismatch: sampler_logp {sampler_logp.shape}, trainer_logp "
      f"{trainer_logp.shape} and mask {mask_bool.shape} must match"
    )
  diff = jnp.where(mask_bool, jnp.abs(sampler_logp - trainer_logp), 0.0)
  mask = mask_bool.astype(jnp.float32)
  return {
    "logprob_diff/mean": SumMetric(jnp.sum(diff), jnp.sum(mask)),
    "logprob_diff/max": MaxMetric(jnp.max(diff)),
  }
