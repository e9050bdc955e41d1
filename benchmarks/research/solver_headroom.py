"""How much can R-Zero's Solver phase teach the arithmetic world's base model at all?

Measurements on held-out problems (or, with --eval_set=train, fresh training problems), no
R-Zero run and no Challenger:

  1. greedy vs mean-sample vs maj@m accuracy per level: what self-consistency could teach
     (majority labels are only worth learning where the majority beats the greedy answer),
     greedy accuracy split by whether the problem takes a multi-digit step, and, on the
     problems where working left to right gives a wrong answer, how often greedy is right and
     how often it gives that careless answer (`BaseModelSpec.careless_fraction`), and how
     often greedy and sampled answers are unworked (a guess or a give-up,
     `BaseModelSpec.guess_fractions`) and how often the worked samples are right;
  2. a GRPO probe with the world's TRUE answers as rewards: the Solver trains on freshly drawn
     training problems of the chosen levels, with the default config's Solver settings, and the
     held-out accuracy is measured before and after. Perfect labels are the best case of the
     Solver phase, so if this does not move the held-out frontier, no pseudo-label can;
  3. optionally (--sft_steps), a supervised bound on the same data budget: continued
     next-token training on the true worked solutions of the probe's own problem stream, which
     is more signal per problem than any reward.

Ground truth is used here only to diagnose the base model; R-Zero's phases never see it.

  .venv/bin/python benchmarks/research/solver_headroom.py [--steps=120] [--learning_rate=3e-4]
      [--temperature=1.0] [--eval_set=heldout|train] [--base_model=DIR] [--sft_steps=0]

Choose a base-model design with --eval_set=train (fresh training-distribution problems), never
on the held-out sets; benchmarks/research/build_variant_base.py builds a variant to check.
"""

import argparse
import collections
import functools
import os
import random
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from configs import arith_tiny  # noqa: E402
from rzero_jax import grading  # noqa: E402
from rzero_jax.rl import learner  # noqa: E402
from rzero_jax.rzero import experiment, loop, phases  # noqa: E402
from rzero_jax.worlds import arith, base_model  # noqa: E402


def _completions(env, params, problems, *, n, temperature, seed, max_new_tokens):
  prompts = phases.solver_prompt_ids(env, [p.question for p in problems])
  rows, _, _ = phases.generate_rows(
    env,
    params,
    prompts,
    n=n,
    seed=seed,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_p=1.0,
    top_k=0 if temperature == 0 else 40,
  )
  texts = phases.decode(env, rows)
  return [texts[i * n : (i + 1) * n] for i in range(len(problems))]


def is_unworked(completion: str) -> bool:
  """A guess or a give-up (`BaseModelSpec.guess_fractions`): no step before the box, if any."""
  return " = " not in completion.split("\\boxed{")[0]


def greedy_answers(env, params, problems, max_new_tokens):
  """(completion texts, boxed answers, right or not) of greedy decoding, per problem."""
  texts = [
    t[0]
    for t in _completions(
      env, params, problems, n=1, temperature=0.0, seed=0, max_new_tokens=max_new_tokens
    )
  ]
  answers = [grading.extract_boxed(t) for t in texts]
  return texts, answers, [a == str(p.answer) for a, p in zip(answers, problems)]


def left_to_right_answer(question: str) -> int:
  """The careless author's answer (`arith.left_to_right`)."""
  return arith.evaluate(arith.left_to_right(arith.parse_question(question)))


def order_report(problems, answers) -> str:
  """On the problems whose left-to-right answer is wrong: how many there are, and the share
  of `answers` that are right and that are the left-to-right one."""
  rows = [(a, p) for a, p in zip(answers, problems) if left_to_right_answer(p.question) != p.answer]
  if not rows:
    return "– | –"
  right = np.mean([a == str(p.answer) for a, p in rows])
  careless = np.mean([a == str(left_to_right_answer(p.question)) for a, p in rows])
  return f"{100 * right:.1f} ({len(rows)}) | {100 * careless:.1f}"


def has_multi_digit_step(question: str) -> bool:
  """Whether working the question takes a product with a multi-digit operand or a sum or
  difference of two multi-digit numbers (operands counted as evaluated, e.g. 32 in 4 * 8 * 4)."""

  def walk(expr):
    if isinstance(expr, arith.Lit):
      return expr.value, False
    (a, hard_a), (b, hard_b) = walk(expr.left), walk(expr.right)
    big_a, big_b = abs(a) >= 10, abs(b) >= 10
    if expr.op == "*":
      hard = (big_a and abs(b) >= 2) or (big_b and abs(a) >= 2)
    else:
      hard = big_a and big_b
    # The operands' values are known: evaluate one operation, not the whole subtree again.
    value = arith.evaluate(arith.BinOp(expr.op, arith.Lit(a), arith.Lit(b)))
    return value, hard or hard_a or hard_b

  return walk(arith.parse_question(question))[1]


def _percent(flags) -> str:
  return f"{100 * np.mean(flags):.1f} ({len(flags)})" if flags else "–"


