"""A pure-functional Flax linen decoder for the Qwen3, Qwen2/2.5 and Llama 3.x families.

The module is only ever used through `apply({'params': params}, ...)`: parameters are plain
pytrees and the KV cache is an explicit pytree that goes in and comes back out.

Every parameter is declared with logical axis names; activations are constrained by logical
names through `sharding.constrain`, which maps them with the rules table. The module never
names a mesh axis.

Layout conventions (shared by the HF/GGUF converters):
  embed/embedding              [V, D]          (vocab, embed)
  layers/...                   leading [L]     (layers, ...)   -- nn.scan over layers
    input_norm/scale           [L, D]
    attn/{q,k,v}_proj/kernel   [L, D, H|KV, Dh]
    attn/{q,k,v}_proj/bias     [L, H|KV, Dh]   (Qwen2)
    attn/{q,k}_norm/scale      [L, Dh]         (Qwen3)
    attn/o_proj/kernel         [L, H, Dh, D]
    post_attn_norm/scale       [L, D]
    mlp/{gate,up}_proj/kernel  [L, D, F];  mlp/down_proj/kernel [L, F, D]
  final_norm/scale             [D]
  lm_head/kernel               [D, V]          (untied models only)

Padding and positions: a row's real tokens are marked by `kv_mask` (True = real token). Each
row gets its own positions (by default the running count of its real tokens), so a left-padded
row yields the same logits as the unpadded row.

Training, prefill and decode share one forward. The KV cache is one stacked array per K and V,
[L, B, KV, S, Dh], carried through the scan over layers and written in place at the call's
slots; `attend` is the one attention hook, and it picks the kernel by backend.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import (
  splash_attention_kernel as splash,
  splash_attention_mask as splash_mask,
)
from jax.sharding import PartitionSpec as P

from rzero_jax import sharding
from rzero_jax.models.config import ModelConfig

Params = Any
KVCache = dict  # {'k': [L, B, KV, S, Dh], 'v': [L, B, KV, S, Dh]}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Heads before slots: each (row, kv head) block of keys is contiguous, so attention's batched
# matmuls read the cache as it lies instead of transposing it every step.
CACHE_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
# A masked attention score: exp of it, less any real score, is exactly 0 in float32, and a
# fully masked row (a padding query) stays finite.
_MASKED_SCORE = -1e30
# "auto" picks by backend (`resolve_kernel`): splash on TPU, cuDNN flash attention on GPU, XLA
# elsewhere, chunked once the queries outgrow `CHUNK`. "splash_interpret" runs the TPU kernel in
# the Pallas interpreter and "cudnn_xla" the cuDNN call's exact arguments through XLA, so both
# are tested on any backend.
ATTENTION_KERNELS = ("auto", "xla", "chunked", "splash", "splash_interpret", "cudnn", "cudnn_xla")
_KERNEL_BY_PLATFORM = {"tpu": "splash", "gpu": "cudnn"}
# Query and key block of the chunked XLA attention; the splash kernel's largest block.
CHUNK = 512


def dtype_of(name: str):
  return _DTYPES[name]


# ----------------------------------------------------------------------------- RoPE


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies, computed in float32 the way transformers does (incl. llama3 scaling)."""
  dim = cfg.head_dim
  inv = 1.0 / (
    np.float32(cfg.rope_theta)
    ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim))
  )
  inv = inv.astype(np.float32)
  s = cfg.rope_scaling
  if s is None:
    return inv
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * np.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
    s.high_freq_factor - s.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """x [B, T, N, Dh], positions [B, T]. Half-split rotation (transformers' rotate_half)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# ----------------------------------------------------------------------------- layers


def _param(module: nn.Module, name: str, init, shape: Sequence[int], axes: tuple, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), dtype)


class RMSNorm(nn.Module):
  eps: float
  dtype: Any
  param_dtype: Any
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x):
    scale = _param(
      self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,), self.param_dtype
    )
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Projection(nn.Module):
  """A kernel of logical shape `in_axes + out_axes`, contracted over the input axes."""

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  dtype: Any
  param_dtype: Any
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = _param(
      self,
      "kernel",
      nn.initializers.normal(0.02),
      self.in_shape + self.out_shape,
      self.in_axes + self.out_axes,
      self.param_dtype,
    )
    n_in = len(self.in_shape)
    y = jax.lax.dot_general(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())),
      preferred_element_type=self.dtype,
    )
    if self.use_bias:
      bias = _param(
        self, "bias", nn.initializers.zeros, self.out_shape, self.out_axes, self.param_dtype
      )
      y = y + bias.astype(self.dtype)
    return y


class Attention(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES
  kernel: str = "auto"  # one of ATTENTION_KERNELS

  @nn.compact
  def __call__(self, x, positions, kv_mask, cache, layer_idx, cache_index):
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    proj = functools.partial(
      Projection,
      in_shape=(d,),
      in_axes=("embed",),
      dtype=dt,
      param_dtype=pdt,
      use_bias=cfg.qkv_bias,
    )
    q = proj(out_shape=(h, hd), out_axes=("heads", "head_dim"), name="q_proj")(x)
    k = proj(out_shape=(kv, hd), out_axes=("kv_heads", "head_dim"), name="k_proj")(x)
    v = proj(out_shape=(kv, hd), out_axes=("kv_heads", "head_dim"), name="v_proj")(x)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, dt, pdt, "head_dim", name="q_norm")(q)
      k = RMSNorm(cfg.rms_norm_eps, dt, pdt, "head_dim", name="k_norm")(k)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions, inv_freq)
    q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"), self.mesh, self.rules)
    k = apply_rope(k, positions, inv_freq).transpose(0, 2, 1, 3)  # [B, KV, T, Dh]
    v = v.transpose(0, 2, 1, 3)
    if cache is None:
      keys, values, cache_index = k, v, 0
    else:
      # This call's keys and values go in place at slots [cache_index, cache_index + T) of
      # this layer's part of the stacked cache; slots not yet written are masked by kv_mask
      # and causality.
      index = (layer_idx, 0, 0, cache_index, 0)
      cache = {
        name: jax.lax.dynamic_update_slice(cache[name], new[None].astype(cache[name].dtype), index)
        for name, new in (("k", k), ("v", v))
      }
      keys, values = cache["k"][layer_idx].astype(dt), cache["v"][layer_idx].astype(dt)
    out = attend(
      q, keys, values, kv_mask, cache_index, kernel=self.kernel, mesh=self.mesh, rules=self.rules
    )
    out = sharding.constrain(out, ("batch", "length", "heads", "head_dim"), self.mesh, self.rules)
    y = Projection(
      in_shape=(h, hd),
      out_shape=(d,),
      in_axes=("heads", "head_dim"),
      out_axes=("embed",),
      dtype=dt,
      param_dtype=pdt,
      name="o_proj",
    )(out)
    return y, cache


# ----------------------------------------------------------------------------- attention


def resolve_kernel(kernel: str, mesh=None) -> str:
  """ "auto" -> the kernel for the backend the program compiles for (the mesh's devices, which
  may be a TPU topology compiled ahead of time on a CPU host, else the default backend)."""
  if kernel not in ATTENTION_KERNELS:
    raise ValueError(f"attention kernel {kernel!r}: expected one of {ATTENTION_KERNELS}")
  if kernel != "auto":
    return kernel
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  return _KERNEL_BY_PLATFORM.get(platform, "chunked")


def attend(
  q,
  k,
  v,
  kv_mask,
  q_start=0,
  *,
  kernel: str = "auto",
  mesh=None,
  rules=sharding.DEFAULT_RULES,
  chunk: int = CHUNK,
):
  """Causal grouped-query attention: the one hook that training, prefill and decode call.

  q [B, T, H, Dh]; k, v [B, KV, S, Dh]; kv_mask [B, S] marks real slots; query t sits at slot
  q_start + t and sees the real slots at or before it. Returns [B, T, H, Dh].
  The splash kernel takes the causal self-attention of T == S (training, prefill), when T is a
  multiple of 128; so does cuDNN (`jax.nn.dot_product_attention`) where it supports the case
  (`_cudnn_fits`). Everything else (decode steps, short or odd lengths, float32 on GPU) runs in
  XLA ops, in query and key blocks of `chunk` with an online softmax once T exceeds `chunk`,
  so no float32 [T, S] matrix is ever whole.
  """
  kernel = resolve_kernel(kernel, mesh)
  t, s = q.shape[1], k.shape[2]
  # T == S: the call writes every slot, so q_start is 0 (dynamic_update_slice clamps).
  if kernel.startswith("splash") and t == s and t % 128 == 0:
    run = functools.partial(_splash, interpret=kernel == "splash_interpret", chunk=chunk)
    return _attend_per_shard(q, k, v, kv_mask, run, mesh, rules)
  if kernel.startswith("cudnn") and t == s and _cudnn_fits(q, k, kernel == "cudnn"):
    # Unmeasured here: timing it against the chunked path is the GPU issue's job.
    implementation = "cudnn" if kernel == "cudnn" else "xla"
    run = functools.partial(_dot_product, implementation=implementation)
    return _attend_per_shard(q, k, v, kv_mask, run, mesh, rules)
  if kernel == "xla" or t <= chunk:
    return _attend_block(q, k, v, _mask(kv_mask, q_start + jnp.arange(t)))
  return _attend_chunked(q, k, v, kv_mask, q_start, chunk)


def _mask(kv_mask, q_slots):
  """[B, T, S]: the real slots at or before each query's slot."""
  k_slots = jnp.arange(kv_mask.shape[1])
  return kv_mask[:, None, :] & (k_slots[None, None, :] <= q_slots[None, :, None])


