"""The evaluation loop: benchmarks -> Solver prompts -> generation -> boxed answer -> verdicts.

The generation function is a parameter (`GenerateFn`, the signature of `sampling.generate` with
the model bound), so tests can script a "model" and a real checkpoint goes through
`model_generate_fn`. Everything else is host-side and deterministic: the same generations give
byte-identical `samples.jsonl`.

Outputs, each written to a temporary file and renamed into place (rewritten after every
benchmark, so a long run that dies keeps what it finished):
  results.json   config, checkpoint, per-benchmark scores with 95% CI, aggregates, timing
  results.md     the Markdown table that is also printed
  samples.jsonl  one row per sample: prompt, response, extracted answer, gold, verdict
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from rzero_jax import fileio, sampling, worlds
from rzero_jax.evaluation import answers, checkpoints, loaders, scoring

GenerateFn = Callable[..., Any]  # (prompts, *, max_new_tokens, temperature, top_p, top_k, n,
#                                   seed, stop_token_ids) -> object with .tokens, .finish_reasons


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  benchmarks: tuple[str, ...]
  data_dir: str | None = None
  max_new_tokens: int = 4096
  num_samples: int = 1  # 1: pass@1; k > 1: mean@k (needs temperature > 0)
  temperature: float = 0.0  # 0: greedy
  top_p: float = 1.0
  top_k: int = 0
  batch_size: int = 32  # prompts per generate call (each yields num_samples rows)
  limit: int | None = None  # first N problems of each benchmark
  seed: int = 0
  boxed: str = "first"  # which \boxed{} is the answer: "first" (the paper) or "last"
  prompts: str = "paper"  # the Solver prompt set: "paper" or a world's name

  def __post_init__(self):
    if isinstance(self.benchmarks, str):
      object.__setattr__(
        self, "benchmarks", tuple(b for b in self.benchmarks.split(",") if b.strip())
      )
    if not self.benchmarks:
      raise ValueError("--benchmarks: give at least one benchmark")
    for name, value, low in (
      ("max_new_tokens", self.max_new_tokens, 1),
      ("num_samples", self.num_samples, 1),
      ("batch_size", self.batch_size, 1),
      ("top_k", self.top_k, 0),
    ):
      if not isinstance(value, int) or value < low:
        raise ValueError(f"--{name} must be an integer >= {low}, got {value!r}")
    if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
      raise ValueError(f"--limit must be a positive integer, got {self.limit!r}")
    if not self.temperature >= 0:
      raise ValueError(f"--temperature must be >= 0, got {self.temperature!r}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"--top_p must be in (0, 1], got {self.top_p!r}")
    if self.num_samples > 1 and self.temperature == 0:
      raise ValueError(
        f"--num_samples={self.num_samples} needs --temperature > 0: greedy "
        "samples are identical, so mean@k would equal pass@1"
      )
    if self.boxed not in answers.BOX_CHOICES:
      raise ValueError(f"--boxed must be one of {answers.BOX_CHOICES}, got {self.boxed!r}")


def model_generate_fn(cfg, params, mesh=None) -> GenerateFn:
  """The real model's GenerateFn: `sampling.generate` with the model bound."""
  return functools.partial(sampling.generate, cfg, params, mesh=mesh)


# --- prompts and responses ------------------------------------------------------------------


def build_prompts(
  tokenizer, problems: Sequence[loaders.Problem], prompt_set: str = "paper"
) -> tuple[list[str], list[list[int]]]:
  """(chat-templated prompt text, prompt token ids) per problem, with the Solver prompt."""
  solver = worlds.prompt_set(prompt_set)
  texts, ids = [], []
  for p in problems:
    messages = solver.solver_messages(p.question)
    texts.append(tokenizer.apply_chat_template(messages))
    ids.append(list(tokenizer.encode_chat(messages)))
  return texts, ids


def length_order(prompt_ids: Sequence[Sequence[int]]) -> list[int]:
  """Longest prompts first: batches hold similar lengths (less padding), and an out-of-memory
  batch shows up at the start rather than after an hour."""
  return sorted(range(len(prompt_ids)), key=lambda i: (-len(prompt_ids[i]), i))


