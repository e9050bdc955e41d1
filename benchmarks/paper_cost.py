"""The paper's workload per iteration, phase by phase: FLOPs, HBM bytes, roofline and
realistic time on a TPU slice, beside the reference's ~50 h for 3 iterations of Qwen3-4B on
8x A100-40GB.

  python -m benchmarks.paper_cost --config=configs/qwen3_4b_base.py

Workload (the config's): Challenger `steps` x `prompts_per_step` x G rollouts, m Solver
answers per question; the dataset's `num_questions` questions x m answers; Solver `steps` x
`prompts_per_step` x G rollouts; pi_old, pi_ref and one update per rollout. Completions run
to `--budget_fraction` of their token budget (1.0: every completion uses its whole budget,
an upper bound).

FLOPs and bytes are counted from the programs' shapes: matmul FLOPs 2 per parameter per
token, attention 4 x layers x heads x head_dim x context per token; a decode step reads the
sampled weights (float32 master weights while a role samples itself, bf16 for the frozen
Solver) and each row's KV cache. The TPU compiler's `cost_analysis()` is no help for whole
programs: it counts a loop body once (a 10-step scan of a matmul reports one matmul's
FLOPs), and these programs are loops over layers, micro-batches, vocabulary chunks and
decode steps.

Realistic time divides the roofline by the efficiencies measured on one H100
(benchmarks/RESULTS.md): decode at 29.5% of the HBM roofline (Qwen3-0.6B shapes, 24-token
prompts, with the decode path before issue 25's single attention path), training at MFU
0.113. Neither is measured on a TPU, nor decode at these cache lengths.

The printout gives our projection beside the reference's ~50 h, with what it assumes and the
part that costs most.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from benchmarks import memory_plan
from rzero_jax import models

FLAGS = flags.FLAGS
REFERENCE_HOURS = 50.0  # 3 iterations of Qwen3-4B, 8x A100-40GB (the reference code)
DECODE_EFFICIENCY = 0.295  # of the HBM roofline, measured on an H100 with the old decode path
TRAIN_MFU = 0.113  # measured on an H100


@dataclasses.dataclass(frozen=True)
class Model:
  layers: int
  heads: int
  kv_heads: int
  head_dim: int
  matmul_params: float  # every weight a token multiplies (embedding lookup excluded)
  params: float

  @property
  def kv_bytes_per_token(self) -> float:
    return self.layers * self.kv_heads * self.head_dim * 2 * 2  # K and V, bf16

  def attention_flops(self, context: float) -> float:
    """Per token, attending to `context` keys: QK^T and PV."""
    return 4 * self.layers * self.heads * self.head_dim * context


def model_of(hf: dict) -> Model:
  cfg = models.from_hf_dict(hf, where="architecture")
  embed = cfg.vocab_size * cfg.hidden_size
  matmul = cfg.num_params - embed + (embed if cfg.tie_word_embeddings else 0)
  return Model(
    cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, matmul, cfg.num_params
  )


@dataclasses.dataclass
class Cost:
  flops: float = 0.0
  bytes: float = 0.0
  kind: str = "decode"  # "decode" (HBM-bound efficiency) or "train" (MFU)

  def add(self, other: "Cost") -> None:
    self.flops += other.flops
    self.bytes += other.bytes


def decode_cost(
  m: Model,
  rows: int,
  prompt: int,
  new: int,
  rows_per_call: int,
  weight_bytes: int,
  budget: int | None = None,
  calls_to_budget: bool = True,
) -> Cost:
  """`rows` sequences of `new` tokens after `prompt`, `rows_per_call` at a time.

  With `budget` (the sampler as it is): a call runs until its longest row stops (its
  `while_loop` ends once every row is done), which over 64 rows is about the whole budget,
  and every step attends over the whole cache of prompt + budget slots, written or not.
  `calls_to_budget` False: every call ends with its rows, at `new` steps (rows that all stop
  near the mean length), still reading the whole cache each step.
  Without (a sampler we do not have): each row costs only its own `new` steps, as if finished
  rows were refilled, and each step reads only the slots written.
  """
  calls = -(-rows // rows_per_call)
  if budget is not None:
    steps, context = (budget if calls_to_budget else new), prompt + budget
  else:
    steps, context = new, prompt + new / 2
  flops = rows * steps * (2 * m.matmul_params + m.attention_flops(context))
  # Each step of a call reads the weights once and every row's cache.
  weights = calls * steps * m.params * weight_bytes
  cache = rows * steps * context * m.kv_bytes_per_token
  return Cost(flops, weights + cache, "decode")


def forward_cost(m: Model, rows: int, length: int, passes: float) -> Cost:
  """`passes` forward-equivalents over rows x length tokens (causal: mean context T/2)."""
  per_token = 2 * m.matmul_params + m.attention_flops(length / 2)
  return Cost(passes * rows * length * per_token, 0.0, "train")


def workload(
  config, m: Model, fraction: float, prompt: int, as_today: bool = True, calls_to_budget=True
) -> dict:
  """{phase: {part: Cost}} for one iteration. `as_today`: decode as the sampler runs now
  (`decode_cost` with its budget, calls running to it unless `calls_to_budget` is False);
  otherwise as one that stops rows and reads written slots."""
  c, d, s = config.challenger, config.dataset, config.solver
  rows_per_call = config.sampling.max_rows_per_call

  def decode(rows, new, budget, weight_bytes):
    return decode_cost(
      m,
      rows,
      prompt,
      new,
      rows_per_call,
      weight_bytes,
      budget if as_today else None,
      calls_to_budget,
    )

  answers = max(1, int(config.sampling.answer_max_new_tokens * fraction))
  out = {}
  # Challenger: rollouts (its own f32 weights), m answers per question (frozen bf16 Solver),
  # pi_old + pi_ref (2 forwards; pi_old only when a step makes several updates), an update
  # with full remat (forward, forward again, backward: 4 forward-equivalents).
  rollouts = c.prompts_per_step * c.group_size
  new = max(1, int(c.max_new_tokens * fraction))
  several = rollouts > c.prompts_per_update * c.group_size
  out["challenger"] = {
    "rollouts": _times(decode(rollouts, new, c.max_new_tokens, 4), c.steps),
    "solver answers": _times(
      decode(rollouts * c.solver_samples, answers, config.sampling.answer_max_new_tokens, 2),
      c.steps,
    ),
    "pi_old / pi_ref": _times(forward_cost(m, rollouts, prompt + new, 1 + several), c.steps),
    "update": _times(forward_cost(m, rollouts, prompt + new, 4), c.steps),
  }
  question_budget = d.max_new_tokens
  questions = max(1, int(question_budget * fraction))
  out["dataset"] = {
    "questions": decode(d.num_questions, questions, question_budget, 4),
    "answers": decode(
      d.num_questions * d.solver_samples, answers, config.sampling.answer_max_new_tokens, 2
    ),
  }
  rollouts = s.prompts_per_step * s.group_size
  new = max(1, int(s.max_new_tokens * fraction))
  several = rollouts > s.prompts_per_update * s.group_size
  out["solver"] = {
    "rollouts": _times(decode(rollouts, new, s.max_new_tokens, 4), s.steps),
    "pi_old / pi_ref": _times(forward_cost(m, rollouts, prompt + new, 1 + several), s.steps),
    "update": _times(forward_cost(m, rollouts, prompt + new, 4), s.steps),
  }
  return out


def _times(cost: Cost, k: int) -> Cost:
  return Cost(cost.flops * k, cost.bytes * k, cost.kind)


def seconds(cost: Cost, chips: int, peak: float, bw: float) -> tuple[float, float]:
  """(roofline, realistic) seconds on `chips` chips."""
  roof = max(cost.flops / (chips * peak), cost.bytes / (chips * bw))
  if cost.kind == "decode":
    return roof, roof / DECODE_EFFICIENCY
  return roof, cost.flops / (chips * peak * TRAIN_MFU)


def table(costs: dict, chips: int, peak: float, bw: float, iterations: int) -> tuple[str, dict]:
  """The markdown table, and {'roofline', 'realistic': hours for all iterations, 'parts':
  [(realistic hours per iteration, 'phase part', kind)]}."""
  lines = [
    "| phase | part | PFLOP | HBM TB | roofline h | realistic h |",
    "|---|---|---:|---:|---:|---:|",
  ]
  total_roof = total_real = 0.0
  parts_real = []
  for phase, parts in costs.items():
    for part, cost in parts.items():
      roof, real = seconds(cost, chips, peak, bw)
      total_roof += roof
      total_real += real
      parts_real.append((real / 3600, f"{phase} {part}", cost.kind))
      lines.append(
        f"| {phase} | {part} | {cost.flops / 1e15:,.0f} | {cost.bytes / 1e12:,.0f} | "
        f"{roof / 3600:.2f} | {real / 3600:.2f} |"
      )
  lines.append(f"| **one iteration** | | | | {total_roof / 3600:.2f} | {total_real / 3600:.2f} |")
  lines.append(
    f"| **{iterations} iterations** | | | | {iterations * total_roof / 3600:.1f} | "
    f"{iterations * total_real / 3600:.1f} |"
  )
  hours = {
    "roofline": iterations * total_roof / 3600,
    "realistic": iterations * total_real / 3600,
    "parts": parts_real,
  }
  return "\n".join(lines), hours


def define_flags() -> None:
  flags.DEFINE_string("config", "configs/qwen3_4b_base.py", "A paper config file.")
  flags.DEFINE_string("chip", "v5p", "Chip of the slice (memory_plan.CHIPS).")
  flags.DEFINE_integer("chips", 4, "Chips in the slice (v5p-8: 4).")
  flags.DEFINE_integer("prompt", 512, "Mean prompt length in tokens.")
  flags.DEFINE_float("budget_fraction", 1.0, "Mean completion length / its token budget.")
  flags.DEFINE_bool(
    "as_today",
    True,
    "Decode as the sampler runs now (every call to the whole budget, each step over the "
    "whole cache); false: a sampler we do not have, where each row costs only its own "
    "tokens and each step reads only written slots.",
  )
  flags.DEFINE_bool(
    "calls_to_budget",
    True,
    "With --as_today: a call's longest row runs to the budget; false: every call ends at the "
    "mean completion length (its rows all stop near it), still reading the whole cache.",
  )


def assumptions(
  config, as_today: bool, fraction: float, prompt: int, calls_to_budget: bool = True
) -> list[str]:
  """What a projection assumes, one line each, for the printout."""
  rows = config.sampling.max_rows_per_call
  if as_today:
    length = (
      "taken as the whole budget, whatever the mean length"
      if calls_to_budget
      else "taken as the mean completion length: shorter completions, nothing else"
    )
    decode = (
      f"decode as the sampler runs now: a call of {rows} rows runs until its longest row "
      f"stops (the while_loop ends once all rows are done; {length}), and each step reads "
      "the call's whole cache (prompt + budget slots)"
    )
  else:
    decode = (
      "decode by a sampler we do not have: each row costs only its own tokens (finished rows "
      "refilled) and each step reads only written slots; the sampler already stops a call "
      "once all its rows are done, so shorter completions alone do not give this figure"
    )
  return [
    f"completions at {fraction:.0%} of their token budgets on average; prompts of {prompt} "
    f"tokens; {rows} rows per generate call",
    decode,
    f"realistic: decode at {DECODE_EFFICIENCY:.1%} of the HBM roofline and training / "
    f"logprobs at MFU {TRAIN_MFU} (both measured on one H100, decode with the path before "
    "issue 25's single attention path, at short contexts; neither on a TPU)",
  ]


def main(argv):
  del argv
  config = memory_plan.load_config(FLAGS.config)
  arch = os.path.splitext(os.path.basename(FLAGS.config))[0]
  m = model_of(memory_plan.ARCHITECTURES[arch])
  chip = memory_plan.CHIPS[FLAGS.chip]
  costs = workload(
    config, m, FLAGS.budget_fraction, FLAGS.prompt, FLAGS.as_today, FLAGS.calls_to_budget
  )
  text, hours = table(costs, FLAGS.chips, chip["peak_flops"], chip["hbm_bw"], config.iterations)
  print(f"{arch} on {FLAGS.chips} {FLAGS.chip} chips. Assumes:")
  for line in assumptions(
    config, FLAGS.as_today, FLAGS.budget_fraction, FLAGS.prompt, FLAGS.calls_to_budget
  ):
    print(f"- {line}")
  print(text)
  parts = hours["parts"]
  total = sum(h for h, _, _ in parts)
  top, name, kind = max(parts)
  decode = sum(h for h, _, k in parts if k == "decode")
  print(
    f"\ncosts most: {name} ({kind}), {top:.1f} of {total:.1f} realistic h per iteration "
    f"({top / total:.0%}); all decode {decode / total:.0%}"
  )
  print(
    f"projected {config.iterations} iterations on {FLAGS.chips} {FLAGS.chip} chips: "
    f"{hours['realistic']:.1f} h realistic ({hours['roofline']:.1f} h at the roofline); "
    f"the reference: ~{REFERENCE_HOURS:.0f} h on 8x A100-40GB"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
