"""Answer extraction and equivalence: a table of equivalences, extraction, and hostile inputs.

The grader must never hang and never run model text: each hostile input gets a verdict within the
timeout plus 1 s, and the worker pool keeps working afterwards.
"""

import os
import pathlib
import random
import signal
import threading
import time

import numpy as np
import pytest

from rzero_jax import grading

EQUIVALENCE_CASES = [
  # fractions and decimals
  ("1/2", "0.5", True),
  ("\\frac{1}{2}", "0.5", True),
  ("\\dfrac{1}{2}", "\\frac12", True),
  ("\\tfrac{3}{4}", "0.75", True),
  ("\\frac{2}{4}", "\\frac{1}{2}", True),
  ("0.5", "0.50", True),
  ("\\frac{1}{3}", "0.3", False),
  ("\\frac{1}{2}", "\\frac{1}{3}", False),
  ("-\\frac{1}{2}", "-0.5", True),
  ("\\frac{-1}{2}", "-0.5", True),
  ("2.5", "\\frac{5}{2}", True),
  ("3", "3.0", True),
  ("3", "3.01", False),
  ("\\frac{1}{3}", "0.333333", True),
  # integers compare exactly
  ("123456789", "123456788", False),
  ("12345678901234567890", "12345678901234567891", False),
  ("1000", "1,000", True),
  ("1000", "1{,}000", True),
  ("7", "-7", False),
  ("0", "-0", True),
  ("2^{10}", "1024", True),
  ("2^{10}", "1023", False),
  # units and degrees
  ("90^\\circ", "90", True),
  ("90^{\\circ}", "90°", True),
  ("10 \\text{ cm}", "10", True),
  ("5\\text{ meters}", "5", True),
  ("12 \\text{cm}", "13 \\text{cm}", False),
  ("\\$5", "5", True),
  # percentages
  ("50\\%", "0.5", True),
  ("50\\%", "50", True),
  ("25%", "0.25", True),
  ("50\\%", "0.6", False),
  # assignments
  ("x=3", "3", True),
  ("3", "y = 3", True),
  ("x=3", "4", False),
  # sets (unordered)
  ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
  ("\\{1,2\\}", "\\{1,2,3\\}", False),
  ("1, 2", "2, 1", True),
  # intervals
  ("[1,2)", "[1, 2)", True),
  ("(1,2]", "[1,2)", False),
  ("(-\\infty, 3]", "(-\\infty,3]", True),
  ("[1,2]\\cup[3,4]", "[3,4]\\cup[1,2]", True),
  ("(0, 1)", "[0, 1]", False),
  # matrices
  ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}", True),
  ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
  ("\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&2\\end{pmatrix}", False),
  # pi and roots
  ("2\\sqrt{2}", "\\sqrt{8}", True),
  ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
  ("\\sqrt{2}", "1.41", False),
  ("2\\pi", "\\pi \\cdot 2", True),
  ("\\pi", "3.14", False),
  ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}", False),
  ("\\sqrt{3}", "\\sqrt{2}", False),
  # scientific notation
  ("1.5e3", "1500", True),
  ("1.5\\times10^{3}", "1500", True),
  ("3 \\times 10^{8}", "300000000", True),
  ("2.5e-3", "0.0025", True),
  ("1e-7", "0", False),
  ("6.02\\times10^{23}", "6.03\\times10^{23}", False),
  # text answers
  ("\\text{Monday}", "Monday", True),
  ("Monday", "Tuesday", False),
  ("\\text{(A)}", "A", True),
  ("A", "B", False),
  ("yes", "Yes", True),
  ("Monday", "dynamo", False),
  ("\\text{even}", "odd", False),
  # symbolic
  ("x^2+2x+1", "(x+1)^2", True),
  ("x^2-1", "(x-1)(x+1)", True),
  ("x^2+1", "(x+1)^2", False),
  ("\\binom{5}{2}", "10", True),
  ("5!", "120", True),
  ("\\ln 2 + \\ln 3", "\\ln 6", True),
  ("2+3i", "3i+2", True),
  ("-\\infty", "\\infty", False),
  # nothing to compare, or a second answer smuggled in through unbalanced braces
  ("", "", False),
  ("3", "", False),
  ("1} + \\boxed{2", "2", False),
]


