"""Accuracy with a 95% confidence interval, the paper's aggregates, and the Markdown tables.

Plain host-side counting over verdicts; nothing here looks at text or models.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

from rzero_jax.evaluation.loaders import GENERAL_BENCHMARKS, MATH_BENCHMARKS, SPECS

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclasses.dataclass(frozen=True)
class Score:
  accuracy: float  # mean over problems of the per-problem share of correct samples
  ci_low: float
  ci_high: float
  num_problems: int
  num_samples: int  # samples per problem: 1 is pass@1, k > 1 is mean@k
  num_correct: int  # correct samples, all problems together
  num_no_answer: int  # samples without a box or with an empty one (counted wrong)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval: unlike the normal one it stays inside [0, 1] and is sane at 0 or n."""
  if trials <= 0:
    raise ValueError(f"wilson_interval: trials must be positive, got {trials}")
  if not 0 <= successes <= trials:
    raise ValueError(f"wilson_interval: successes={successes} outside [0, {trials}]")
  p = successes / trials
  denom = 1 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denom
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
  """Normal interval of a mean over problems (for mean@k, whose per-problem scores are shares)."""
  n = len(values)
  if n < 2:
    raise ValueError(f"mean_interval: needs at least 2 values, got {n}")
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1)
  half = z * math.sqrt(var / n)
  return max(0.0, mean - half), min(1.0, mean + half)


def score(verdicts: Sequence[Sequence[bool]], no_answer: int = 0) -> Score:
  """verdicts[i][j]: sample j of problem i was correct. Every problem has the same k."""
  if not verdicts:
    raise ValueError("score: no problems")
  k = len(verdicts[0])
  if k == 0 or any(len(v) != k for v in verdicts):
    raise ValueError("score: every problem needs the same, positive number of samples")
  n = len(verdicts)
  correct = sum(sum(bool(x) for x in v) for v in verdicts)
  per_problem = [sum(bool(x) for x in v) / k for v in verdicts]
  accuracy = sum(per_problem) / n
  if k == 1 or n < 2:
    # Pass@1: a binomial proportion over problems. (With one problem and k samples the
    # samples are the only spread there is.)
    lo, hi = wilson_interval(correct, n * k)
  else:
    # Mean@k: samples of one problem are correlated, so the unit is the problem.
    lo, hi = mean_interval(per_problem)
  return Score(
    accuracy=accuracy,
    ci_low=lo,
    ci_high=hi,
    num_problems=n,
    num_samples=k,
    num_correct=correct,
    num_no_answer=no_answer,
  )


def _mean_if_all(accuracies: Mapping[str, float], names: Sequence[str]) -> float | None:
  if all(accuracies.get(n) is not None for n in names):
    return sum(accuracies[n] for n in names) / len(names)
  return None


def aggregates(accuracies: Mapping[str, float]) -> dict[str, Any]:
  """The paper's math average (unweighted mean of the seven math sets) and overall
  (mean of math average, SuperGPQA, MMLU-Pro, BBEH); None where an input is missing."""
  math_avg = _mean_if_all(accuracies, MATH_BENCHMARKS)
  overall = None
  if math_avg is not None:
    overall = _mean_if_all(
      {**accuracies, "math_average": math_avg}, ("math_average",) + GENERAL_BENCHMARKS
    )
  return {
    "math_average": math_avg,
    "overall": overall,
    "math_average_missing": [n for n in MATH_BENCHMARKS if n not in accuracies],
    "overall_missing": [n for n in MATH_BENCHMARKS + GENERAL_BENCHMARKS if n not in accuracies],
  }


def _pct(x: float | None) -> str:
  return "–" if x is None else f"{100 * x:.2f}"


def _title(name: str) -> str:
  return SPECS[name].title if name in SPECS else name


def markdown_table(
  head: Sequence[str], rows: Iterable[Sequence[Any]], *, numbers_right: bool = False
) -> str:
  """A Markdown table (no trailing newline): the header, its rule, one line per row. With
  numbers_right every column but the first is right-aligned."""
  rule = "|---|" + ("---:|" if numbers_right else "---|") * (len(head) - 1)
  lines = ["| " + " | ".join(head) + " |", rule]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def results_table(results: Mapping[str, Any]) -> str:
  """Markdown table of one results dict (as written to results.json)."""
  rows = []
  for name, b in results["benchmarks"].items():
    s = b["score"]
    ci = f"{_pct(s['ci_low'])}–{_pct(s['ci_high'])}"
    rows.append(
      (
        _title(name),
        s["num_problems"],
        s["num_samples"],
        _pct(s["accuracy"]),
        ci,
        s["num_no_answer"],
      )
    )
  agg = results["aggregates"]
  for key, label in (("math_average", "Math average"), ("overall", "Overall")):
    if agg.get(key) is not None:
      rows.append((f"**{label}**", "", "", _pct(agg[key]), "", ""))
  head = ("benchmark", "problems", "samples", "accuracy (%)", "95% CI (%)", "no answer")
  return markdown_table(head, rows, numbers_right=True) + "\n"


def comparison_table(a: Mapping[str, Any], b: Mapping[str, Any], label_a: str, label_b: str) -> str:
  """Side-by-side Markdown table of two results dicts, with the difference b - a in points."""
  names = list(a["benchmarks"]) + [n for n in b["benchmarks"] if n not in a["benchmarks"]]

  def acc(results, name):
    entry = results["benchmarks"].get(name)
    return None if entry is None else entry["score"]["accuracy"]

  lines = [(_title(n), acc(a, n), acc(b, n)) for n in names]
  lines += [
    (label, a["aggregates"].get(key), b["aggregates"].get(key))
    for key, label in (("math_average", "**Math average**"), ("overall", "**Overall**"))
  ]
  rows = [
    (title, _pct(x), _pct(y), "–" if x is None or y is None else f"{100 * (y - x):+.2f}")
    for title, x, y in lines
    if x is not None or y is not None
  ]
  head = ("benchmark", f"{label_a} (%)", f"{label_b} (%)", "Δ (points)")
  return markdown_table(head, rows, numbers_right=True) + "\n"
