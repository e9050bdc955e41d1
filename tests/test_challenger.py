"""Challenger parsing, majority vote, uncertainty reward and combined rewards vs hand-computed values."""

import numpy as np
import pytest

from rzero_jax import grading, prompts
from rzero_jax.rzero import challenger


def exact_equiv(pairs):
  """Plain string equality: keeps the vote tests independent of the symbolic grader."""
  return [a == b for a, b in pairs]


# ----------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
  "text, expected",
  [
    ("<question>What is 2+2?</question>\n\\boxed{4}", "What is 2+2?"),
    ("<question>\n  Line one\n  line two\n</question>", "Line one\n  line two"),
    ("<question>first</question> ... <question>second</question>", "second"),
    ("<question>draft</question><question>final\n</question> \\boxed{1}", "final"),
    ("<question>   </question>", None),
    ("<question>no closing tag", None),
    ("no tags at all \\boxed{3}", None),
    ("</question> closing before <question> opening", None),
    ("", None),
  ],
)
def test_parse_question(text, expected):
  assert challenger.parse_question(text) == expected


def test_format_check_with_and_without_box():
  ok = "<question>Find x.</question>\n\n\\boxed{3}"
  no_box = "<question>Find x.</question>"
  box_before = "\\boxed{3} <question>Find x.</question>"
  empty_box = "<question>Find x.</question> \\boxed{ }"
  assert challenger.is_well_formed(ok) and challenger.is_well_formed(no_box)
  assert challenger.is_well_formed(ok, require_boxed=True)
  assert not challenger.is_well_formed(no_box, require_boxed=True)
  assert not challenger.is_well_formed(box_before, require_boxed=True)
  assert not challenger.is_well_formed(empty_box, require_boxed=True)
  assert not challenger.is_well_formed("\\boxed{3}", require_boxed=True)


def test_challenger_prompt_is_the_reference_prompt():
  msgs = prompts.challenger_messages()
  assert [m["role"] for m in msgs] == ["system", "user"]
  system = msgs[0]["content"]
  assert system.startswith("You are an expert competition-math problem setter.\nFIRST,")
  assert "fewer than 30 % of advanced high-school students" in system
  assert (
    "<question>\n{The full problem statement on one or more lines}\n</question>\n\n\\boxed{final_answer}"
    in system
  )
  assert system.endswith("Do NOT output anything else\u2014no explanations, no extra markup.")
  assert msgs[1]["content"] == (
    "Generate one new, challenging reasoning question now. Remember to format the output exactly as instructed."
  )
  solver = prompts.solver_messages("What is 1+1?")
  assert (
    solver[0]["content"]
    == "Please reason step by step, and put your final answer within \\boxed{}."
  )
  assert prompts.format_without_template(solver) == (
    "system: Please reason step by step, and put your final answer within \\boxed{}.\nuser: What is 1+1?"
  )
  with pytest.raises(ValueError):
    prompts.solver_messages("  ")
  with pytest.raises(ValueError, match="roles"):
    prompts.format_without_template([{"role": "user", "content": "x"}])


# ----------------------------------------------------------------------------- majority vote


@pytest.mark.parametrize(
  "answers, label, p_hat",
  [
    (["3", "3", "4", "3", "5"], "3", 3 / 5),
    (["4", "3", "3", "4"], "4", 0.5),  # tie: the cluster that appeared first
    (["3", "4", "4", "3"], "3", 0.5),
    ([None, None, None, "2", "2"], None, 3 / 5),  # "no answer" wins: no label
    ([None, "2", "2", None, "1"], None, 2 / 5),  # tie with the no-answer cluster, seen first
    (["2", None, None, "2", "1"], "2", 2 / 5),
    (["7", None, None, None, None, None, None, None, None, None], None, 0.9),  # None counts in m
    (["7", None, "8", None, "9", "10", "11", "12", "13", "14"], None, 0.2),
    (["  5 ", "5", "", None], "5", 0.5),  # stripped; an empty box is no answer
    (["a"], "a", 1.0),
  ],
)
def test_majority_vote_hand_computed(answers, label, p_hat):
  assert challenger.majority_vote(answers, equiv=exact_equiv) == (label, pytest.approx(p_hat))


