"""The arithmetic world of the embedded default: graded problems with exact integer answers.

A problem is an integer expression over +, - and * with non-negative literals and parentheses,
asked as ``What is (23 + 4) * 5?``. Its level is a function of the expression's structure
alone (operand count, most digits in one operand, operators, needed parentheses), read from
the `LEVELS` table; the top level also takes anything larger. So a question that a Challenger
writes can be parsed back to its level (`difficulty_of`) and evaluated (`true_answer`) by a
small recursive-descent parser that never calls `eval`.

Held-out problems are fixed by a keyed hash of the canonical question text (`is_heldout`), not
by a seed: the training generator `sample_problem` rejects every held-out text, so held-out
sets (`heldout_sets`) are disjoint from training whatever seeds either side uses.

`true_answer` is for the report's pseudo-label accuracy only; nothing in R-Zero's training
phases may call it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Callable, Union

import numpy as np

from rzero_jax.prompts import PromptSet

WORLD_VERSION = "arith-v2"  # part of every cache key that depends on this world's text

# ----------------------------------------------------------------------------- expressions

OPS = "+-*"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


@dataclasses.dataclass(frozen=True)
class Lit:
  value: int


@dataclasses.dataclass(frozen=True)
class BinOp:
  op: str
  left: "Expr"
  right: "Expr"


Expr = Union[Lit, BinOp]


def evaluate(expr: Expr) -> int:
  if isinstance(expr, Lit):
    return expr.value
  a, b = evaluate(expr.left), evaluate(expr.right)
  return a + b if expr.op == "+" else a - b if expr.op == "-" else a * b


def _precedence(expr: Expr) -> int:
  return 3 if isinstance(expr, Lit) else _PRECEDENCE[expr.op]


def format_expr(expr: Expr) -> str:
  """Canonical text: single spaces around operators, parentheses only where the tree needs them.

  Operators are left-associative, so a right child of equal precedence keeps its parentheses
  (``3 - (4 - 5)``, and also ``3 + (4 + 5)``: a different order of work). A negative literal,
  which only arises inside a worked solution, is always parenthesised.
  """
  if isinstance(expr, Lit):
    return str(expr.value) if expr.value >= 0 else f"({expr.value})"
  p = _PRECEDENCE[expr.op]
  left, right = format_expr(expr.left), format_expr(expr.right)
  if _precedence(expr.left) < p:
    left = f"({left})"
  if _precedence(expr.right) <= p:
    right = f"({right})"
  return f"{left} {expr.op} {right}"


_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*()])|(\S))")
MAX_QUESTION_CHARS = 256
MAX_LITERAL_DIGITS = 6
MAX_OPERANDS = 16
MAX_DEPTH = 16


class _ParseError(Exception):
  pass


def _tokenize(text: str) -> list[str]:
  tokens = []
  for number, symbol, other in _TOKEN.findall(text):
    if other:
      raise _ParseError(f"unexpected character {other!r}")
    if number and (len(number) > MAX_LITERAL_DIGITS or (len(number) > 1 and number[0] == "0")):
      raise _ParseError(f"literal {number!r} is outside the world")
    tokens.append(number or symbol)
  return tokens


class _Parser:
  """expr := term (('+'|'-') term)* ; term := factor ('*' factor)* ; factor := INT | '(' expr ')'"""

  def __init__(self, tokens: list[str]):
    self.tokens, self.pos, self.depth, self.operands = tokens, 0, 0, 0

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self) -> str:
    tok = self.peek()
    if tok is None:
      raise _ParseError("unexpected end")
    self.pos += 1
    return tok

  def expr(self) -> Expr:
    node = self.term()
    while self.peek() in ("+", "-"):
      op = self.take()
      node = BinOp(op, node, self.term())
    return node

  def term(self) -> Expr:
    node = self.factor()
    while self.peek() == "*":
      self.take()
      node = BinOp("*", node, self.factor())
    return node

  def factor(self) -> Expr:
    tok = self.take()
    if tok == "(":
      self.depth += 1
      if self.depth > MAX_DEPTH:
        raise _ParseError("parentheses nested too deeply")
      node = self.expr()
      if self.take() != ")":
        raise _ParseError("unbalanced parentheses")
      self.depth -= 1
      return node
    if tok.isdigit():
      self.operands += 1
      if self.operands > MAX_OPERANDS:
        raise _ParseError("too many operands")
      return Lit(int(tok))
    raise _ParseError(f"unexpected {tok!r}")


def parse_expression(text: str) -> Expr | None:
  """A bare expression (``(3 + 4) * 5``) -> tree, or None if it is not one of this world's."""
  if not isinstance(text, str) or len(text) > MAX_QUESTION_CHARS:
    return None
  try:
    parser = _Parser(_tokenize(text))
    node = parser.expr()
    if parser.peek() is not None:
      return None
    return node
  except _ParseError:
    return None


