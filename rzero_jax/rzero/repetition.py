"""Repetition penalty of R-Zero: pairwise BLEU distances, average-linkage clusters, |cluster| / B.

The official code runs NLTK's `sentence_bleu` in a Python double loop and then scikit-learn's
`AgglomerativeClustering(distance_threshold=0.5, metric="precomputed", linkage="average")`; on a
2,048-question rollout batch that takes minutes. Here the same numbers, bit for bit, come from
n-gram count matrices (docs/ALGORITHM.md, "Repetition penalty"):

* An n-gram that occurs c times in a question is split into c binary features "(n-gram, k-th
  occurrence)". Then the clipped match count sum_g min(c_i[g], c_j[g]) of NLTK's modified precision
  is just the number of features questions i and j share, i.e. an entry of X X^T.
* Frequent features (shared by many questions) go through one dense BLAS product; rare ones are
  expanded into their (i, j) pairs and counted with `np.bincount`. Either way each count is exact.
* BLEU itself is evaluated with NLTK's own float operations (math.log of each precision, math.fsum,
  math.exp) once per distinct count pattern, so equal-looking distances are equal to the last bit:
  average linkage breaks ties by exact comparisons, and one ulp moves a question between clusters.
* Clusters: scipy's average linkage (the routine scikit-learn calls) and scikit-learn's cut, which
  keeps only the merges strictly below the threshold.

nltk and scikit-learn are only the references the tests compare against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.cluster import hierarchy

MAX_ORDER = 4  # BLEU-4 with uniform weights, as the reference.
EPSILON = 0.1  # NLTK SmoothingFunction().method1: a zero-match precision becomes epsilon / count.

# Pairs of rare features are expanded in chunks of about this many pairs, to bound memory.
_PAIR_CHUNK = 1 << 22


def _tokenize(questions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Whitespace tokens (str.split(), as the reference) as dense integer ids, flat, plus lengths."""
  split = []
  for q in questions:
    if not isinstance(q, str):
      raise TypeError(f"questions must be str, got {type(q).__name__}: {q!r:.80}")
    split.append(q.split())
  lengths = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
  flat = [t for toks in split for t in toks]
  index = {t: i for i, t in enumerate(dict.fromkeys(flat))}
  tokens = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat))
  return tokens, lengths


def _ngram_features(tokens: np.ndarray, lengths: np.ndarray):
  """Yield (n, feature_doc, feature_id) per order n = 1..4, one entry per binary feature.

  Feature ids are exact (no hashing): n-gram ids are built from (n-1)-gram ids and the next token
  and re-compressed with np.unique at every order.
  """
  n_docs = lengths.size
  vocab_size = int(tokens.max()) + 1 if tokens.size else 1
  doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
  starts = np.cumsum(lengths) - lengths
  pos_in_doc = np.arange(tokens.size, dtype=np.int64) - np.repeat(starts, lengths)
  room = lengths[doc_of_token] - pos_in_doc  # tokens from here to the end of the question

  gram = tokens.copy()  # id of the n-gram that starts at each token (valid where it fits)
  for n in range(1, MAX_ORDER + 1):
    if n > 1:
      # An n-gram starting at p = (n-1)-gram at p followed by the token at p + n - 1. Positions
      # where it does not fit get junk ids that the `fits` mask below drops.
      nxt = np.zeros_like(tokens)
      shifted = max(tokens.size - (n - 1), 0)
      nxt[:shifted] = tokens[n - 1 :]
      gram = np.unique(gram * vocab_size + nxt, return_inverse=True)[1].reshape(-1)
    fits = room >= n
    d, g = doc_of_token[fits], gram[fits]
    if d.size == 0:
      yield n, d, g
      continue
    # Rank of each occurrence among equal (doc, gram): the k-th "the" in a question is feature
    # (the, k), so the number of shared features is sum_g min(c_i[g], c_j[g]) exactly.
    order = np.argsort(d * (int(g.max()) + 1) + g)  # by question, then n-gram (one int key)
    d, g = d[order], g[order]
    new_group = np.ones(d.size, dtype=bool)
    new_group[1:] = (d[1:] != d[:-1]) | (g[1:] != g[:-1])
    group_start = np.flatnonzero(new_group)
    rank = np.arange(d.size) - np.repeat(group_start, np.diff(np.append(group_start, d.size)))
    feature = np.unique(g * (int(rank.max()) + 1) + rank, return_inverse=True)[1].reshape(-1)
    yield n, d, feature


