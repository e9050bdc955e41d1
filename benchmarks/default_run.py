"""Runs the real default config (configs/arith_tiny.py) once and reports what R-Zero did.

  .venv/bin/python benchmarks/default_run.py [--workdir=runs/bench_default] [--cache_dir=DIR]
      [--config.FIELD=VALUE ...]

Prints: wall time of each phase (base-model build, Challenger, dataset, Solver, evaluation),
held-out accuracy for the base model and after each iteration (overall and at the frontier
levels), pseudo-label accuracy per iteration and the Challenger's difficulty shift.
To weigh a design without the held-out sets, add `--config.eval.benchmarks=arith_design`
(training-distribution problems) and any overrides of the design.
There is no peer to compare with here: the figure of merit is the change from the base model.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from rzero_jax.rzero import metrics, report  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default=os.path.join(REPO, "runs", "bench_default"))
  ap.add_argument(
    "--cache_dir",
    default="",
    help="base-model cache ('' = a fresh one under the workdir, so the build is timed too)",
  )
  ap.add_argument("--frontier", default="5,6,7,8", help="levels counted as the frontier")
  args, overrides = ap.parse_known_args()
  if os.path.exists(args.workdir):
    shutil.rmtree(args.workdir)
  cache = args.cache_dir or os.path.join(args.workdir + "_cache")
  if not args.cache_dir and os.path.exists(cache):
    shutil.rmtree(cache)  # a fresh cache of our own: the base-model build is timed too
  cmd = [
    sys.executable,
    "-m",
    "launch.train",
    f"--workdir={args.workdir}",
    f"--config.world.cache_dir={cache}",
    *overrides,
  ]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  total = time.perf_counter() - start
  if proc.returncode != 0:
    sys.exit(proc.stderr[-4000:])
  data = report.collect(args.workdir)
  recs = metrics.read_metrics(os.path.join(args.workdir, "metrics.jsonl"))
  phase_time = {"challenger": 0.0, "dataset": 0.0, "solver": 0.0, "eval": 0.0}
  for r in recs:
    if r["phase"] in ("challenger", "solver"):
      phase_time[r["phase"]] += r.get("time_step", 0.0)
    elif r["phase"] == "dataset":
      phase_time["dataset"] += r.get("time_sampling", 0.0) + r.get("time_grading", 0.0)
    elif r["phase"] == "eval":
      phase_time["eval"] += r.get("time_eval", 0.0)
  other = total - sum(phase_time.values())
  print(f"whole command: {total:.0f} s (CPU, {os.cpu_count()} cores)")
  for name, secs in phase_time.items():
    print(f"  {name:<11}{secs:7.0f} s")
  print(
    f"  {'other':<11}{other:7.0f} s   (base-model build if not cached, compiles, "
    "checkpoints, report)"
  )
  # `--config.eval.benchmarks=arith_design` measures a design on training-distribution sets.
  frontier = [f"{report.level_benchmark(data)}/{lvl}/accuracy" for lvl in args.frontier.split(",")]
  print(f"\n{report.accuracy_title(data)}:")
  print(report.summary_table(data))
  base = data["eval"].get(0, {})
  for t in sorted(data["eval"]):
    e = data["eval"][t]
    front = [e[k] for k in frontier if e.get(k) is not None]
    base_front = [base[k] for k in frontier if base.get(k) is not None]
    if front and base_front:
      delta = 100 * (sum(front) / len(front) - sum(base_front) / len(base_front))
      print(
        f"  {'base' if t == 0 else f'iter {t}'}: frontier (levels {args.frontier}) "
        f"{100 * sum(front) / len(front):.1f}%  ({delta:+.1f} points vs base)"
      )
  print(
    "\npseudo-label accuracy per iteration:",
    {
      t: round(d.get("pseudo_label_accuracy", float("nan")), 3) for t, d in data["datasets"].items()
    },
  )
  print("Challenger question levels per iteration (counts):", data["difficulty"])
  print(f"\nreport: {os.path.join(args.workdir, 'report.md')}")


if __name__ == "__main__":
  main()
