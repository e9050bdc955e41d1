"""GRPO train step throughput: tokens/s and model-FLOPs utilisation (MFU) against the peak.

The peer here is the hardware itself. On CPU that is the machine's *measured* matmul peak: a
jitted float32 N x N x N matmul, best of several, timed in the same run and interleaved with the
train steps, so that load from other processes hits both alike. With --device it is the
accelerator's dense bf16 peak from its data sheet (a measured bf16 matmul is printed beside it).

Model: SmolLM2-135M shapes in float32 on CPU; Qwen3-0.6B shapes with bf16 compute and float32
params / optimizer state with --device. Random init, every row a full prompt + completion of
--seq tokens, the loss over the completion part, one AdamW update per step.

Model FLOPs per step (the usual convention: what the model needs, not what we execute):
  6 * N * tokens                         forward + backward of every weight matmul, where N is
                                         the decoder's matmul params plus the V x D unembedding
                                         (the embedding lookup costs nothing; counted once when
                                         tied)
  + 6 * L * T^2 * H * Dh * rows          attention scores and mix, 2 matmuls x 2 FLOPs x 3
                                         (fwd + bwd) x 1/2 for the causal mask
                                         (= 12 * L * T^2 * H * Dh / 2 per row)
Recomputation (remat, the chunked unembedding's checkpoint), the masked half of the attention
matrix we do compute, softmaxes and the optimizer are overhead and count against us.

Run: python benchmarks/train_step.py [--rows 4] [--seq 1024] [--remat dots]
         [--logprob_chunk 256] [--micro_batches 1] [--steps 3] [--forward]
     python benchmarks/train_step.py --device        # Qwen3-0.6B, bf16, seq 2048
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax import models
from rzero_jax.rl import learner

SMOLLM2_135M = models.ModelConfig(
  model_type="llama",
  vocab_size=49152,
  hidden_size=576,
  intermediate_size=1536,
  num_layers=30,
  num_heads=9,
  num_kv_heads=3,
  head_dim=64,
  tie_word_embeddings=True,
  rope_theta=100000.0,
  max_position_embeddings=8192,
)
QWEN3_0_6B = models.ModelConfig(
  model_type="qwen3",
  vocab_size=151936,
  hidden_size=1024,
  intermediate_size=3072,
  num_layers=28,
  num_heads=16,
  num_kv_heads=8,
  head_dim=128,
  tie_word_embeddings=True,
  qk_norm=True,
  rope_theta=1000000.0,
  max_position_embeddings=40960,
)

# Dense (no sparsity) bf16 peaks from the data sheets, FLOP/s, by a substring of device_kind.
DENSE_BF16_PEAK = {
  "H200": 989e12,
  "H100": 989e12,  # SXM; the H100 PCIe is 756e12: pass --peak_tflops
  "A100": 312e12,
  "L4": 121e12,
  "TPU v6": 918e12,
  "TPU v5p": 459e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v4": 275e12,
}


def matmul_params(cfg: models.ModelConfig) -> int:
  """Weights that take part in a matmul once per token (norms and the lookup excluded)."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  attn = d * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  return cfg.num_layers * (attn + 3 * d * f) + cfg.vocab_size * d


def model_flops(cfg: models.ModelConfig, rows: int, seq: int) -> float:
  """Training FLOPs of one step of `rows` sequences of `seq` tokens (see the module doc)."""
  dense = 6.0 * matmul_params(cfg) * rows * seq
  attention = 6.0 * cfg.num_layers * seq**2 * cfg.num_heads * cfg.head_dim * rows
  return dense + attention


def synthetic_batch(
  cfg: models.ModelConfig, rows: int, seq: int, prompt_len: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """Full rows: a prompt of `prompt_len` tokens, the rest completion (the loss's targets)."""
  if not 0 < prompt_len < seq:
    raise ValueError(f"--prompt_len={prompt_len} must be in (0, --seq={seq})")
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, cfg.vocab_size, (rows, seq)).astype(np.int32)
  loss_mask = np.zeros((rows, seq - 1), np.float32)
  loss_mask[:, prompt_len - 1 :] = 1.0
  sampler_logp = (-rng.random((rows, seq - 1)) * 3 - 8).astype(np.float32) * loss_mask
  return {
    "tokens": tokens,
    "kv_mask": np.ones((rows, seq), bool),
    "loss_mask": loss_mask,
    "old_logp": sampler_logp,
    "ref_logp": sampler_logp - 0.01 * loss_mask,
    "sampler_logp": sampler_logp,
    "advantages": rng.choice([-1.0, 1.0], rows).astype(np.float32),
  }


