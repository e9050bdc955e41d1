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
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax import sharding
from rzero_jax.models import decode_attention
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
DECODE_KERNELS = ("xla", "pallas", "pallas_interpret")
# The decode loop's per-layer caches (`split_cache`) hold the keys transposed, as
# 'kt' [B, KV, Dh, S]: the score product q [G, Dh] x kt [Dh, S] is then a plain one, which
# XLA:CPU runs 14-15% faster per decode step than q x k^T at batch 64 and 512 (tiny model).
# 'v1' [B, KV, S, Dh + 1] is 'v' with a trailing column of ones (`split_cache(...,
# with_totals=True)`): the value product then yields the softmax's row sums as its last column,
# attention's exp has that product as its only consumer, and XLA:CPU runs score product,
# softmax and value product as one YNNPACK fusion instead of three (tiny model, one layer's
# attention at 16 rows x 160 slots: 29 -> 20 us a step; at 64 rows 111 -> 76 us).
LAYER_CACHE_AXES = {"kt": ("batch", "kv_heads", "head_dim", "cache_length"),
                    "v": ("batch", "kv_heads", "cache_length", "head_dim"),
                    "v1": ("batch", "kv_heads", "cache_length", "head_dim")}


def dtype_of(name: str):
  return _DTYPES[name]


# ----------------------------------------------------------------------------- RoPE

def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies, computed in float32 the way transformers does (incl. llama3 scaling)."""
  dim = cfg.head_dim
  inv = 1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, dim, 2, dtype=np.int64)
                                               .astype(np.float32) / np.float32(dim)))
  inv = inv.astype(np.float32)
  s = cfg.rope_scaling
  if s is None:
    return inv
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * np.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / s.factor, inv)
  smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor))
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


class Rotary(NamedTuple):
  """RoPE's cos and sin at each token, [B, T, Dh/2] float32: what a layer takes in place of
  integer positions when the caller has them already (`forward_per_layer`'s `rope_table`)."""
  cos: jax.Array
  sin: jax.Array


def _rotary(positions: jax.Array, inv_freq: np.ndarray) -> Rotary:
  """RoPE's cos and sin at integer positions [...] -> [..., Dh/2] each."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  return Rotary(jnp.cos(freqs), jnp.sin(freqs))


def rope_table(cfg: ModelConfig, length: int) -> Rotary:
  """RoPE's cos and sin at positions [0, length), [length, Dh/2] each: computed once, outside a
  decode loop, so that a step gathers its rows instead of evaluating cos and sin inside
  every layer's query and key fusions (7% of the tiny model's decode step on CPU)."""
  return _rotary(jnp.arange(length), rope_inv_freq(cfg))


def apply_rope(x: jax.Array, positions, inv_freq: np.ndarray) -> jax.Array:
  """x [B, T, N, Dh], positions [B, T] (or their `Rotary`). Half-split rotation
  (transformers' rotate_half)."""
  rotary = positions if isinstance(positions, Rotary) else _rotary(positions, inv_freq)
  cos, sin = rotary.cos[:, :, None, :], rotary.sin[:, :, None, :]
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
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,),
                   self.param_dtype)
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

  def setup(self):
    # In setup, not compact: a parent may read `kernel` and `bias` to fuse projections
    # (`_fused_projection`).
    self.kernel = _param(self, "kernel", nn.initializers.normal(0.02),
                         self.in_shape + self.out_shape, self.in_axes + self.out_axes,
                         self.param_dtype)
    if self.use_bias:
      self.bias = _param(self, "bias", nn.initializers.zeros, self.out_shape, self.out_axes,
                         self.param_dtype)

  def __call__(self, x):
    y = _contract(x, self.kernel, len(self.in_shape), self.dtype)
    if self.use_bias:
      y = y + self.bias.astype(self.dtype)
    return y


def _contract(x, kernel, n_in: int, dtype):
  """x [..., *in] x kernel [*in, *out] -> [..., *out]."""
  return jax.lax.dot_general(
      x.astype(dtype), kernel.astype(dtype),
      ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())),
      preferred_element_type=dtype)