def _decode(tokenizer, ids: Sequence[int], reason: str, stop_ids: frozenset) -> str:
  ids = list(ids)
  if reason == "stop" and ids and ids[-1] in stop_ids:
    ids = ids[:-1]
  return tokenizer.decode(ids)


def generate_responses(
  generate_fn: GenerateFn,
  tokenizer,
  prompt_ids: Sequence[Sequence[int]],
  config: EvalConfig,
  progress: bool = True,
  desc: str = "",
  chunks=None,
) -> tuple[list[list[str]], list[list[str]], int]:
  """responses[i][j], finish_reasons[i][j] for sample j of prompt i, and the tokens generated.

  chunks (optional; load(key) -> dict | None, save(key, dict)) keeps every finished batch, so
  an evaluation stopped by a kill or SIGTERM continues from its last batch: each batch has its
  own seed, so the result is the same."""
  k = config.num_samples
  stop_ids = tuple(int(t) for t in tokenizer.eos_token_ids)
  responses: list[list[str]] = [[""] * k for _ in prompt_ids]
  reasons: list[list[str]] = [[""] * k for _ in prompt_ids]
  generated = 0
  order = length_order(prompt_ids)
  with tqdm(
    total=len(order),
    desc=desc,
    unit="prompt",
    disable=not progress,
    file=sys.stderr,
    dynamic_ncols=True,
  ) as bar:
    for batch_index, start in enumerate(range(0, len(order), config.batch_size)):
      chunk = order[start : start + config.batch_size]
      key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{desc}_{batch_index}")
      done = chunks.load(key) if chunks is not None else None
      if done is None:
        out = generate_fn(
          [list(prompt_ids[i]) for i in chunk],
          max_new_tokens=config.max_new_tokens,
          temperature=config.temperature,
          top_p=config.top_p,
          top_k=config.top_k,
          n=k,
          seed=config.seed + batch_index,
          stop_token_ids=stop_ids,
        )
        if len(out.tokens) != len(chunk) * k:
          raise RuntimeError(
            f"generate returned {len(out.tokens)} rows for {len(chunk)} prompts x {k} samples"
          )
        done = {
          "texts": [
            _decode(tokenizer, ids, reason, frozenset(stop_ids))
            for ids, reason in zip(out.tokens, out.finish_reasons)
          ],
          "reasons": list(out.finish_reasons),
          "generated": sum(len(ids) for ids in out.tokens),
        }
        if chunks is not None:
          chunks.save(key, done)
      for row, (text, reason) in enumerate(zip(done["texts"], done["reasons"])):
        i, j = chunk[row // k], row % k
        responses[i][j] = text
        reasons[i][j] = reason
      generated += done["generated"]
      bar.update(len(chunk))
  return responses, reasons, generated


# --- one benchmark --------------------------------------------------------------------------


def evaluate_benchmark(
  generate_fn: GenerateFn,
  tokenizer,
  benchmark: loaders.Benchmark,
  config: EvalConfig,
  progress: bool = True,
  chunks=None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(the benchmark's entry of results.json, its rows of samples.jsonl)."""
  problems = benchmark.problems
  k = config.num_samples
  t0 = time.perf_counter()
  prompt_texts, prompt_ids = build_prompts(tokenizer, problems, config.prompts)
  responses, reasons, generated = generate_responses(
    generate_fn, tokenizer, prompt_ids, config, progress, desc=benchmark.name, chunks=chunks
  )
  t1 = time.perf_counter()
  flat_problems = [p for p in problems for _ in range(k)]
  extracted = [answers.extract(r, config.boxed) for rs in responses for r in rs]
  flat_verdicts = answers.verdicts(flat_problems, extracted)
  t2 = time.perf_counter()

  per_problem = [flat_verdicts[i * k : (i + 1) * k] for i in range(len(problems))]
  no_answer = sum(not (e and e.strip()) for e in extracted)  # no box, or an empty one
  result = {
    "title": loaders.SPECS[benchmark.name].title,
    "group": benchmark.group,
    "source": benchmark.source,
    "score": scoring.score(per_problem, no_answer).to_json(),
    "subsets": _subset_scores(problems, per_problem),
    "truncated_samples": sum(r == "length" for rs in reasons for r in rs),
    "generated_tokens": generated,
    "generation_seconds": t1 - t0,
    "grading_seconds": t2 - t1,
  }
  rows = []
  for i, p in enumerate(problems):
    for j in range(k):
      rows.append(
        {
          "benchmark": benchmark.name,
          "id": p.id,
          "subset": p.subset,
          "sample": j,
          "prompt": prompt_texts[i],
          "response": responses[i][j],
          "extracted": extracted[i * k + j],
          "gold": p.gold,
          "grader": p.grader,
          "correct": per_problem[i][j],
          "finish_reason": reasons[i][j],
        }
      )
  return result, rows


def _subset_scores(problems, per_problem) -> dict[str, dict[str, Any]]:
  groups: dict[str, list[Sequence[bool]]] = {}
  for p, v in zip(problems, per_problem):
    if p.subset:
      groups.setdefault(p.subset, []).append(v)
  if len(groups) < 2:
    return {}
  return {
    name: {"accuracy": scoring.score(v).accuracy, "num_problems": len(v)}
    for name, v in sorted(groups.items())
  }


# --- outputs --------------------------------------------------------------------------------


def _atomic_write(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_outputs(
  output_dir: str, results: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]
) -> None:
  _atomic_write(
    os.path.join(output_dir, "results.json"),
    json.dumps(results, indent=2, ensure_ascii=False) + "\n",
  )
  _atomic_write(os.path.join(output_dir, "results.md"), scoring.results_table(results))
  _atomic_write(
    os.path.join(output_dir, "samples.jsonl"),
    "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in samples),
  )


def read_results(path: str) -> dict[str, Any]:
  """A results.json written earlier (path to the file or to its directory)."""
  if os.path.isdir(path):
    path = os.path.join(path, "results.json")
  try:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such results file") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
  if not isinstance(results, dict) or "benchmarks" not in results or "aggregates" not in results:
    raise ValueError(
      f"{path}: not an evaluation results file (needs fields benchmarks and aggregates)"
    )
  return results


# --- whole runs -----------------------------------------------------------------------------


def load_benchmarks(config: EvalConfig) -> list[loaders.Benchmark]:
  """Every benchmark loaded (and validated) before any generation starts: a typo in the last
  name or a broken file fails in seconds, not after hours of sampling."""
  names = [loaders.benchmark_name(b) for b in config.benchmarks]  # all names before any file
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"--benchmarks: {', '.join(duplicates)} given more than once")
  # A gs:// data folder is read from a local copy, downloaded once per process.
  data_dir = fileio.local_copy(config.data_dir) if config.data_dir else config.data_dir
  return [loaders.load_benchmark(b, data_dir, config.limit) for b in config.benchmarks]


def evaluate(
  generate_fn: GenerateFn,
  tokenizer,
  config: EvalConfig,
  output_dir: str | None = None,
  checkpoint: Mapping[str, Any] | None = None,
  progress: bool = True,
  benchmarks: Sequence[loaders.Benchmark] | None = None,
  load_seconds: float | None = None,
  chunks=None,
) -> dict[str, Any]:
  """Evaluates one policy on `config.benchmarks`; returns (and writes) the results dict.
  chunks: see `generate_responses`."""
  start = time.perf_counter()
  if benchmarks is None:
    benchmarks = load_benchmarks(config)
  results: dict[str, Any] = {
    "config": dataclasses.asdict(config),
    "checkpoint": dict(checkpoint or {}),
    "benchmarks": {},
    "aggregates": scoring.aggregates({}),
    "timing": {},
    "complete": False,
  }
  samples: list[dict[str, Any]] = []
  for benchmark in benchmarks:
    entry, rows = evaluate_benchmark(generate_fn, tokenizer, benchmark, config, progress, chunks)
    results["benchmarks"][benchmark.name] = entry
    samples += rows
    results["aggregates"] = scoring.aggregates(
      {n: b["score"]["accuracy"] for n, b in results["benchmarks"].items()}
    )
    results["timing"] = {"evaluation_seconds": time.perf_counter() - start}
    if load_seconds is not None:
      results["timing"]["load_seconds"] = load_seconds
    results["complete"] = benchmark is benchmarks[-1]
    if output_dir is not None:
      write_outputs(output_dir, results, samples)
  return results


def evaluate_checkpoint(
  spec: str,
  config: EvalConfig,
  output_dir: str | None = None,
  role: str = "solver",
  iteration: int | None = None,
  dtype=None,
  mesh=None,
  progress: bool = True,
  benchmarks: Sequence[loaders.Benchmark] | None = None,
) -> dict[str, Any]:
  """Loads any checkpoint (HF dir, GGUF file, run workdir, Orbax dir) and evaluates it."""
  t0 = time.perf_counter()
  resolved = checkpoints.resolve_checkpoint(spec, role=role, iteration=iteration)
  cfg, params, tokenizer = checkpoints.load_resolved(resolved, dtype=dtype, mesh=mesh)
  return evaluate(
    model_generate_fn(cfg, params, mesh),
    tokenizer,
    config,
    output_dir,
    checkpoint=resolved.describe(),
    progress=progress,
    benchmarks=benchmarks,
    load_seconds=time.perf_counter() - t0,
  )


def compare(
  baseline: Mapping[str, Any],
  candidate: Mapping[str, Any],
  baseline_label: str = "baseline",
  candidate_label: str = "candidate",
) -> str:
  """Side-by-side Markdown table; differences are candidate minus baseline, in points."""
  return scoring.comparison_table(baseline, candidate, baseline_label, candidate_label)


def _is_results(path: str) -> bool:
  if os.path.isfile(path):
    return path.endswith(".json") and os.path.basename(path) != "config.json"
  return os.path.isfile(os.path.join(path, "results.json"))


def run(
  checkpoint: str,
  config: EvalConfig,
  output_dir: str,
  compare_to: str | None = None,
  role: str = "solver",
  iteration: int | None = None,
  compare_iteration: int | None = None,
  dtype=None,
  mesh=None,
  progress: bool = True,
  echo: Callable[[str], None] = print,
) -> dict[str, Any]:
  """What `launch/evaluate.py` does: evaluate `checkpoint` into `output_dir` and print the
  table. With `compare_to` (a checkpoint, or a results.json from an earlier evaluation) the
  two go to OUTPUT/checkpoint and OUTPUT/compare_to, and a side-by-side table with the
  differences (checkpoint minus compare_to) goes to OUTPUT/comparison.md. `iteration` selects
  within `checkpoint`, `compare_iteration` within `compare_to`; `role` applies to both."""
  benchmarks = load_benchmarks(config)
  # Resolve everything before generating: a bad path fails now, not after the first model.
  checkpoints.resolve_checkpoint(checkpoint, role=role, iteration=iteration)
  if compare_to is None:
    results = evaluate_checkpoint(
      checkpoint, config, output_dir, role, iteration, dtype, mesh, progress, benchmarks
    )
    echo(scoring.results_table(results))
    return results
  baseline_results = read_results(compare_to) if _is_results(compare_to) else None
  if baseline_results is None:
    checkpoints.resolve_checkpoint(compare_to, role=role, iteration=compare_iteration)
  elif compare_iteration is not None:
    raise ValueError(f"--compare_iteration: {compare_to} is a results file, not a checkpoint")
  candidate = evaluate_checkpoint(
    checkpoint,
    config,
    os.path.join(output_dir, "checkpoint"),
    role,
    iteration,
    dtype,
    mesh,
    progress,
    benchmarks,
  )
  echo(scoring.results_table(candidate))
  if baseline_results is None:
    baseline_results = evaluate_checkpoint(
      compare_to,
      config,
      os.path.join(output_dir, "compare_to"),
      role,
      compare_iteration,
      dtype,
      mesh,
      progress,
      benchmarks,
    )
    echo(scoring.results_table(baseline_results))
  table = compare(
    baseline_results,
    candidate,
    _label(compare_to, compare_iteration),
    _label(checkpoint, iteration),
  )
  _atomic_write(os.path.join(output_dir, "comparison.md"), table)
  echo(table)
  return {"checkpoint": candidate, "compare_to": baseline_results, "comparison": table}


def _label(path: str, iteration: int | None) -> str:
  name = os.path.basename(os.path.normpath(path)) or path
  return name if iteration is None else f"{name} iteration {iteration}"
