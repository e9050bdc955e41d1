"""Where a decode step's time goes on an accelerator: a profiler trace of one `generate` call.

Prints the device's busy time per step beside the step's wall time, the kernel count per step,
and the kernels that take the most time, from the trace that `jax.profiler` writes (the
`*.trace.json.gz` beside it is kept for a closer look). Busy time far under the wall time means
the step is bound by launches and host work, not by the kernels.

Note: XLA runs op by op while a profiler is active (no command buffers), so the wall time here
is the op-by-op one; the kernels' own durations are what this is for.

  python benchmarks/decode_profile.py --batch 16 --new 32 --trace_dir /tmp/trace
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
import sampling as sampling_bench  # noqa: E402  (benchmarks/sampling.py: the shapes)

from rzero_jax import models, sampling  # noqa: E402


def kernel_events(trace_path: str) -> list[dict]:
  """Complete events on the device's streams (GPU kernels and copies)."""
  with gzip.open(trace_path) as f:
    trace = json.load(f)
  events = trace["traceEvents"]
  device_pids = {
    e["pid"]
    for e in events
    if e.get("ph") == "M"
    and e.get("name") == "process_name"
    and re.search(r"/device:(GPU|TPU)", str(e.get("args", {}).get("name", "")))
  }
  threads = {
    (e["pid"], e.get("tid")): str(e.get("args", {}).get("name", ""))
    for e in events
    if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] in device_pids
  }
  # A GPU's process also holds derived lines ("XLA Ops", "XLA Modules") over the same time:
  # only the streams' own lines are kernels.
  streams = {key for key, name in threads.items() if name.startswith("Stream")}
  print(f"device lines: {sorted(set(threads.values()))}")
  return [
    e
    for e in events
    if e.get("ph") == "X"
    and e.get("pid") in device_pids
    and "dur" in e
    and (not streams or (e["pid"], e.get("tid")) in streams)
  ]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--new", type=int, default=32)
  p.add_argument("--trace_dir", default="/tmp/decode_trace")
  p.add_argument("--compile_only", action="store_true")
  p.add_argument("--top", type=int, default=25)
  args = p.parse_args(argv)

  cfg = dataclasses.replace(
    sampling_bench.QWEN3_06B_SHAPE, dtype="bfloat16", param_dtype="bfloat16"
  )
  params = models.init_params(cfg, jax.random.key(0))
  prompts = sampling_bench._prompts(args.batch, cfg.vocab_size)
  kw = dict(max_new_tokens=args.new, temperature=0.0, top_p=1.0, top_k=0, stop_token_ids=())
  start = time.perf_counter()
  sampling.generate(cfg, params, prompts, **kw)
  print(f"first call (compile or cache load): {time.perf_counter() - start:.1f} s", flush=True)
  if args.compile_only:
    return
  sampling.generate(cfg, params, prompts, **kw)
  with jax.profiler.trace(args.trace_dir):
    start = time.perf_counter()
    sampling.generate(cfg, params, prompts, **kw)
    wall = time.perf_counter() - start
  (trace_path,) = glob.glob(os.path.join(args.trace_dir, "plugins/profile/*/*.trace.json.gz"))
  events = kernel_events(trace_path)
  busy_us = sum(e["dur"] for e in events)
  print(f"trace: {trace_path} ({os.path.getsize(trace_path) / 2**20:.1f} MiB)")
  print(
    f"batch {args.batch}, {args.new} new tokens: "
    f"wall {wall * 1e3:.1f} ms under the profiler, "
    f"device busy {busy_us / 1e3:.1f} ms; {len(events)} device events = "
    f"{len(events) / args.new:.0f} per step, {busy_us / args.new / 1e3:.3f} ms busy per step"
  )
  by_name = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    name = re.sub(r"\.\d+$", "", e["name"])  # fusion.123 -> fusion: group the layers' copies
    by_name[name][0] += 1
    by_name[name][1] += e["dur"]
  print(
    f"{'kernel (numbered copies grouped)':60s} {'count':>7s} {'total ms':>9s} "
    f"{'share':>6s} {'mean us':>8s}"
  )
  for name, (count, dur) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: args.top]:
    print(f"{name[:60]:60s} {count:7d} {dur / 1e3:9.2f} {dur / busy_us:6.1%} {dur / count:8.1f}")


if __name__ == "__main__":
  main()