def test_majority_vote_clusters_by_mathematical_equivalence():
  answers = [
    "\\frac{1}{2}",
    "0.5",
    "1/2",
    "0.25",
    "\\dfrac{1}{2}",
    "x = 0.5",
    None,
    "50\\%",
    "2",
    "2",
  ]
  label, p_hat = challenger.majority_vote(answers)  # default grader
  assert label == "\\frac{1}{2}"
  assert p_hat == pytest.approx(0.6)


def test_majority_vote_uses_first_member_as_representative():
  # Non-transitive toy relation: b~a and c~b but not c~a. c cannot join a's cluster via b.
  rel = {frozenset(("a", "b")), frozenset(("b", "c"))}

  def equiv(pairs):
    return [frozenset(p) in rel for p in pairs]

  assert challenger.majority_vote(["a", "b", "c", "c"], equiv=equiv) == ("a", 0.5)


def test_majority_votes_batch_and_errors():
  calls = []

  def counting_equiv(pairs):
    calls.append(len(pairs))
    return exact_equiv(pairs)

  votes = challenger.majority_votes([["1", "1", "2"], ["x", "y", "y", None]], equiv=counting_equiv)
  assert votes == [("1", pytest.approx(2 / 3)), ("y", 0.5)]
  assert calls == [1 + 1]  # one call for every pair of distinct answers of every question
  with pytest.raises(ValueError, match="empty"):
    challenger.majority_vote([])
  with pytest.raises(TypeError, match="str or None"):
    challenger.majority_vote([3, 3])


def official_vote(results, grade, count_empty):
  """The official vote, transcribed: `process_single` of vllm_service_init/start_vllm_server.py
  (count_empty=True) and the grading loop of question_evaluate/evaluate.py (count_empty=False).
  `results` are mathruler's extract_boxed_content values: "None" for a missing box."""
  if not count_empty:
    results = [res for res in results if res]
    if not results:
      return None  # the question is dropped
  answer_counts = {}
  for res in results:
    if not res:
      continue
    matched = False
    for exist_ans in list(answer_counts.keys()):
      if res == exist_ans or ("no " in res.lower() and "no " in exist_ans.lower()):
        answer_counts[exist_ans] += 1
        matched = True
        break
      if grade(res, exist_ans) or grade(exist_ans, res):
        answer_counts[exist_ans] += 1
        matched = True
        break
    if not matched:
      answer_counts[res] = 1
  if not answer_counts:
    majority_ans, max_count = "", 0
  else:
    majority_ans = max(answer_counts, key=answer_counts.get)
    max_count = answer_counts[majority_ans]
  return majority_ans, (max_count / len(results) if results else 0.0)


def near(a: str, b: str) -> bool:
  """A symmetric, NON-transitive toy grader (1 ~ 2 ~ 3 but not 1 ~ 3): order matters.

  "None" is mathruler's stand-in for a missing box; it equals no answer here. Officially a
  grader may match it to a literal \\boxed{none}; we never treat a missing answer as an answer
  (docs/ALGORITHM.md, "Deviations"), so that one case is left out of the comparison.
  """
  if "None" in (a, b):
    return a == b
  try:
    return abs(int(a) - int(b)) <= 1
  except ValueError:
    return a.lower() == b.lower()


_POOL = [
  "1",
  "2",
  "3",
  "4",
  "7",
  "",
  " ",
  None,
  "no solution",
  "No real roots",
  "there is no answer",
  "none",
  "x",
  "X",
  "  2 ",
  "not 5",
]


