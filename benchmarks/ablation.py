"""Does the Challenger matter? The paper's Base Challenger ablation on the embedded default.

  .venv/bin/python benchmarks/ablation.py [--root=runs/ablation] [--seeds=0,1,2]
      [--modes=rzero,base_challenger] [--cache_dir=DIR] [--heldout] [--config.FIELD=VALUE ...]

Runs configs/arith_tiny.py once per (mode, seed), one run at a time, each scored after every
iteration on the training-distribution design sets (`arith_design`, never held-out problems),
all from one base model (built once into --cache_dir). "base_challenger" is the paper's
baseline: the Solver phase trains on questions written by the untrained base model, everything
else equal. A run already complete under --root is not run again; one that was killed resumes.
Then it prints:
  - Solver accuracy per level, overall and at the frontier (levels 5-8), per mode and
    iteration, as the mean and standard deviation over seeds;
  - each seed's frontier gain (last iteration minus base) per mode, and R-Zero's gain minus the
    Base Challenger's, paired by seed: the issue's goal is a mean of at least +3 points;
  - kept count and pseudo-label accuracy per iteration;
  - the difficulty mix of each mode's questions: the questions the dataset phase wrote (drawn
    again from the same writer and seed, checked against the kept ones), those the band kept,
    and the Challenger's questions during its training (R-Zero only: a base_challenger run
    skips training the Challenger it never uses); per level, the share the band keeps
    and how often its pseudo-labels are right;
  - the Challenger's mean reward and p̂, first and last steps of each iteration.
--heldout evaluates every run's Solver after each iteration on the held-out sets and prints the
same accuracy tables for them. Run it once, at the end, after the design has been chosen.

The world's true answers are read here only for the report (pseudo-label accuracy, levels).
Extra `--config.*` flags go to every run (e.g. a variant of the design, under its own --root).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from configs import arith_tiny  # noqa: E402
from rzero_jax import checkpoint, sharding, tokenizer as tokenizer_lib, worlds  # noqa: E402
from rzero_jax.rzero import (  # noqa: E402  # noqa: E402
  challenger,
  dataset as dataset_lib,
  experiment,
  loop,
  metrics as metrics_lib,
  phases,
  report,
  workdir as wd,  # noqa: E402
)
from rzero_jax.worlds import arith, base_model  # noqa: E402

MODES = ("rzero", "base_challenger")
MODE_NAMES = {"rzero": "R-Zero", "base_challenger": "Base Challenger"}
FRONTIER = (5, 6, 7, 8)
LEVELS = tuple(range(1, arith.NUM_LEVELS + 1))


# ----------------------------------------------------------------------------- aggregation


def mean_sd(values) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value); NaN for none."""
  values = [v for v in values if v is not None]
  if not values:
    return float("nan"), float("nan")
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, scale: float = 100.0, digits: int = 1) -> str:
  """'mean ±sd' of the values (x scale); '–' for none."""
  m, s = mean_sd(values)
  if m != m:
    return "–"
  return f"{scale * m:.{digits}f} ±{scale * s:.{digits}f}"


def frontier_of(evals: dict, bench: str, levels=FRONTIER) -> float | None:
  """Mean accuracy over the frontier levels, or None when one of them is missing."""
  accs = [evals.get(f"{bench}/{lvl}/accuracy") for lvl in levels]
  return None if any(a is None for a in accs) else sum(accs) / len(accs)


def frontier_gains(runs: dict, bench: str) -> dict[int, float]:
  """{seed: frontier after the last iteration minus the base model's}, for complete runs."""
  out = {}
  for seed, run in runs.items():
    evals = run["evals"][bench]
    if not evals:
      continue
    last = max(evals)
    base, end = frontier_of(evals.get(0, {}), bench), frontier_of(evals[last], bench)
    if last > 0 and base is not None and end is not None:
      out[seed] = end - base
  return out


