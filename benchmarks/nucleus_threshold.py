"""Exact top-p (nucleus) thresholds, four ways, timed on whatever device JAX has.

On an H100 nucleus sampling doubles a Qwen3-0.6B decode step (RESULTS.md, session 10): the
sampler's threshold search (`sampling._largest_threshold`, 32 bisection passes over the
[B, V] logits) costs as much as the forward. This script times candidate replacements on the
threshold alone, checks each against the sampler's threshold, and prints each one's
time beside the bisection's, so a GPU session can pick one in a minute. Each line says
whether the threshold is the bisection's, or how many boundary tokens (and how much mass) a
different summation order moved:

  bisection  the sampler's: 32 passes, each a masked sum of the probabilities
  radix      two levels of per-row histograms (the key's high 16 bits, then the low 16 bits
             inside the one bucket that holds the threshold): 2 scatter-adds and 2 cumsums
  sort       a descending sort of each row, cumsum, first index reaching top_p
  top_k      the row's top `--candidates` logits (lax.top_k) and their cumsum, exact when
             they hold top_p of the mass; otherwise (any row) the bisection

Then whole draws, the sampler's two routes on the same logits: truncating by the bisection's
threshold and drawing (`sampling.categorical` of `sampling.truncate_logits`), beside drawing by
rejection (`sampling.draw_by_rejection`, which the sampler takes for top-k alone and for top-p
alone at top_p >= `sampling.REJECTION_MIN_TOP_P`), with the share of rows whose candidates all
missed (they take the exact route too: on flat logits top-k 40 always misses).

  python benchmarks/nucleus_threshold.py --batches 64,256 --vocab 151936
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax import sampling

_HALF = 1 << 16


def _probs(scaled):
  return jax.nn.softmax(scaled, axis=-1)


def bisection(scaled, top_p):
  keys = sampling._ordered_keys(scaled)
  probs = _probs(scaled)
  return sampling._largest_threshold(
      keys, lambda mask: jnp.sum(jnp.where(mask, probs, 0.0), -1) >= top_p)


def _suffix_mass(hist):
  """mass[b] = sum of hist[b:] per row."""
  return jnp.flip(jnp.cumsum(jnp.flip(hist, -1), -1), -1)


def _last_holding(mass, top_p):
  """The largest bucket whose suffix mass reaches top_p (bucket 0 always does)."""
  return jnp.sum(mass >= top_p, axis=-1) - 1


def radix(scaled, top_p):
  rows, vocab = scaled.shape
  keys = sampling._ordered_keys(scaled)
  probs = _probs(scaled)
  row = jnp.arange(rows, dtype=jnp.uint32)[:, None]
  high = keys >> 16
  hist = jnp.zeros((rows * _HALF,), jnp.float32).at[(row * _HALF + high).reshape(-1)].add(
      probs.reshape(-1)).reshape(rows, _HALF)
  mass_high = _suffix_mass(hist)
  bucket = _last_holding(mass_high, top_p).astype(jnp.uint32)  # [B]
  # Mass strictly above the bucket, then the low bits inside it.
  above = jnp.take_along_axis(mass_high, (bucket + 1).clip(max=_HALF - 1)[:, None].astype(
      jnp.int32), -1)[:, 0]
  above = jnp.where(bucket + 1 < _HALF, above, 0.0)
  inside = high == bucket[:, None]
  low = jnp.where(inside, keys & (_HALF - 1), 0)
  hist_low = jnp.zeros((rows * _HALF,), jnp.float32).at[(row * _HALF + low).reshape(-1)].add(
      jnp.where(inside, probs, 0.0).reshape(-1)).reshape(rows, _HALF)
  digit = _last_holding(above[:, None] + _suffix_mass(hist_low), top_p).astype(jnp.uint32)
  return (bucket << 16) | digit


def sort(scaled, top_p):
  keys = sampling._ordered_keys(scaled)
  probs = _probs(scaled)
  order = jnp.argsort(keys, axis=-1, descending=True)
  sorted_keys = jnp.take_along_axis(keys, order, -1)
  mass = jnp.cumsum(jnp.take_along_axis(probs, order, -1), -1)
  first = jnp.minimum(jnp.sum(mass < top_p, axis=-1), keys.shape[-1] - 1)
  return jnp.take_along_axis(sorted_keys, first[:, None], -1)[:, 0]


def top_k(scaled, top_p, candidates: int):
  keys = sampling._ordered_keys(scaled)
  lse = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
  values, _ = jax.lax.top_k(scaled, candidates)
  mass = jnp.cumsum(jnp.exp(values - lse), -1)
  first = jnp.minimum(jnp.sum(mass < top_p, axis=-1), candidates - 1)
  found = sampling._ordered_keys(jnp.take_along_axis(values, first[:, None], -1)[:, 0])
  return jax.lax.cond(jnp.all(mass[:, -1] >= top_p), lambda: found,
                      lambda: bisection(scaled, top_p))


def _logits(batch: int, vocab: int, peaked: bool, seed: int = 0) -> jax.Array:
  """Random logits: 'flat' (the benchmark's random-weight model at T = 1) or 'peaked' (a
  trained model's heavy head: a Zipf-like decay plus noise)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, vocab)).astype(np.float32)
  if peaked:
    ranks = np.argsort(rng.random((batch, vocab)), axis=-1) + 1
    x = -1.1 * np.log(ranks).astype(np.float32) * 3 + 0.5 * x
  return jnp.asarray(x)


def _agreement(keys, probs, got, want) -> str:
  """How far a threshold is from the bisection's. Summing the mass in another order rounds
  differently, so over a flat 151,936-token row a few boundary tokens, each ~1e-5 of the
  mass, can land on either side: the sets then differ by float32 rounding, not by rule."""
  if np.array_equal(got, want):
    return "same threshold"
  differ = (keys >= got[:, None]) != (keys >= want[:, None])
  return (f"differs in {int(differ.sum())} boundary tokens over {len(got)} rows, "
          f"{float((probs * differ).sum(-1).max()):.1e} of a row's mass at most")


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="64,256")
  p.add_argument("--vocab", type=int, default=151936)
  p.add_argument("--top_p", type=float, default=0.99)
  p.add_argument("--candidates", type=int, default=1024, help="top_k's candidate count")
  p.add_argument("--top_k", type=int, default=40, help="the whole draws' top-k rule (R-Zero's "
                 "answers sample with top-k 40)")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  methods = {"bisection": bisection, "radix": radix, "sort": sort,
             "top_k": functools.partial(top_k, candidates=args.candidates)}
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; vocab {args.vocab}, "
        f"top_p {args.top_p}, best of {args.repeats}")
  top_p = jnp.float32(args.top_p)
  for batch in [int(b) for b in args.batches.split(",")]:
    for peaked in (False, True):
      scaled = _logits(batch, args.vocab, peaked)
      keys = np.asarray(sampling._ordered_keys(scaled))
      probs = np.asarray(_probs(scaled), np.float64)
      want = np.asarray(jax.jit(bisection)(scaled, top_p))
      base = None
      for name, fn in methods.items():
        jitted = jax.jit(fn)
        got = np.asarray(jitted(scaled, top_p))
        sec = _time(jitted, scaled, top_p, repeats=args.repeats)
        base = base or sec
        print(f"batch {batch:4d} {'peaked' if peaked else 'flat':6s} {name:9s}: "
              f"{sec * 1e3:8.3f} ms ({base / sec:5.2f}x the bisection), "
              f"{_agreement(keys, probs, got, want)}", flush=True)
  print(f"whole draws: truncate then draw (the exact route) beside rejection; top-p "
        f"{args.top_p} alone, then top-k {args.top_k} alone")
  key = jax.random.key(0)
  exact = jax.jit(lambda key, scaled, top_k, top_p: sampling.categorical(
      key, sampling.truncate_logits(scaled, top_k, top_p)))
  rejection = jax.jit(sampling.draw_by_rejection)
  candidates = jax.jit(sampling.truncation_candidates)
  for batch in [int(b) for b in args.batches.split(",")]:
    for peaked in (False, True):
      scaled = _logits(batch, args.vocab, peaked)
      for rule, (k, p) in (("top-p", (0, args.top_p)), ("top-k", (args.top_k, 1.0))):
        k, p = jnp.int32(k), jnp.float32(p)
        exact_s = _time(exact, key, scaled, k, p, repeats=args.repeats)
        rejection_s = _time(rejection, key, scaled, k, p, repeats=args.repeats)
        _, accepted = candidates(key, scaled, k, p)
        missed = 1.0 - float(np.mean(np.any(np.asarray(accepted), axis=-1)))
        print(f"batch {batch:4d} {'peaked' if peaked else 'flat':6s} {rule}: exact "
              f"{exact_s * 1e3:8.3f} ms, rejection {rejection_s * 1e3:8.3f} ms "
              f"({exact_s / rejection_s:5.2f}x), rows whose {sampling.REJECTION_CANDIDATES} "
              f"candidates all missed: {missed:.2%}", flush=True)

if __name__ == "__main__":
  main()
