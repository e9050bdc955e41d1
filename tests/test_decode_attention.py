"""The fused decode-attention kernel against plain softmax attention.

On a CPU the kernel runs in the Pallas interpreter; on a GPU (`benchmarks/device_checks.sh`)
the same tests run the compiled Triton kernel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rzero_jax.models import decode_attention as da

ON_GPU = jax.default_backend() == "gpu"


def _case(batch, kv_heads, groups, head_dim, length, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(batch, kv_heads, groups, head_dim)), dtype)
  keys_t = jnp.asarray(rng.normal(size=(batch, kv_heads, head_dim, length)), dtype)
  values = jnp.asarray(rng.normal(size=(batch, kv_heads, length, head_dim)), dtype)
  # Left padding of different lengths per row (whole blocks of it for some rows), and slots
  # past `num_slots` that hold garbage the kernel must not read into the result.
  first = rng.integers(0, length // 2, size=batch)
  first[0] = 0
  num_slots = np.full(batch, length - length // 5)
  slot = np.arange(length)[None, :]
  mask = (slot >= first[:, None]) & (slot < num_slots[:, None])
  return q, keys_t, values, jnp.asarray(mask), jnp.asarray(num_slots, jnp.int32)


@pytest.mark.parametrize("batch,kv_heads,groups,head_dim,length", [
    (3, 2, 2, 16, 40),     # the tiny test models' heads, a cache shorter than one block
    (2, 2, 2, 128, 160),   # Qwen3-0.6B's head_dim and group, the benchmark's last phase
    (2, 1, 16, 32, 97),    # a full 16-row group; a length no block size divides
    (4, 3, 3, 64, 200),    # SmolLM2's groups of 3
])
def test_kernel_matches_softmax_attention(batch, kv_heads, groups, head_dim, length):
  dtype = jnp.bfloat16 if ON_GPU else jnp.float32
  q, keys_t, values, mask, num_slots = _case(batch, kv_heads, groups, head_dim, length, dtype)
  scale = head_dim ** -0.5
  got = da.decode_attention(q, keys_t, values, mask, num_slots, scale=scale,
                            interpret=not ON_GPU)
  want = da.reference(q.astype(jnp.float32), keys_t, values, mask, num_slots, scale=scale)
  assert got.shape == q.shape and got.dtype == q.dtype
  tol = 2e-2 if ON_GPU else 1e-5
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=tol, rtol=tol)


def test_slots_past_num_slots_are_never_read():
  q, keys_t, values, mask, num_slots = _case(2, 2, 2, 16, 64, jnp.float32)
  poisoned = values.at[:, :, int(num_slots[0]):].set(jnp.nan)
  run = lambda v: np.asarray(da.decode_attention(q, keys_t, v, mask, num_slots, scale=0.25,
                                                 interpret=not ON_GPU))
  np.testing.assert_array_equal(run(poisoned), run(values))


def test_mismatched_cache_shapes_are_a_clear_error():
  q, keys_t, values, mask, num_slots = _case(2, 2, 2, 16, 32, jnp.float32)
  with pytest.raises(ValueError, match=r"keys_t .*\[B, KV, Dh, S\]"):
    da.decode_attention(q, jnp.swapaxes(keys_t, -1, -2), values, mask, num_slots, scale=1.0,
                        interpret=True)


def test_heads_the_compiled_kernel_cannot_tile_are_named():
  if da.plgpu is None:
    pytest.skip("this jax has no Pallas Triton backend")
  assert da.unsupported_reason(16) is None and da.unsupported_reason(128) is None
  assert "head_dim 24 is not a power of two" in da.unsupported_reason(24)
  assert "head_dim 8" in da.unsupported_reason(8)  # Triton's dot needs 16 or more