def paired_differences(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
  """a - b per seed, over the seeds both have."""
  return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def level_shares(counts: dict[int, int]) -> dict[int, float]:
  n = sum(counts.values())
  return {k: v / n for k, v in counts.items()} if n else {}


# ----------------------------------------------------------------------------- tables


def accuracy_table(by_mode: dict, bench: str) -> str:
  head = (
    ["mode", "model", "overall"]
    + [f"L{lvl}" for lvl in LEVELS]
    + [f"frontier L{FRONTIER[0]}-{FRONTIER[-1]}"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for mode, runs in by_mode.items():
    iters = sorted({t for r in runs.values() for t in r["evals"][bench]})
    for t in iters:
      evals = [r["evals"][bench][t] for r in runs.values() if t in r["evals"][bench]]
      row = [
        MODE_NAMES.get(mode, mode),
        "base" if t == 0 else f"iter {t}",
        fmt([e.get("accuracy") for e in evals]),
      ]
      row += [fmt([e.get(f"{bench}/{lvl}/accuracy") for e in evals]) for lvl in LEVELS]
      row.append(fmt([frontier_of(e, bench) for e in evals]))
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def gain_table(by_mode: dict, bench: str) -> tuple[str, dict]:
  """Each seed's frontier gain per mode and R-Zero minus the Base Challenger, in points."""
  gains = {mode: frontier_gains(runs, bench) for mode, runs in by_mode.items()}
  seeds = sorted({s for g in gains.values() for s in g})
  head = ["", *[f"seed {s}" for s in seeds], "mean ±sd"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  rows = [(MODE_NAMES.get(m, m), g) for m, g in gains.items()]
  if all(m in gains for m in MODES):
    rows.append(
      (
        "R-Zero − Base Challenger (paired by seed)",
        paired_differences(gains["rzero"], gains["base_challenger"]),
      )
    )
  for name, g in rows:
    cells = [f"{100 * g[s]:+.1f}" if s in g else "–" for s in seeds]
    m, sd = mean_sd(list(g.values()))
    lines.append(
      "| " + " | ".join([name, *cells, "–" if m != m else f"{100 * m:+.1f} ±{100 * sd:.1f}"]) + " |"
    )
  return "\n".join(lines), dict(rows)


def dataset_table(by_mode: dict) -> str:
  lines = [
    "| mode | iter | kept (per seed) | kept | pseudo-label acc (per seed) | label acc |",
    "|---|---|---|---|---|---|",
  ]
  for mode, runs in by_mode.items():
    for t in sorted({t for r in runs.values() for t in r["datasets"]}):
      ds = [runs[s]["datasets"][t] for s in sorted(runs) if t in runs[s]["datasets"]]
      kept = [d["kept"] for d in ds]
      acc = [d.get("pseudo_label_accuracy") for d in ds]
      lines.append(
        f"| {MODE_NAMES.get(mode, mode)} | {t} | {' / '.join(map(str, kept))} | "
        f"{fmt(kept, scale=1.0, digits=0)} | "
        f"{' / '.join('–' if a is None else f'{100 * a:.1f}' for a in acc)} | "
        f"{fmt(acc)} |"
      )
  return "\n".join(lines)


def mix_table(by_mode: dict) -> str:
  """Level shares (%) of each mode's questions, pooled over seeds, per iteration and source."""
  head = ["mode", "iter", "questions"] + [f"L{lvl}" for lvl in LEVELS] + ["other", "n"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  sources = (
    ("written", "dataset phase, written"),
    ("kept", "dataset phase, kept by the band"),
    ("challenger", "Challenger's training steps"),
  )
  for mode, runs in by_mode.items():
    iters = sorted({t for r in runs.values() for t in r["mix"].get("kept", {})})
    for t in iters:
      for key, name in sources:
        pooled = collections.Counter()
        for r in runs.values():
          pooled.update(r["mix"].get(key, {}).get(t, {}))
        if not pooled:
          continue
        shares = level_shares(pooled)
        n = sum(pooled.values())
        lines.append(
          "| "
          + " | ".join(
            [MODE_NAMES.get(mode, mode), str(t), name]
            + [f"{100 * shares.get(lvl, 0):.0f}" for lvl in LEVELS]
            + [f"{100 * shares.get(0, 0):.0f}", str(n)]
          )
          + " |"
        )
  return "\n".join(lines)


def band_table(by_mode: dict) -> str:
  """Per level, pooled over seeds and iterations: questions written, the share the band keeps,
  and how often the kept questions' pseudo-labels are right."""
  head = ["mode", "", *[f"L{lvl}" for lvl in LEVELS]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for mode, runs in by_mode.items():
    written, kept, right = collections.Counter(), collections.Counter(), collections.Counter()
    for r in runs.values():
      for counts in r["mix"].get("written", {}).values():
        written.update(counts)
      for counts in r["mix"].get("kept", {}).values():
        kept.update(counts)
      for counts in r["mix"].get("kept_right", {}).values():
        right.update(counts)
    name = MODE_NAMES.get(mode, mode)
    if written:
      lines.append(
        "| " + " | ".join([name, "written"] + [str(written.get(l, 0)) for l in LEVELS]) + " |"
      )
      lines.append(
        "| "
        + " | ".join(
          [name, "kept by the band (%)"]
          + [f"{100 * kept.get(l, 0) / written[l]:.1f}" if written.get(l) else "–" for l in LEVELS]
        )
        + " |"
      )
    lines.append("| " + " | ".join([name, "kept"] + [str(kept.get(l, 0)) for l in LEVELS]) + " |")
    lines.append(
      "| "
      + " | ".join(
        [name, "kept labels right (%)"]
        + [f"{100 * right.get(l, 0) / kept[l]:.0f}" if kept.get(l) else "–" for l in LEVELS]
      )
      + " |"
    )
  return "\n".join(lines)


# p̂ bins of a labelled question; the third is the default's band [0.5, 0.9].
VOTE_BINS = (
  ("p̂ < 0.3", lambda p: p < 0.3 - 1e-9),
  ("0.3 ≤ p̂ < 0.5", lambda p: 0.3 - 1e-9 <= p < 0.5 - 1e-9),
  ("0.5 ≤ p̂ ≤ 0.9", lambda p: 0.5 - 1e-9 <= p <= 0.9 + 1e-9),
  ("p̂ > 0.9", lambda p: p > 0.9 + 1e-9),
)


def vote_table(by_mode: dict) -> str:
  """Per level: written questions (deduplicated), the share whose majority is "no answer" (a
  give-up), and the share with a label in each p̂ bin, with how often that label is right."""
  head = (
    ["mode", "level", "questions", "no-answer majority"]
    + [name for name, _ in VOTE_BINS]
    + ["if give-ups abstained: ≥ 3 attempts, half of them agree"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for mode, runs in by_mode.items():
    rows = [row for r in runs.values() for row in r.get("votes", [])]
    for lvl in sorted({row[0] for row in rows}):
      here = [row for row in rows if row[0] == lvl]
      cells = [
        MODE_NAMES.get(mode, mode),
        f"L{lvl}" if lvl else "other",
        str(len(here)),
        f"{100 * sum(row[2] for row in here) / len(here):.0f}%",
      ]
      for _, inside_bin in VOTE_BINS:
        inside = [row for row in here if not row[2] and inside_bin(row[1])]
        cells.append(
          f"{100 * len(inside) / len(here):.0f}%"
          + (f" ({100 * sum(row[3] for row in inside) / len(inside):.0f}% right)" if inside else "")
        )
      agree = [row for row in here if row[4] >= 3 and 2 * row[5] >= row[4]]
      cells.append(
        f"{100 * len(agree) / len(here):.0f}%"
        + (f" ({100 * sum(row[6] for row in agree) / len(agree):.0f}% right)" if agree else "")
      )
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def challenger_table(by_mode: dict) -> str:
  lines = [
    "| mode | iter | reward, first 3 steps | reward, last 3 steps | p̂, first 3 | p̂, last 3 |",
    "|---|---|---|---|---|---|",
  ]
  for mode, runs in by_mode.items():
    steps = collections.defaultdict(list)
    for r in runs.values():
      per_iter = collections.defaultdict(list)
      for rec in r["challenger_steps"]:
        per_iter[rec["iteration"]].append(rec)
      for t, recs in per_iter.items():
        recs.sort(key=lambda rec: rec["step"])
        steps[t].append(recs)
    for t in sorted(steps):

      def avg(field, part):
        return [statistics.fmean([x.get(field) or 0.0 for x in part(recs)]) for recs in steps[t]]  # noqa: B023 - called in this iteration

      first, last = (lambda recs: recs[:3]), (lambda recs: recs[-3:])
      lines.append(
        f"| {MODE_NAMES.get(mode, mode)} | {t} | {fmt(avg('reward_mean', first), 1, 3)} | "
        f"{fmt(avg('reward_mean', last), 1, 3)} | {fmt(avg('p_hat_mean', first), 1, 2)} | "
        f"{fmt(avg('p_hat_mean', last), 1, 2)} |"
      )
  return "\n".join(lines)


# ----------------------------------------------------------------------------- runs


def run_name(mode: str, seed: int) -> str:
  return f"{mode}_s{seed}"


def is_complete(workdir: str, iterations: int) -> bool:
  return os.path.exists(wd.eval_path(workdir, iterations))


def train(
  workdir: str,
  mode: str,
  seed: int,
  cache: str,
  overrides: list[str],
  log: str,
  train_unused_challenger: bool,
) -> float:
  """One design run (or the rest of a killed one) as `launch.train`; returns its wall time."""
  cmd = [
    sys.executable,
    "-m",
    "launch.train",
    f"--workdir={workdir}",
    f"--config.world.cache_dir={cache}",
    f"--config.mode={mode}",
    f"--config.seed={seed}",
    "--config.eval.benchmarks=arith_design",
    *overrides,
  ]
  if mode == "base_challenger" and not train_unused_challenger:
    # In this mode every dataset is written by the base model (loop._dataset_phase), so the
    # Challenger's training changes nothing the Solver sees, and the run's seeds are derived per
    # (phase, step): skipping it leaves the Solver's run bit-identical and saves a third of it.
    cmd.append("--config.challenger.steps=0")
  start = time.perf_counter()
  with open(log, "a") as f:
    proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    sys.exit(f"error: {' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
  return time.perf_counter() - start


def load_config(workdir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(wd.read_json(os.path.join(workdir, "config.json")))


class World:
  """The base model and an Env to sample with, loaded once for every run that shares them."""

  def __init__(self, config):
    spec = base_model.spec_from_fields(**config.world.base.to_dict())
    cache = os.path.expanduser(config.world.cache_dir or "~/.cache/rzero-jax")
    self.path = base_model.cached_path(os.path.join(cache, "arith_base"), spec)
    if not base_model.is_built(self.path):
      sys.exit(f"error: the runs' base model is not in the cache ({self.path})")
    rules = sharding.rules_from_config(config.mesh.rules.to_dict())
    cfg, self.params = loop.load_base_model(self.path, config.model, None, rules)
    tok = tokenizer_lib.load_tokenizer(self.path)
    self.env = phases.Env(
      cfg=cfg,
      tokenizer=tok,
      mesh=None,
      rules=rules,
      prompt_set=worlds.prompt_set(config.prompts),
      stop_token_ids=tuple(tok.eos_token_ids),
      max_rows_per_call=config.sampling.max_rows_per_call,
    )
    self.abstract = checkpoint.abstract_like(self.params)

  def final(self, workdir: str, role: str, iteration: int, config):
    if iteration == 0:
      return self.params
    ckpts = loop.RoleCheckpoints.open(workdir, role, config.checkpoint)
    try:
      return ckpts.finals.restore(iteration, {"params": self.abstract}).items["params"]
    finally:
      ckpts.close()


class _Recorder:
  """A chunk store for phases.build_dataset that holds nothing and keeps what is computed."""

  def __init__(self):
    self.chunks: dict = {}

  def load(self, key):
    return None

  def save(self, key, value) -> None:
    self.chunks[key] = value


def redraw_dataset(world: World, workdir: str, config, iteration: int) -> dict:
  """The dataset phase of `iteration` drawn again by phases.build_dataset itself, with the run's
  writer, frozen Solver and seed: the questions it wrote (well formed, not held out, not
  overlong), the Solver's m answers to each, and the questions the band kept (which must be the
  run's own dataset)."""
  writer = (
    world.params
    if config.mode == "base_challenger"
    else world.final(workdir, "challenger", iteration, config)
  )
  solver = world.final(workdir, "solver", iteration - 1, config)
  recorder = _Recorder()
  kept, _ = phases.build_dataset(
    world.env,
    writer,
    solver,
    config.dataset,
    config.sampling,
    seed=phases.derive_seed(config.seed, iteration, "dataset"),
    exclude=arith.is_heldout,
    chunks=recorder,
  )
  chunks = [recorder.chunks[k] for k in sorted(recorder.chunks)]
  return {
    "questions": [q for c in chunks for q in c["candidates"]],
    "answers": [a for c in chunks for a in c["answers"]],
    "kept": [r["question"] for r in kept],
  }


def vote_rows(votes: dict) -> list[list]:
  """Per distinct question: [level, p̂, "no answer" won, label right, attempts (answers that
  are not a give-up), largest cluster among the attempts, that cluster's label right]."""
  questions, answers = votes["questions"], votes["answers"]
  keep = {}
  for q, a in zip(questions, answers):
    keep.setdefault(q.strip(), a)
  attempts = [[x for x in a if x is not None] for a in keep.values()]
  tried = challenger.majority_votes([a for a in attempts if a])
  tried_iter = iter(tried)
  rows = []
  for (q, _answers), att, (label, p_hat) in zip(
    keep.items(), attempts, challenger.majority_votes(list(keep.values()))
  ):
    truth = arith.true_answer(q)
    att_label, att_share = next(tried_iter) if att else (None, 0.0)
    rows.append(
      [
        arith.difficulty_of(q) or 0,
        p_hat,
        label is None,
        label is not None and report._same_answer(label, truth),
        len(att),
        round(att_share * len(att)),
        att_label is not None and report._same_answer(att_label, truth),
      ]
    )
  return rows


def level_counts(questions) -> dict[int, int]:
  return dict(collections.Counter(arith.difficulty_of(q) or 0 for q in questions))


def analyse(workdir: str, world: World | None, probe: bool = False) -> dict:
  """The run's figures: evaluations, datasets, Challenger steps and question mixes."""
  data = report.collect(workdir)
  config = load_config(workdir)
  run = {
    "evals": {"arith_design": {}, "arith": {}},
    "datasets": data["datasets"],
    "challenger_steps": data["challenger_steps"],
    "mix": {"challenger": data["difficulty"], "kept": {}, "kept_right": {}, "written": {}},
  }
  for t, e in data["eval"].items():
    run["evals"]["arith_design"][t] = e
  for t in sorted(data["datasets"]):
    rows = dataset_lib.read_jsonl(wd.dataset_path(workdir, t))
    run["mix"]["kept"][t] = level_counts(r["question"] for r in rows)
    run["mix"]["kept_right"][t] = dict(
      collections.Counter(
        arith.difficulty_of(r["question"]) or 0
        for r in rows
        if report._same_answer(r["label"], arith.true_answer(r["question"]))
      )
    )
    if world is not None:
      cache = os.path.join(workdir, "ablation", f"dataset_{t}.json")
      votes = wd.read_json(cache)
      if votes is None:
        votes = redraw_dataset(world, workdir, config, t)
        wd.atomic_write_json(cache, votes)
      questions = votes["questions"]
      missing = collections.Counter(r["question"] for r in rows) - collections.Counter(
        q.strip() for q in questions
      )
      run["written_check"] = run.get("written_check", 0) + sum(missing.values())
      run["mix"]["written"][t] = level_counts(questions)
      # The redrawn votes must give back the run's own dataset, question for question.
      run["votes_check"] = run.get("votes_check", 0) + int(
        sorted(votes["kept"]) != sorted(r["question"] for r in rows)
      )
      if probe:
        run.setdefault("votes", []).extend(vote_rows(votes))
  for t in range(0, config.iterations + 1):
    held = wd.read_json(os.path.join(workdir, "heldout", f"iter_{t}.json"))
    if held is not None:
      run["evals"]["arith"][t] = held
  return run


def evaluate_heldout(workdir: str, world: World, base_cache: dict) -> None:
  """The run's Solver after each iteration (and the base model) on the held-out sets."""
  config = load_config(workdir)
  with config.unlocked():
    config.eval.benchmarks = "arith"
  evaluate = experiment.make_evaluate(config)
  for t in range(config.iterations + 1):
    path = os.path.join(workdir, "heldout", f"iter_{t}.json")
    if os.path.exists(path):
      continue
    if t == 0 and world.path in base_cache:
      result = base_cache[world.path]
    else:
      result = evaluate(world.env, world.final(workdir, "solver", t, config))
      result = {k: v for k, v in result.items() if k != "results"}
      if t == 0:
        base_cache[world.path] = result
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wd.atomic_write_json(path, result)


# ----------------------------------------------------------------------------- leak check

# The default with fewer steps and 2 iterations (so the second Challenger trains against a
# trained Solver): every call keeps the default's shapes, so the compiled programs of the full
# runs are reused from the persistent compilation cache.
LEAK_CHECK_FIELDS = {
  "iterations": 2,
  "challenger.steps": 2,
  "solver.steps": 3,
  "eval.benchmarks": "",
}
_VOLATILE = ("time_", "tokens_per_s")


class AnswerTap:
  """Replaces the world's answer functions (`arith.true_answer`, `arith.evaluate`) for a run:
  records where each outermost call comes from and, when `poison` is set, returns a wrong
  answer (the true one + 1), so that anything trained on it would change."""

  def __init__(self, poison: bool):
    self.poison = poison
    self.calls = collections.Counter()  # (file, function) of the caller outside arith.py
    self._depth = 0

  def _caller(self) -> tuple[str, str]:
    for frame in reversed(traceback.extract_stack()[:-2]):
      if not frame.filename.endswith(("arith.py", "ablation.py")):
        return os.path.basename(frame.filename), frame.name
    return "?", "?"

  def _wrap(self, fn):
    def tapped(*a, **k):
      if self._depth == 0:
        self.calls[self._caller()] += 1
      self._depth += 1
      try:
        out = fn(*a, **k)
      finally:
        self._depth -= 1
      return out + 1 if (self.poison and self._depth == 0 and isinstance(out, int)) else out

    return tapped

  @contextlib.contextmanager
  def installed(self):
    saved = arith.true_answer, arith.evaluate
    arith.true_answer, arith.evaluate = self._wrap(saved[0]), self._wrap(saved[1])
    try:
      yield self
    finally:
      arith.true_answer, arith.evaluate = saved


def _training_record(rec: dict) -> dict:
  return {k: v for k, v in rec.items() if not k.startswith(_VOLATILE)}


def leak_check(root: str, cache: str, modes) -> bool:
  """Each mode twice on the shrunken default, with true and with wrong world answers: every
  training artefact (datasets' questions, labels and votes, per-step metrics, both roles'
  params after every iteration) must be bit-identical, and the world's answer functions must
  be called only from the report-only annotation."""
  ok = True
  for mode in modes:
    taps, dirs = {}, {}
    for poison in (False, True):
      config = arith_tiny.get_config()
      with config.unlocked():
        for field, value in LEAK_CHECK_FIELDS.items():
          section, _, name = field.rpartition(".")
          (config[section] if section else config)[name] = value
        config.mode = mode
        config.world.cache_dir = cache
      dirs[poison] = os.path.join(root, "leak_check", f"{mode}_{'wrong' if poison else 'true'}")
      shutil.rmtree(dirs[poison], ignore_errors=True)
      taps[poison] = AnswerTap(poison)
      with taps[poison].installed():
        experiment.run(config, dirs[poison])
    world = World(config)
    same = {"datasets": True, "metrics": True, "params": True, "questions.jsonl": True}
    relabelled = total = 0
    for t in range(1, config.iterations + 1):
      a, b = (dataset_lib.read_jsonl(wd.dataset_path(dirs[p], t)) for p in (False, True))
      core = ("question", "label", "p_hat", "answers")
      same["datasets"] &= [[r[k] for k in core] for r in a] == [[r[k] for k in core] for r in b]
      relabelled += sum(
        ra["meta"]["true_answer"] != rb["meta"]["true_answer"] for ra, rb in zip(a, b)
      )
      total += len(a)
      for role in loop.ROLES:
        pa, pb = (world.final(dirs[p], role, t, config) for p in (False, True))
        same["params"] &= all(
          jax.tree.leaves(
            jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), pa, pb)
          )
        )
    ma, mb = (
      [
        _training_record(r)
        for r in metrics_lib.read_metrics(os.path.join(dirs[p], "metrics.jsonl"))
        if r["phase"] != "eval"
      ]
      for p in (False, True)
    )
    same["metrics"] = ma == mb
    qa, qb = (open(os.path.join(dirs[p], "questions.jsonl")).read() for p in (False, True))
    same["questions.jsonl"] = qa == qb
    callers = taps[True].calls + taps[False].calls
    outside = {k: v for k, v in callers.items() if k != ("experiment.py", "<lambda>")}
    passed = all(same.values()) and not outside and relabelled == total > 0
    ok &= passed
    print(
      f"leak check, {mode}: world answers wrong in the second run for {relabelled} of "
      f"{total} kept questions' annotations; identical with true and wrong answers: "
      + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items())
      + f"; answer-function calls: {dict(callers)} -> {'pass' if passed else 'FAIL'}"
    )
  return ok


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--root", default=os.path.join(REPO, "runs", "ablation"))
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--modes", default=",".join(MODES))
  ap.add_argument("--cache_dir", default="", help="base-model cache ('' = ~/.cache/rzero-jax)")
  ap.add_argument("--iterations", type=int, default=3, help="the runs' iteration count")
  ap.add_argument(
    "--heldout",
    action="store_true",
    help="also evaluate every run on the held-out sets (once, at the end)",
  )
  ap.add_argument("--no_train", action="store_true", help="only report on the runs under --root")
  ap.add_argument(
    "--train_unused_challenger",
    action="store_true",
    help="train the Challenger in base_challenger runs too (it is never used there)",
  )
  ap.add_argument(
    "--vote_probe_seeds",
    default="0",
    help="seeds whose votes on every written question are tabled (p̂ and label accuracy "
    "per level before the band)",
  )
  ap.add_argument(
    "--leak_check",
    action="store_true",
    help="only check, on a shrunken default run per mode, that no R-Zero phase "
    "depends on the world's answers (4 short runs)",
  )
  args, overrides = ap.parse_known_args()
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    sys.exit(f"error: unexpected arguments {bad}; expected --config.FIELD=VALUE overrides")
  if any(
    o.startswith(("--config.mode=", "--config.seed=", "--config.eval.benchmarks="))
    for o in overrides
  ):
    sys.exit(
      "error: --config.mode, --config.seed and --config.eval.benchmarks are set by "
      "this script (use --modes and --seeds)"
    )
  overrides = overrides + [f"--config.iterations={args.iterations}"]
  seeds = [int(s) for s in args.seeds.split(",")]
  modes = args.modes.split(",")
  unknown = sorted(set(modes) - set(MODES))
  if unknown:
    sys.exit(f"error: --modes: unknown {unknown}; expected some of {','.join(MODES)}")
  cache = args.cache_dir or os.path.expanduser("~/.cache/rzero-jax")
  if args.leak_check:
    # launch.train's default cache: the full runs' programs are compiled once.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/rzero-jax/xla"))
    sys.exit(0 if leak_check(args.root, cache, modes) else 1)
  os.makedirs(os.path.join(args.root, "logs"), exist_ok=True)
  walls = {}
  for seed in seeds:
    for mode in modes:
      workdir = os.path.join(args.root, run_name(mode, seed))
      if args.no_train or is_complete(workdir, args.iterations):
        continue
      log = os.path.join(args.root, "logs", run_name(mode, seed) + ".log")
      print(f"running {mode} seed {seed} (log: {log})", flush=True)
      walls[(mode, seed)] = train(
        workdir, mode, seed, cache, overrides, log, args.train_unused_challenger
      )
      print(f"  {walls[(mode, seed)]:.0f} s", flush=True)
  workdirs = {
    (mode, seed): os.path.join(args.root, run_name(mode, seed)) for mode in modes for seed in seeds
  }
  workdirs = {k: v for k, v in workdirs.items() if is_complete(v, args.iterations)}
  if not workdirs:
    sys.exit(f"error: no complete run under {args.root}")
  world = World(load_config(next(iter(workdirs.values()))))
  if args.heldout:
    base_cache = {}
    for workdir in workdirs.values():
      evaluate_heldout(workdir, world, base_cache)
  probe_seeds = {int(s) for s in args.vote_probe_seeds.split(",") if s}
  by_mode = {
    mode: {
      seed: analyse(workdirs[(mode, seed)], world, seed in probe_seeds)
      for seed in seeds
      if (mode, seed) in workdirs
    }
    for mode in modes
  }
  by_mode = {m: r for m, r in by_mode.items() if r}
  print(
    f"\nruns: {len(workdirs)} under {args.root} (seeds {args.seeds}); extra overrides: "
    f"{' '.join(overrides)}"
  )
  for bench, title in (
    ("arith_design", "Design sets (training distribution, never held-out)"),
    ("arith", "Held-out sets"),
  ):
    if not any(r["evals"][bench] for runs in by_mode.values() for r in runs.values()):
      continue
    print(f"\n## {title}: greedy Solver accuracy (%), mean ±sd over seeds\n")
    print(accuracy_table(by_mode, bench))
    table, rows = gain_table(by_mode, bench)
    print(
      f"\nFrontier (levels {FRONTIER[0]}-{FRONTIER[-1]}) gain, last iteration − base (points):\n"
    )
    print(table)
    diff = rows.get("R-Zero − Base Challenger (paired by seed)")
    if diff:
      m, sd = mean_sd(list(diff.values()))
      print(
        f"\ngoal (R-Zero's frontier gain ≥ the Base Challenger's + 3 points, mean over "
        f"{len(diff)} seeds): {100 * m:+.1f} ±{100 * sd:.1f} → "
        f"{'met' if m >= 0.03 else 'NOT met'}"
      )
  print("\n## Datasets: kept questions (of the generated ones) and pseudo-label accuracy (%)\n")
  print(dataset_table(by_mode))
  print(
    "\n## Difficulty mix of each mode's questions (% per level, pooled over seeds; "
    "other = outside the world's grammar)\n"
  )
  print(mix_table(by_mode))
  checked = [r.get("written_check") for runs in by_mode.values() for r in runs.values()]
  redrawn_bad = sum(r.get("votes_check", 0) for runs in by_mode.values() for r in runs.values())
  print(
    f"\n(each dataset phase drawn again by phases.build_dataset from its writer, Solver and "
    f"seed; kept questions not among its written ones: {sum(c or 0 for c in checked)}; "
    f"redrawn datasets that differ from the run's own: {redrawn_bad})"
  )
  print("\n## The band per level (pooled over seeds and iterations)\n")
  print(band_table(by_mode))
  if any(r.get("votes") for runs in by_mode.values() for r in runs.values()):
    probed = sorted({s for runs in by_mode.values() for s, r in runs.items() if r.get("votes")})
    bad = sum(r.get("votes_check", 0) for runs in by_mode.values() for r in runs.values())
    print(
      f"\n## Votes on every written question, before any filter (seeds {probed}, all "
      f"iterations; the run's filters on these votes give back its datasets: "
      f"{'yes' if not bad else f'NO, {bad} differ'})\n"
    )
    print(vote_table(by_mode))
  print("\n## Challenger: mean reward and mean p̂ of its questions (mean ±sd over seeds)\n")
  print(challenger_table(by_mode))
  if walls:
    print(
      "\nwall time per run: " + ", ".join(f"{m} seed {s} {w:.0f} s" for (m, s), w in walls.items())
    )


if __name__ == "__main__":
  main()