def _scores(q, k):
  """q [B, T, H, Dh] x k [B, KV, S, Dh] -> float32 [B, KV, G, T, S], scaled."""
  b, t, h, hd = q.shape
  kv = k.shape[1]
  # Plain batched matmuls over (batch, kv head) with the group's queries as rows: XLA:CPU
  # runs the equivalent 5-d einsum through transposes, 3x slower at decode shapes.
  q_rows = q.reshape(b, t, kv, h // kv, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, -1, hd)
  scores = jax.lax.dot_general(
    q_rows, k.astype(q.dtype), (((3,), (3,)), ((0, 1), (0, 1))), preferred_element_type=jnp.float32
  )
  return (scores * hd**-0.5).reshape(b, kv, h // kv, t, -1)


def _mix(weights, v):
  """weights [B, KV, G, T, S] x v [B, KV, S, Dh] -> float32 [B, T, H, Dh]."""
  b, kv, g, t, _ = weights.shape
  out = jax.lax.dot_general(
    weights.astype(v.dtype).reshape(b, kv, g * t, -1),
    v,
    (((3,), (2,)), ((0, 1), (0, 1))),
    preferred_element_type=jnp.float32,
  )
  return out.reshape(b, kv, g, t, -1).transpose(0, 3, 1, 2, 4).reshape(b, t, kv * g, -1)


def _attend_block(q, k, v, mask):
  """Attention over all of k in one block; mask [B, T, S]."""
  scores = jnp.where(mask[:, None, None], _scores(q, k), _MASKED_SCORE)
  return _mix(jax.nn.softmax(scores, axis=-1), v).astype(q.dtype)


def _attend_chunked(q, k, v, kv_mask, q_start, chunk: int):
  """Flash attention in XLA ops: a scan over query blocks, each a scan over key blocks with an
  online softmax. Each query block is rematerialised in the backward pass, so training holds
  one block's [chunk, S] residuals at a time; key blocks wholly after a query block are
  skipped (`lax.cond`)."""
  b, t, h, hd = q.shape
  s = k.shape[2]
  nq, nk = -(-t // chunk), -(-s // chunk)
  q = jnp.pad(q, ((0, 0), (0, nq * chunk - t), (0, 0), (0, 0)))
  k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, nk * chunk - s), (0, 0))) for x in (k, v))
  kv_mask = jnp.pad(kv_mask, ((0, 0), (0, nk * chunk - s)))
  kv, g = k.shape[1], h // k.shape[1]

  @jax.checkpoint
  def query_block(i):
    q_i = jax.lax.dynamic_slice_in_dim(q, i * chunk, chunk, axis=1)
    q_slots = q_start + i * chunk + jnp.arange(chunk)

    def key_block(carry, j):
      def update(carry):
        best, total, acc = carry
        k_j, v_j = (jax.lax.dynamic_slice_in_dim(x, j * chunk, chunk, axis=2) for x in (k, v))
        mask = _mask(
          jax.lax.dynamic_slice_in_dim(kv_mask, j * chunk, chunk, axis=1), q_slots - j * chunk
        )
        scores = jnp.where(mask[:, None, None], _scores(q_i, k_j), _MASKED_SCORE)
        new_best = jnp.maximum(best, jnp.max(scores, axis=-1))
        weights = jnp.exp(scores - new_best[..., None])
        rescale = jnp.exp(best - new_best)
        total = total * rescale + jnp.sum(weights, axis=-1)
        rescale = rescale.transpose(0, 3, 1, 2).reshape(b, chunk, h, 1)
        return new_best, total, acc * rescale + _mix(weights, v_j)

      return jax.lax.cond(j * chunk <= q_slots[-1], update, lambda c: c, carry), None

    init = (
      jnp.full((b, kv, g, chunk), _MASKED_SCORE, jnp.float32),
      jnp.zeros((b, kv, g, chunk), jnp.float32),
      jnp.zeros((b, chunk, h, hd), jnp.float32),
    )
    (_, total, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
    total = total.transpose(0, 3, 1, 2).reshape(b, chunk, h, 1)
    return (acc / total).astype(q.dtype)

  out = jax.lax.map(query_block, jnp.arange(nq))  # [nq, B, chunk, H, Dh]
  return out.transpose(1, 0, 2, 3, 4).reshape(b, nq * chunk, h, hd)[:, :t]


def _cudnn_fits(q, k, check_dtype: bool) -> bool:
  """Whether cuDNN's flash attention takes this T == S call (its documented limits): half
  precision, a head dim that is a multiple of 8 and at most 128 (256 from Hopper on), and an
  even length (it needs one to train with a mask)."""
  hd, t = q.shape[-1], q.shape[1]
  half = q.dtype in (jnp.bfloat16, jnp.float16) and k.dtype == q.dtype
  return (half or not check_dtype) and hd % 8 == 0 and hd <= 128 and t % 2 == 0


def _attend_per_shard(q, k, v, kv_mask, run, mesh, rules):
  """q [B, T, H, Dh] -> `run(q [B, H, T, Dh], k, v [B, KV, S, Dh], segments [B, S])`, with
  left padding as segment ids (1 real, 0 padding) -> [B, T, H, Dh]. Under a mesh it runs per
  shard (`shard_map`): batch over the batch axes, heads over tensor."""
  h = q.shape[2]
  dtype = q.dtype
  q = q.transpose(0, 2, 1, 3)  # [B, H, T, Dh]
  segments = kv_mask.astype(jnp.int32)
  if mesh is None or mesh.size == 1:
    out = run(q, k, v, segments)
  else:
    spec = lambda x, heads: sharding.fit_spec_to_shape(
      sharding.logical_to_spec(("batch", heads, None, None), rules, mesh), x.shape, mesh
    )
    q_spec, kv_spec = spec(q, "heads"), spec(k, "kv_heads")
    if tuple(kv_spec)[1:2] != tuple(q_spec)[1:2]:
      # kv heads split unlike query heads: give each query head its own copy, so each
      # shard's query heads find their keys.
      k, v = (jnp.repeat(x, h // x.shape[1], axis=1) for x in (k, v))
      kv_spec = q_spec
    out = jax.shard_map(
      run,
      mesh=mesh,
      in_specs=(q_spec, kv_spec, kv_spec, P(q_spec[0], None)),
      out_specs=q_spec,
      check_vma=False,
    )(q, k, v, segments)
  return out.transpose(0, 2, 1, 3).astype(dtype)


def _splash(q, k, v, segments, *, interpret: bool, chunk: int):
  """The TPU splash-attention kernel, causal; a padding query sees padding keys only (its
  output is never read)."""
  t, hd = q.shape[2], q.shape[3]
  block = next(size for size in (chunk, 256, 128) if t % size == 0)
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((t, t))] * q.shape[1])
  kernel = splash.make_splash_mha(
    mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )
  return jax.vmap(kernel)(q * hd**-0.5, k, v, splash.SegmentIds(segments, segments))


def _dot_product(q, k, v, segments, *, implementation: str):
  """`jax.nn.dot_product_attention`, causal, with the same segments as splash as a boolean
  [B, 1, T, S] mask (cuDNN wants the mask's full length on both axes, and takes padding as
  sequence lengths only when it is on the right, where ours is on the left): no query row is
  wholly masked, so cuDNN's backward never sees an empty softmax."""
  t = q.shape[2]
  mask = segments[:, None, :t, None] == segments[:, None, None, :]
  out = jax.nn.dot_product_attention(
    q.transpose(0, 2, 1, 3),
    k.transpose(0, 2, 1, 3),
    v.transpose(0, 2, 1, 3),
    mask=mask,
    is_causal=True,
    implementation=implementation,
  )
  return out.transpose(0, 2, 1, 3)


class MLP(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    d, f = cfg.hidden_size, cfg.intermediate_size
    proj = functools.partial(Projection, dtype=dt, param_dtype=pdt)
    up = functools.partial(
      proj, in_shape=(d,), out_shape=(f,), in_axes=("embed",), out_axes=("mlp",)
    )
    hidden = jax.nn.silu(up(name="gate_proj")(x)) * up(name="up_proj")(x)
    hidden = sharding.constrain(hidden, ("batch", "length", "act_mlp"), self.mesh, self.rules)
    down = proj(
      in_shape=(f,), out_shape=(d,), in_axes=("mlp",), out_axes=("embed",), name="down_proj"
    )
    return down(hidden)


class DecoderLayer(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES
  kernel: str = "auto"

  @nn.compact
  def __call__(self, carry, layer_idx, positions, kv_mask, cache_index):
    x, cache = carry
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="input_norm")(x)
    # The whole cache rides in the scan carry and is updated in place at this layer's slots,
    # so a decode step writes one token per layer instead of copying the cache.
    attn_out, cache = Attention(cfg, self.mesh, self.rules, self.kernel, name="attn")(
      h, positions, kv_mask, cache, layer_idx, cache_index
    )
    x = x + attn_out
    h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="post_attn_norm")(x)
    x = x + MLP(cfg, self.mesh, self.rules, name="mlp")(h)
    x = sharding.constrain(x, ("batch", "length", "act_embed"), self.mesh, self.rules)
    return (x, cache), None


_REMAT_POLICIES = {
  "full": None,  # save nothing, recompute everything
  "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Decoder(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES
  kernel: str = "auto"  # the attention kernel (`ATTENTION_KERNELS`)

  def setup(self):
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, pdt, name="embed")
    layer_cls = DecoderLayer
    if cfg.remat != "none":
      layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    self.layers = nn.scan(
      layer_cls,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
      length=cfg.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, self.mesh, self.rules, self.kernel, name="layers")
    self.final_norm = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = Projection(
        in_shape=(cfg.hidden_size,),
        out_shape=(cfg.vocab_size,),
        in_axes=("embed",),
        out_axes=("vocab",),
        dtype=jnp.float32,
        param_dtype=pdt,
        name="lm_head",
      )

  def __call__(self, tokens, positions, kv_mask, cache=None, cache_index=None, return_hidden=False):
    x = self.embed_tokens(tokens)
    (x, cache), _ = self.layers(
      (x, cache), jnp.arange(self.cfg.num_layers), positions, kv_mask, cache_index
    )
    if return_hidden:
      return self.final_norm(x), cache
    return self.logits(x), cache

  def embed_tokens(self, tokens):
    """Tokens [B, T] -> embeddings in the compute dtype (the layers' input)."""
    x = self.embed(tokens).astype(dtype_of(self.cfg.dtype))
    return sharding.constrain(x, ("batch", "length", "act_embed"), self.mesh, self.rules)

  def logits(self, x):
    """The last layer's output -> float32 logits: final norm, then the vocabulary projection."""
    return self.unembed(self.final_norm(x))

  def unembed(self, hidden):
    """Hidden states [..., D] -> float32 logits [..., V]."""
    if self.cfg.tie_word_embeddings:
      table = self.embed.embedding.astype(jnp.float32)
      return jnp.einsum("...d,vd->...v", hidden.astype(jnp.float32), table)
    return self.lm_head(hidden.astype(jnp.float32))


class Embed(nn.Module):
  vocab_size: int
  hidden_size: int
  param_dtype: Any

  def setup(self):
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
      (self.vocab_size, self.hidden_size),
      self.param_dtype,
    )

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0)


