"""The end-of-run report: report.md, progress.png and a one-screen summary.

Everything is read back from the workdir (config.json, metrics.jsonl, eval/, datasets/,
questions.jsonl), so a report can be rebuilt for any run, finished or not.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
from typing import Any

from rzero_jax import fileio, worlds
from rzero_jax.evaluation.scoring import markdown_table
from rzero_jax.rzero import dataset as dataset_lib, metrics as metrics_lib, workdir as wd


def _world(config: dict) -> worlds.World | None:
  name = (config.get("world") or {}).get("name")
  return worlds.get(name) if name else None


def _iterations(folder: str, pattern: str) -> list[int]:
  found = []
  if not fileio.isdir(folder):
    return found
  for path in fileio.glob(folder, pattern):
    m = re.search(r"iter_(\d+)\.", os.path.basename(path))
    if m:
      found.append(int(m.group(1)))
  return sorted(found)


def collect(workdir: str) -> dict[str, Any]:
  """All the figures the report shows, as plain data (also handy for benchmarks and tests)."""
  config = wd.read_json(fileio.join(workdir, "config.json"), {}) or {}
  world = _world(config)
  records = metrics_lib.read_metrics(fileio.join(workdir, "metrics.jsonl"))
  out: dict[str, Any] = {
    "config": config,
    "eval": {},
    "challenger_steps": [],
    "solver_steps": [],
    "datasets": {},
    "difficulty": {},
  }
  for t in _iterations(fileio.join(workdir, "eval"), "iter_*.json"):
    result = wd.read_json(wd.eval_path(workdir, t))
    out["eval"][t] = {k: v for k, v in result.items() if k != "results"}
  for rec in records:
    if rec.get("phase") == "challenger":
      out["challenger_steps"].append(rec)
    elif rec.get("phase") == "solver":
      out["solver_steps"].append(rec)
  for t in _iterations(fileio.join(workdir, "datasets"), "iter_*.jsonl"):
    path = wd.dataset_path(workdir, t)
    rows = dataset_lib.read_jsonl(path)
    stats = wd.read_json(path.replace(".jsonl", ".stats.json"), {}) or {}
    entry = {
      "kept": len(rows),
      "stats": stats,
      "p_hat_hist": metrics_lib.histogram([r["p_hat"] for r in rows]),
    }
    truths = [(r["label"], (r.get("meta") or {}).get("true_answer")) for r in rows]
    truths = [(label, truth) for label, truth in truths if truth is not None]
    if truths:
      entry["pseudo_label_accuracy"] = sum(_same_answer(a, b) for a, b in truths) / len(truths)
    out["datasets"][t] = entry
  if world is not None:
    qpath = fileio.join(workdir, "questions.jsonl")
    if fileio.exists(qpath):
      per_iter: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
      for line in fileio.read_text(qpath).split("\n"):
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        for q in rec["questions"]:
          per_iter[rec["iteration"]][world.level_of(q) or 0] += 1
      out["difficulty"] = {t: dict(sorted(c.items())) for t, c in sorted(per_iter.items())}
  return out


def _same_answer(label, truth) -> bool:
  try:
    return int(str(label).strip()) == int(truth)
  except (TypeError, ValueError):
    return False


def _level_keys(evals: dict) -> list[str]:
  """Per-level accuracy keys of a world's evaluation sets ("NAME/LEVEL/accuracy")."""
  names = worlds.benchmarks()
  keys = set()
  for e in evals.values():
    keys.update(k for k in e if re.fullmatch(r"[^/]+/\d+/accuracy", k) and k.split("/")[0] in names)
  return sorted(keys, key=lambda k: (k.split("/")[0], int(k.split("/")[1])))


def level_benchmark(data: dict) -> str | None:
  """Which world evaluation set the levels come from; a design (training-distribution) set
  wins, since a design check never shows held-out figures."""
  present = sorted({k.split("/")[0] for k in _level_keys(data["eval"])})
  design = [n for n in present if not worlds.benchmarks()[n].held_out]
  return (design or present or [None])[0]


def accuracy_title(data: dict) -> str:
  name = level_benchmark(data)
  return worlds.benchmarks()[name].report_title if name else "Held-out Solver accuracy (%)"


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}"


def summary_table(data: dict) -> str:
  evals = data["eval"]
  if not evals:
    return "(no evaluation yet)"
  levels = _level_keys(evals)
  head = ["model", "overall"] + [f"L{k.split('/')[1]}" for k in levels]
  has_labels = any("pseudo_label_accuracy" in d for d in data["datasets"].values())
  if has_labels:
    head += ["kept", "label acc"]
  rows = []
  for t, e in sorted(evals.items()):
    row = ["base" if t == 0 else f"iter {t}", _pct(e.get("accuracy"))]
    row += [_pct(e.get(k)) for k in levels]
    if has_labels:
      d = data["datasets"].get(t, {})
      row += [d.get("kept", "–"), _pct(d.get("pseudo_label_accuracy"))]
    rows.append(row)
  return markdown_table(head, rows)


