"""Batched autoregressive sampling: one jitted prefill, then a jitted `lax.while_loop` decode.

Shapes are bucketed so compilation stays bounded: prompts are left-padded to a power-of-two
length (at least `MIN_PROMPT_BUCKET`) and the prompt count is padded to a batch bucket (see
`batch_bucket`). The static part of each jitted function is a frozen `_Plan` (config, buckets,
budget, samples per prompt, mesh); everything that varies per call (temperature, top-k, top-p,
seed, stop tokens) is an array, and greedy / top-k / top-p are runtime branches (`lax.cond`),
so changing any of them never recompiles.

Prefill runs every prompt once over a cache of the prompt bucket's length and samples the
first token of each row; decode repeats each prompt's cache `n` times into the rows' cache of
`prompt_bucket + max_new_tokens` slots, feeds one token per step through the same forward
(`models.forward_with_cache`), writing it in place into that cache, and stops when every row
has emitted a stop token or the budget is spent.

Sampling rules (the usual ones): temperature 0 is greedy; otherwise logits are divided by the
temperature, top-k keeps the k largest, and top-p then keeps the smallest set of the largest
tokens whose probability (renormalised after top-k) sums to at least top_p, always the top-1.
Over vocabularies of 8,192 tokens or more, top-k alone or top-p alone (top_p >= 0.8) draw by
rejection instead of searching for the threshold: just as exact, and 3-4x cheaper when the
candidates land inside (`sample_truncated`).
The recorded logprob is log_softmax(logits / T) of the untruncated distribution (T = 1 when
greedy), so it is comparable with the trainer's. The key of step s is fold_in(key(seed), s).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rzero_jax import models, multihost, sharding
from rzero_jax.models.config import ModelConfig

MIN_PROMPT_BUCKET = 16
# Up to this many prompts the batch bucket is a power of two; above it, a multiple of it. That
# bounds the number of compiled shapes while wasting at most this many padding rows.
BATCH_BUCKET_STEP = 64

# Number of traces of each jitted body. Tracing happens exactly when jit (re)compiles for a
# new static plan or new shapes, so this is the compilation count the tests watch.
_TRACES: collections.Counter = collections.Counter()


def compile_count() -> int:
  """How many times the prefill and decode functions have been traced (= compiled)."""
  return sum(_TRACES.values())


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  tokens: list[list[int]]  # completion only, cut after the first stop token
  logprobs: list[list[float]]  # per token, under the temperature-scaled distribution
  finish_reasons: list[str]  # "stop" | "length"


# ----------------------------------------------------------------------------- sizes


def prompt_bucket(length: int, min_bucket: int = MIN_PROMPT_BUCKET) -> int:
  """The padded prompt length: the next power of two, at least `min_bucket`."""
  return max(min_bucket, 1 << max(0, int(length) - 1).bit_length())


def batch_bucket(num_prompts: int, multiple: int = 1) -> int:
  """The padded prompt count: a power of two up to BATCH_BUCKET_STEP, then a multiple of it;
  always a multiple of `multiple` (the number of batch shards of the mesh)."""
  if num_prompts <= BATCH_BUCKET_STEP:
    size = 1 << max(0, num_prompts - 1).bit_length()
  else:
    size = -(-num_prompts // BATCH_BUCKET_STEP) * BATCH_BUCKET_STEP
  return -(-size // multiple) * multiple


def prompts_per_call(max_rows: int, n: int, mesh=None, rules=sharding.DEFAULT_RULES) -> int:
  """The most prompts one `generate` call may take so that its rows, after the prompt count is
  padded to `batch_bucket`, stay within `max_rows` (at least 1)."""
  multiple = _batch_shards(mesh, tuple(rules))
  prompts = max(1, max_rows // n)
  while prompts > 1 and batch_bucket(prompts, multiple) * n > max_rows:
    prompts -= 1
  return prompts


def kv_cache_bytes(cfg: ModelConfig, batch: int, length: int, dtype=None) -> int:
  """Bytes of a K+V cache: layers x batch x kv_heads x length x head_dim x 2 x itemsize."""
  itemsize = jnp.dtype(dtype or models.transformer.dtype_of(cfg.dtype)).itemsize
  return cfg.num_layers * batch * cfg.num_kv_heads * length * cfg.head_dim * 2 * itemsize


# ----------------------------------------------------------------------------- sampling rules


def _ordered_keys(x: jax.Array) -> jax.Array:
  """float32 -> uint32 with the same order, so thresholds can be bisected over integers."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest_threshold(keys: jax.Array, holds) -> jax.Array:
  """Per row, the largest key t (one of the row's keys) such that holds(keys >= t) is True.

  `holds` must be monotone: true for the whole row (t = row min), and once false for some t,
  false for every larger t. Bisection over the 32-bit keys finds t exactly in 32 O(V) passes,
  with no sort of the vocabulary (a sort of [B, V] per step costs more than this on every
  backend we target).
  """
  lo = jnp.min(keys, axis=-1)  # holds by assumption
  hi = jnp.max(keys, axis=-1)

  def step(_, bounds):
    lo, hi = bounds
    gap = hi - lo
    mid = lo + (gap >> 1) + (gap & 1)  # ceil((lo + hi) / 2) without overflow
    ok = holds(keys >= mid[:, None])
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 32, step, (lo, hi))
  return lo