def measure_matmul_peak(n: int, dtype, reps: int) -> tuple[float, float]:
  """Best FLOP/s of a jitted n x n x n matmul over `reps` timed runs, in wall-clock time and
  in process CPU time (all threads; robust to other processes stealing cores)."""
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), dtype)
  b = jax.random.normal(keys[1], (n, n), dtype)
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=dtype))
  matmul(a, b).block_until_ready()
  best, best_cpu = float("inf"), float("inf")
  for _ in range(reps):
    start, start_cpu = time.perf_counter(), time.process_time()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  return 2.0 * n**3 / best, 2.0 * n**3 / best_cpu


def max_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument(
    "--device",
    action="store_true",
    help="accelerator mode: Qwen3-0.6B shapes, bf16 compute, vs the bf16 peak",
  )
  p.add_argument("--rows", type=int, default=None, help="sequences per step (4 CPU, 8 device)")
  p.add_argument("--seq", type=int, default=None, help="tokens per row (1024 CPU, 2048 device)")
  p.add_argument("--prompt_len", type=int, default=None, help="default: seq // 8")
  p.add_argument("--remat", choices=models.config.SUPPORTED_REMAT, default="dots")
  p.add_argument("--logprob_chunk", type=int, default=256)
  p.add_argument("--micro_batches", type=int, default=1)
  p.add_argument("--steps", type=int, default=3, help="timed train steps (after one warm-up)")
  p.add_argument("--matmul_n", type=int, default=None, help="peak matmul size (2048 / 8192)")
  p.add_argument("--matmul_reps", type=int, default=5)
  p.add_argument(
    "--forward",
    action="store_true",
    help="also time the logprob forward alone (1/3 of the model FLOPs)",
  )
  p.add_argument(
    "--peak_tflops",
    type=float,
    default=None,
    help="--device: dense bf16 peak, if the device is not in the table",
  )
  p.add_argument("--layers", type=int, default=None, help="override the layer count (smoke runs)")
  p.add_argument(
    "--compile_only",
    action="store_true",
    help="compile the step and stop: fills a persistent compilation cache "
    "(JAX_COMPILATION_CACHE_DIR) for a timed run in another process",
  )
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.device:
    base = dataclasses.replace(QWEN3_0_6B, dtype="bfloat16", param_dtype="float32")
    rows, seq, matmul_n, matmul_dtype = args.rows or 8, args.seq or 2048, 8192, jnp.bfloat16
  else:
    base = SMOLLM2_135M
    rows, seq, matmul_n, matmul_dtype = args.rows or 4, args.seq or 1024, 2048, jnp.float32
  matmul_n = args.matmul_n or matmul_n
  cfg = dataclasses.replace(base, remat=args.remat, num_layers=args.layers or base.num_layers)
  lc = learner.LearnerConfig(micro_batches=args.micro_batches, logprob_chunk=args.logprob_chunk)
  prompt_len = args.prompt_len or seq // 8
  device = jax.devices()[0]
  print(
    f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}); model "
    f"{cfg.model_type} {cfg.num_params / 1e6:.1f}M params ({matmul_params(cfg) / 1e6:.1f}M "
    f"in matmuls), dtype {cfg.dtype}, remat {cfg.remat}; {rows} rows x {seq} tokens, "
    f"micro_batches {lc.micro_batches}, logprob_chunk {lc.logprob_chunk}"
  )

  state = learner.init_train_state(models.init_params(cfg, jax.random.key(0)), lc)
  batch = jax.device_put(synthetic_batch(cfg, rows, seq, prompt_len))
  start = time.perf_counter()
  step = learner.make_train_step(cfg, lc, state).lower(state, batch).compile()
  print(f"compile: {time.perf_counter() - start:.1f} s")
  if args.compile_only:
    return
  mem = step.memory_analysis()
  flops = model_flops(cfg, rows, seq)
  tokens = rows * seq

  state, metrics = step(state, batch)  # warm-up
  jax.block_until_ready(state)
  if not np.isfinite(float(metrics["loss"])):
    raise RuntimeError(f"non-finite loss {float(metrics['loss'])} in the warm-up step")

  # Interleaved: peak, step, peak, step, ... so that the other load on the machine weighs on
  # both measurements alike.
  peaks, times, cpu_peaks, cpu_times = [], [], [], []

  def measure_peak():
    wall, cpu = measure_matmul_peak(matmul_n, matmul_dtype, args.matmul_reps)
    peaks.append(wall)
    cpu_peaks.append(cpu)

  for i in range(args.steps):
    measure_peak()
    start, start_cpu = time.perf_counter(), time.process_time()
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - start_cpu)
    print(
      f"  round {i}: matmul {peaks[-1] / 1e9:8.1f} GFLOP/s   step {times[-1]:7.2f} s   "
      f"{flops / times[-1] / 1e9:8.1f} model GFLOP/s   MFU vs this round's peak "
      f"{flops / times[-1] / peaks[-1]:.3f}"
    )
  measure_peak()

  if args.forward:
    logprob_fn = learner.make_logprob_fn(cfg, lc)
    logprob_fn(state.params, batch["tokens"], batch["kv_mask"]).block_until_ready()
    fwd = float("inf")
    for _ in range(max(1, args.steps)):
      start = time.perf_counter()
      logprob_fn(state.params, batch["tokens"], batch["kv_mask"]).block_until_ready()
      fwd = min(fwd, time.perf_counter() - start)
    print(
      f"forward only (logprobs, no entropy): {fwd:.2f} s = {flops / 3 / fwd / 1e9:.1f} "
      f"model GFLOP/s = {flops / 3 / fwd / max(peaks):.3f} of the measured peak"
    )

  best_step, peak = min(times), max(peaks)
  measured_peak = peak
  if args.device:
    peak = (
      args.peak_tflops * 1e12
      if args.peak_tflops
      else next(
        (v for k, v in DENSE_BF16_PEAK.items() if k.lower() in device.device_kind.lower()), None
      )
    )
    if peak is None:
      raise SystemExit(f"no data-sheet bf16 peak for {device.device_kind!r}; pass --peak_tflops")
  print(
    f"model FLOPs per step: {flops / 1e12:.3f} TFLOP "
    f"(6*N*tokens {6 * matmul_params(cfg) * tokens / 1e12:.3f} + causal attention "
    f"{(flops - 6 * matmul_params(cfg) * tokens) / 1e12:.3f})"
  )
  print(
    f"memory: compiled temp {mem.temp_size_in_bytes / 2**30:.2f} GiB, arguments "
    f"{mem.argument_size_in_bytes / 2**30:.2f} GiB, outputs "
    f"{mem.output_size_in_bytes / 2**30:.2f} GiB; process max RSS {max_rss_gib():.2f} GiB"
  )
  if hasattr(device, "memory_stats") and device.memory_stats():
    stats = device.memory_stats()
    if "peak_bytes_in_use" in stats:
      print(f"device peak memory in use: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB")
  print(
    f"train step: best {best_step:.2f} s, median {statistics.median(times):.2f} s; "
    f"{tokens / best_step:,.0f} tokens/s; {flops / best_step / 1e12:.4f} model TFLOP/s"
  )
  print(
    f"matmul {matmul_n}^3 {jnp.dtype(matmul_dtype).name}: best {measured_peak / 1e12:.4f} "
    f"TFLOP/s (over {len(peaks)} interleaved rounds)"
  )
  per_round = [flops / t / p for t, p in zip(times, peaks)]
  print(
    f"MFU per round (vs that round's measured peak): {', '.join(f'{r:.3f}' for r in per_round)}"
  )
  if not args.device:
    # Model FLOPs per CPU-second of the step over the matmul's: the same efficiency measure with
    # the time other processes took from us left out (idle-spinning threads still count).
    print(
      f"per CPU-second (step / matmul, best of each): "
      f"{flops / min(cpu_times) / 1e9:.1f} / {max(cpu_peaks) / 1e9:.1f} GFLOP/cpu-s = "
      f"{flops / min(cpu_times) / max(cpu_peaks):.3f}"
    )
  what = "data-sheet dense bf16 peak" if args.device else "measured matmul peak"
  print(f"peak ({what}): {peak / 1e12:.4f} TFLOP/s")
  print(f"ratio (ours / peak = MFU): {flops / best_step / peak:.3f}")


if __name__ == "__main__":
  main(sys.argv[1:])
