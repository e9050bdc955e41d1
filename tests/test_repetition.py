"""Repetition penalty: BLEU parity with NLTK (bit for bit), cluster parity with the official
scikit-learn call, penalty values."""

import random
from collections import Counter, defaultdict

import numpy as np
import pytest

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
sklearn_cluster = pytest.importorskip("sklearn.cluster")
from scipy.spatial.distance import squareform  # noqa: E402

from rzero_jax.rzero import repetition  # noqa: E402

SMOOTHER = nltk_bleu.SmoothingFunction().method1
WORDS = (
  "the a of to and find number triangle integer sum let x y prime value how many ways "
  "circle area 1 2 3 + = ( ) probability digits real"
).split()


def nltk_bleu_score(hyp: str, ref: str) -> float:
  return nltk_bleu.sentence_bleu([ref.split()], hyp.split(), smoothing_function=SMOOTHER)


def varied_questions(n: int, seed: int = 0) -> list[str]:
  """Short, long, repeated-word, empty and near-duplicate questions, with odd whitespace."""
  rng = random.Random(seed)
  out: list[str] = []
  while len(out) < n:
    kind = len(out) % 8
    if kind == 0:
      length = rng.randint(0, 4)  # shorter than 4 tokens: higher-order precisions are smoothed
    elif kind == 1:
      length = rng.randint(60, 160)
    else:
      length = rng.randint(5, 40)
    vocab = WORDS[: rng.randint(2, len(WORDS))]
    toks = [rng.choice(vocab) for _ in range(length)]
    if kind == 2:
      toks = [rng.choice(["the", "a"])] * length  # one repeated word
    if kind == 3 and out:
      toks = rng.choice(out).split()  # near-duplicate of an earlier question
      for _ in range(rng.randint(0, 3)):
        if toks:
          toks[rng.randrange(len(toks))] = rng.choice(WORDS)
    sep = rng.choice([" ", "  ", "\n", "\t "])
    out.append(sep.join(toks))
  out[5] = ""
  out[13] = "   "
  out[21] = "x"
  out[29] = "x"
  out[37] = "a b c d"
  out[45] = "a b c d"
  return out


@pytest.fixture(scope="module")
def questions():
  return varied_questions(320)


@pytest.fixture(scope="module")
def bleu(questions):
  return repetition.bleu_matrix(questions)


def test_bleu_matches_nltk_on_varied_questions(questions, bleu):
  rng = random.Random(1)
  n = len(questions)
  pairs = [(i, j) for i in range(40) for j in range(40) if i != j]  # a dense block of edge cases
  pairs += [(i, rng.randrange(n)) for i in range(n) for _ in range(8)]  # every question, both roles
  pairs += [(rng.randrange(n), j) for j in range(n) for _ in range(4)]
  # Bit for bit: average linkage breaks ties by exact comparisons, so one ulp can move a question.
  differ = [(i, j) for i, j in pairs if bleu[i, j] != nltk_bleu_score(questions[i], questions[j])]
  assert differ == []


@pytest.mark.parametrize(
  "hyp, ref",
  [
    ("", "a b c"),
    ("a b c", ""),
    ("", ""),
    ("x", "x"),  # 1 token: p2..p4 become epsilon / 1
    ("a b c d", "a b c d"),  # exactly 1.0
    ("a b", "a b c d e f"),  # brevity penalty
    ("the the the the the the", "the cat sat on the mat"),  # clipped counts
    ("q r s", "t u v"),  # no unigram match: NLTK returns 0
    ("a b c d e", "e d c b a"),  # unigram matches only
  ],
)
def test_bleu_edge_cases(hyp, ref):
  ours = repetition.bleu_matrix([hyp, ref])[0, 1]
  assert ours == nltk_bleu_score(hyp, ref)


