"""Repetition penalty on one Challenger rollout batch: ours vs the reference, measured in one run.

Batch: 2,048 generated questions of about 60 words (512 prompts x 4 rollouts, as the authors' code),
from a Zipf-distributed maths vocabulary plus shared templates, with a share of near-duplicates so
that clusters form as they do when the Challenger starts repeating itself.

Reference: the authors' `bleu_distance_matrix` (NLTK `sentence_bleu` with method1 in a Python double
loop over i <= j) followed by scikit-learn's AgglomerativeClustering(distance_threshold=0.5,
metric="precomputed", linkage="average"), exactly as the official code calls it. The full double loop takes minutes, so by default it is timed on a
random subsample of pairs and extrapolated to all 2048 * 2049 / 2 pairs (printed as such);
`--full_reference` runs it whole. The reference clustering always runs on the full matrix.

Run: python benchmarks/repetition.py [--batch 2048] [--words 60] [--ref_pairs 20000]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np

from rzero_jax.rzero import repetition

_WORDS = (
  "the of a to and in is that find let be what for number with if how many integer value sum "
  "triangle points positive real x y n k such are on circle area each at most least prime "
  "probability digits side length its by from where all distinct product function polynomial "
  "roots equation square between remainder divided when greatest smallest possible ways choose "
  "sequence terms ratio angle degrees radius inscribed chord tangent perimeter coordinates "
  "expected random coins dice probability odd even divisible factor multiple base expression "
  "minimum maximum satisfies condition consecutive arithmetic geometric series converges limit "
  "derivative integral matrix determinant vector plane line segment midpoint parallel"
).split()
_TEMPLATES = [
  "Let {a} be a positive integer such that",
  "Find the number of ordered pairs of integers",
  "A circle of radius {a} is inscribed in a triangle with",
  "What is the probability that",
  "Compute the remainder when",
]


def make_questions(batch: int, words: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  weights = [1.0 / (rank + 1) for rank in range(len(_WORDS))]  # Zipf: a few very common words
  questions: list[str] = []
  while len(questions) < batch:
    if questions and rng.random() < 0.15:
      # Near-duplicate of an earlier question: a few words swapped out.
      toks = rng.choice(questions).split()
      for _ in range(rng.randint(1, 6)):
        toks[rng.randrange(len(toks))] = rng.choices(_WORDS, weights)[0]
      questions.append(" ".join(toks))
      continue
    length = max(8, int(rng.gauss(words, words / 5)))
    head = rng.choice(_TEMPLATES).format(a=rng.randint(2, 99)).split()
    body = rng.choices(_WORDS, weights, k=max(0, length - len(head)))
    body = [w if rng.random() > 0.08 else str(rng.randint(0, 999)) for w in body]
    questions.append(" ".join(head + body))
  return questions


def reference_bleu_distance_pairs(
  questions: list[str], pairs: list[tuple[int, int]]
) -> list[float]:
  """The authors' loop body: hypothesis x_i, reference x_j, split on whitespace, method1."""
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

  smoother = SmoothingFunction().method1
  return [
    1.0 - sentence_bleu([questions[j].split()], questions[i].split(), smoothing_function=smoother)
    for i, j in pairs
  ]


def reference_cluster_sizes(distances: np.ndarray, threshold: float) -> np.ndarray:
  from sklearn.cluster import AgglomerativeClustering

  labels = AgglomerativeClustering(
    n_clusters=None, distance_threshold=threshold, metric="precomputed", linkage="average"
  ).fit_predict(distances)
  return np.bincount(labels)[labels] / len(labels)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--batch", type=int, default=2048)
  parser.add_argument("--words", type=int, default=60)
  parser.add_argument(
    "--ref_pairs", type=int, default=20000, help="pairs timed for the reference BLEU loop"
  )
  parser.add_argument(
    "--full_reference", action="store_true", help="run the whole reference double loop"
  )
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  questions = make_questions(args.batch, args.words)
  b = len(questions)
  total_pairs = b * (b - 1) // 2
  mean_words = np.mean([len(q.split()) for q in questions])
  print(f"batch: {b} questions, {mean_words:.1f} words on average; {total_pairs:,} pairs i < j")

  print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")

  repetition.repetition_penalty(questions[:64])  # warm numpy/BLAS once
  runs = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    ours_penalty = repetition.repetition_penalty(questions, threshold=0.5)
    runs.append(time.perf_counter() - t0)
  ours_total = float(np.median(runs))
  t0 = time.perf_counter()
  distances = repetition.bleu_distances(questions)
  ours_bleu = time.perf_counter() - t0
  t0 = time.perf_counter()
  labels = repetition.average_linkage_labels(distances, 0.5)
  ours_cluster = time.perf_counter() - t0
  print(
    f"ours:      {ours_total:8.3f} s  repetition_penalty end to end, median of {args.repeats} "
    f"(one run split: BLEU distances {ours_bleu:.3f} s + clustering {ours_cluster:.3f} s)"
  )

  rng = random.Random(1)
  if args.full_reference:
    pairs = [(i, j) for i in range(b) for j in range(i + 1, b)]
  else:
    pairs = [tuple(sorted(rng.sample(range(b), 2))) for _ in range(args.ref_pairs)]
  reference_bleu_distance_pairs(questions, pairs[:20])  # import nltk outside the timed region
  t0 = time.perf_counter()
  ref_distances = reference_bleu_distance_pairs(questions, pairs)
  ref_loop = time.perf_counter() - t0
  per_pair = ref_loop / len(pairs)
  ref_bleu_full = per_pair * total_pairs
  worst = max(abs(r - distances[i, j]) for (i, j), r in zip(pairs, ref_distances))

  t0 = time.perf_counter()
  ref_penalty = reference_cluster_sizes(distances, 0.5)
  ref_cluster = time.perf_counter() - t0
  reference_total = ref_bleu_full + ref_cluster
  how = (
    "measured on all pairs"
    if args.full_reference
    else (
      f"{len(pairs):,} random pairs timed ({ref_loop:.1f} s, {per_pair * 1e6:.0f} us/pair), "
      f"extrapolated to {total_pairs:,} pairs"
    )
  )
  print(
    f"reference: {reference_total:8.1f} s  (NLTK double loop {ref_bleu_full:.1f} s: {how}; "
    f"scikit-learn clustering {ref_cluster:.3f} s measured)"
  )
  print(f"host load average at the end: {os.getloadavg()[0]:.1f}")
  print(
    f"agreement: max |d_ours - d_nltk| on the timed pairs = {worst:.2e}; "
    f"penalties identical: {bool(np.array_equal(ours_penalty, ref_penalty))}; "
    f"clusters: {len(np.unique(labels))}, largest {int(np.bincount(labels).max())}"
  )
  print(f"ratio (reference / ours): {reference_total / ours_total:.0f}x")


if __name__ == "__main__":
  main()
