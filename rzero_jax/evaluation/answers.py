"""From a response to a verdict: extract the boxed answer, then grade it against the gold answer.

Three graders, chosen per problem by its loader:
  math    `grading.is_equiv` (math-verify + sympy, hard timeouts), in a process pool;
  choice  the boxed option letter must equal the gold letter;
  fuzzy   BBEH's free-form answers, with the normalisation of BBEH's own evaluator.
No box, or a box without an option letter, is wrong: nothing is guessed.
"""

from __future__ import annotations

import re
from typing import Sequence

from rzero_jax import grading
from rzero_jax.evaluation.loaders import CHOICE, FUZZY, MATH, Problem

BOX_CHOICES = ("first", "last")


def first_boxed(text: str) -> str | None:
  """Content of the first box, or None: `grading.extract_boxed` read forwards.

  The box commands and the brace matcher (escaped braces, the `\\boxed 5` space form) are
  grading's own, so first and last never disagree on what a box is. An unclosed first box
  gives None, as an unclosed last box does for `extract_boxed`: everything after it is inside
  it, so no later box is an answer of its own. Linear time over a bounded head of the text.
  """
  return grading.first_box_argument(text)


def extract(response: str, which: str = "first") -> str | None:
  if which == "first":
    return first_boxed(response)
  if which == "last":
    return grading.extract_boxed(response)
  raise ValueError(f"boxed answer choice {which!r}; expected one of {BOX_CHOICES}")


_WRAPPERS = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|texttt)\s*\{(.*)\}$", re.S)
_LETTER_ONLY = re.compile(r"^\(?([A-Za-z])\)?$")
_LETTER_WITH_TEXT = re.compile(r"^(?:\(([A-Z])\)\s|([A-Z])[.:)]\s?)\s*\S")


def option_letter(boxed: str | None) -> str | None:
  """The option letter a box holds ("B", "(B)", "B. 42", "\\text{B}"), or None."""
  if boxed is None:
    return None
  text = boxed.strip().strip("$").strip()
  while m := _WRAPPERS.match(text):
    text = m.group(1).strip()
  m = _LETTER_ONLY.match(text)
  if m:
    return m.group(1).upper()
  m = _LETTER_WITH_TEXT.match(text)
  return (m.group(1) or m.group(2)) if m else None


def _strip_latex(text: str) -> str:
  if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
    text = text[1:-1]
  while m := _WRAPPERS.match(text):
    text = m.group(1)
  return text


def _normalise_prediction(text: str) -> str:
  text = _strip_latex(text.strip()).lower().replace(", ", ",").replace("**", "")
  text = text.split("\n")[0]
  return text[:-1] if text.endswith(".") else text


def fuzzy_match(prediction: str | None, reference: str) -> bool:
  """BBEH's answer match: case, "(a)" vs "a", numbers, quotes, brackets, a trailing "?"."""
  if prediction is None:
    return False
  pred = _normalise_prediction(prediction)
  ref = reference.strip().lower().replace(", ", ",")
  if pred == ref:
    return True
  if len(pred) == 3 and pred[0] == "(" and pred[-1] == ")":
    return pred[1] == ref
  if len(ref) == 3 and ref[0] == "(" and ref[-1] == ")":
    return ref[1] == pred
  try:
    if float(pred) == float(ref):
      return True
  except ValueError:
    pass
  return (
    pred.replace("'", "") == ref.replace("'", "")
    or f"[{ref}]" == pred
    or f"[{pred}]" == ref
    or (pred.endswith("?") and pred[:-1] == ref)
  )


def verdicts(problems: Sequence[Problem], extracted: Sequence[str | None]) -> list[bool]:
  """The verdict of every (problem, extracted answer) pair; math pairs are graded as one batch."""
  if len(problems) != len(extracted):
    raise ValueError(f"verdicts: {len(problems)} problems but {len(extracted)} answers")
  out: list[bool | None] = [None] * len(problems)
  math_rows = []
  for i, (p, answer) in enumerate(zip(problems, extracted)):
    if answer is None or not answer.strip():
      out[i] = False
    elif p.grader == MATH:
      math_rows.append(i)
    elif p.grader == CHOICE:
      out[i] = option_letter(answer) == p.gold
    elif p.grader == FUZZY:
      out[i] = fuzzy_match(answer, p.gold)
    else:
      raise ValueError(f"problem {p.id}: unknown grader {p.grader!r}")
  if math_rows:
    graded = grading.is_equiv_batch([(problems[i].gold, extracted[i]) for i in math_rows])
    for i, ok in zip(math_rows, graded):
      out[i] = bool(ok)
  return [bool(v) for v in out]


def verdict(problem: Problem, extracted: str | None) -> bool:
  """One verdict, for audits: the same rules as `verdicts`."""
  return verdicts([problem], [extracted])[0]
