"""One decode step's attention as a single fused GPU kernel (Pallas, Triton backend); opt-in.

XLA runs a decode step's attention as a score product, softmax fusions and a value product,
each a kernel of its own. This kernel reads each (row, kv head)'s keys and values once, in
blocks, with an online softmax (flash-decoding without the split over slots), and writes the
normalised mix: one kernel per layer, reading only the slots written so far.

It is not the default, because on an H100 it does not beat XLA (`benchmarks/RESULTS.md`,
session 10): Qwen3-0.6B heads, bf16, one layer in a loop (`decode_attention_sweep.py`), at
the best tile settings it runs at 0.73x XLA's speed at batch 16, 1.22x at 64 and 0.95x at 256;
whole decode steps are within 3% either way. XLA's two batched GEMMs already read the cache
at about 2.2 TB/s at batch 256, and this kernel reaches 1.7 TB/s. What it does give: the decode plans compile in
half the time (26-30 s against 51-57 s per batch size), as XLA no longer autotunes attention's
GEMMs. A split over slots (for small batches) and folding the cache write in are the next
steps; `decode_kernel="pallas"` in `sampling.generate` runs it.

The cache layout is the decode loop's own (`transformer.LAYER_CACHE_AXES`): keys transposed
[B, KV, Dh, S] and values [B, KV, S, Dh], so the kernel needs no copy of either. It reads
slots [0, `num_slots`) only: slots past the current step hold nothing yet.

The Pallas Triton backend is deprecated in jax 0.11 in favour of Mosaic GPU, and still
supported there; it is the backend whose kernels the CPU interpreter runs, so the tests check
this kernel on a laptop. `interpret=True` runs it anywhere.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:
  from jax.experimental.pallas import triton as plgpu
except ImportError:  # a jax without the (deprecated) Triton backend: the XLA ops remain
  plgpu = None

# Triton's dot needs 16 or more rows: the group's queries (2 for Qwen3-0.6B) are read into a
# 16-row tile, the extra rows masked on load and store.
_MIN_DOT_ROWS = 16
# Below any real score, finite so that a block whose slots are all masked cannot make NaNs:
# its weights are wiped by the rescale once a real score arrives.
_MASKED_SCORE = 0.7 * float(jnp.finfo(jnp.float32).min)


def _kernel(q_ref, kt_ref, v_ref, mask_ref, slots_ref, out_ref, *, groups: int, rows: int,
            block_k: int, scale: float):
  """One (batch row, kv head): q [rows >= G, Dh], kt [Dh, S], v [S, Dh], mask [S] (int32),
  slots [] -> out [rows, Dh], rows < G written."""
  head_dim = q_ref.shape[-1]
  row_ok = (jnp.arange(rows) < groups)[:, None]
  q = plgpu.load(q_ref.at[pl.ds(0, rows), :], mask=row_ok, other=0.0)
  num_slots = slots_ref[()]

  def block(i, carry):
    acc, best, total = carry
    slot = i * block_k + jnp.arange(block_k)
    readable = slot < num_slots
    keys_t = plgpu.load(kt_ref.at[:, pl.ds(i * block_k, block_k)], mask=readable[None, :],
                        other=0.0)
    valid = plgpu.load(mask_ref.at[pl.ds(i * block_k, block_k)], mask=readable, other=0)
    scores = plgpu.dot(q, keys_t).astype(jnp.float32) * scale  # [rows, block_k]
    scores = jnp.where((valid != 0)[None, :], scores, _MASKED_SCORE)
    new_best = jnp.maximum(best, jnp.max(scores, axis=1))
    rescale = jnp.exp(best - new_best)
    weights = jnp.exp(scores - new_best[:, None])
    values = plgpu.load(v_ref.at[pl.ds(i * block_k, block_k), :], mask=readable[:, None],
                        other=0.0)
    acc = acc * rescale[:, None] + plgpu.dot(weights.astype(values.dtype), values).astype(
        jnp.float32)
    return acc, new_best, total * rescale + jnp.sum(weights, axis=1)

  init = (jnp.zeros((rows, head_dim), jnp.float32),
          jnp.full((rows,), jnp.finfo(jnp.float32).min, jnp.float32),
          jnp.zeros((rows,), jnp.float32))
  acc, _, total = jax.lax.fori_loop(0, pl.cdiv(num_slots, block_k), block, init)
  plgpu.store(out_ref.at[pl.ds(0, rows), :], (acc / total[:, None]).astype(out_ref.dtype),
              mask=row_ok)


def unsupported_reason(head_dim: int) -> str | None:
  """Why the compiled kernel cannot run a model with these heads, or None if it can: Triton
  tiles must have power-of-two sizes, and its dot 16 or more columns."""
  if plgpu is None:
    return f"jax {jax.__version__} has no Pallas Triton backend"
  if head_dim < _MIN_DOT_ROWS or head_dim & (head_dim - 1):
    return f"head_dim {head_dim} is not a power of two of 16 or more"
  return None


def block_slots(length: int) -> int:
  """Slots per block: 64, or fewer for a short cache (Triton's dot needs 16 or more)."""
  return max(16, min(64, pl.next_power_of_2(length)))


@functools.partial(jax.jit, static_argnames=("scale", "interpret", "block_k", "num_warps",
                                             "num_stages"))
def decode_attention(q: jax.Array, keys_t: jax.Array, values: jax.Array, mask: jax.Array,
                     num_slots: jax.Array, *, scale: float, interpret: bool = False,
                     block_k: int | None = None, num_warps: int = 4,
                     num_stages: int = 2) -> jax.Array:
  """softmax(q k^T * scale, masked) v for one query per row.

  q [B, KV, G, Dh]; keys_t [B, KV, Dh, S]; values [B, KV, S, Dh]; mask [B, S] (nonzero where
  a slot may be attended); num_slots [B] int32, the slots [0, num_slots) to read (every
  attended slot lies below it). Returns [B, KV, G, Dh] in q's dtype. A row must attend at
  least one slot.
  """
  batch, kv_heads, groups, head_dim = q.shape
  length = values.shape[2]
  if keys_t.shape != (batch, kv_heads, head_dim, length) or values.shape != (
      batch, kv_heads, length, head_dim):
    raise ValueError(f"decode_attention: keys_t {keys_t.shape} and values {values.shape} do not "
                     f"match q {q.shape} ([B, KV, Dh, S] and [B, KV, S, Dh] expected)")
  rows = max(_MIN_DOT_ROWS, pl.next_power_of_2(groups))
  kernel = functools.partial(_kernel, groups=groups, rows=rows,
                             block_k=block_k or block_slots(length), scale=scale)
  return pl.pallas_call(
      kernel,
      grid=(batch, kv_heads),
      in_specs=[
          pl.BlockSpec((None, None, rows, head_dim), lambda b, h: (b, h, 0, 0)),
          pl.BlockSpec((None, None, head_dim, length), lambda b, h: (b, h, 0, 0)),
          pl.BlockSpec((None, None, length, head_dim), lambda b, h: (b, h, 0, 0)),
          pl.BlockSpec((None, length), lambda b, h: (b, 0)),
          pl.BlockSpec((None,), lambda b, h: (b,)),
      ],
      out_specs=pl.BlockSpec((None, None, rows, head_dim), lambda b, h: (b, h, 0, 0)),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="decode_attention",
  )(q, keys_t, values, mask.astype(jnp.int32), num_slots.astype(jnp.int32))


def reference(q, keys_t, values, mask, num_slots, *, scale: float) -> jax.Array:
  """The same in plain jnp (float32), for tests."""
  scores = jnp.einsum("bhgd,bhds->bhgs", q.astype(jnp.float32), keys_t.astype(jnp.float32))
  slot = jnp.arange(values.shape[2])
  ok = (mask != 0) & (slot[None, :] < num_slots[:, None])
  scores = jnp.where(ok[:, None, None, :], scores * scale, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bhgs,bhsd->bhgd", probs, values.astype(jnp.float32)).astype(q.dtype)