@pytest.fixture(scope="module")
def pool():
  p = grading.GradingPool(num_workers=2)
  p.start()
  yield p
  p.close()


@pytest.fixture(scope="module")
def table_verdicts(pool):
  """Both orders of every table case, graded in two batch calls (the workers run in parallel)."""
  forward = pool.equiv_batch([(a, b) for a, b, _ in EQUIVALENCE_CASES], timeout=30)
  backward = pool.equiv_batch([(b, a) for a, b, _ in EQUIVALENCE_CASES], timeout=30)
  return forward, backward


def test_table_is_large_and_balanced():
  assert len(EQUIVALENCE_CASES) >= 60
  positives = sum(expected for _, _, expected in EQUIVALENCE_CASES)
  assert 20 <= positives <= len(EQUIVALENCE_CASES) - 20


@pytest.mark.parametrize(
  "k",
  range(len(EQUIVALENCE_CASES)),
  ids=lambda k: f"{EQUIVALENCE_CASES[k][0]}~{EQUIVALENCE_CASES[k][1]}",
)
def test_equivalence_table(table_verdicts, k):
  a, b, expected = EQUIVALENCE_CASES[k]
  forward, backward = table_verdicts
  assert forward[k] == expected, f"is_equiv({a!r}, {b!r})"
  assert backward[k] == expected, f"is_equiv({b!r}, {a!r}) (must be symmetric)"


def test_is_equiv_single_calls_and_none(pool):
  assert grading.is_equiv("\\frac{1}{2}", "0.5", pool=pool) is True
  assert grading.is_equiv("x^2-1", "(x-1)(x+1)", pool=pool) is True
  assert grading.is_equiv(None, "1", pool=pool) is False
  assert grading.is_equiv("1", None, pool=pool) is False
  assert grading.is_equiv(None, None, pool=pool) is False  # no answer never matches


def test_bad_arguments_raise_clear_errors(pool):
  with pytest.raises(TypeError, match="str or None"):
    pool.equiv_batch([(3, "3")])
  with pytest.raises(ValueError, match="pair"):
    pool.equiv_batch([("3",)])
  with pytest.raises(ValueError, match="timeout"):
    pool.equiv_batch([("3", "3")], timeout=0)
  with pytest.raises(TypeError):
    grading.extract_boxed(None)


def test_symbolic_verdicts_are_cached(pool):
  pair = ("\\sin^2 x + \\cos^2 x", "1")
  assert pool.equiv_batch([pair]) == [True]
  before = pool.stats["cached"]
  assert pool.equiv_batch([pair, pair[::-1]]) == [True, True]
  assert pool.stats["cached"] == before + 2


QUICK_PATH_PAIRS = [
  ("1/2", "0.5"),
  ("0.25", "\\frac12"),
  ("3", "3.0"),
  ("3", "3.01"),
  ("1000", "1,000"),
  ("50\\%", "0.5"),
  ("50\\%", "50"),
  ("0.3", "\\frac{1}{3}"),
  ("2.0000001", "2"),
  ("123456789", "123456788"),
  ("-0.5", "\\frac{-1}{2}"),
  ("1.5e3", "1500"),
  ("2.5e-3", "0.0025"),
  ("Monday", "5"),
  ("no answer", "1"),
  ("yes", "Yes"),
  ("A", "B"),
  ("90^\\circ", "90"),
  ("10 \\text{ cm}", "10"),
  ("x=3", "3"),
  ("7", "-7"),
  ("25%", "0.25"),
  ("\\frac{7}{2}", "3.5"),
  ("1e-7", "0"),
  ("0.1", "\\frac{1}{10}"),
  ("100\\%", "1"),
  ("12%", "0.13"),
  ("\\text{Monday}", "Monday"),
  ("(A)", "a"),
]


def test_quick_path_agrees_with_math_verify(pool):
  """The in-process shortcuts decide exactly what the symbolic grader would."""
  decided = []
  for a, b in QUICK_PATH_PAIRS:
    a, b = sorted((a, b))
    verdict = grading._quick_verdict(a, b)
    assert verdict is not None, (a, b)
    decided.append(((grading._worker_form(a), grading._worker_form(b)), verdict))
  symbolic = pool._run_symbolic([pair for pair, _ in decided], timeout=30)
  assert [v for _, v in decided] == symbolic


# ---------------------------------------------------------------------------------- extraction