# ----------------------------------------------------------------------------- functional API


def _decoder(
  cfg: ModelConfig, mesh=None, rules=sharding.DEFAULT_RULES, kernel: str = "auto"
) -> Decoder:
  return Decoder(cfg, mesh, tuple(rules), resolve_kernel(kernel, mesh))


def default_positions(kv_mask: jax.Array) -> jax.Array:
  """Each row counts its own real tokens: left padding does not shift positions."""
  return jnp.maximum(jnp.cumsum(kv_mask.astype(jnp.int32), axis=-1) - 1, 0)


def _inputs(tokens, positions, kv_mask):
  tokens = jnp.asarray(tokens, jnp.int32)
  if kv_mask is None:
    kv_mask = jnp.ones(tokens.shape, bool)
  kv_mask = jnp.asarray(kv_mask, bool)
  if positions is None:
    positions = default_positions(kv_mask)
  return tokens, jnp.asarray(positions, jnp.int32), kv_mask


def forward(
  cfg: ModelConfig,
  params: Params,
  tokens,
  positions=None,
  kv_mask=None,
  *,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
  kernel: str = "auto",
  return_hidden: bool = False,
) -> jax.Array:
  """tokens int32 [B, T] -> float32 logits [B, T, V], or with `return_hidden` the final-normed
  hidden states [B, T, D] in the compute dtype. kv_mask marks real (non-pad) tokens; `kernel`
  picks the attention (`ATTENTION_KERNELS`)."""
  tokens, positions, kv_mask = _inputs(tokens, positions, kv_mask)
  out, _ = _decoder(cfg, mesh, rules, kernel).apply(
    {"params": params}, tokens, positions, kv_mask, return_hidden=return_hidden
  )
  return out


