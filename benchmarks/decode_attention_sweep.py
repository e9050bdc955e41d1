"""One decode step's attention alone on a GPU: the fused Pallas kernel's tile settings beside
the XLA ops the decode loop uses otherwise (Qwen3-0.6B heads, bf16, one layer).

Each figure is the mean of a jitted loop of `--iters` dependent calls, so launch and host time
are not in it. The bytes are the keys and values a call must read (slots [0, num_slots) of
each row), against the data-sheet HBM bandwidth.

  python benchmarks/decode_attention_sweep.py --batches 16,64,256
"""
from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax.models import decode_attention as da
from rzero_jax.models import transformer

KV_HEADS, GROUPS, HEAD_DIM = 8, 2, 128  # Qwen3-0.6B


def _inputs(batch: int, length: int, num_slots: int):
  rng = np.random.default_rng(0)
  bf16 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  q = bf16(batch, KV_HEADS, GROUPS, HEAD_DIM)
  keys_t = bf16(batch, KV_HEADS, HEAD_DIM, length)
  values = bf16(batch, KV_HEADS, length, HEAD_DIM)
  slot = np.arange(length)[None, :]
  mask = jnp.asarray((slot >= 8) & (slot < num_slots)).repeat(batch, 0)
  return q, keys_t, values, mask, jnp.full((batch,), num_slots, jnp.int32)


def _xla(q, keys_t, values, mask, num_slots):
  b = q.shape[0]
  qg = q.reshape(b, 1, KV_HEADS, GROUPS, HEAD_DIM)
  out = transformer._attend(qg, None, keys_t, values, mask[:, None, :], jnp.bfloat16)
  return out.reshape(q.shape)


def time_per_call(fn, args, iters: int) -> float:
  """Seconds per call in a jitted loop whose every call depends on the one before."""
  def loop(q, *rest):
    def body(_, q):
      return q + (fn(q, *rest) * 1e-3).astype(q.dtype)
    return jax.lax.fori_loop(0, iters, body, q)
  loop = jax.jit(loop)
  loop(*args).block_until_ready()
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    loop(*args).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best / iters


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="16,64,256")
  p.add_argument("--length", type=int, default=160, help="cache slots (the last decode phase)")
  p.add_argument("--num_slots", type=int, default=128, help="slots written so far")
  p.add_argument("--iters", type=int, default=200)
  p.add_argument("--block_k", default="32,64,128")
  p.add_argument("--num_warps", default="4,8")
  p.add_argument("--num_stages", default="2,3")
  args = p.parse_args(argv)
  ints = lambda text: [int(x) for x in text.split(",")]
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; {args.length} slots, "
        f"{args.num_slots} written; Qwen3-0.6B heads (8 kv x 2, head_dim 128), bf16")
  for batch in ints(args.batches):
    inputs = _inputs(batch, args.length, args.num_slots)
    read = batch * KV_HEADS * args.num_slots * HEAD_DIM * 2 * 2
    xla_s = time_per_call(_xla, inputs, args.iters)
    print(f"batch {batch:4d} xla ops (all {args.length} slots): {xla_s * 1e6:8.1f} us "
          f"({read / xla_s / 1e12:.2f} TB/s of the written slots)", flush=True)
    results = []
    for block_k, warps, stages in itertools.product(ints(args.block_k), ints(args.num_warps),
                                                    ints(args.num_stages)):
      fn = lambda *a, bk=block_k, w=warps, s=stages: da.decode_attention(
          *a, scale=HEAD_DIM ** -0.5, block_k=bk, num_warps=w, num_stages=s)
      try:
        sec = time_per_call(fn, inputs, args.iters)
      except Exception as e:  # a tile setting that does not compile: report it, go on
        print(f"  block_k {block_k} warps {warps} stages {stages}: failed "
              f"({type(e).__name__}: {str(e)[:120]})")
        continue
      results.append((sec, block_k, warps, stages))
      print(f"  block_k {block_k:3d} warps {warps} stages {stages}: {sec * 1e6:8.1f} us "
            f"({read / sec / 1e12:.2f} TB/s, {xla_s / sec:.2f}x the xla ops)", flush=True)
    if results:
      sec, block_k, warps, stages = min(results)
      print(f"best batch {batch}: block_k {block_k} warps {warps} stages {stages} "
            f"{sec * 1e6:.1f} us against xla {xla_s * 1e6:.1f} us ({xla_s / sec:.2f}x)")


if __name__ == "__main__":
  main()