BOXED_CASES = [
  ("The answer is \\boxed{42}.", "42"),
  ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
  ("first \\boxed{1} then \\boxed{2}", "2"),
  ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),
  ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
  ("\\boxed{a_{b_{c}}}", "a_{b_{c}}"),
  ("\\fbox{7}", "7"),
  ("\\boxed{3} and later \\fbox{4}", "4"),
  ("\\boxed 5", "5"),
  ("$\\boxed 12$ done", "12"),
  ("\\boxed {x+1}", "x+1"),
  ("\\boxed{}", ""),
  # The last box decides: truncated, it gives no answer (mathruler's rule), not the earlier one.
  ("\\boxed{1} then a truncated \\boxed{2", None),
  ("\\boxed{1} then a bare \\boxed", None),
  ("\\boxed{\\boxed{5}}", "5"),
  ("\\boxedfoo{3}", None),
  ("no box here", None),
  ("\\boxed{unclosed", None),
  ("", None),
]


@pytest.mark.parametrize("text, expected", BOXED_CASES)
def test_extract_boxed(text, expected):
  assert grading.extract_boxed(text) == expected


def test_missing_box_is_none_not_a_string():
  assert grading.extract_boxed("The answer is 5.") is None


def _mathruler_extract(text):
  """mathruler.grader.extract_boxed_content (the official grader's extraction), transcribed:
  the last `\\boxed{`, its braces matched to the end; "None" when it never closes."""
  depth, start, end = 0, text.rfind("\\boxed{"), -1
  if start != -1:
    content = text[start + len("\\boxed{") :]
    for i, char in enumerate(content):
      depth += {"{": 1, "}": -1}.get(char, 0)
      if depth == -1:
        end = i
        break
  return content[:end].strip() if end != -1 else "None"


def test_extract_boxed_agrees_with_mathruler_on_truncated_boxes():
  rng = random.Random(0)
  pieces = ["\\boxed{", "{", "}", "x", " ", "1"]
  for _ in range(3000):
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
    ours = grading.extract_boxed(text)
    theirs = _mathruler_extract(text)
    assert (ours.strip() if ours is not None else "None") == theirs, text


