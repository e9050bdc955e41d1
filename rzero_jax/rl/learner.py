"""GRPO learner: train state, one jitted train step with exact micro-batch accumulation.

A batch is a dict of arrays with a leading row axis B (one row = prompt + completion):
  tokens      int32 [B, T]   prompt left-padded, completion right-padded
  kv_mask     bool  [B, T]   real tokens
  loss_mask   f32   [B, T-1] 1 where the *target* token tokens[:, t+1] is a completion token
  old_logp    f32   [B, T-1] log pi_old of the targets (trainer-recomputed, or the sampler's);
                             optional: a batch without it is on-policy (below)
  ref_logp    f32   [B, T-1] log pi_ref of the targets (ignored when kl_coef == 0)
  sampler_logp f32  [B, T-1] the sampler's logprobs, only for the sampler-vs-trainer alarm
  advantages  f32   [B]

The loss is accumulated as (sum, count) over micro-batches, and the gradient is the gradient of
sum(loss_sum) / sum(count): one batch in k micro-batches gives the update of the whole batch.
An update whose gradient norm is not finite is skipped (params and optimizer state unchanged,
metric `skipped_updates` = 1), as the official trainer skips it.

On-policy batches. When a rollout batch makes a single optimizer update, the params being
updated are the policy that sampled it, so pi_old is their own logp. Leave `old_logp` out of
such a batch and the step uses stop_gradient(logp): exact, and one forward pass cheaper than
recomputing it (ratio 1, so the clip never engages, as with a recomputed pi_old).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from rzero_jax import models, sharding
from rzero_jax.rl import grpo
from rzero_jax.rl.logprobs import token_logprobs

# The LearnerConfig fields that are grpo.policy_loss's settings, under the same names.
_LOSS_FIELDS = (
  "clip_low",
  "clip_high",
  "dual_clip",
  "kl_coef",
  "kl_clamp",
  "aggregation",
  "aggregation_rows",
)


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
  """Hyper-parameters of one GRPO role (docs/ALGORITHM.md, "GRPO")."""

  learning_rate: float = 1e-6
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  clip_low: float = 0.2
  clip_high: float = 0.3
  dual_clip: float = 3.0
  kl_coef: float = 0.01
  kl_clamp: float = 10.0
  aggregation: str = "seq-mean-token-mean"
  aggregation_rows: int = 2  # sequences per run of "micro-token-mean" (the official's 2)
  micro_batches: int = 1  # gradient accumulation steps per update
  temperature: float = 1.0  # the sampling temperature the logprobs must match
  logprob_chunk: int = 256  # sequence chunk of the vocabulary projection

  def loss_settings(self) -> dict[str, Any]:
    """The fields grpo.policy_loss takes, as its keywords."""
    return {k: getattr(self, k) for k in _LOSS_FIELDS}

  @classmethod
  def from_config(cls, c: Any) -> "LearnerConfig":
    """From an ml_collections section (or any mapping) holding some of these fields."""
    items = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in items.items() if k in names})


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(lc: LearnerConfig) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(lc.grad_clip),
    optax.adamw(lc.learning_rate, b1=lc.b1, b2=lc.b2, weight_decay=lc.weight_decay),
  )


def init_train_state(params, lc: LearnerConfig) -> TrainState:
  """Step 0 with fresh optimizer state. On a mesh, every params-shaped part of the optimizer
  state (Adam's mu and nu) is sharded like the params and the scalars are replicated.

  The shardings are explicit because jit does not carry them over: `zeros_like` of a sharded
  param comes out replicated, i.e. a full copy of both moments on every device.
  """
  opt = make_optimizer(lc)

  def init_train_state(p):
    return TrainState(jnp.zeros((), jnp.int32), p, opt.init(p))

  param_shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), params)
  if not all(isinstance(s, NamedSharding) for s in jax.tree.leaves(param_shardings)):
    return _cached(("init", lc), lambda: jax.jit(init_train_state))(params)

  def build():
    return jax.jit(
      init_train_state, out_shardings=_state_shardings_for(params, param_shardings, lc)
    )

  return _cached(("init", lc, _tree_key(param_shardings)), build)(params)


def _state_shardings_for(params, param_shardings, lc: LearnerConfig) -> TrainState:
  opt = make_optimizer(lc)
  scalar = sharding.replicated(jax.tree.leaves(param_shardings)[0].mesh)
  opt_shardings = optax.tree_map_params(
    opt,
    lambda _, s: s,
    jax.eval_shape(opt.init, params),
    param_shardings,
    transform_non_params=lambda _: scalar,
  )
  return TrainState(scalar, param_shardings, opt_shardings)


def abstract_train_state(params, lc: LearnerConfig) -> TrainState:
  """The TrainState `init_train_state` gives, as ShapeDtypeStructs with their shardings:
  `params` are ShapeDtypeStructs carrying NamedShardings (to compile ahead of time)."""
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  shapes = jax.eval_shape(
    lambda p: TrainState(jnp.zeros((), jnp.int32), p, make_optimizer(lc).init(p)), params
  )
  shardings = _state_shardings_for(params, param_shardings, lc)
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
  )


def state_shardings(state: TrainState):
  return jax.tree.map(lambda x: x.sharding, state)


def batch_sharding(mesh, rules=sharding.DEFAULT_RULES) -> NamedSharding:
  """Every batch array split by rows over the batch axes (the trailing axes whole): one
  sharding serves the whole batch dict, whichever keys it holds."""
  return NamedSharding(mesh, PartitionSpec(*sharding.logical_to_spec(("batch",), rules, mesh)))


def _loss_terms(cfg, lc: LearnerConfig, params, mb, mesh, rules):
  logp, entropy = token_logprobs(
    cfg,
    params,
    mb["tokens"],
    mb["kv_mask"],
    temperature=lc.temperature,
    chunk_size=lc.logprob_chunk,
    mesh=mesh,
    rules=rules,
    with_entropy=True,
  )
  old_logp = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
  loss_sum, count, metrics = grpo.policy_loss(
    logp,
    old_logp,
    mb["ref_logp"] if lc.kl_coef > 0 else None,
    mb["advantages"],
    mb["loss_mask"],
    entropy=entropy,
    **lc.loss_settings(),
  )
  metrics.update(
    grpo.logprob_mismatch(mb["sampler_logp"], jax.lax.stop_gradient(logp), mb["loss_mask"])
  )
  return loss_sum, (count, metrics)


def _split_micro(batch, k: int, strided: bool = False):
  """[B, ...] -> [k, B/k, ...]: micro-batch i holds rows [i B/k, (i+1) B/k), or with `strided`
  rows i, i + k, i + 2k, ...

  Strided moves no data (rows are split over the devices in contiguous blocks, so each device
  holds the same share of every micro-batch): the logprobs, whose rows are independent, split
  so. The train step keeps consecutive rows together, as "micro-token-mean" groups them.
  """

  def split(x):
    if x.shape[0] % k:
      raise ValueError(
        f"batch of {x.shape[0]} rows does not split into {k} micro-batches (learner.micro_batches)"
      )
    if strided:
      return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    return x.reshape((k, x.shape[0] // k) + x.shape[1:])

  return jax.tree.map(split, batch)


def _join_micro(x):
  """The inverse of `_split_micro(..., strided=True)` for one array."""
  return x.swapaxes(0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def accumulate_gradients(
  cfg: models.ModelConfig,
  lc: LearnerConfig,
  params,
  batch,
  *,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
):
  """Gradient of sum(loss_sum) / sum(count) over lc.micro_batches, plus loss and metrics.

  d(sum loss_sum / sum count) = sum d(loss_sum) / sum count, so the result is exactly the
  full-batch gradient whatever the number of micro-batches.
  """
  loss_fn = lambda p, mb: _loss_terms(cfg, lc, p, mb, mesh, rules)  # noqa: E731
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro(carry, mb):
    grads_acc, loss_acc, count_acc, metrics_acc = carry
    (loss_sum, (count, metrics)), grads = grad_fn(params, mb)
    return (
      jax.tree.map(jnp.add, grads_acc, grads),
      loss_acc + loss_sum,
      count_acc + count,
      grpo.merge_metrics(metrics_acc, metrics),
    ), None

  micro_batches = _split_micro(batch, lc.micro_batches)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  # Metrics are (sum, count) / max pytrees: all-zero is the identity of their merge.
  metric_shapes = jax.eval_shape(lambda: loss_fn(params, first)[1][1])
  init = (
    jax.tree.map(jnp.zeros_like, params),
    jnp.zeros((), jnp.float32),
    jnp.zeros((), jnp.float32),
    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
  )
  (grads, loss_sum, count, metrics), _ = jax.lax.scan(micro, init, micro_batches)
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  out = grpo.metric_values(metrics)
  # Each mean's count, so a caller can combine updates exactly (phases.merge_update_metrics).
  out.update({f"{k}/count": m.count for k, m in metrics.items() if isinstance(m, grpo.SumMetric)})
  out.update(loss=loss_sum / denom, count=count, grad_norm=optax.tree.norm(grads))
  return grads, out


def train_step(
  cfg: models.ModelConfig,
  lc: LearnerConfig,
  state: TrainState,
  batch,
  *,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
):
  """One optimizer update from one batch, accumulated over lc.micro_batches. Pure.

  A gradient whose norm is NaN or inf leaves params and optimizer state as they were (the official
  trainer skips such an update too); the step still counts and `skipped_updates` says so.
  """
  grads, metrics = accumulate_gradients(cfg, lc, state.params, batch, mesh=mesh, rules=rules)
  updates, opt_state = make_optimizer(lc).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(metrics["grad_norm"])
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  params = jax.tree.map(keep, params, state.params)
  opt_state = jax.tree.map(keep, opt_state, state.opt_state)
  metrics["skipped_updates"] = 1.0 - finite.astype(jnp.float32)
  return TrainState(state.step + 1, params, opt_state), metrics


# The jitted functions of a run, built once and reused by every phase and iteration: a new
# `jax.jit` around a new closure would trace and compile again (minutes per phase at 4B).
_JITTED: dict = {}


def _cached(key, build: Callable) -> Callable:
  if key not in _JITTED:
    _JITTED[key] = build()
  return _JITTED[key]


def _tree_key(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)


def make_train_step(
  cfg: models.ModelConfig,
  lc: LearnerConfig,
  state: TrainState,
  *,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
) -> Callable:
  """The jitted step with explicit in/out shardings and a donated state. The batch takes one
  `batch_sharding` for all its arrays, so it may leave out `old_logp`.

  One function per (model, learner config, mesh, state shardings): every phase that trains a
  role with the same settings gets the same function, which compiles once per batch shape.
  """
  rules = tuple(rules)
  shard = state_shardings(state) if mesh is not None else None

  def build():
    def learner_train_step(s, b):
      return train_step(cfg, lc, s, b, mesh=mesh, rules=rules)

    if mesh is None:
      return jax.jit(learner_train_step, donate_argnums=0)
    return jax.jit(
      learner_train_step,
      in_shardings=(shard, batch_sharding(mesh, rules)),
      out_shardings=(shard, sharding.replicated(mesh)),
      donate_argnums=0,
    )

  key = ("train_step", cfg, lc, mesh, rules, _tree_key(shard) if shard is not None else None)
  return _cached(key, build)


def make_logprob_fn(
  cfg: models.ModelConfig, lc: LearnerConfig, *, mesh=None, rules=sharding.DEFAULT_RULES
) -> Callable:
  """Jitted (params, tokens, kv_mask) -> logp [B, T-1], for pi_old and pi_ref.

  Runs in lc.micro_batches sequential micro-batches, as the train step does, so a mini-batch
  of hundreds of rows never holds all its activations at once. Built once per (model, mesh,
  and the three settings logprobs depend on): roles that differ only in their optimizer or
  loss settings share one function, and so one compiled program per shape.
  """
  rules = tuple(rules)
  temperature, chunk, micro = lc.temperature, lc.logprob_chunk, lc.micro_batches

  def build():
    def one(tokens, kv_mask, params):
      return token_logprobs(
        cfg,
        params,
        tokens,
        kv_mask,
        temperature=temperature,
        chunk_size=chunk,
        mesh=mesh,
        rules=rules,
      )

    def learner_logprobs(params, tokens, kv_mask):
      if micro == 1:
        return one(tokens, kv_mask, params)
      parts = _split_micro({"tokens": tokens, "kv_mask": kv_mask}, micro, strided=True)
      logp = jax.lax.map(lambda mb: one(mb["tokens"], mb["kv_mask"], params), parts)
      return _join_micro(logp)

    return jax.jit(learner_logprobs)

  return _cached(("logprobs", cfg, temperature, chunk, micro, mesh, rules), build)


def cast_params(tree, dtype):
  """The tree with its floating-point leaves in `dtype`, each keeping its sharding (a frozen
  model in the compute dtype: half the bytes of float32 master weights, the same matmuls).
  A tree already in `dtype` is returned as it is."""
  dtype = jnp.dtype(dtype)
  if all(
    x.dtype == dtype or not jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(tree)
  ):
    return tree

  def build():
    def cast_params(p):
      return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, p
      )

    return jax.jit(cast_params)

  return _cached(("cast", dtype), build)(tree)