def _shared_feature_counts(doc: np.ndarray, feature: np.ndarray, n_docs: int) -> np.ndarray:
  """[B, B] float64 matrix: number of binary features each pair of documents shares.

  Off-diagonal entries are exact counts; the diagonal is left at whatever the dense product gives
  and must be overwritten by the caller.
  """
  if doc.size == 0:
    return np.zeros((n_docs, n_docs))
  order = np.argsort(feature * n_docs + doc)  # postings: by feature, then question
  doc, feature = doc[order], feature[order]
  df = np.bincount(feature)
  per_occurrence_df = df[feature]
  # Frequent features go through one dense product, rare ones are expanded into their (i, j)
  # pairs. The crossover is where a feature's df^2 scattered pairs cost about as much as its
  # column in the B x B product (measured: about df = B / 24 on a 2-core x86 host).
  dense_min_df = max(8, n_docs // 24)
  dense_feats = np.flatnonzero(df >= dense_min_df)
  if dense_feats.size:
    column = np.full(df.size, -1, dtype=np.int64)
    column[dense_feats] = np.arange(dense_feats.size)
    sel = per_occurrence_df >= dense_min_df
    x = np.zeros((n_docs, dense_feats.size), dtype=np.float32)
    x[doc[sel], column[feature[sel]]] = 1.0
    # float32 sums of 0/1 are exact integers below 2^24; single precision halves the BLAS cost.
    counts = (x @ x.T).astype(np.float64)
  else:
    counts = np.zeros((n_docs, n_docs))

  sparse = (per_occurrence_df >= 2) & (per_occurrence_df < dense_min_df)
  d_sp, f_sp = doc[sparse], feature[sparse]
  if d_sp.size:
    flat = counts.reshape(-1)  # a view: counts is C-contiguous
    new_group = np.ones(f_sp.size, dtype=bool)
    new_group[1:] = f_sp[1:] != f_sp[:-1]
    group_start = np.flatnonzero(new_group)
    group_size = np.diff(np.append(group_start, f_sp.size))
    k_in_group = np.arange(f_sp.size) - np.repeat(group_start, group_size)
    later = np.repeat(group_size, group_size) - 1 - k_in_group  # partners after this entry
    cum = np.cumsum(later)
    lo = 0
    while lo < f_sp.size:  # chunks keep the expanded pair arrays bounded
      base = cum[lo - 1] if lo else 0
      hi = max(int(np.searchsorted(cum, base + _PAIR_CHUNK, side="right")), lo + 1)
      reps = later[lo:hi]
      n_pairs = int(reps.sum())
      if n_pairs:
        left = np.repeat(np.arange(lo, hi), reps)
        right = left + 1 + np.arange(n_pairs) - np.repeat(np.cumsum(reps) - reps, reps)
        a, b = d_sp[left], d_sp[right]
        np.add.at(flat, np.concatenate([a * n_docs + b, b * n_docs + a]), 1.0)
      lo = hi
  return counts


def _quarter_log_precision(n: int, matches: np.ndarray, hyp_len: np.ndarray) -> np.ndarray:
  """1/4 log p_n per (matches, hypothesis length) entry, with NLTK's float operations (method1:
  a zero match count becomes epsilon / count); evaluated once per distinct pair."""
  pairs, inverse = np.unique(np.stack([matches, hyp_len], axis=1), axis=0, return_inverse=True)
  values = []
  for num, h in pairs.tolist():
    den = max(1, h - n + 1)
    p = num / den if num else EPSILON / den  # Fraction -> float is num / den, correctly rounded
    values.append(0.25 * math.log(p))
  return np.array(values)[inverse.reshape(-1)]


def _brevity(hyp_len: int, ref_len: int) -> float:
  return 1.0 if hyp_len > ref_len else (0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len))