def hidden_states(cfg: ModelConfig, params: Params, tokens, *args, **kwargs) -> jax.Array:
  """`forward`'s final-normed hidden states [B, T, D] (for chunked projections)."""
  return forward(cfg, params, tokens, *args, return_hidden=True, **kwargs)


def unembed(cfg: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
  """Hidden states [..., D] -> float32 logits [..., V]."""
  return _decoder(cfg).apply({"params": params}, hidden, method=Decoder.unembed)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
  dtype = dtype or dtype_of(cfg.dtype)
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def cache_logical_axes() -> KVCache:
  return {"k": CACHE_AXES, "v": CACHE_AXES}


def forward_with_cache(
  cfg: ModelConfig,
  params: Params,
  tokens,
  positions,
  kv_mask,
  cache: KVCache,
  cache_index,
  *,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
  return_hidden=False,
  kernel: str = "auto",
):
  """Runs `tokens` [B, T] at cache slots [cache_index, cache_index + T): prefill (T = S, index
  0) and each decode step (T = 1) alike.

  kv_mask [B, S] marks the cache slots that hold (or will hold) real tokens. Returns
  (float32 logits [B, T, V] or hidden states, updated cache).
  """
  return _decoder(cfg, mesh, rules, kernel).apply(
    {"params": params},
    jnp.asarray(tokens, jnp.int32),
    jnp.asarray(positions, jnp.int32),
    jnp.asarray(kv_mask, bool),
    cache,
    jnp.asarray(cache_index, jnp.int32),
    return_hidden=return_hidden,
  )


def _abstract_boxed(cfg: ModelConfig):
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(
    lambda: _decoder(cfg).init(jax.random.key(0), tokens, tokens, tokens.astype(bool))
  )


def param_logical_axes(cfg: ModelConfig) -> Params:
  """The logical axis names of every parameter, as a pytree of tuples matching the params."""
  boxed = _abstract_boxed(cfg)["params"]
  return jax.tree.map(
    lambda p: tuple(p.names), boxed, is_leaf=lambda p: isinstance(p, nn.LogicallyPartitioned)
  )


def abstract_params(cfg: ModelConfig) -> Params:
  """ShapeDtypeStructs of every parameter, without allocating anything."""
  return nn.unbox(_abstract_boxed(cfg)["params"])


def param_shardings(cfg: ModelConfig, mesh, rules=sharding.DEFAULT_RULES) -> Params:
  return sharding.shardings_for(abstract_params(cfg), param_logical_axes(cfg), mesh, rules)


def init_params(
  cfg: ModelConfig, rng: jax.Array, mesh=None, rules=sharding.DEFAULT_RULES
) -> Params:
  """Random parameters, created directly in their target shardings when a mesh is given."""
  tokens = jnp.zeros((1, 1), jnp.int32)

  def init(key):
    return nn.unbox(_decoder(cfg).init(key, tokens, tokens, tokens.astype(bool))["params"])

  if mesh is None:
    return jax.jit(init)(rng)
  return jax.jit(init, out_shardings=param_shardings(cfg, mesh, rules))(rng)
