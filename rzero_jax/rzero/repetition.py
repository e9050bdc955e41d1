"""Repetition penalty of R-Zero: pairwise BLEU distances, average-linkage clusters, |cluster| / B.

The reference runs NLTK's `sentence_bleu` in a Python double loop and then scikit-learn; on a
2,048-question rollout batch that takes minutes. Here the same numbers come from n-gram count
matrices:

* An n-gram that occurs c times in a question is split into c binary features "(n-gram, k-th
  occurrence)". Then the clipped match count sum_g min(c_i[g], c_j[g]) of NLTK's modified precision
  is just the number of features questions i and j share, i.e. an entry of X X^T.
* Frequent features (shared by many questions) go through one dense BLAS product; rare ones are
  expanded into their (i, j) pairs and counted with `np.bincount`. Either way each pair count is
  exact, so BLEU follows NLTK's method1 formula to floating-point rounding.
* Average linkage is a nearest-neighbour chain over the B x B matrix with the Lance-Williams
  update, limited to merges at or below the threshold; it gives the same flat clusters as
  `scipy.cluster.hierarchy.linkage(..., "average")` + `fcluster(t, criterion="distance")`.

Pure numpy: nltk, scipy and scikit-learn are only the references the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def bleu_matrix(questions: Sequence[str]) -> np.ndarray:
    """[B, B] float64: entry (i, j) = NLTK sentence_bleu([x_j.split()], x_i.split(), method1).

    Hypothesis i, reference j, both orders filled (the matrix is not symmetric). The diagonal is
    BLEU of a question against itself, as NLTK computes it.
    """
    tokens, lengths = _tokenize(questions)
    n_docs = lengths.size
    if n_docs == 0:
        return np.zeros((0, 0))
    # BLEU = BP * exp(1/4 sum_n log p_n), p_n = numerator_n / max(1, #hyp n-grams), where a zero
    # numerator becomes epsilon (method1). The numerators are small integers (or 0.1), so their
    # product is exact enough to take a single log; the denominators depend on the row only.
    numerator_product = np.ones((n_docs, n_docs))
    log_denominators = np.zeros(n_docs)
    no_unigram_match = None
    diag = np.diag_indices(n_docs)
    for n, doc, feature in _ngram_features(tokens, lengths):
        matches = _shared_feature_counts(doc, feature, n_docs)
        matches[diag] = np.maximum(lengths - n + 1, 0)  # against itself every n-gram matches
        if n == 1:
            no_unigram_match = matches == 0
        np.maximum(matches, EPSILON, out=matches)
        numerator_product *= matches
        log_denominators += np.log(np.maximum(lengths - n + 1, 1))
    # log BP = min(0, 1 - r / h): 1 when the hypothesis is longer than the reference.
    log_brevity = np.minimum(0.0, 1.0 - lengths[None, :] / np.maximum(lengths, 1)[:, None])
    log_bleu = np.log(numerator_product)
    log_bleu -= log_denominators[:, None]
    log_bleu /= MAX_ORDER
    log_bleu += log_brevity
    bleu = np.exp(log_bleu, out=log_bleu)
    # Every p_n <= 1 and BP <= 1, so BLEU <= 1; clipping removes the last-bit excess that the
    # single log can leave where NLTK computes exactly 1 (identical questions of >= 4 words).
    np.minimum(bleu, 1.0, out=bleu)
    # NLTK returns 0 outright when no unigram matches (this also covers empty hypotheses).
    bleu[no_unigram_match] = 0.0
    return bleu


def bleu_distances(questions: Sequence[str]) -> np.ndarray:
    """[B, B] float64 symmetric distances d = 1 - BLEU, as the reference builds them.

    For i < j the hypothesis is x_i and the reference x_j; d[j, i] mirrors d[i, j]. The diagonal is
    0 (the reference sets a question's own score to 1), which is what a precomputed-distance
    clustering expects.
    """
    bleu = bleu_matrix(questions)
    upper = np.triu(1.0 - bleu, k=1)
    return upper + upper.T


def average_linkage_labels(distances: np.ndarray, threshold: float) -> np.ndarray:
    """Flat cluster labels of average-linkage agglomeration cut at `threshold` (inclusive).

    Same partition as scipy `fcluster(linkage(squareform(d), "average"), t, "distance")`: every
    merge of the average-linkage dendrogram at height <= threshold is applied. Average linkage is
    reducible (merge heights never decrease up the tree), so those merges alone decide the flat
    clusters. Labels are 0..K-1 in order of each cluster's first member.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square [B, B] matrix, got shape {d.shape}")
    n = d.shape[0]
    parent = np.arange(n)
    if n > 1:
        off = d + np.diag(np.full(n, np.inf))
        # A point with no neighbour within the threshold stays a singleton: an average is never
        # below the smallest of the distances it averages. Only the others enter the loop.
        cand = np.flatnonzero(off.min(axis=1) <= threshold)
        if cand.size:
            merged_into = _agglomerate(off[np.ix_(cand, cand)], threshold)
            parent[cand] = cand[merged_into]
    _, labels = np.unique(parent, return_inverse=True)
    # Renumber by first occurrence so labels do not depend on which member represents a cluster.
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    rank = np.empty_like(first)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[labels]


def _agglomerate(dist: np.ndarray, threshold: float) -> np.ndarray:
    """Nearest-neighbour-chain agglomeration of the merges at height <= threshold.

    Returns each point's cluster representative. NN-chain merges reciprocal nearest neighbours,
    which for a reducible linkage such as average gives the same dendrogram as closest-pair-first
    (scipy uses it too), in O(n) numpy steps of O(n) each, whatever the ties: a batch of identical
    questions (all distances 0) costs no more than any other. A cluster whose nearest neighbour is
    beyond the threshold can never come closer (an average is at least the smallest of the
    distances it averages), so it is retired instead of merged further.
    """
    n = dist.shape[0]
    dist = dist.copy()
    size = np.ones(n)
    parent = np.arange(n)
    retired = np.zeros(n, dtype=bool)
    chain: list[int] = []
    start = 0
    while True:
        if not chain:
            while start < n and retired[start]:
                start += 1
            if start == n:
                break
            chain.append(start)
        a = chain[-1]
        row = dist[a]
        b = int(np.argmin(row))
        # Prefer the previous chain element among equally near ones: this is what guarantees the
        # chain ends in a reciprocal pair instead of cycling through ties.
        if len(chain) > 1 and row[chain[-2]] <= row[b]:
            b = chain[-2]
        if not row[b] <= threshold:
            # Distances along the chain only shrink, so every member's nearest neighbour is beyond
            # the threshold too, for good.
            retired[chain] = True
            dist[chain, :] = np.inf
            dist[:, chain] = np.inf
            chain.clear()
            continue
        if len(chain) > 1 and b == chain[-2]:
            del chain[-2:]
            # Lance-Williams update for average linkage, the formula scipy uses; a keeps the union.
            merged = (size[a] * dist[a] + size[b] * dist[b]) / (size[a] + size[b])
            merged[a] = merged[b] = np.inf
            dist[a, :] = merged
            dist[:, a] = merged
            dist[b, :] = np.inf
            dist[:, b] = np.inf
            size[a] += size[b]
            retired[b] = True
            parent[b] = a
        else:
            chain.append(b)
    while True:  # resolve representatives (parents always point at a later-surviving cluster)
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def repetition_penalty(questions: Sequence[str], threshold: float = 0.5) -> np.ndarray:
    """r_rep per question: (size of its BLEU cluster) / B, over the whole rollout batch."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a BLEU distance in [0, 1], got {threshold}")
    n = len(questions)
    if n == 0:
        return np.zeros(0)
    labels = average_linkage_labels(bleu_distances(questions), threshold)
    return np.bincount(labels)[labels] / n