@pytest.mark.parametrize("unit", ["\\boxed{", "\\fbox{", "\\boxed{}\\boxed{{", "\\fbox {\\"])
def test_extraction_of_a_megabyte_of_boxes_is_linear(unit):
  # A degenerate rollout (RL produces them) must not stall rewards or evaluation: the old
  # matcher took 38 s for 70 KB of `\boxed{` and minutes for a megabyte. 1 s is the issue's
  # bound; a linear pass takes milliseconds, so the bound holds on a loaded 2-core machine.
  from rzero_jax.evaluation import answers

  text = unit * (1_000_000 // len(unit))
  for fn in (grading.extract_boxed, answers.first_boxed):
    start = time.perf_counter()
    fn(text)
    assert time.perf_counter() - start < 1.0, (fn.__name__, unit)


def test_extract_boxed_reads_the_tail_of_a_long_response():
  text = "x" * (5 * grading.MAX_SCAN_CHARS) + "so \\boxed{42}."
  assert grading.extract_boxed(text) == "42"
  from rzero_jax.evaluation import answers

  assert answers.first_boxed("\\boxed{7}" + "y" * (5 * grading.MAX_SCAN_CHARS)) == "7"


def test_extract_boxed_deep_nesting():
  depth = 10_000
  inner = "{" * depth + "x" + "}" * depth
  assert grading.extract_boxed("\\boxed{" + inner + "}") == inner
  assert grading.extract_boxed("\\boxed{" + inner) is None  # one brace short: unclosed


def test_solver_reward(pool):
  assert grading.solver_reward("so \\boxed{\\frac{1}{2}}", "0.5", pool=pool) == 1.0
  assert grading.solver_reward("so \\boxed{3}", "4", pool=pool) == 0.0
  assert grading.solver_reward("the answer is 0.5", "0.5", pool=pool) == 0.0  # no box, no reward
  assert (
    grading.solver_reward("\\boxed{None}", "None", pool=pool) == 1.0
  )  # a real string, not "missing"
  assert grading.solver_reward("\\boxed{3}", None, pool=pool) == 0.0
  assert grading.solver_rewards(
    ["\\boxed{2}", "\\boxed{x=2}", "none"], ["2", "2", "2"], pool=pool
  ) == [1.0, 1.0, 0.0]
  with pytest.raises(ValueError, match="length"):
    grading.solver_rewards(["a"], [], pool=pool)


# ------------------------------------------------------------------- the official grader, rewards

# Where the two graders part (the probe pairs): math-verify says equal, mathruler not.
LENIENT_ONLY = [
  ("2/4", "1/2"),
  ("10\\%", "0.1"),
  ("\\{1,2\\}", "\\{2,1\\}"),
  ("1/3", "0.333333"),
  ("5 apples", "5"),
]
BOTH_EQUAL = [
  ("\\frac{1}{2}", "0.5"),
  ("x^2-1", "(x-1)(x+1)"),
  ("3", "3.0"),
  ("12", "012"),
  ("\\dfrac{3}{4}", "\\frac{3}{4}"),
  ("7", "7"),
]
BOTH_DIFFERENT = [("3", "4"), ("-2", "2"), ("x+1", "x+2"), ("yes", "no")]


@pytest.fixture(scope="module")
def mathruler_pool():
  pytest.importorskip("mathruler.grader")
  p = grading.GradingPool(num_workers=1, grader="mathruler")
  p.start()
  yield p
  p.close()


def test_the_two_graders_differ_where_mathruler_is_strict(pool, mathruler_pool):
  pairs = LENIENT_ONLY + BOTH_EQUAL + BOTH_DIFFERENT
  lenient = pool.equiv_batch(pairs, timeout=30)
  strict = mathruler_pool.equiv_batch(pairs, timeout=30)
  n1, n2 = len(LENIENT_ONLY), len(LENIENT_ONLY) + len(BOTH_EQUAL)
  assert lenient == [True] * n2 + [False] * len(BOTH_DIFFERENT)
  assert strict == [False] * n1 + [True] * len(BOTH_EQUAL) + [False] * len(BOTH_DIFFERENT)


def test_mathruler_verdicts_are_grade_answer_both_ways(mathruler_pool):
  from mathruler.grader import grade_answer

  rng = np.random.default_rng(0)
  ints = [str(int(x)) for x in rng.integers(-30, 30, 40)] + ["007", "-0", "10", "12345678901234"]
  others = ["\\frac{1}{2}", "0.5", "1/2", "2/4", "x", "2x", "x*2", "\\sqrt{4}", "(1,2)", "(2,1)"]
  pool_values = ints + others
  pairs = [(pool_values[i], pool_values[j]) for i, j in rng.integers(0, len(pool_values), (300, 2))]
  ours = mathruler_pool.equiv_batch(pairs, timeout=30)
  official = [bool(grade_answer(a, b) or grade_answer(b, a)) for a, b in pairs]
  assert ours == official
  assert mathruler_pool.stats["quick"] > 0 and mathruler_pool.stats["symbolic"] > 0


def test_unknown_grader_is_refused_in_one_line():
  with pytest.raises(ValueError, match="config.grader"):
    grading.GradingPool(grader="sympy")
  with pytest.raises(ValueError, match="config.grader"):
    grading.is_equiv_batch([("1", "1")], grader="exact")


@pytest.mark.parametrize(
  "response, expected",
  [
    ("<think>so</think> the answer is \\boxed{3}", 1.0),
    ("< think >so</ think >\\boxed{3}.", 1.0),  # spaces around the tags' brackets are dropped
    ("no tags \\boxed{3}", 0.0),
    ("<think>so</think> no box", 0.0),
    ("\\boxed{3}<think>late</think>", 0.0),
  ],
)
def test_format_reward_is_the_official_pattern(response, expected):
  assert grading.format_reward(response) == expected


def test_solver_reward_forms(pool, mathruler_pool):
  responses = [
    "<think>hm</think> \\boxed{1/2}",
    "\\boxed{1/2}",
    "<think>hm</think> \\boxed{3}",
    "3",
  ]
  labels = ["0.5", "0.5", "4", "3"]
  assert grading.solver_rewards(responses, labels, pool=pool) == [1.0, 1.0, 0.0, 0.0]
  code = grading.solver_rewards(responses, labels, pool=pool, form="code")
  assert code == pytest.approx([1.0, 0.9, 0.1, 0.0])
  # The official grader does not reduce fractions: 2/4 earns nothing against 1/2.
  assert grading.solver_rewards(["\\boxed{2/4}"], ["1/2"], pool=mathruler_pool) == [0.0]
  with pytest.raises(ValueError, match="reward_form"):
    grading.solver_rewards(["\\boxed{1}"], ["1"], pool=pool, form="binary")


# ------------------------------------------------------------------------------- hostile inputs

TIMEOUT_S = 2.0


def hostile_inputs(marker: pathlib.Path) -> list[tuple[str, str]]:
  return [
    ("9^{9^{9^{9}}}", "1"),
    ("10!!!!!!", "3"),
    ("{" * 10_000 + "1" + "}" * 10_000, "1"),
    ("{" * 900 + "1" + "}" * 900, "1"),  # deep but short enough to reach the parser
    ("x" * 200_000, "x"),
    (f"__import__('os').system('touch {marker}')", "0"),
    ("\\input{/etc/passwd}", "root"),
    ("\ud800\udfff\udc00", "1"),
    ("1\x002", "12"),
  ]


def test_hostile_inputs_get_a_verdict_in_time_and_run_nothing(pool, tmp_path):
  marker = tmp_path / "pwned"
  for a, b in hostile_inputs(marker):
    pool.start()  # a replacement worker's start-up is not part of the comparison's budget
    t0 = time.perf_counter()
    verdict = grading.is_equiv(a, b, timeout=TIMEOUT_S, pool=pool)
    elapsed = time.perf_counter() - t0
    assert verdict is False, repr(a[:40])
    assert elapsed < TIMEOUT_S + 1.0, f"{a[:40]!r} took {elapsed:.2f}s"
  assert not marker.exists(), "model text was executed"
  assert pool.stats["timeouts"] >= 2  # the bignum and the factorial tower really hung a worker
  # The pool still works.
  assert pool.equiv_batch([("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{1}{2}", "0.5")], timeout=30) == [
    True,
    True,
  ]


def test_hung_comparison_in_a_batch_does_not_block_the_others(pool):
  pool.start()
  pairs = [
    ("9^{9^{9^{9}}}", "7"),
    ("x^2-1", "(x-1)(x+1)"),
    ("(x+1)^2", "x^2+2x+1"),
    ("\\sqrt{4}", "2"),
  ]
  t0 = time.perf_counter()
  assert pool.equiv_batch(pairs, timeout=TIMEOUT_S) == [False, True, True, True]
  assert time.perf_counter() - t0 < TIMEOUT_S + 10  # the other items waited at most for a restart


def test_timeout_works_from_a_worker_thread(pool):
  pool.start()
  out = {}

  def compare():
    t0 = time.perf_counter()
    out["verdict"] = grading.is_equiv("10!!!!!!", "5", timeout=TIMEOUT_S, pool=pool)
    out["elapsed"] = time.perf_counter() - t0

  thread = threading.Thread(target=compare)
  thread.start()
  thread.join(timeout=TIMEOUT_S + 30)
  assert not thread.is_alive()
  assert out["verdict"] is False and out["elapsed"] < TIMEOUT_S + 1.0


def test_a_worker_killed_from_outside_is_replaced(pool):
  pool.start()
  victim = pool.worker_pids()[0]
  os.kill(victim, signal.SIGKILL)
  time.sleep(0.2)
  assert pool.equiv_batch([("x^2-4", "(x-2)(x+2)")], timeout=30) == [True]  # not cached yet
  assert victim not in pool.worker_pids()


def test_closed_pool_refuses_work():
  p = grading.GradingPool(num_workers=1)
  p.close()
  with pytest.raises(RuntimeError, match="closed"):
    p.equiv_batch([("x+1", "1+x")])


def test_python_expressions_are_not_evaluated(pool, tmp_path):
  """Text that equals the gold answer only if it were run as Python is wrong, and runs nothing."""
  marker = tmp_path / "ran"
  cases = [
    ("int('8')", "8"),
    ("(lambda: 8)()", "8"),
    ("__import__('math').pi", "\\pi"),
    ("sum([4, 4])", "8"),
    (f"exec(\"open('{marker}', 'w')\") or 0", "0"),
  ]
  assert pool.equiv_batch(cases, timeout=30) == [False] * len(cases)
  assert not marker.exists()