def test_distances_follow_the_reference_loop(questions, bleu):
  d = repetition.bleu_distances(questions)
  n = len(questions)
  assert d.shape == (n, n)
  assert np.array_equal(d, d.T)
  assert np.all(np.diag(d) == 0)
  upper = np.triu_indices(n, k=1)
  # For i < j, x_i is the hypothesis and x_j the reference; the lower triangle mirrors it.
  np.testing.assert_array_equal(d[upper], 1.0 - bleu[upper])
  assert np.all((d >= 0) & (d <= 1))


def test_rare_feature_chunking_gives_the_same_counts(questions, monkeypatch):
  full = repetition.bleu_matrix(questions)
  monkeypatch.setattr(repetition, "_PAIR_CHUNK", 7)
  np.testing.assert_array_equal(repetition.bleu_matrix(questions), full)


def partition(labels) -> list[tuple[int, ...]]:
  groups = defaultdict(list)
  for i, lab in enumerate(labels):
    groups[lab].append(i)
  return sorted(tuple(g) for g in groups.values())


def scipy_labels(d: np.ndarray, threshold: float) -> np.ndarray:
  """scipy's flat clusters, which keep merges AT the threshold too (not the official cut)."""
  z = hierarchy.linkage(squareform(d, checks=False), "average")
  return hierarchy.fcluster(z, t=threshold, criterion="distance")


def sklearn_labels(d: np.ndarray, threshold: float) -> np.ndarray:
  """The official call (examples/reward_function/caller_penalty.py)."""
  return sklearn_cluster.AgglomerativeClustering(
    n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="average"
  ).fit_predict(d)


def test_clusters_match_sklearn_on_bleu_distances(questions):
  d = repetition.bleu_distances(questions)
  ours = repetition.average_linkage_labels(d, 0.5)
  assert partition(ours) == partition(sklearn_labels(d, 0.5))
  assert len(set(ours)) < len(questions)  # the fixture really has clusters to find


@pytest.mark.parametrize("seed", range(6))
def test_clusters_match_sklearn_on_random_distances(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 120))
  # Points in a few tight groups plus noise, scaled so many merges land near the threshold.
  centers = rng.normal(size=(int(rng.integers(1, 8)), 3))
  x = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.normal(size=(n, 3))
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  d = np.round(d / d.max(), 3)  # rounding creates exact ties
  np.fill_diagonal(d, 0.0)
  for threshold in (0.1, 0.3, 0.5):
    ours = repetition.average_linkage_labels(d, threshold)
    assert partition(ours) == partition(sklearn_labels(d, threshold)), (seed, threshold)


def test_a_pair_at_exactly_the_threshold_stays_apart():
  # scikit-learn merges only below distance_threshold; scipy's fcluster would join these two.
  d = np.array([[0.0, 0.5, 0.9], [0.5, 0.0, 0.9], [0.9, 0.9, 0.0]])
  assert partition(repetition.average_linkage_labels(d, 0.5)) == [(0,), (1,), (2,)]
  assert partition(sklearn_labels(d, 0.5)) == [(0,), (1,), (2,)]
  assert partition(scipy_labels(d, 0.5)) == [(0, 1), (2,)]


def test_labels_are_numbered_by_first_member():
  d = np.array([[0, 0.9, 0.1], [0.9, 0, 0.9], [0.1, 0.9, 0]])
  assert repetition.average_linkage_labels(d, 0.5).tolist() == [0, 1, 0]


def test_average_linkage_is_not_single_linkage():
  # 0-1 and 1-2 are close, 0-2 far: single linkage would chain all three at 0.5; average
  # linkage merges {0, 1} at 0.4, then {0, 1} to 2 at (0.4 + 0.9) / 2 = 0.65 > 0.5.
  d = np.array([[0, 0.4, 0.9], [0.4, 0, 0.45], [0.9, 0.45, 0]])
  assert partition(repetition.average_linkage_labels(d, 0.5)) == [(0, 1), (2,)]
  assert partition(scipy_labels(d, 0.5)) == [(0, 1), (2,)]