def self_consistency(env, params, problems, m, max_new_tokens, temperature):
  """(mean sample accuracy, maj@m accuracy) at the given temperature, top-k 40 (the answer
  sampling default)."""
  got = _completions(
    env, params, problems, n=m, temperature=temperature, seed=1, max_new_tokens=max_new_tokens
  )
  mean, majority, unworked, worked_right = [], [], [], []
  for texts, p in zip(got, problems):
    answers = [grading.extract_boxed(t) for t in texts]
    mean.append(np.mean([a == str(p.answer) for a in answers]))
    votes = collections.Counter(a for a in answers if a is not None)
    majority.append(bool(votes) and votes.most_common(1)[0][0] == str(p.answer))
    for t, a in zip(texts, answers):
      unworked.append(is_unworked(t))
      if not unworked[-1]:
        worked_right.append(a == str(p.answer))
  return float(np.mean(mean)), float(np.mean(majority)), unworked, worked_right


def _sample_kept(rng, draw, n: int, one_digit_steps: bool) -> list:
  """n problems from draw(rng); with one_digit_steps, only those without a multi-digit step."""
  out = []
  while len(out) < n:
    p = draw(rng)
    if not (one_digit_steps and has_multi_digit_step(p.question)):
      out.append(p)
  return out


def training_problems(seed: int, train_levels, n: int, one_digit_steps: bool = False) -> list:
  """The probes' fresh training problems: the same stream for the GRPO probe and the bound."""
  rng = random.Random(f"solver-headroom/{seed}")
  return _sample_kept(
    rng, lambda r: arith.sample_problem(r, r.choice(train_levels)), n, one_digit_steps
  )


def _report_change(env, params, heldout, before, levels, frontier, budget, what):
  print(
    "| level | greedy before | greedy after | change | after, where left to right is "
    "wrong: right (n) | left-to-right answers | greedy: unworked (n) |"
  )
  print("|---|---|---|---|---|---|---|")
  changes = []
  for level in levels:
    texts, answers, correct = greedy_answers(env, params, heldout[level], budget)
    after = float(np.mean(correct))
    if level in frontier:
      changes.append(after - before[level])
    print(
      f"| {level} | {100 * before[level]:.1f} | {100 * after:.1f} | "
      f"{100 * (after - before[level]):+.1f} | {order_report(heldout[level], answers)} | "
      f"{_percent([is_unworked(t) for t in texts])} |"
    )
  print(f"frontier change {what}: {100 * np.mean(changes):+.1f} points")