def _fused_projection(x, projections: Sequence[Projection], shapes: Sequence[tuple], axis: int,
                      dtype):
  """The outputs of projections that share their input, from one product.

  Each kernel [D, *out] is reshaped to its `shapes` entry and all are concatenated at output
  axis `axis`; the caller splits the product. One product instead of several saves XLA:CPU
  a library call per projection, 2-3% of a tiny model's decode step. Inside a decode loop
  the concatenation is loop-invariant, and XLA hoists it out.
  """
  kernel = jnp.concatenate([p.kernel.reshape((p.kernel.shape[0],) + shape)
                            for p, shape in zip(projections, shapes)], axis=axis + 1)
  y = _contract(x, kernel, 1, dtype)
  if projections[0].use_bias:
    y = y + jnp.concatenate([p.bias.reshape(shape) for p, shape in zip(projections, shapes)],
                            axis=axis).astype(dtype)
  return y


class Attention(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES
  decode_kernel: str = "xla"  # one of DECODE_KERNELS; used by the decode loop's layers only
  fuse_projections: bool = False  # q, k and v from one product (`_fused_projection`)

  @nn.compact
  def __call__(self, x, positions, kv_mask, cache, layer_idx, cache_index):
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    proj = functools.partial(Projection, in_shape=(d,), in_axes=("embed",), dtype=dt,
                             param_dtype=pdt, use_bias=cfg.qkv_bias)
    q_proj = proj(out_shape=(h, hd), out_axes=("heads", "head_dim"), name="q_proj")
    k_proj = proj(out_shape=(kv, hd), out_axes=("kv_heads", "head_dim"), name="k_proj")
    v_proj = proj(out_shape=(kv, hd), out_axes=("kv_heads", "head_dim"), name="v_proj")
    if self.fuse_projections:
      # Per kv head: its query heads (head i belongs to kv head i // groups), its key, its
      # value, so the product splits along kv heads as the cache and attention do.
      groups = h // kv
      qkv = _fused_projection(x, (q_proj, k_proj, v_proj),
                              ((kv, groups, hd), (kv, 1, hd), (kv, 1, hd)), axis=1, dtype=dt)
      q = qkv[..., :groups, :].reshape(x.shape[:-1] + (h, hd))
      k, v = qkv[..., groups, :], qkv[..., groups + 1, :]
    else:
      q, k, v = q_proj(x), k_proj(x), v_proj(x)
    if cfg.qk_norm:
      q = RMSNorm(cfg.rms_norm_eps, dt, pdt, "head_dim", name="q_norm")(q)
      k = RMSNorm(cfg.rms_norm_eps, dt, pdt, "head_dim", name="k_norm")(k)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"), self.mesh, self.rules)

    b, t = x.shape[:2]
    groups = h // kv
    qg = q.reshape(b, t, kv, groups, hd)
    keys = keys_t = None
    if cache is None:
      keys = k.transpose(0, 2, 1, 3)  # [B, KV, T, Dh]
      values = v.transpose(0, 2, 1, 3)
      q_slot = k_slot = jnp.arange(t)
    else:
      # Write this call's keys/values in place at [cache_index, cache_index + t) of this
      # layer's slice of the whole cache (or of this layer's own decode cache, `split_cache`), then
      # attend over all slots; unwritten or padded slots are masked out by kv_mask and
      # causality.
      def write(full, new, index):
        return jax.lax.dynamic_update_slice(full, new.astype(full.dtype), index)
      if "kt" in cache:  # one layer's own cache (`forward_per_layer`), keys transposed
        name = "v1" if "v1" in cache else "v"  # 'v1': a column of ones after Dh, left as is
        cache = {"kt": write(cache["kt"], k.transpose(0, 2, 3, 1), (0, 0, 0, cache_index)),
                 name: write(cache[name], v.transpose(0, 2, 1, 3), (0, 0, cache_index, 0))}
        keys_t, values = cache["kt"], cache[name]  # [B, KV, Dh, S], [B, KV, S, Dh (+ 1)]
      else:
        index = (layer_idx, 0, 0, cache_index, 0)
        cache = {"k": write(cache["k"], k.transpose(0, 2, 1, 3)[None], index),
                 "v": write(cache["v"], v.transpose(0, 2, 1, 3)[None], index)}
        keys, values = cache["k"][layer_idx], cache["v"][layer_idx]  # [B, KV, S, Dh]
      q_slot = cache_index + jnp.arange(t)
      k_slot = jnp.arange(values.shape[2])
    mask = kv_mask[:, None, :] & (k_slot[None, None, :] <= q_slot[None, :, None])  # [B, T, S]

    if keys_t is not None and t == 1 and self.decode_kernel != "xla":
      if values.shape[-1] != hd:
        raise ValueError(f"decode_kernel={self.decode_kernel!r} takes the 'v' cache layout; "
                         f"this one carries totals ('v1', `split_cache(with_totals=True)`)")
      # One fused kernel per layer (`decode_attention`); GPU only, or interpreted in tests.
      out = decode_attention.decode_attention(
          qg.reshape(b, kv, groups, hd), keys_t.astype(dt), values.astype(dt), mask[:, 0],
          jnp.full((b,), cache_index + 1, jnp.int32), scale=hd ** -0.5,
          interpret=self.decode_kernel == "pallas_interpret")  # [B, KV, G, Dh]
      out = out.reshape(b, t, h, hd)
    else:
      out = _attend(qg, keys, keys_t, values, mask, dt)
    out = sharding.constrain(out, ("batch", "length", "heads", "head_dim"), self.mesh,
                             self.rules)
    y = Projection(in_shape=(h, hd), out_shape=(d,), in_axes=("heads", "head_dim"),
                   out_axes=("embed",), dtype=dt, param_dtype=pdt, name="o_proj")(out)
    return y, cache


def _attend(qg, keys, keys_t, values, mask, dt):
  """Attention in XLA ops: qg [B, T, KV, G, Dh]; keys [B, KV, S, Dh] or, in the decode loop,
  keys_t [B, KV, Dh, S]; values [B, KV, S, Dh], or [B, KV, S, Dh + 1] with a column of ones
  in the decode loop ('v1'); mask [B, T, S] -> [B, T, KV * G, Dh]."""
  b, t, kv, groups, hd = qg.shape
  # Plain batched matmuls over (batch, kv head) with the group's queries as rows: XLA:CPU
  # runs the equivalent 5-d einsum through transposes, 3x slower at decode shapes (t = 1,
  # where the reshapes below are free).
  q_rows = qg.transpose(0, 2, 3, 1, 4).reshape(b, kv, groups * t, hd)  # [B, KV, G*T, Dh]
  batch_dims = ((0, 1), (0, 1))
  if keys_t is None:
    scores = jax.lax.dot_general(q_rows, keys.astype(dt), (((3,), (3,)), batch_dims),
                                 preferred_element_type=jnp.float32)
  else:
    scores = jax.lax.dot_general(q_rows, keys_t.astype(dt), (((3,), (2,)), batch_dims),
                                 preferred_element_type=jnp.float32)
  scores = scores * (hd ** -0.5)
  scores = scores.reshape(b, kv, groups, t, -1)  # [B, KV, G, T, S]
  if keys_t is not None:
    mix = functools.partial(_mix_values_decode, with_totals=values.shape[-1] == hd + 1)
  else:
    mix = _mix_values
  out = mix(scores, mask[:, None, None], values.astype(dt), dt)  # [B, KV, G*T, Dh]
  out = out.reshape(b, kv, groups, t, hd).transpose(0, 3, 1, 2, 4)
  return out.reshape(b, t, kv * groups, hd)


def _mix_values(scores, mask, values, dt):
  """softmax(scores) x values over the cache slots; scores [B, KV, G, T, S] (float32), mask
  broadcastable to them, values [B, KV, S, Dh] -> [B, KV, G*T, Dh]."""
  b, kv, groups, t, _ = scores.shape
  # A finite floor instead of -inf: fully masked rows (padding queries) stay NaN-free.
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(dt).reshape(b, kv, groups * t, -1)
  return jax.lax.dot_general(probs, values, (((3,), (2,)), ((0, 1), (0, 1))))


def _mix_values_decode(scores, mask, values, dt, with_totals: bool = False):
  """`_mix_values` for the decode loop, with the softmax normalised after the value product.

  The division then touches [.., Dh] instead of [.., S]. Normalised first, the value product
  ran on its own, 6x slower once one layer's cache outgrew the L3 (tiny model, 2,048 rows x
  128 slots: 59 -> 16 ms per decode step). The masked slots get a large negative bias, added
  rather than selected, so that the mask joins the score product's fusion. The training
  forward keeps `_mix_values`: this form made the SmolLM2-shaped train step 8% slower
  (MFU 0.415 -> 0.381).

  `with_totals`: the values' last column is all ones ('v1', see `LAYER_CACHE_AXES`), so the
  product's last column is the row sums. The softmax's weights then feed the value product
  alone, and XLA:CPU fuses score product, softmax and value product into one YNNPACK call;
  with a separate row sum they were three.
  """
  b, kv, groups, t, _ = scores.shape
  scores = scores + jnp.where(mask, 0.0, _MASKED_SCORE)
  weights = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
  if not with_totals:
    total = jnp.sum(weights, axis=-1).reshape(b, kv, groups * t, 1)
  weights = weights.astype(dt).reshape(b, kv, groups * t, -1)
  out = jax.lax.dot_general(weights, values, (((3,), (2,)), ((0, 1), (0, 1))),
                            preferred_element_type=jnp.float32)
  if with_totals:
    out, total = out[..., :-1], out[..., -1:]
  return (out / total).astype(dt)


class MLP(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES
  fuse_projections: bool = False  # gate and up from one product (`_fused_projection`)

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    d, f = cfg.hidden_size, cfg.intermediate_size
    up = functools.partial(Projection, in_shape=(d,), out_shape=(f,), in_axes=("embed",),
                           out_axes=("mlp",), dtype=dt, param_dtype=pdt)
    gate_proj, up_proj = up(name="gate_proj"), up(name="up_proj")
    if self.fuse_projections:
      both = _fused_projection(x, (gate_proj, up_proj), ((1, f), (1, f)), axis=0, dtype=dt)
      gate, lifted = both[..., 0, :], both[..., 1, :]
    else:
      gate, lifted = gate_proj(x), up_proj(x)
    hidden = jax.nn.silu(gate) * lifted
    hidden = sharding.constrain(hidden, ("batch", "length", "act_mlp"), self.mesh, self.rules)
    return Projection(in_shape=(f,), out_shape=(d,), in_axes=("mlp",), out_axes=("embed",),
                      dtype=dt, param_dtype=pdt, name="down_proj")(hidden)


class DecoderLayer(nn.Module):
  cfg: ModelConfig
  mesh: Any = None
  rules: Any = sharding.DEFAULT_RULES
  decode_kernel: str = "xla"
  fuse_projections: bool = False

  @nn.compact
  def __call__(self, carry, layer_idx, positions, kv_mask, cache_index):
    x, cache = carry
    cfg = self.cfg
    dt, pdt = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="input_norm")(x)
    # The whole cache rides in the scan carry and is updated in place at this layer's slots,
    # so a decode step writes one token per layer instead of copying the cache.
    attn_out, cache = Attention(cfg, self.mesh, self.rules, self.decode_kernel,
                                self.fuse_projections, name="attn")(
        h, positions, kv_mask, cache, layer_idx, cache_index)
    x = x + attn_out
    h = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="post_attn_norm")(x)
    x = x + MLP(cfg, self.mesh, self.rules, self.fuse_projections, name="mlp")(h)
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
    )(cfg, self.mesh, self.rules, name="layers")
    self.final_norm = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="final_norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = Projection(in_shape=(cfg.hidden_size,), out_shape=(cfg.vocab_size,),
                                in_axes=("embed",), out_axes=("vocab",), dtype=jnp.float32,
                                param_dtype=pdt, name="lm_head")

  def __call__(self, tokens, positions, kv_mask, cache=None, cache_index=None,
               return_hidden=False):
    x = self.embed_tokens(tokens)
    (x, cache), _ = self.layers((x, cache), jnp.arange(self.cfg.num_layers), positions,
                                kv_mask, cache_index)
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
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  ("vocab", "embed")),
        (self.vocab_size, self.hidden_size), self.param_dtype)

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0)