def truncate_logits(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Sets logits outside the top-k / top-p (nucleus) set to -inf. scaled: [B, V] float32.

  top_k <= 0 or >= V and top_p >= 1 switch a rule off. The switches are runtime conditions,
  not static flags, so one compiled program serves every setting and an inactive rule costs
  nothing. Ties at the boundary are all kept (the set is defined by a logit threshold).
  """
  vocab = scaled.shape[-1]
  top_k = jnp.asarray(top_k, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  keys = _ordered_keys(scaled)
  everything = jnp.ones(scaled.shape, bool)

  def top_k_set(_):
    t = _largest_threshold(keys, lambda mask: jnp.sum(mask, axis=-1) >= top_k)
    return keys >= t[:, None]

  def nucleus(keep):
    probs = jax.nn.softmax(jnp.where(keep, scaled, -jnp.inf), axis=-1)
    t = _largest_threshold(keys, lambda mask: jnp.sum(jnp.where(mask, probs, 0.0), -1) >= top_p)
    return keep & (keys >= t[:, None])

  keep = jax.lax.cond((top_k > 0) & (top_k < vocab), top_k_set, lambda _: everything, None)
  keep = jax.lax.cond(top_p < 1.0, nucleus, lambda k: k, keep)
  return jnp.where(keep, scaled, -jnp.inf)


_CDF_BLOCK = 128


def categorical(key: jax.Array, logits: jax.Array, num: int | None = None) -> jax.Array:
  """One token per row from softmax(logits) [B, V] (or, given `num`, [B, num] independent
  tokens per row); -inf logits are never drawn.

  Inverts the CDF in two levels (which block of 128 tokens, then which token inside it): one
  pass over the vocabulary, shared by all of a row's draws, and one uniform per draw.
  `jax.random.categorical` draws a Gumbel per token instead, which on CPU costs more than a
  small model's whole decode step.
  """
  rows, vocab = logits.shape
  shape = (rows,) if num is None else (rows, num)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  pad = (-vocab) % _CDF_BLOCK
  if pad:
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  blocks = weights.reshape(rows, -1, _CDF_BLOCK)
  block_mass = jnp.sum(blocks, axis=-1)
  block_cdf = jnp.cumsum(block_mass, axis=-1)
  target = jax.random.uniform(key, shape, jnp.float32).reshape(rows, -1) * block_cdf[:, -1:]
  block = _first_above(block_cdf[:, None], target, (block_mass > 0)[:, None])  # [B, draws]
  inner = jnp.take_along_axis(blocks, block[:, :, None], axis=1)  # [B, draws, block]
  mass_before = jnp.take_along_axis(block_cdf - block_mass, block, axis=1)
  offset = _first_above(jnp.cumsum(inner, axis=-1), target - mass_before, inner > 0)
  return (block * _CDF_BLOCK + offset).astype(jnp.int32).reshape(shape)


def _first_above(cdf: jax.Array, target: jax.Array, positive: jax.Array) -> jax.Array:
  """Per target, the first index whose cdf (last axis, broadcast against target's) exceeds
  it: always an entry of positive weight, since the cdf only rises there. Rounding can put
  target outside [0, total); clamping to the first / last positive entry keeps zero-weight
  entries unreachable even then."""
  n = cdf.shape[-1]
  index = jnp.sum(cdf <= target[..., None], axis=-1)
  positions = jnp.arange(n)
  first = jnp.min(jnp.where(positive, positions, n), axis=-1)
  last = jnp.max(jnp.where(positive, positions, -1), axis=-1)
  return jnp.clip(index, first, last)


# Draws by rejection (`sample_truncated`): candidates per row, and the smallest top_p that
# takes that route. A candidate falls outside the nucleus with probability at most 1 - top_p,
# so all four miss with at most 0.2^4 = 0.16% at top_p 0.8 (1e-8 at R-Zero's 0.99). Top-k
# has no such bound: a trained model's top 40 tokens hold most of the mass (SmolLM2-135M on
# worked math: 0.994-0.998 on average, 0.94 at least), a random model's almost none.
REJECTION_CANDIDATES = 4
REJECTION_MIN_TOP_P = 0.8
# Below this vocabulary the threshold search is cheap, and compiling the rejection route as
# well costs more than it saves: 0.6-1.7 s more per sampling plan on a CPU, which took the
# default run (vocabulary 256) from 141 to 184 s.
REJECTION_MIN_VOCAB = 8192


def truncation_candidates(
  key: jax.Array, scaled: jax.Array, top_k, top_p, candidates: int = REJECTION_CANDIDATES
) -> tuple[jax.Array, jax.Array]:
  """`candidates` independent draws per row from the untruncated softmax(scaled) [B, V], and
  whether each survives top-k (top_k in (0, V)) or top-p (top_p < 1), one rule at a time:
  ([B, C] tokens, [B, C] bool).

  A token survives top-k exactly when fewer than top_k tokens lie strictly above it, and
  top-p (the smallest set of the largest tokens holding top_p of the mass, ties at the
  boundary kept: `truncate_logits`) exactly when the tokens strictly above it hold less than
  top_p. That is one masked sum per candidate, where the threshold search takes 32.
  """
  vocab = scaled.shape[-1]
  keys = _ordered_keys(scaled)
  k_active = (top_k > 0) & (top_k < vocab)
  # One weight per token, so that one masked sum per candidate gives either rule's measure: a
  # count (exact in float32 below 2^24 tokens) or a mass. The sums run in a loop: written as
  # one sum over a [B, C, V] comparison, or as C sums side by side, XLA:CPU materialised the
  # masked weights (148 MiB per candidate at 256 rows of 151,936 tokens).
  weight = jnp.where(k_active, 1.0, jax.nn.softmax(scaled, axis=-1))
  drawn = categorical(key, scaled, candidates)
  drawn_keys = jnp.take_along_axis(keys, drawn, axis=-1)

  def masked_sum(c, above):
    threshold = jax.lax.dynamic_slice_in_dim(drawn_keys, c, 1, axis=1)
    total = jnp.sum(jnp.where(keys > threshold, weight, 0.0), axis=-1, keepdims=True)
    return jax.lax.dynamic_update_slice_in_dim(above, total, c, axis=1)

  above = jax.lax.fori_loop(0, candidates, masked_sum, jnp.zeros(drawn.shape, jnp.float32))
  return drawn, above < jnp.where(k_active, jnp.asarray(top_k, jnp.float32), top_p)


def _first_accepted(drawn: jax.Array, accepted: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each row's first accepted candidate (any token where none is) and whether there is one."""
  candidates = drawn.shape[-1]
  first = jnp.min(jnp.where(accepted, jnp.arange(candidates), candidates), axis=-1)
  token = jnp.take_along_axis(drawn, jnp.minimum(first, candidates - 1)[:, None], axis=-1)
  return token[:, 0], first < candidates


def sample_truncated(
  key: jax.Array,
  scaled: jax.Array,
  top_k,
  top_p,
  candidates: int = REJECTION_CANDIDATES,
  rejection_min_top_p: float = REJECTION_MIN_TOP_P,
  rejection_min_vocab: int = REJECTION_MIN_VOCAB,
) -> jax.Array:
  """One token per row from softmax(scaled) after top-k and top-p (`truncate_logits`), exactly.

  Over a vocabulary of `rejection_min_vocab` or more (a static choice), top-k alone, or top-p
  alone at top_p >= `rejection_min_top_p` (R-Zero's rollouts: top-p 0.95 and 0.99; its
  answers: top-k 40), draw by rejection: each row takes its first candidate
  (`truncation_candidates`) that survives the rule, and an accepted draw follows the
  renormalised truncated distribution. That is a few passes over the vocabulary where the
  threshold search takes 32 (top-p doubled a decode step on an H100). Rows whose candidates
  all miss, and every other setting, truncate and then draw; that pass runs only on steps
  where some row needs it. Misses draw with their own key, so the rejection route stays exact
  whatever the miss rate; other settings draw with `key` itself. FlashInfer's sampling kernels
  avoid sorting the same way.
  """
  rows, vocab = scaled.shape
  top_k = jnp.asarray(top_k, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  if vocab < rejection_min_vocab:
    return categorical(key, truncate_logits(scaled, top_k, top_p))
  k_active = (top_k > 0) & (top_k < vocab)
  p_active = top_p < 1.0
  by_rejection = (k_active & ~p_active) | (~k_active & p_active & (top_p >= rejection_min_top_p))

  def candidates_route(_):
    return _first_accepted(
      *truncation_candidates(jax.random.fold_in(key, 1), scaled, top_k, top_p, candidates)
    )

  def no_candidates(_):
    return jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool)

  token, found = jax.lax.cond(by_rejection, candidates_route, no_candidates, None)

  def truncate_and_draw(_):
    exact_key = jax.lax.cond(by_rejection, lambda: jax.random.fold_in(key, 2), lambda: key)
    return categorical(exact_key, truncate_logits(scaled, top_k, top_p))

  exact = jax.lax.cond(jnp.all(found), lambda _: token, truncate_and_draw, None)
  return jnp.where(found, token, exact)


def draw_by_rejection(
  key: jax.Array, scaled: jax.Array, top_k, top_p, candidates: int = REJECTION_CANDIDATES
) -> jax.Array:
  """`sample_truncated`'s rejection route for one rule (top-k or top-p) whatever the
  vocabulary and top_p: for tests and benchmarks (below REJECTION_MIN_TOP_P most steps would
  pay for the exact route as well)."""
  return sample_truncated(
    key, scaled, top_k, top_p, candidates, rejection_min_top_p=0.0, rejection_min_vocab=0
  )


def sample_tokens(logits: jax.Array, key: jax.Array, knobs: dict) -> tuple[jax.Array, jax.Array]:
  """logits [B, V] float32 -> (tokens [B] int32, logprobs [B] float32).

  knobs: {'temperature', 'top_k', 'top_p'} scalar arrays.
  """
  temperature = knobs["temperature"]

  def greedy(_):
    return greedy_tokens(logits)

  def sample(_):
    scaled = logits / temperature
    tokens = sample_truncated(key, scaled, knobs["top_k"], knobs["top_p"])
    return tokens, _logprob_of(scaled, tokens)

  return jax.lax.cond(temperature <= 0, greedy, sample, None)


def greedy_tokens(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """logits [B, V] -> (first index of each row's maximum, its log-probability).

  Two plain reductions instead of `jnp.argmax`: XLA:CPU lowers argmax to a variadic
  (value, index) reduce that it neither vectorises nor keeps on one thread, and at the tiny
  model's [16, 256] that one reduce took a fifth of the decode step.
  """
  vocab = logits.shape[-1]
  best = jnp.max(logits, axis=-1, keepdims=True)
  positions = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  tokens = jnp.min(jnp.where(logits == best, positions, vocab), axis=-1)
  # A NaN row matches nowhere; clamp so the token stays a valid id.
  tokens = jnp.minimum(tokens, vocab - 1)
  logprobs = -jnp.log(jnp.sum(jnp.exp(logits - best), axis=-1))
  return tokens, logprobs


def _logprob_of(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log_softmax(logits)[tokens] without materialising the [B, V] log-probabilities."""
  chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
  return chosen - jax.nn.logsumexp(logits, axis=-1)


# ----------------------------------------------------------------------------- jitted parts


@dataclasses.dataclass(frozen=True)
class _Plan:
  """The static part of the jitted functions: everything that fixes a shape or the program."""

  cfg: ModelConfig
  prompt_bucket: int
  max_new_tokens: int
  n: int
  pad_id: int
  mesh: Any
  rules: tuple

  @property
  def cache_length(self) -> int:
    return self.prompt_bucket + self.max_new_tokens

  def constrain_cache(self, cache):
    axes = models.cache_logical_axes()
    return {
      name: sharding.constrain(x, axes[name], self.mesh, self.rules) for name, x in cache.items()
    }

  def constrain_rows(self, x):
    return sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1), self.mesh, self.rules)

  def kv_mask(self, prompt_lens, length):
    """[B, length]: slot s holds a real token iff it is not left padding."""
    return jnp.arange(length)[None, :] >= (self.prompt_bucket - prompt_lens)[:, None]


@functools.partial(jax.jit, static_argnums=0)
def _prefill(plan: _Plan, params, tokens, prompt_lens, live, stop_mask, knobs):
  """Runs the prompts and samples token 0: (the decode state, rows = prompts x n; the
  prompts' cache, one row per prompt)."""
  _TRACES["prefill"] += 1
  cfg, n = plan.cfg, plan.n
  num_prompts, bucket = tokens.shape
  kv_mask = plan.kv_mask(prompt_lens, bucket)
  cache = plan.constrain_cache(models.init_cache(cfg, num_prompts, bucket))
  hidden, cache = models.forward_with_cache(
    cfg,
    params,
    tokens,
    models.default_positions(kv_mask),
    kv_mask,
    cache,
    0,
    mesh=plan.mesh,
    rules=plan.rules,
    return_hidden=True,
  )
  # Only the last position's logits are needed: never materialise [B, T, V].
  logits = models.unembed(cfg, params, hidden[:, -1])

  # Sample j of prompt i is row i * n + j; repeating after prefill runs each prompt once.
  rows = num_prompts * n
  logits = plan.constrain_rows(jnp.repeat(logits, n, axis=0))
  prompt_lens = plan.constrain_rows(jnp.repeat(prompt_lens, n, axis=0))
  live = plan.constrain_rows(jnp.repeat(live, n, axis=0))
  base_key = jax.random.key(knobs["seed"])
  first, first_lp = sample_tokens(logits, jax.random.fold_in(base_key, 0), knobs)
  first = jnp.where(live, first, plan.pad_id)
  out_tokens = jnp.full((rows, plan.max_new_tokens), plan.pad_id, jnp.int32)
  out_logprobs = jnp.zeros((rows, plan.max_new_tokens), jnp.float32)
  state = {
    "tokens": plan.constrain_rows(out_tokens.at[:, 0].set(first)),
    "logprobs": plan.constrain_rows(out_logprobs.at[:, 0].set(jnp.where(live, first_lp, 0.0))),
    "lengths": live.astype(jnp.int32),
    "done": ~live | stop_mask[first],
    "prompt_lens": prompt_lens,
    "step": jnp.asarray(1, jnp.int32),
  }
  return state, cache


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _decode(plan: _Plan, params, state, prompt_cache, stop_mask, knobs):
  """Feeds the last sampled token until every row is done or the budget is spent.

  `prompt_cache` is the prefill's, one row per prompt: each row's cache of `cache_length`
  slots is built from it here, so the call holds no argument of the decode cache's size. The
  cache is not returned.
  """
  _TRACES["decode"] += 1
  cfg, bucket, length = plan.cfg, plan.prompt_bucket, plan.cache_length
  base_key = jax.random.key(knobs["seed"])
  kv_mask = plan.kv_mask(state["prompt_lens"], length)

  def decode_one(s):
    step = s["step"]
    last = jax.lax.dynamic_slice_in_dim(s["tokens"], step - 1, 1, axis=1)  # [B, 1]
    positions = (s["prompt_lens"] + step - 1)[:, None]
    logits, cache = models.forward_with_cache(
      cfg,
      params,
      last,
      positions,
      kv_mask,
      s["cache"],
      bucket + step - 1,
      mesh=plan.mesh,
      rules=plan.rules,
    )
    token, logprob = sample_tokens(logits[:, 0], jax.random.fold_in(base_key, step), knobs)
    done = s["done"]
    token = jnp.where(done, plan.pad_id, token)
    logprob = jnp.where(done, 0.0, logprob)
    return dict(
      s,
      cache=plan.constrain_cache(cache),
      tokens=jax.lax.dynamic_update_slice_in_dim(s["tokens"], token[:, None], step, 1),
      logprobs=jax.lax.dynamic_update_slice_in_dim(s["logprobs"], logprob[:, None], step, 1),
      lengths=s["lengths"] + (~done).astype(jnp.int32),
      done=done | stop_mask[token],
      step=step + 1,
    )

  # Sample j of prompt i is row i * n + j; the prompt fills slots [0, bucket).
  pad = ((0, 0), (0, 0), (0, 0), (0, length - bucket), (0, 0))
  cache = {name: jnp.pad(jnp.repeat(x, plan.n, axis=1), pad) for name, x in prompt_cache.items()}
  state = dict(state, cache=plan.constrain_cache(cache))
  state = jax.lax.while_loop(
    lambda s: (s["step"] < plan.max_new_tokens) & ~jnp.all(s["done"]), decode_one, state
  )
  del state["cache"]
  return state


# ----------------------------------------------------------------------------- host API


def _check_args(
  caller: str,
  cfg: ModelConfig,
  prompts,
  max_new_tokens,
  temperature,
  top_p,
  top_k,
  n,
  stop_token_ids,
):
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise ValueError(
      f"{caller}: prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}"
    )
  for i, p in enumerate(prompts):
    if isinstance(p, (str, bytes)) or len(p) == 0:
      raise ValueError(
        f"{caller}: prompts[{i}] must be a non-empty list of token ids, got {p!r:.60}"
      )
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"{caller}: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if not (temperature >= 0 and math.isfinite(temperature)):
    raise ValueError(f"{caller}: temperature must be finite and >= 0, got {temperature!r}")
  if not 0 < top_p <= 1:
    raise ValueError(f"{caller}: top_p must be in (0, 1], got {top_p!r}")
  if not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"{caller}: top_k must be an int >= 0 (0 = off), got {top_k!r}")
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{caller}: n must be an int >= 1, got {n!r}")
  for t in stop_token_ids:
    if not 0 <= int(t) < cfg.vocab_size:
      raise ValueError(
        f"{caller}: stop token id {t} is outside the vocabulary [0, {cfg.vocab_size})"
      )


def _pack_prompts(caller: str, prompts, num_rows: int, bucket: int, vocab_size: int, pad_id: int):
  """Left-pads prompts into [num_rows, bucket]; rows past len(prompts) are dead padding."""
  tokens = np.full((num_rows, bucket), pad_id, np.int32)
  lens = np.ones((num_rows,), np.int32)
  for i, p in enumerate(prompts):
    ids = np.asarray(p)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(
        f"{caller}: prompts[{i}] must be a flat list of int token ids, got {p!r:.60}"
      )
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
      raise ValueError(
        f"{caller}: prompts[{i}] holds token id {int(bad[0])} outside the "
        f"vocabulary [0, {vocab_size})"
      )
    tokens[i, bucket - len(ids) :] = ids
    lens[i] = len(ids)
  live = np.arange(num_rows) < len(prompts)
  return tokens, lens, live


def _batch_shards(mesh, rules) -> int:
  if mesh is None:
    return 1
  entry = sharding.logical_to_spec(("batch",), rules, mesh)[0]
  axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
  return math.prod(mesh.shape[a] for a in axes)


@functools.lru_cache(maxsize=16)
def _param_shardings(cfg: ModelConfig, mesh, rules):
  return models.param_shardings(cfg, mesh, rules)


def _place(plan: _Plan, params, row_arrays, replicated_arrays):
  if plan.mesh is None:
    return params, row_arrays, replicated_arrays
  params = jax.device_put(params, _param_shardings(plan.cfg, plan.mesh, plan.rules))
  row_spec = sharding.logical_to_spec(("batch",), plan.rules, plan.mesh)
  rows = [
    jax.device_put(x, NamedSharding(plan.mesh, PartitionSpec(*row_spec, *([None] * (x.ndim - 1)))))
    for x in row_arrays
  ]
  repl = jax.device_put(replicated_arrays, sharding.replicated(plan.mesh))
  return params, rows, repl


def _setup(
  caller: str, cfg: ModelConfig, params, prompts, max_new_tokens, n, mesh, rules, knob_args
):
  """Checks the arguments; returns the plan and `_prefill`'s placed arguments after it.
  `knob_args`: `generate`'s temperature, top_p, top_k, seed and stop_token_ids."""
  temperature, top_p, top_k, seed = (
    knob_args[k] for k in ("temperature", "top_p", "top_k", "seed")
  )
  stop_token_ids = tuple(int(t) for t in knob_args["stop_token_ids"])
  _check_args(caller, cfg, prompts, max_new_tokens, temperature, top_p, top_k, n, stop_token_ids)
  rules = tuple(rules)
  pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
  plan = _Plan(
    cfg=cfg,
    prompt_bucket=prompt_bucket(max(len(p) for p in prompts)),
    max_new_tokens=int(max_new_tokens),
    n=int(n),
    pad_id=int(pad_id),
    mesh=mesh,
    rules=rules,
  )
  num_rows = batch_bucket(len(prompts), _batch_shards(mesh, rules))
  tokens, prompt_lens, live = _pack_prompts(
    caller, prompts, num_rows, plan.prompt_bucket, cfg.vocab_size, plan.pad_id
  )
  stop_mask = np.zeros((cfg.vocab_size,), bool)
  stop_mask[list(stop_token_ids)] = True
  knobs = {
    "temperature": np.float32(temperature),
    "top_p": np.float32(top_p),
    "top_k": np.int32(top_k),
    "seed": np.uint32(seed % (1 << 32)),
  }
  params, (tokens, prompt_lens, live), (stop_mask, knobs) = _place(
    plan, params, (tokens, prompt_lens, live), (stop_mask, knobs)
  )
  return plan, (params, tokens, prompt_lens, live, stop_mask, knobs)


def generate(
  cfg: ModelConfig,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int = 64,
  temperature: float = 1.0,
  top_p: float = 1.0,
  top_k: int = 0,
  n: int = 1,
  seed: int = 0,
  stop_token_ids: Sequence[int] = (),
  mesh=None,
  rules=sharding.DEFAULT_RULES,
) -> SampleOutput:
  """Samples `n` completions per prompt. Row i * n + j of the output is sample j of prompt i.

  Completions are cut after (and including) the first stop token; finish reason "stop" if one
  was emitted, else "length". Under a mesh, rows are split over the batch axes and heads over
  tensor, following `rules`.
  """
  knob_args = dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
  knob_args["stop_token_ids"] = stop_token_ids
  plan, args = _setup("generate", cfg, params, prompts, max_new_tokens, n, mesh, rules, knob_args)
  params, _, _, _, stop_mask, knobs = args
  state, prompt_cache = _prefill(plan, *args)
  state = _decode(plan, params, state, prompt_cache, stop_mask, knobs)
  del prompt_cache
  # Rows are split over the batch axes, possibly across processes: gathered to every host.
  out_tokens, out_logprobs, lengths, done = multihost.to_host(
    (state["tokens"], state["logprobs"], state["lengths"], state["done"])
  )
  del state

  real = len(prompts) * n
  return SampleOutput(
    tokens=[out_tokens[r, : lengths[r]].tolist() for r in range(real)],
    logprobs=[out_logprobs[r, : lengths[r]].tolist() for r in range(real)],
    # `done` is only ever set by a stop token; running out of budget leaves it False.
    finish_reasons=["stop" if done[r] else "length" for r in range(real)],
  )


def peak_memory_bytes(
  cfg: ModelConfig,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int = 64,
  n: int = 1,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
) -> int:
  """Device bytes `generate` holds at its peak for these shapes, weights included, as the
  compiler plans it (per device under a mesh): the larger of prefill's and decode's.

  Decode's peak is above its KV cache (`kv_cache_bytes` of `prompt_bucket + max_new_tokens`
  slots) by the prompts' cache, which it holds while it builds the rows' cache.
  """
  # Any knobs: their values are placed scalars, which do not change the programs.
  knob_args = dict(temperature=1.0, top_p=1.0, top_k=0, seed=0, stop_token_ids=())
  plan, args = _setup(
    "peak_memory_bytes", cfg, params, prompts, max_new_tokens, n, mesh, rules, knob_args
  )
  params, _, _, _, stop_mask, knobs = args

  def peak(compiled):
    stats = compiled.memory_analysis()
    return (
      stats.argument_size_in_bytes
      + stats.output_size_in_bytes
      - stats.alias_size_in_bytes
      + stats.temp_size_in_bytes
    )

  prefill = _prefill.lower(plan, *args).compile()
  state, prompt_cache = prefill.out_info  # shapes with the shardings prefill gives them
  decode = _decode.lower(plan, params, state, prompt_cache, stop_mask, knobs).compile()
  return max(peak(prefill), peak(decode))