def grpo_probe(env, params, heldout, before, levels, frontier, args, config, train_levels, budget):
  """The Solver's GRPO step with the world's true answers as labels, on fresh problems."""
  n = args.steps * config.solver.prompts_per_step  # every problem is seen once
  records = [
    {"question": p.question, "label": str(p.answer)}
    for p in training_problems(args.seed, train_levels, n, args.one_digit_steps)
  ]
  state = learner.init_train_state(params, loop.learner_config(config.solver))
  role = loop.make_role(config.solver, env, state)
  rewards = []
  for step in range(args.steps):
    state, record = phases.solver_step(
      env,
      role,
      state,
      params,
      records,
      config.solver,
      step=step,
      seed=args.seed + step,
      data_seed=args.seed,
    )
    rewards.append(record["reward_mean"])
  print(
    f"\n2. GRPO with true-answer rewards: {args.steps} steps x "
    f"{config.solver.prompts_per_step} fresh problems of levels {args.train_levels}, "
    f"lr {args.learning_rate:g}, T = {args.temperature:g} (otherwise the default Solver "
    "settings)"
  )
  quarter = max(1, args.steps // 4)
  print(
    f"training reward: first {quarter} steps {np.mean(rewards[:quarter]):.3f}, "
    f"last {quarter} steps {np.mean(rewards[-quarter:]):.3f}"
  )
  _report_change(
    env, state.params, heldout, before, levels, frontier, budget, "with perfect labels"
  )


def supervised_bound(
  env, params, heldout, before, levels, frontier, args, config, train_levels, budget
):
  """Continued next-token training on true worked solutions with the Solver's optimizer at the
  probe's constant lr, one batch of prompts_per_step fresh documents a step."""
  import jax

  batch = config.solver.prompts_per_step
  problems = training_problems(
    args.seed, train_levels, args.sft_steps * batch, args.one_digit_steps
  )
  docs = [
    (env.prompt_set.solver_messages(p.question), arith.worked_solution(p.question))
    for p in problems
  ]
  corpus = base_model.tokenize_corpus(env.tokenizer, docs)
  # The Solver's own optimizer (main() has set its learning rate to --learning_rate).
  optimizer = learner.make_optimizer(loop.learner_config(config.solver))
  step = jax.jit(functools.partial(base_model.next_token_step, env.cfg, optimizer))
  opt_state = optimizer.init(params)
  for i in range(args.sft_steps):
    rows = slice(i * batch, (i + 1) * batch)
    params, opt_state, loss = step(params, opt_state, corpus.tokens[rows], corpus.loss_mask[rows])
  print(
    f"\n3. Supervised bound: {args.sft_steps} steps x {batch} true worked solutions of "
    f"levels {args.train_levels} (the probe's problem stream), lr {args.learning_rate:g}; "
    f"last loss {float(loss):.3f}"
  )
  _report_change(
    env, params, heldout, before, levels, frontier, budget, "with supervised worked solutions"
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--levels", default="3,4,5,6,7,8", help="held-out levels to report")
  ap.add_argument("--frontier", default="5,6,7,8")
  ap.add_argument("--per_level", type=int, default=128, help="held-out problems per level")
  ap.add_argument("--m", type=int, default=10, help="samples per problem for maj@m")
  ap.add_argument("--train_levels", default="5,6,7", help="levels of the probe's problems")
  ap.add_argument("--steps", type=int, default=120, help="GRPO steps of the probe (0 = skip)")
  ap.add_argument("--learning_rate", type=float, default=3e-4)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument(
    "--eval_set",
    default="heldout",
    choices=("heldout", "train"),
    help="'train': measure on fresh training-distribution problems instead, so "
    "that a base-model design can be chosen without looking at the held-out sets",
  )
  ap.add_argument(
    "--temperature",
    type=float,
    default=1.0,
    help="sampling temperature of the maj@m answers and the probe's rollouts",
  )
  ap.add_argument(
    "--base_model",
    default="",
    help="HF directory ('' = the default config's base model, built if needed)",
  )
  ap.add_argument(
    "--sft_steps",
    type=int,
    default=0,
    help="steps of the supervised bound "
    "(0 = skip); each step takes prompts_per_step fresh worked solutions",
  )
  ap.add_argument(
    "--one_digit_steps",
    action="store_true",
    help="with --eval_set=train: train and measure only on problems whose every "
    "step is one-digit (has_multi_digit_step false): does GRPO teach reliability "
    "where the base model has the skill?",
  )
  args = ap.parse_args()
  if args.one_digit_steps and args.eval_set != "train":
    ap.error(
      "--one_digit_steps needs --eval_set=train (designs are never chosen on held-out problems)"
    )
  levels = [int(x) for x in args.levels.split(",")]
  frontier = [int(x) for x in args.frontier.split(",")]

  config = arith_tiny.get_config()
  config.solver.learner.learning_rate = args.learning_rate
  config.solver.temperature = args.temperature
  base = args.base_model or experiment.resolve_base_model(config)
  with tempfile.TemporaryDirectory() as workdir:
    s = loop.setup(config, workdir, base_model=base)
    env, budget = s.env, config.solver.max_new_tokens
    if args.eval_set == "heldout":
      heldout = arith.heldout_sets(per_level=args.per_level)
    else:  # fresh training-distribution problems: for choosing a design without the held-out sets
      eval_rng = random.Random(f"solver-headroom/eval/{args.seed}")
      heldout = {
        level: _sample_kept(
          eval_rng,
          lambda r, l=level: arith.sample_problem(r, l),
          args.per_level,
          args.one_digit_steps,
        )
        for level in levels
      }

    print(f"base model: {base}")
    print(
      f"\n1. self-consistency on {args.eval_set} problems ({args.per_level} per level, "
      f"m = {args.m}, T = {args.temperature:g}; %)"
    )
    print(
      "| level | greedy | mean sample | maj@m | maj@m - greedy | greedy: one-digit steps only "
      "(n) | greedy: a multi-digit step (n) | greedy, where left to right is wrong: right "
      "(n) | left-to-right answers | greedy: unworked (n) | samples: unworked (n) | "
      "worked samples: right (n) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    gaps = []
    before = {}
    for level in levels:
      texts, answers, correct = greedy_answers(env, s.base_params, heldout[level], budget)
      g = float(np.mean(correct))
      hard = [has_multi_digit_step(p.question) for p in heldout[level]]
      split = [_percent([c for c, h in zip(correct, hard) if h == want]) for want in (False, True)]
      mean, majority, unworked, worked_right = self_consistency(
        env, s.base_params, heldout[level], args.m, budget, args.temperature
      )
      before[level] = g
      if level in frontier:
        gaps.append(majority - g)
      print(
        f"| {level} | {100 * g:.1f} | {100 * mean:.1f} | {100 * majority:.1f} | "
        f"{100 * (majority - g):+.1f} | {split[0]} | {split[1]} | "
        f"{order_report(heldout[level], answers)} | "
        f"{_percent([is_unworked(t) for t in texts])} | {_percent(unworked)} | "
        f"{_percent(worked_right)} |"
      )
    print(f"maj@m - greedy over the frontier levels: {100 * np.mean(gaps):+.1f} points")
    train_levels = [int(x) for x in args.train_levels.split(",")]
    if args.steps > 0:
      grpo_probe(
        env, s.base_params, heldout, before, levels, frontier, args, config, train_levels, budget
      )
    if args.sft_steps > 0:
      supervised_bound(
        env, s.base_params, heldout, before, levels, frontier, args, config, train_levels, budget
      )


if __name__ == "__main__":
  main()