# ----------------------------------------------------------------------------- functional API

def _decoder(cfg: ModelConfig, mesh=None, rules=sharding.DEFAULT_RULES) -> Decoder:
  return Decoder(cfg, mesh, tuple(rules))


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


def forward(cfg: ModelConfig, params: Params, tokens, positions=None, kv_mask=None, *,
            mesh=None, rules=sharding.DEFAULT_RULES) -> jax.Array:
  """tokens int32 [B, T] -> float32 logits [B, T, V]. kv_mask marks real (non-pad) tokens."""
  tokens, positions, kv_mask = _inputs(tokens, positions, kv_mask)
  logits, _ = _decoder(cfg, mesh, rules).apply({"params": params}, tokens, positions, kv_mask)
  return logits


def hidden_states(cfg: ModelConfig, params: Params, tokens, positions=None, kv_mask=None, *,
                  mesh=None, rules=sharding.DEFAULT_RULES) -> jax.Array:
  """Final-normed hidden states [B, T, D] in the compute dtype (for chunked projections)."""
  tokens, positions, kv_mask = _inputs(tokens, positions, kv_mask)
  hidden, _ = _decoder(cfg, mesh, rules).apply({"params": params}, tokens, positions, kv_mask,
                                               return_hidden=True)
  return hidden