_QUESTION = re.compile(r"^\s*(?:what\s+is\s+)?(.*?)\s*(?:=\s*)?\??\s*$", re.IGNORECASE | re.DOTALL)


def parse_question(question: str) -> Expr | None:
  """``What is EXPR?`` (prefix, ``?`` and a trailing ``=`` optional) -> tree, or None."""
  if not isinstance(question, str) or len(question) > MAX_QUESTION_CHARS:
    return None
  match = _QUESTION.match(question)
  return parse_expression(match.group(1)) if match else None


def question_text(expr: Expr) -> str:
  return f"What is {format_expr(expr)}?"


# ----------------------------------------------------------------------------- levels


@dataclasses.dataclass(frozen=True)
class Pattern:
  """A shape of expression: up to `operands` literals of up to `digits` digits each."""

  operands: int
  digits: int
  ops: str
  parens: bool  # whether needed parentheses may appear


@dataclasses.dataclass(frozen=True)
class Level:
  level: int
  description: str
  patterns: tuple[Pattern, ...]
  # Held-out share of the level's problems. The small one-digit levels hold out more so that
  # their evaluation sets still have a few dozen distinct problems.
  heldout_fraction: float


# Ordered by how hard each shape proved for a small pretrained model (measured on training
# problems): every two-digit operation (a carry, a borrow, a two-digit product) is the skill
# that comes last, and each extra operation is one more step that can go wrong.
LEVELS: tuple[Level, ...] = (
  Level(1, "a + b, one digit", (Pattern(2, 1, "+", False),), 0.4),
  Level(2, "a - b or a * b, one digit", (Pattern(2, 1, OPS, False),), 0.3),
  Level(3, "three one-digit operands, + and - only", (Pattern(3, 1, "+-", False),), 0.1),
  Level(4, "three one-digit operands with *", (Pattern(3, 1, OPS, False),), 0.1),
  Level(5, "three one-digit operands with parentheses", (Pattern(3, 1, OPS, True),), 0.1),
  Level(6, "two operands, one with two digits", (Pattern(2, 2, OPS, False),), 0.1),
  Level(7, "three operands, one with two digits", (Pattern(3, 2, OPS, True),), 0.1),
  Level(8, "four one-digit operands (and anything larger)", (Pattern(4, 1, OPS, True),), 0.1),
)
NUM_LEVELS = len(LEVELS)


@dataclasses.dataclass(frozen=True)
class Features:
  operands: int
  digits: int
  ops: frozenset
  parens: bool


def _scan(expr: Expr, lits: list[int], ops: list[str]) -> None:
  """The literals and operators as they stand in the text, left to right."""
  if isinstance(expr, Lit):
    lits.append(expr.value)
  else:
    _scan(expr.left, lits, ops)
    ops.append(expr.op)
    _scan(expr.right, lits, ops)


def _features(expr: Expr, text: str) -> Features:
  lits: list[int] = []
  ops: list[str] = []
  _scan(expr, lits, ops)
  return Features(
    operands=len(lits),
    digits=max(len(str(abs(v))) for v in lits),
    ops=frozenset(ops),
    parens="(" in text,
  )


def features(expr: Expr) -> Features:
  return _features(expr, format_expr(expr))


def _fits(f: Features, p: Pattern) -> bool:
  return (
    f.operands <= p.operands
    and f.digits <= p.digits
    and f.ops <= set(p.ops)
    and (p.parens or not f.parens)
  )


def _level_of_features(f: Features) -> int | None:
  if f.operands < 2:
    return None
  for lvl in LEVELS:
    if any(_fits(f, p) for p in lvl.patterns):
      return lvl.level
  return NUM_LEVELS


def level_of(expr: Expr) -> int | None:
  """The first level with a pattern that fits; the top level takes everything larger.

  A lone literal is not a question of this world: None.
  """
  return _level_of_features(features(expr))


def difficulty_of(question: str) -> int | None:
  """The level of a (generated) question, or None when it is not an arithmetic question."""
  expr = parse_question(question)
  return None if expr is None else level_of(expr)


def true_answer(question: str) -> int | None:
  """The exact answer of a (generated) question, or None when it does not parse.

  For the report's pseudo-label accuracy only: R-Zero's training phases never see it.
  """
  expr = parse_question(question)
  return None if expr is None else evaluate(expr)


def canonical_question(question: str) -> str | None:
  """The canonical text of a question (spacing and redundant parentheses normalised)."""
  expr = parse_question(question)
  return None if expr is None else question_text(expr)