def render_markdown(data: dict) -> str:
  parts = ["# R-Zero run report", "", f"## {accuracy_title(data)}", "", summary_table(data), ""]
  if data["challenger_steps"]:
    head = ("iter", "step", "mean reward", "format-valid", "mean p̂", "repetition penalty")
    rows = [
      (
        r["iteration"],
        r["step"],
        f"{r.get('reward_mean', 0):.3f}",
        f"{_pct(r.get('format_valid'))}%",
        f"{r.get('p_hat_mean') or 0:.2f}",
        f"{r.get('repetition_penalty', 0):.3f}",
      )
      for r in data["challenger_steps"]
    ]
    parts += ["## Challenger steps", "", markdown_table(head, rows), ""]
  if data["difficulty"]:
    levels = sorted({lvl for c in data["difficulty"].values() for lvl in c}, key=int)
    rows = []
    for t, counts in data["difficulty"].items():
      n = sum(counts.values())
      rows.append([t] + [f"{100 * counts.get(lvl, 0) / n:.0f}" for lvl in levels] + [n])
    parts += [
      "## Difficulty of the Challenger's questions (share per level, %; 0 = not "
      "in the world's grammar)",
      "",
      markdown_table(["iter"] + [f"L{lvl}" for lvl in levels] + ["n"], rows),
      "",
    ]
  if data["datasets"]:
    head = (
      "iter",
      "generated",
      "well-formed",
      "kept",
      "pseudo-label accuracy",
      "p̂ histogram (10 bins over [0, 1])",
    )
    rows = [
      (
        t,
        d["stats"].get("generated", "–"),
        d["stats"].get("well_formed", "–"),
        d["kept"],
        _pct(d.get("pseudo_label_accuracy")),
        d["stats"].get("p_hat_histogram", d["p_hat_hist"]),
      )
      for t, d in data["datasets"].items()
    ]
    parts += [
      "## Datasets",
      "",
      markdown_table(head, rows),
      "",
      "Pseudo-label accuracy compares the majority-vote label with the world's true "
      "answer. It is measured for this report only and never used in training.",
      "",
    ]
  if data["solver_steps"]:
    head = ("iter", "step", "mean reward (agreement with label)")
    rows = [
      (r["iteration"], r["step"], f"{r.get('reward_mean', 0):.3f}") for r in data["solver_steps"]
    ]
    parts += ["## Solver steps", "", markdown_table(head, rows), ""]
  return "\n".join(parts)


def plot(data: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  evals = data["eval"]
  levels = _level_keys(evals)
  ax = axes[0]
  for t, e in sorted(evals.items()):
    if levels:
      ax.plot(
        [int(k.split("/")[1]) for k in levels],
        [100 * (e.get(k) or 0) for k in levels],
        marker="o",
        label="base" if t == 0 else f"iter {t}",
      )
    else:
      ax.bar(str(t), 100 * (e.get("accuracy") or 0))
  ax.set_title(accuracy_title(data))
  ax.set_xlabel("difficulty level" if levels else "iteration")
  if levels:
    ax.legend()
  ax = axes[1]
  steps = data["challenger_steps"]
  xs = list(range(1, len(steps) + 1))
  ax.plot(xs, [r.get("reward_mean", 0) for r in steps], marker="o", label="mean reward")
  ax.plot(xs, [r.get("format_valid", 0) for r in steps], marker="s", label="format-valid")
  ax.set_title("Challenger per step")
  ax.set_xlabel("Challenger step (all iterations)")
  ax.legend()
  ax = axes[2]
  for t, counts in data["difficulty"].items():
    n = sum(counts.values()) or 1
    lv = sorted(counts, key=int)
    ax.plot([int(x) for x in lv], [100 * counts[x] / n for x in lv], marker="o", label=f"iter {t}")
  ax.set_title("Challenger question difficulty (%)")
  ax.set_xlabel("level")
  if data["difficulty"]:
    ax.legend()
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  # One atomic write (a unique temporary name locally, one object on GCS), by process 0 only.
  fileio.write_bytes(path, buf.getvalue())


def write_report(workdir: str) -> str:
  """Writes report.md and progress.png; returns the one-screen summary to print.
  Call it from one process (process 0): it is the only writer of the workdir's files."""
  data = collect(workdir)
  report_path = fileio.join(workdir, "report.md")
  plot_path = fileio.join(workdir, "progress.png")
  wd.atomic_write_text(report_path, render_markdown(data))
  plot(data, plot_path)
  return f"Report: {report_path}\nPlot:   {plot_path}\n\n" + summary_table(data)