def _bleu_flat(questions: Sequence[str], upper_only: bool) -> tuple[np.ndarray, int]:
  """Flat [B * B] BLEU (hypothesis row, reference column); with upper_only, only i < j is filled."""
  tokens, lengths = _tokenize(questions)
  n_docs = lengths.size
  if n_docs == 0:
    return np.zeros(0), 0
  diag = np.diag_indices(n_docs)
  numerators = []
  for n, doc, feature in _ngram_features(tokens, lengths):
    matches = _shared_feature_counts(doc, feature, n_docs)
    matches[diag] = np.maximum(lengths - n + 1, 0)  # against itself every n-gram matches
    numerators.append(matches.reshape(-1))
  # NLTK returns 0 outright when no unigram matches; only the other pairs need the formula.
  wanted = numerators[0] > 0
  if upper_only:
    wanted &= np.triu(np.ones((n_docs, n_docs), dtype=bool), k=1).reshape(-1)
  some = np.flatnonzero(wanted)
  hyp_doc = some // n_docs
  columns = [x[some].astype(np.int64) for x in numerators] + [lengths[hyp_doc]]
  bits = max(int(lengths.max()).bit_length(), 1)
  # BLEU is exp(fsum of four table entries): distinct (counts, length) patterns are few even in a
  # large batch, so the exact Python evaluation runs once per pattern.
  if bits * len(columns) <= 62:
    key = np.zeros(some.size, dtype=np.int64)
    for c in columns:
      key = (key << bits) | c
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
  else:
    _, first, inverse = np.unique(
      np.stack(columns, axis=1), axis=0, return_index=True, return_inverse=True
    )
  h = columns[MAX_ORDER][first]
  terms = [_quarter_log_precision(n + 1, columns[n][first], h).tolist() for n in range(MAX_ORDER)]
  precision = np.array([math.exp(math.fsum(t)) for t in zip(*terms)])[inverse.reshape(-1)]
  # The brevity penalty depends on the two lengths only: a table over the distinct lengths.
  distinct, where = np.unique(lengths, return_inverse=True)
  brevity = np.array([[_brevity(hl, rl) for rl in distinct.tolist()] for hl in distinct.tolist()])
  bleu = np.zeros(n_docs * n_docs)
  bleu[some] = brevity[where[hyp_doc], where[some % n_docs]] * precision
  return bleu, n_docs


def bleu_matrix(questions: Sequence[str]) -> np.ndarray:
  """[B, B] float64: entry (i, j) = NLTK sentence_bleu([x_j.split()], x_i.split(), method1).

  Hypothesis i, reference j, both orders filled (the matrix is not symmetric). The diagonal is
  BLEU of a question against itself, as NLTK computes it. Equal to NLTK to the last bit.
  """
  bleu, n = _bleu_flat(questions, upper_only=False)
  return bleu.reshape(n, n)


def bleu_distances(questions: Sequence[str]) -> np.ndarray:
  """[B, B] float64 symmetric distances d = 1 - BLEU, as the official code builds them.

  For i < j the hypothesis is x_i and the reference x_j; d[j, i] mirrors d[i, j]. The diagonal is
  0 (the official code sets a question's own score to 1).
  """
  bleu, n = _bleu_flat(questions, upper_only=True)
  upper = np.triu(1.0 - bleu.reshape(n, n), k=1)
  return upper + upper.T


def average_linkage_labels(distances: np.ndarray, threshold: float) -> np.ndarray:
  """Flat clusters of scikit-learn's AgglomerativeClustering(n_clusters=None,
  distance_threshold=threshold, metric="precomputed", linkage="average").

  scikit-learn builds the tree with scipy's average linkage on the condensed upper triangle and
  then undoes every merge at height >= threshold, so only merges strictly below it count (a pair
  at exactly the threshold stays apart). Ties are broken by scipy, as there. Labels are 0..K-1 in
  order of each cluster's first member.
  """
  d = np.asarray(distances, dtype=np.float64)
  if d.ndim != 2 or d.shape[0] != d.shape[1]:
    raise ValueError(f"distances must be a square [B, B] matrix, got shape {d.shape}")
  n = d.shape[0]
  parent = np.arange(max(2 * n - 1, n))
  if n > 1:
    z = hierarchy.linkage(d[np.triu_indices(n, k=1)], method="average")
    # Rows come sorted by height; node n + r is the cluster row r creates.
    for r, (a, b, height, _) in enumerate(z):
      if not height < threshold:
        break
      parent[int(a)] = parent[int(b)] = n + r
  root = parent.copy()
  while True:  # every leaf's topmost applied merge
    nxt = root[root]
    if np.array_equal(nxt, root):
      break
    root = nxt
  _, labels = np.unique(root[:n], return_inverse=True)
  labels = labels.reshape(-1)
  # Renumber by first occurrence so labels do not depend on which node represents a cluster.
  first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
  np.minimum.at(first, labels, np.arange(n))
  rank = np.empty_like(first)
  rank[np.argsort(first, kind="stable")] = np.arange(first.size)
  return rank[labels]


def repetition_penalty(questions: Sequence[str], threshold: float = 0.5) -> np.ndarray:
  """r_rep per question: (size of its BLEU cluster) / B, over the whole rollout batch."""
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"threshold must be a BLEU distance in [0, 1], got {threshold}")
  n = len(questions)
  if n == 0:
    return np.zeros(0)
  labels = average_linkage_labels(bleu_distances(questions), threshold)
  return np.bincount(labels)[labels] / n