# ----------------------------------------------------------------------------- held-out split

_HELDOUT_KEY = b"rzero-jax/arith/heldout/v2"


def _unit_hash(text: str) -> float:
  digest = hashlib.blake2b(text.encode(), digest_size=8, key=_HELDOUT_KEY).digest()
  return int.from_bytes(digest, "big") / 2.0**64


def is_heldout(question: str) -> bool:
  """Whether a question belongs to the held-out evaluation partition.

  Decided by a keyed hash of the canonical text, so ``What is (3+4)*5?`` and
  ``What is (3 + 4) * 5 ?`` fall on the same side. Text that does not parse is never held out.
  """
  expr = parse_question(question)
  if expr is None:
    return False
  level = level_of(expr)
  if level is None:
    return False
  return _unit_hash(question_text(expr)) < LEVELS[level - 1].heldout_fraction


# ----------------------------------------------------------------------------- generation


@dataclasses.dataclass(frozen=True)
class Problem:
  question: str
  answer: int
  level: int


def _check_level(level: int) -> None:
  if (
    isinstance(level, bool)
    or not isinstance(level, (int, np.integer))
    or not (1 <= level <= NUM_LEVELS)
  ):
    raise ValueError(f"level={level!r}; expected an integer in 1..{NUM_LEVELS}")


Rng = Union[random.Random, np.random.Generator]


def _as_random(rng: Rng) -> random.Random:
  # Scalar draws from `random.Random` cost a fraction of numpy's; a numpy Generator is accepted
  # and seeds one, so callers keep numpy's seeding conventions.
  if isinstance(rng, random.Random):
    return rng
  if isinstance(rng, np.random.Generator):
    return random.Random(int(rng.integers(2**63)))
  raise TypeError(f"rng: expected random.Random or numpy Generator, got {type(rng).__name__}")


def _random_tree(rng: random.Random, pattern: Pattern, operands: int) -> Expr:
  if operands == 1:
    digits = rng.randint(1, pattern.digits)
    return Lit(rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits))
  split = rng.randrange(1, operands)
  return BinOp(
    rng.choice(pattern.ops),
    _random_tree(rng, pattern, split),
    _random_tree(rng, pattern, operands - split),
  )


def _is_one_digit_literal(expr: Expr) -> bool:
  return isinstance(expr, Lit) and expr.value < 10


def _small_products(expr: Expr) -> bool:
  # Every product has a one-digit literal factor: results stay within four digits, and a
  # multi-digit-by-multi-digit product in one step is beyond what a tiny model can learn.
  if isinstance(expr, Lit):
    return True
  if expr.op == "*" and not (_is_one_digit_literal(expr.left) or _is_one_digit_literal(expr.right)):
    return False
  return _small_products(expr.left) and _small_products(expr.right)


_MAX_TRIES = 10_000


def _sample_expr(rng: Rng, level: int, heldout: bool) -> tuple[Expr, str]:
  """A random tree of `level` on the requested side of the held-out split, with its text."""
  _check_level(level)
  rng = _as_random(rng)
  spec = LEVELS[level - 1]
  for _ in range(_MAX_TRIES):
    pattern = rng.choice(spec.patterns)
    expr = _random_tree(rng, pattern, pattern.operands)
    if not _small_products(expr):
      continue
    text = format_expr(expr)
    if _level_of_features(_features(expr, text)) != level:
      continue
    question = f"What is {text}?"
    if (_unit_hash(question) < spec.heldout_fraction) == heldout:
      return expr, question
  raise RuntimeError(f"level {level}: no problem found in {_MAX_TRIES} draws")


def sample_problem(rng: Rng, level: int) -> Problem:
  """A training problem of `level`; never a held-out one."""
  expr, question = _sample_expr(rng, level, heldout=False)
  return Problem(question=question, answer=evaluate(expr), level=level)


def sample_heldout_problem(rng: Rng, level: int) -> Problem:
  expr, question = _sample_expr(rng, level, heldout=True)
  return Problem(question=question, answer=evaluate(expr), level=level)


def _distinct_sets(
  kind: str, sample: Callable[[random.Random, int], Problem], seed: int, per_level: int
) -> dict[int, list[Problem]]:
  if isinstance(per_level, bool) or not isinstance(per_level, int) or per_level < 1:
    raise ValueError(f"per_level={per_level!r}; expected a positive integer")
  sets = {}
  for level in range(1, NUM_LEVELS + 1):
    rng = random.Random(f"{WORLD_VERSION}/{kind}/{seed}/{level}")
    seen: dict[str, Problem] = {}
    # Stop after many draws with nothing new: the level's partition is then exhausted.
    stale = 0
    while len(seen) < per_level and stale < 2000:
      problem = sample(rng, level)
      if problem.question in seen:
        stale += 1
      else:
        seen[problem.question] = problem
        stale = 0
    sets[level] = list(seen.values())
  return sets