def test_repetition_penalty_values():
  qs = [
    "find the number of positive integers less than 100",
    "find the number of positive integers less than 200",
    "a circle of radius 3 is inscribed in a square what is its area",
    "find the number of positive integers less than 100",
  ]
  # 0, 1 and 3 are near-duplicates (BLEU >= 0.5); 2 shares nothing with them.
  assert repetition.repetition_penalty(qs).tolist() == [0.75, 0.75, 0.25, 0.75]
  # Nothing is strictly below 0, not even two identical questions (the official cut).
  assert repetition.repetition_penalty(qs, threshold=0.0).tolist() == [0.25] * 4


def test_repetition_penalty_small_batches_and_errors():
  assert repetition.repetition_penalty([]).shape == (0,)
  assert repetition.repetition_penalty(["only one question here"]).tolist() == [1.0]
  assert repetition.repetition_penalty(["", ""]).tolist() == [0.5, 0.5]  # BLEU of empties is 0
  with pytest.raises(ValueError, match="threshold"):
    repetition.repetition_penalty(["a"], threshold=1.5)
  with pytest.raises(TypeError, match="str"):
    repetition.repetition_penalty(["a", None])
  with pytest.raises(ValueError, match="square"):
    repetition.average_linkage_labels(np.zeros((2, 3)), 0.5)


def official_bleu_distance_matrix(sentences):
  """The official `_bleu_distance_matrix`, transcribed (caller_penalty.py)."""
  n = len(sentences)
  dist = np.zeros((n, n))
  for i in range(n):
    for j in range(i, n):
      score = 1.0 if i == j else nltk_bleu_score(sentences[i], sentences[j])
      dist[i, j] = dist[j, i] = 1 - score
  return dist


def official_cluster_share(problems, distance_threshold=0.5):
  """The official `cluster_share_per_problem`, transcribed (NLTK + scikit-learn)."""
  labels = sklearn_labels(official_bleu_distance_matrix(problems), distance_threshold)
  sizes = Counter(labels)
  return [sizes[lab] / len(problems) for lab in labels]


def test_penalty_matches_the_official_pipeline(questions):
  batch = questions[:96]
  np.testing.assert_array_equal(
    repetition.repetition_penalty(batch, threshold=0.5), official_cluster_share(batch)
  )


_TEMPLATES = (
  "What is {a} plus {b}?",
  "Compute {a} times {b}.",
  "Find the sum of {a} and {b} and {c}.",
  "What is the value of {a} + {b} - {c}?",
  "How many ways are there to choose {a} of {b} items?",
  "Let x = {a}. What is x + {b}?",
  "{a} + {b} = ?",
)


def templated_questions(n: int, seed: int = 0) -> list[str]:
  """Few templates, few slot values: many questions share their BLEU scores exactly (ties)."""
  rng = random.Random(seed)
  vals = [str(v) for v in range(1, 6)]
  return [
    rng.choice(_TEMPLATES).format(a=rng.choice(vals), b=rng.choice(vals), c=rng.choice(vals))
    for _ in range(n)
  ]


@pytest.mark.slow
def test_penalty_equals_the_official_pipeline_on_3000_templated_questions():
  """0 mismatches over 3,000 questions in batches of 64, ties included (the old inclusive cut
  and ulp-level BLEU differences gave 11 here)."""
  qs = templated_questions(3000)
  mismatches = 0
  for start in range(0, len(qs), 64):
    batch = qs[start : start + 64]
    ours = repetition.repetition_penalty(batch, threshold=0.5)
    mismatches += int(np.sum(ours != np.array(official_cluster_share(batch))))
  assert mismatches == 0


def test_collapsed_batch_is_one_cluster():
  """The case the penalty exists for: the Challenger repeating itself (all distances 0)."""
  same = "find the number of positive integers below 100 that are prime"
  qs = [same] * 300 + ["a circle of radius 3 is inscribed in a square what is its area"]
  penalty = repetition.repetition_penalty(qs)
  np.testing.assert_allclose(penalty, [300 / 301] * 300 + [1 / 301])
  d = repetition.bleu_distances(qs)
  assert partition(repetition.average_linkage_labels(d, 0.5)) == partition(sklearn_labels(d, 0.5))