@pytest.mark.parametrize("count_empty", [True, False])
def test_vote_equals_the_official_logic_on_20000_random_answer_sets(count_empty):
  rng = np.random.default_rng(26 + count_empty)
  sets = []
  for _ in range(20_000):
    m = int(rng.integers(1, 11))
    sets.append([_POOL[k] for k in rng.integers(0, len(_POOL), m)])
  ours = challenger.majority_votes(
    sets, equiv=lambda pairs: [near(a, b) for a, b in pairs], count_empty=count_empty
  )
  mismatches = 0
  for answers, (label, p_hat) in zip(sets, ours):
    # mathruler strips the box's content and gives "None" for a missing box.
    official = official_vote(
      ["None" if a is None else a.strip() for a in answers], near, count_empty
    )
    if official is None:  # dropped by the official dataset phase: no label here either
      mismatches += not (label is None and p_hat == 0.0)
      continue
    want_label = None if official[0] in ("None", "") else official[0]
    mismatches += not (label == want_label and p_hat == official[1])
  assert mismatches == 0


def test_vote_edge_cases_by_hand():
  vote = lambda answers, **kw: challenger.majority_vote(answers, equiv=exact_equiv, **kw)  # noqa: E731
  # An empty box joins no cluster; the reward counts it in m, the dataset phase does not.
  assert vote(["5", "", "", "6"]) == ("5", 0.25)
  assert vote(["5", "", "", "6"], count_empty=False) == ("5", 0.5)
  assert vote(["", " "]) == (None, 0.0)
  assert vote(["", " "], count_empty=False) == (None, 0.0)
  # The "no " merge: any two answers that contain "no " are one cluster.
  assert vote(["No solution", "7", "there are no real roots", "7", "no x"]) == ("No solution", 0.6)


# ------------------------------------------------------------------------------------ rewards


@pytest.mark.parametrize(
  "p_hat, paper, code",
  [(0.0, 0.0, 0.0), (0.1, 0.2, 0.1), (0.5, 1.0, 0.5), (0.9, 0.2, 0.1), (1.0, 0.0, 0.0)],
)
def test_uncertainty_reward(p_hat, paper, code):
  assert challenger.uncertainty_reward(p_hat) == pytest.approx(paper, abs=1e-12)
  assert challenger.uncertainty_reward(p_hat, scale="paper") == pytest.approx(paper, abs=1e-12)
  assert challenger.uncertainty_reward(p_hat, scale="code") == pytest.approx(code, abs=1e-12)


def test_uncertainty_reward_rejects_bad_input():
  with pytest.raises(ValueError, match="p_hat"):
    challenger.uncertainty_reward(1.5)
  with pytest.raises(ValueError, match="scale"):
    challenger.uncertainty_reward(0.5, scale="half")


def test_challenger_rewards_paper_form():
  questions = ["q1", "q2", None, "q4", "q5"]
  p_hats = [0.5, 0.9, None, 0.3, 0.1]
  penalties = [0.0, 0.0, 0.5, 0.25, 0.5]
  rewards = challenger.challenger_rewards(questions, p_hats, penalties)
  # q1: 1 - 0; q2: 0.2 - 0; malformed: 0; q4: 0.6 - 0.25; q5: max(0, 0.2 - 0.5) = 0
  np.testing.assert_allclose(rewards, [1.0, 0.2, 0.0, 0.35, 0.0], atol=1e-12)
  no_penalty = challenger.challenger_rewards(questions, p_hats, [0.0] * 5)
  np.testing.assert_allclose(no_penalty, [1.0, 0.2, 0.0, 0.6, 0.2], atol=1e-12)


def test_challenger_rewards_code_form():
  questions = ["q1", None, "q3", "q4"]
  p_hats = [0.5, float("nan"), 0.3, 0.1]
  penalties = [0.25, 0.5, 0.0, 0.5]
  rewards = challenger.challenger_rewards(questions, p_hats, penalties, form="code")
  # code scale min(p, 1-p), no clip; malformed: -1 - r_rep
  np.testing.assert_allclose(rewards, [0.25, -1.5, 0.3, -0.4], atol=1e-12)
  mixed = challenger.challenger_rewards(questions, p_hats, penalties, form="code", scale="paper")
  np.testing.assert_allclose(mixed, [0.75, -1.5, 0.6, -0.3], atol=1e-12)