def heldout_sets(seed: int = 20250805, per_level: int = 256) -> dict[int, list[Problem]]:
  """Distinct held-out problems per level, the same for the same arguments.

  A level whose held-out partition is smaller than `per_level` (level 1 has about 40 of its
  100 problems held out) contributes all of its held-out problems; check `len()` per level.
  """
  return _distinct_sets("heldout", sample_heldout_problem, seed, per_level)


def design_sets(seed: int = 20251126, per_level: int = 256) -> dict[int, list[Problem]]:
  """Distinct *training-distribution* problems per level, never held-out ones.

  For choosing a design (sizes, learning rates, base models) by its effect on accuracy without
  ever looking at the held-out sets. The easy levels' problems may also appear in the base
  model's pretraining corpus, so their accuracies read high.
  """
  return _distinct_sets("design", sample_problem, seed, per_level)


# ----------------------------------------------------------------------------- text formats


def _reduce_once(expr: Expr, results_first: bool = False) -> Expr:
  """Evaluates the leftmost operation whose operands are both literals. With `results_first`,
  a result that lands on the right of a + or a * is written in front instead
  (``3 + 4 * 5 = 20 + 3``): the same value, another way of writing it."""
  if isinstance(expr, Lit):
    raise ValueError("a literal has nothing left to reduce")
  if isinstance(expr.left, Lit) and isinstance(expr.right, Lit):
    return Lit(evaluate(expr))
  if not isinstance(expr.left, Lit):
    return BinOp(expr.op, _reduce_once(expr.left, results_first), expr.right)
  right = _reduce_once(expr.right, results_first)
  if results_first and expr.op in "+*" and isinstance(right, Lit):
    return BinOp(expr.op, right, expr.left)
  return BinOp(expr.op, expr.left, right)


def reduction_steps(expr: Expr, results_first: bool = False) -> list[str]:
  """The expression, then each one-operation reduction of it down to the answer."""
  steps = [format_expr(expr)]
  while not isinstance(expr, Lit):
    expr = _reduce_once(expr, results_first)
    steps.append(str(expr.value) if isinstance(expr, Lit) else format_expr(expr))
  return steps


def boxed(answer: int) -> str:
  return "\\boxed{" + str(answer) + "}"


def _parse_or_raise(question: str) -> Expr:
  expr = parse_question(question)
  if expr is None:
    raise ValueError(f"question {question!r} is not an arithmetic question of this world")
  return expr


def worked_solution(question: str, results_first: bool = False) -> str:
  """A short step-by-step solution, e.g. ``(3 + 4) * 5 = 7 * 5 = 35`` then ``\\boxed{35}``;
  `results_first` as in `_reduce_once`."""
  expr = _parse_or_raise(question)
  return " = ".join(reduction_steps(expr, results_first)) + "\n" + boxed(evaluate(expr))


def left_to_right(expr: Expr) -> Expr:
  """The tree a reader gets who ignores precedence and parentheses and works strictly from
  left to right: ``3 + 4 * 5`` as ``(3 + 4) * 5``, ``3 * (4 + 5)`` as ``3 * 4 + 5``."""
  lits, ops = [], []
  _scan(expr, lits, ops)
  out: Expr = Lit(lits[0])
  for op, value in zip(ops, lits[1:]):
    out = BinOp(op, out, Lit(value))
  return out


def left_to_right_solution(question: str) -> str:
  """A careless author's solution, in the same format as `worked_solution`: every step is
  done right, but in left-to-right order (`left_to_right`), so the answer is wrong wherever
  the order matters. Written into the pretraining corpus as the wrong solutions that web text
  holds beside right ones; never used as a label."""
  expr = _parse_or_raise(question)
  careless = left_to_right(expr)
  steps = [format_expr(expr)] + reduction_steps(careless)[1:]
  return " = ".join(steps) + "\n" + boxed(evaluate(careless))


def challenger_completion(problem: Problem) -> str:
  """The Challenger's output format of R-Zero: the question block, a blank line, the answer."""
  return f"<question>\n{problem.question}\n</question>\n\n{boxed(problem.answer)}"


# Short on purpose: the paper's long competition-math prompt would fill most of a tiny model's
# context and teach it nothing about this world.
PROMPTS = PromptSet(
  challenger_system="Write a new question as <question>\n...\n</question> then \\boxed{answer}.",
  challenger_user="New question.",
  solver_system="Solve it; put the answer in \\boxed{}.",
)