def unembed(cfg: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
  """Hidden states [..., D] -> float32 logits [..., V]."""
  return _decoder(cfg).apply({"params": params}, hidden, method=Decoder.unembed)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
  dtype = dtype or dtype_of(cfg.dtype)
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def cache_logical_axes() -> KVCache:
  return {"k": CACHE_AXES, "v": CACHE_AXES}


def layer_cache_logical_axes() -> dict:
  """Logical axes of one per-layer decode cache (`split_cache`)."""
  return dict(LAYER_CACHE_AXES)


def forward_with_cache(cfg: ModelConfig, params: Params, tokens, positions, kv_mask,
                       cache: KVCache, cache_index, *, mesh=None,
                       rules=sharding.DEFAULT_RULES, return_hidden=False):
  """Runs `tokens` [B, T] at cache slots [cache_index, cache_index + T).

  kv_mask [B, S] marks the cache slots that hold (or will hold) real tokens. Returns
  (float32 logits [B, T, V] or hidden states, updated cache).
  """
  return _decoder(cfg, mesh, rules).apply(
      {"params": params}, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32),
      jnp.asarray(kv_mask, bool), cache, jnp.asarray(cache_index, jnp.int32),
      return_hidden=return_hidden)


def split_layers(params: Params) -> list:
  """The stacked [L, ...] layer weights as L per-layer pytrees.

  Slicing copies: call it once, outside a loop (the sampler does so before its decode loop, at
  the cost of a second copy of the layer weights while it runs).
  """
  stacked = params["layers"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  return [jax.tree.map(lambda a, l=l: a[l], stacked) for l in range(num_layers)]


def split_cache(cache: KVCache, with_totals: bool = False) -> list:
  """The stacked cache as L per-layer caches in the decode layout (`LAYER_CACHE_AXES`):
  {'kt': [B, KV, Dh, S] (keys transposed), 'v': [B, KV, S, Dh]}, or with `with_totals`
  {'kt', 'v1': [B, KV, S, Dh + 1]}, the values followed by a column of ones (the layout that
  XLA:CPU's decode attention runs fastest; the Pallas kernel takes 'v')."""
  values = cache["v"]
  if with_totals:
    values = jnp.concatenate([values, jnp.ones(values.shape[:-1] + (1,), values.dtype)], -1)
  name = "v1" if with_totals else "v"
  return [{"kt": cache["k"][l].transpose(0, 1, 3, 2), name: values[l]}
          for l in range(cache["k"].shape[0])]


def forward_per_layer(cfg: ModelConfig, params: Params, layer_params: list, tokens, positions,
                      kv_mask, caches: list, cache_index, *, mesh=None,
                      rules=sharding.DEFAULT_RULES, decode_kernel: str = "xla",
                      rope_table: Rotary | None = None, fuse_projections: bool = False):
  """`forward_with_cache` over per-layer weights (`split_layers`) and caches (`split_cache`).

  `rope_table` (`rope_table`, covering every position in `positions`): RoPE's cos and sin
  are gathered from it rather than computed. `fuse_projections`: q, k and v come from one
  product, and so do the MLP's gate and up (`_fused_projection`); the weights are unchanged.

  `decode_kernel` (one of `DECODE_KERNELS`) picks how a one-token step attends: "xla" ops,
  the fused Pallas kernel of `decode_attention` ("pallas", GPU only), or that kernel
  interpreted ("pallas_interpret", any backend, slow: for tests).

  Returns (float32 logits [B, T, V], the list of updated per-layer caches). The layers are
  unrolled, so each layer's cache is a buffer of its own that attention reads in place. The
  scanned form must first copy layer l's keys and values out of the stacked cache (XLA
  materialises that dynamic slice before the matmul), which cost a quarter of a tiny model's
  decode step and a fifth of SmolLM2-135M's at batch 64 on CPU.
  """
  dec = _decoder(cfg, mesh, rules)
  variables = {"params": params}
  x = dec.apply(variables, jnp.asarray(tokens, jnp.int32), method=Decoder.embed_tokens)
  positions, kv_mask = jnp.asarray(positions, jnp.int32), jnp.asarray(kv_mask, bool)
  if rope_table is not None:
    positions = Rotary(rope_table.cos[positions], rope_table.sin[positions])
  cache_index = jnp.asarray(cache_index, jnp.int32)
  if decode_kernel not in DECODE_KERNELS:
    raise ValueError(f"decode_kernel={decode_kernel!r}: expected one of {DECODE_KERNELS}")
  layer = DecoderLayer(cfg, mesh, tuple(rules), decode_kernel, fuse_projections)
  new_caches = []
  for lp, cache in zip(layer_params, caches):
    (x, cache), _ = layer.apply({"params": lp}, (x, cache), 0, positions, kv_mask, cache_index)
    new_caches.append(cache)
  return dec.apply(variables, x, method=Decoder.logits), new_caches


def _abstract_boxed(cfg: ModelConfig):
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(
      lambda: _decoder(cfg).init(jax.random.key(0), tokens, tokens, tokens.astype(bool)))


def param_logical_axes(cfg: ModelConfig) -> Params:
  """The logical axis names of every parameter, as a pytree of tuples matching the params."""
  boxed = _abstract_boxed(cfg)["params"]
  return jax.tree.map(lambda p: tuple(p.names), boxed,
                      is_leaf=lambda p: isinstance(p, nn.LogicallyPartitioned))


def abstract_params(cfg: ModelConfig) -> Params:
  """ShapeDtypeStructs of every parameter, without allocating anything."""
  return nn.unbox(_abstract_boxed(cfg)["params"])


def param_shardings(cfg: ModelConfig, mesh, rules=sharding.DEFAULT_RULES) -> Params:
  return sharding.shardings_for(abstract_params(cfg), param_logical_axes(cfg), mesh, rules)


def init_params(cfg: ModelConfig, rng: jax.Array, mesh=None,
                rules=sharding.DEFAULT_RULES) -> Params:
  """Random parameters, created directly in their target shardings when a mesh is given."""
  tokens = jnp.zeros((1, 1), jnp.int32)

  def init(key):
    return nn.unbox(_decoder(cfg).init(key, tokens, tokens, tokens.astype(bool))["params"])

  if mesh is None:
    return jax.jit(init)(rng)
  return jax.jit(init, out_shardings=param_shardings(cfg, mesh, rules))(rng)