def test_code_form_charges_a_malformed_rollout_its_own_singleton_cluster():
  completions = [
    "<question>what is 1 + 1</question>",
    "no block",
    "<question>what is 1 + 1</question>",
    "also none",
  ]
  answers = [["2", "2"], None, ["2", "3"], None]
  code = challenger.score_challenger_rollouts(completions, answers, form="code", equiv=exact_equiv)
  # The two identical questions share a cluster (2 / 4); each malformed one is alone (1 / 4).
  np.testing.assert_allclose(code.penalties, [0.5, 0.25, 0.5, 0.25])
  np.testing.assert_allclose(code.rewards, [0.0 - 0.5, -1.25, 0.5 - 0.5, -1.25])
  paper = challenger.score_challenger_rollouts(completions, answers, equiv=exact_equiv)
  np.testing.assert_allclose(paper.rewards, [0.0, 0.0, 0.5, 0.0])


def test_challenger_rewards_errors():
  with pytest.raises(ValueError, match="same length"):
    challenger.challenger_rewards(["q"], [0.5, 0.5], [0.0])
  with pytest.raises(ValueError, match="form"):
    challenger.challenger_rewards(["q"], [0.5], [0.0], form="clip")
  with pytest.raises(ValueError, match="p_hats"):
    challenger.challenger_rewards(["q"], [None], [0.0])


def test_scoring_ignores_the_challengers_own_answer():
  """The public code's defect: it compared the vote with the Challenger's boxed answer."""
  question = "<question>How many primes are below 10?</question>\n\n"
  other = "<question>What is the area of a unit circle?</question> \\boxed{\\pi}"
  answers = [["4", "4", "4", "5", None, "4", "3", "4", "5", "5"], ["\\pi"] * 10]
  batches = [[question + "\\boxed{4}", other], [question + "\\boxed{9}", other], [question, other]]
  for completions in batches:
    scores = challenger.score_challenger_rollouts(completions, answers, equiv=exact_equiv)
    assert scores.labels == ["4", "\\pi"]
    assert scores.p_hats == [0.5, 1.0]
    # r_unc = 1 and 0; each question is its own cluster of a batch of two: r_rep = 1/2.
    np.testing.assert_allclose(scores.rewards, [0.5, 0.0], atol=1e-12)


def test_score_challenger_rollouts_batch():
  completions = [
    "<question>find the number of positive integers less than 100 that are prime</question> \\boxed{25}",
    "<question>find the number of positive integers less than 100 that are prime</question> \\boxed{24}",
    "no question here \\boxed{3}",
    "<question>a circle of radius 3 is inscribed in a square; what is the area of the square</question>",
  ]
  answers = [["25"] * 5 + ["24"] * 5, ["25"] * 5 + ["24"] * 5, None, ["36"] * 9 + [None]]
  scores = challenger.score_challenger_rollouts(completions, answers, equiv=exact_equiv)
  assert scores.questions[2] is None and scores.labels[2] is None and scores.p_hats[2] is None
  # Two identical questions form one cluster; the circle is alone. B is the whole rollout
  # batch of 4 (the malformed rollout counts in B but belongs to no cluster).
  np.testing.assert_allclose(scores.penalties, [2 / 4, 2 / 4, 0.0, 1 / 4])
  np.testing.assert_allclose(scores.rewards, [1 - 2 / 4, 1 - 2 / 4, 0.0, 0.0], atol=1e-12)
  code = challenger.score_challenger_rollouts(completions, answers, form="code", equiv=exact_equiv)
  # The official form charges the malformed rollout its own singleton cluster: -1 - 1/4.
  np.testing.assert_allclose(
    code.rewards, [0.5 - 2 / 4, 0.5 - 2 / 4, -1.25, 0.1 - 1 / 4], atol=1e-12
  )
  with pytest.raises(ValueError, match="solver_answers"):
    challenger.score_challenger_rollouts(completions[:1], [None])


def test_missing_box_is_none_in_the_whole_path():
  answers = [
    grading.extract_boxed(t) for t in ["no box", "\\boxed{2}", "also none", "\\boxed{2}", "x"]
  ]
  assert answers == [None, "2", None, "2", None]
  label, p_hat = challenger.majority_vote(answers, equiv=exact_equiv)
  assert label is None and p_hat == pytest.approx(0.6)  # three missing answers outvote "2"
