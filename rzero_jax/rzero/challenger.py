"""The Challenger's side of R-Zero: parse its completions, vote the Solver's answers, score it.

Reward of a format-valid question x_i (docs/ALGORITHM.md, "Challenger reward"):
    r_unc = 1 - 2 |p_hat - 1/2|            ("paper" scale; the authors' code: min(p_hat, 1 - p_hat))
    r_rep = |cluster of x_i| / B           (BLEU clusters over the step's rollout batch)
    r     = max(0, r_unc - r_rep)          ("paper" form; the code: r_unc - r_rep, unclipped)
A malformed completion (no <question> block) gets 0 and is never sent to the Solver ("code" form:
-1 - r_rep).

p_hat comes from the Solver's m answers alone. The Challenger's own boxed answer is never used:
comparing against it was a defect of the public code (docs/ALGORITHM.md, "Deviations"), and so was
treating a missing box as the truthy string "None"; here a missing answer is None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from rzero_jax import grading
from rzero_jax.rzero import repetition

# A batch equivalence test: [(a, b), ...] -> [bool, ...]. Defaults to grading.is_equiv_batch.
EquivBatch = Callable[[Sequence[tuple[str, str]]], list[bool]]

_OPEN, _CLOSE = "<question>", "</question>"
SCALES = ("paper", "code")
FORMS = ("paper", "code")


def parse_question(text: str) -> str | None:
  """The stripped text of the last <question>...</question> block (across lines), else None."""
  if not isinstance(text, str):
    raise TypeError(f"parse_question expects str, got {type(text).__name__}")
  end = text.rfind(_CLOSE)
  if end < 0:
    return None
  start = text.rfind(_OPEN, 0, end)
  if start < 0:
    return None
  question = text[start + len(_OPEN) : end].strip()
  return question or None


def is_well_formed(text: str, require_boxed: bool = False) -> bool:
  """Format check of a Challenger completion.

  The reward phase needs only a non-empty <question> block (docs/ALGORITHM.md, "Parsing"). The
  dataset phase also asks for a non-empty `\\boxed{}` after the block (docs/ALGORITHM.md,
  "Dataset"): pass require_boxed=True.
  The box's content is never compared with anything.
  """
  if parse_question(text) is None:
    return False
  if not require_boxed:
    return True
  answer = grading.extract_boxed(text[text.rfind(_CLOSE) :])
  return answer is not None and bool(answer.strip())


def _normalise_answer(answer: str | None) -> str | None:
  if answer is None:
    return None
  if not isinstance(answer, str):
    raise TypeError(f"answers must be str or None, got {type(answer).__name__}: {answer!r:.80}")
  return answer.strip()  # "" is an empty box: skipped by the vote, as officially


def _both_say_no(a: str, b: str) -> bool:
  # The official vote merges any two answers that contain "no " ("no solution" ~ "no real
  # roots") before it asks the grader (docs/ALGORITHM.md, "Majority vote").
  return "no " in a.lower() and "no " in b.lower()


def majority_votes(
  answer_lists: Sequence[Sequence[str | None]],
  equiv: EquivBatch | None = None,
  *,
  count_empty: bool = True,
) -> list[tuple[str | None, float]]:
  """`majority_vote` for many questions, with every equivalence test in one batch call."""
  equiv = equiv or grading.is_equiv_batch
  prepared = []
  pairs: list[tuple[str, str]] = []
  for q, answers in enumerate(answer_lists):
    if len(answers) == 0:
      raise ValueError(f"answer_lists[{q}] is empty: majority vote needs m >= 1 answers")
    norm = [_normalise_answer(a) for a in answers]
    uniques = list(dict.fromkeys(a for a in norm if a))  # first-occurrence order
    k = len(uniques)
    # verdict slot of each pair i < j of distinct answers: True (the "no " merge), or the
    # index of its grader call
    slots: list[bool | int] = []
    for i in range(k):
      for j in range(i + 1, k):
        if _both_say_no(uniques[i], uniques[j]):
          slots.append(True)
        else:
          slots.append(len(pairs))
          pairs.append((uniques[i], uniques[j]))
    prepared.append((norm, uniques, slots))
  verdicts = list(equiv(pairs)) if pairs else []
  if len(verdicts) != len(pairs):
    raise ValueError(f"equiv returned {len(verdicts)} verdicts for {len(pairs)} pairs")
  return [
    _vote(
      norm,
      uniques,
      [s is True or (s is not False and bool(verdicts[s])) for s in slots],
      count_empty,
    )
    for norm, uniques, slots in prepared
  ]


def _vote(
  norm: list[str | None], uniques: list[str], same_pairs: list[bool], count_empty: bool
) -> tuple[str | None, float]:
  k = len(uniques)

  def same(i: int, j: int) -> bool:  # verdict for uniques i < j, laid out row by row
    return same_pairs[i * k - i * (i + 1) // 2 + (j - i - 1)]

  # Greedy clustering in first-occurrence order: an answer joins the first cluster whose
  # representative (its first member) is equivalent to it.
  reps: list[int] = []
  cluster_of_unique = []
  for u in range(k):
    home = next((c for c, r in enumerate(reps) if same(r, u)), None)
    if home is None:
      home = len(reps)
      reps.append(u)
    cluster_of_unique.append(home)
  unique_index = {s: u for u, s in enumerate(uniques)}
  sizes = [0] * len(reps)
  first_seen = [len(norm)] * len(reps)
  none_size, none_first, empty = 0, len(norm), 0
  for pos, a in enumerate(norm):
    if a is None:
      none_size += 1
      none_first = min(none_first, pos)
    elif not a:
      empty += 1
    else:
      c = cluster_of_unique[unique_index[a]]
      sizes[c] += 1
      first_seen[c] = min(first_seen[c], pos)
  # Largest cluster wins; ties go to the cluster that appeared first. "No answer" is a cluster
  # like any other: if it wins, the label is None.
  candidates = [(-sizes[c], first_seen[c], uniques[reps[c]]) for c in range(len(reps))]
  if none_size:
    candidates.append((-none_size, none_first, None))
  if not candidates:
    return None, 0.0  # only empty boxes
  neg_size, _, label = min(candidates, key=lambda t: (t[0], t[1]))
  return label, -neg_size / (len(norm) if count_empty else len(norm) - empty)


def majority_vote(
  answers: Sequence[str | None], equiv: EquivBatch | None = None, *, count_empty: bool = True
) -> tuple[str | None, float]:
  """(label, p_hat) from m Solver answers (None = no boxed answer), as the official vote.

  Answers are stripped and clustered greedily in first-occurrence order: each joins the first
  cluster whose first member it equals, is equivalent to (`equiv`, default
  `grading.is_equiv_batch`), or shares a "no " with. "No answer" (None) is its own cluster. An
  empty box ("") joins no cluster; it still counts in p_hat's denominator when `count_empty`
  (the Challenger's reward, as the official reward server), and not otherwise (the dataset
  phase, as the official question evaluation). The label is the largest cluster's first answer,
  ties going to the cluster seen first; it is None when "no answer" wins or every box is empty
  (then p_hat is 0).
  """
  return majority_votes([answers], equiv, count_empty=count_empty)[0]


def uncertainty_reward(p_hat: float, scale: str = "paper") -> float:
  """r_unc: 1 - 2|p_hat - 1/2| ("paper"), or min(p_hat, 1 - p_hat) ("code", half the scale)."""
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
  p = float(p_hat)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"p_hat must be in [0, 1], got {p_hat!r}")
  return 1.0 - 2.0 * abs(p - 0.5) if scale == "paper" else min(p, 1.0 - p)


def challenger_rewards(
  questions: Sequence[str | None],
  p_hats: Sequence[float | None],
  penalties: Sequence[float],
  form: str = "paper",
  scale: str | None = None,
) -> np.ndarray:
  """Per-rollout Challenger rewards, float64 [B].

  questions[i] is the parsed question or None for a malformed completion (its p_hat is ignored
  and may be None). form="paper": max(0, r_unc - r_rep), malformed 0. form="code": r_unc - r_rep,
  malformed -1 - r_rep. `scale` picks r_unc's scale; by default the one that goes with `form`.
  """
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
  scale = scale or form
  if not len(questions) == len(p_hats) == len(penalties):
    raise ValueError(
      f"questions ({len(questions)}), p_hats ({len(p_hats)}) and penalties ({len(penalties)}) "
      "must have the same length"
    )
  rewards = np.zeros(len(questions))
  for i, (q, p, rep) in enumerate(zip(questions, p_hats, penalties)):
    rep = float(rep)
    if q is None:
      rewards[i] = 0.0 if form == "paper" else -1.0 - rep
      continue
    if p is None:
      raise ValueError(f"p_hats[{i}] is None but questions[{i}] is well formed")
    raw = uncertainty_reward(p, scale) - rep
    rewards[i] = max(0.0, raw) if form == "paper" else raw
  return rewards


@dataclasses.dataclass(frozen=True)
class ChallengerScores:
  rewards: np.ndarray  # [B] float64
  questions: list[str | None]  # parsed question, None = malformed
  labels: list[str | None]  # majority answer per rollout (None: malformed or no answer won)
  p_hats: list[float | None]
  penalties: np.ndarray  # [B] r_rep (0 for malformed rollouts)


def score_challenger_rollouts(
  completions: Sequence[str],
  solver_answers: Sequence[Sequence[str | None] | None],
  *,
  form: str = "paper",
  scale: str | None = None,
  bleu_threshold: float = 0.5,
  equiv: EquivBatch | None = None,
) -> ChallengerScores:
  """Rewards for one step's Challenger rollouts.

  solver_answers[i] holds the Solver's m extracted answers for completion i's question, or None
  for a malformed completion (it was never sent to the Solver). The repetition penalty clusters
  the well-formed questions of the batch, and B is the whole rollout batch; malformed rollouts get
  r_rep = 0.
  """
  if len(completions) != len(solver_answers):
    raise ValueError(
      f"completions ({len(completions)}) and solver_answers ({len(solver_answers)}) differ in length"
    )
  questions = [parse_question(c) for c in completions]
  for i, (q, ans) in enumerate(zip(questions, solver_answers)):
    if q is not None and ans is None:
      raise ValueError(f"completion {i} has a question but solver_answers[{i}] is None")
  valid = [i for i, q in enumerate(questions) if q is not None]
  votes = majority_votes([solver_answers[i] for i in valid], equiv) if valid else []
  labels: list[str | None] = [None] * len(completions)
  p_hats: list[float | None] = [None] * len(completions)
  for i, (label, p) in zip(valid, votes):
    labels[i], p_hats[i] = label, p
  penalties = np.zeros(len(completions))
  if valid:
    # r_rep = |C_k| / B with B the whole rollout batch (docs/ALGORITHM.md): clusters form among the
    # well-formed questions, but a lone valid question in a mostly malformed batch must not
    # be charged as if it were the whole batch.
    share = repetition.repetition_penalty([questions[i] for i in valid], bleu_threshold)
    penalties[valid] = share * (len(valid) / len(completions))
  if form == "code":
    # Officially a malformed rollout enters the clustering as an empty question, which BLEU
    # keeps apart from everything: a cluster of its own, r_rep = 1 / B.
    malformed = [i for i, q in enumerate(questions) if q is None]
    penalties[malformed] = 1.0 / len(completions)
  rewards = challenger_rewards(questions, p_hats, penalties, form=form, scale=scale)
  return ChallengerScores(rewards, questions, labels, p_hats, penalties)
