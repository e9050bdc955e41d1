"""The Solver's dataset of one R-Zero iteration (docs/ALGORITHM.md, "Dataset"), and its atomic
JSONL file.

From N candidate questions and the frozen Solver's m answers to each:
  1. drop proof questions ("prove", "show that", "证明") and questions that mention "box";
  2. drop exact duplicate questions (the first copy stays);
  3. majority vote: label = largest answer cluster, p_hat = its size / (m - empty boxes);
  4. drop a label that is missing ("no answer" won, or the literal "no answer"), empty, or holds
     `\\text{`;
  5. keep p_hat in the band |p_hat - 1/2| <= delta (paper, delta = 1/4), or in an explicit
     [lo, hi] range (the authors' code: [0.3, 0.8]).
Each question is counted under the first filter that drops it. A per-question `meta` dict (such as
a synthetic world's true answer, used later to measure pseudo-label accuracy) is passed through
into the record and never looked at here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rzero_jax import fileio
from rzero_jax.rzero import challenger

_PROOF = re.compile(r"\bprove\b|\bshow\s+that\b|证明", re.IGNORECASE)
_CORE_FIELDS = ("question", "label", "p_hat", "answers")
_DROP_REASONS = ("proof", "mentions_box", "duplicate", "no_label", "text_label", "out_of_band")
_BAND_SLACK = 1e-9  # p_hat = k/m in floating point must not fall out of a closed band by rounding


def band_bounds(
  delta: float = 0.25, band: tuple[float, float] | None = None
) -> tuple[float, float]:
  """The closed p_hat interval a question must fall in: [1/2 - delta, 1/2 + delta], or `band`."""
  if band is not None:
    if len(band) != 2:
      raise ValueError(f"band must be a (lo, hi) pair, got {band!r}")
    lo, hi = (float(x) for x in band)
    if not 0.0 <= lo <= hi <= 1.0:
      raise ValueError(f"band must satisfy 0 <= lo <= hi <= 1, got {band!r}")
    return lo, hi
  if not 0.0 <= delta <= 0.5:
    raise ValueError(f"delta must be in [0, 0.5], got {delta!r}")
  return 0.5 - delta, 0.5 + delta


def is_proof_question(question: str) -> bool:
  return _PROOF.search(question) is not None


def build_dataset(
  questions: Sequence[str],
  answers: Sequence[Sequence[str | None]],
  *,
  delta: float = 0.25,
  band: tuple[float, float] | None = None,
  meta: Sequence[Mapping[str, Any] | None] | None = None,
  equiv: challenger.EquivBatch | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Filter and label candidate questions. Returns (records, stats).

  answers[i] are the Solver's m answers to questions[i] (None = no boxed answer). `band` = (lo,
  hi) replaces the paper's |p_hat - 1/2| <= delta. meta[i], if given, is stored as the record's
  `meta` field and never used here. records: dicts with question, label, p_hat, answers (and
  meta). stats: counts after each filter, the kept fraction, the band, and a histogram of p_hat
  over every question that reached the vote.
  """
  if len(questions) != len(answers):
    raise ValueError(f"questions ({len(questions)}) and answers ({len(answers)}) differ in length")
  if meta is not None and len(meta) != len(questions):
    raise ValueError(f"meta ({len(meta)}) and questions ({len(questions)}) differ in length")
  lo, hi = band_bounds(delta, band)

  drops: Counter[str] = Counter()
  seen: set[str] = set()
  to_vote: list[int] = []
  for i, q in enumerate(questions):
    if not isinstance(q, str):
      raise TypeError(f"questions[{i}] must be str, got {type(q).__name__}")
    q = q.strip()
    if is_proof_question(q):
      drops["proof"] += 1
    elif "box" in q.lower():
      drops["mentions_box"] += 1
    elif q in seen:
      drops["duplicate"] += 1
    else:
      seen.add(q)
      to_vote.append(i)

  # The official dataset phase leaves empty boxes out of p_hat's denominator.
  votes = (
    challenger.majority_votes([answers[i] for i in to_vote], equiv, count_empty=False)
    if to_vote
    else []
  )
  histogram: Counter[float] = Counter()
  records: list[dict[str, Any]] = []
  for i, (label, p_hat) in zip(to_vote, votes):
    histogram[round(p_hat, 4)] += 1
    if label is None or not label.strip() or label.strip().lower() == "no answer":
      drops["no_label"] += 1
    elif "\\text{" in label:
      drops["text_label"] += 1
    elif not lo - _BAND_SLACK <= p_hat <= hi + _BAND_SLACK:
      drops["out_of_band"] += 1
    else:
      record = {
        "question": questions[i].strip(),
        "label": label,
        "p_hat": p_hat,
        "answers": list(answers[i]),
      }
      if meta is not None and meta[i] is not None:
        record["meta"] = dict(meta[i])
      records.append(record)

  n = len(questions)
  after_question_filters = n - drops["proof"] - drops["mentions_box"]
  stats = {
    "candidates": n,
    "dropped": {k: drops[k] for k in _DROP_REASONS},
    "after_question_filters": after_question_filters,
    "after_dedup": len(to_vote),
    "after_label_filters": len(to_vote) - drops["no_label"] - drops["text_label"],
    "kept": len(records),
    "kept_fraction": len(records) / n if n else 0.0,
    "band": [lo, hi],
    "p_hat_histogram": {f"{p:.4f}": histogram[p] for p in sorted(histogram)},
  }
  return records, stats


HEADER_KEY = "rzero_dataset"  # the last line of a dataset file: {"rzero_dataset": {...}}


class CorruptDatasetError(ValueError):
  """A dataset file whose records do not match its integrity line."""


def _digest(lines: Sequence[str]) -> str:
  h = hashlib.sha256()
  for line in lines:
    h.update(line.encode("utf-8") + b"\n")
  return h.hexdigest()


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  """Write records as JSON lines so that `path` is either untouched or complete, never partial.

  The last line is an integrity trailer (the record count and a SHA-256 of the record lines),
  so that `read_jsonl` notices a file emptied, cut or edited since. Locally the lines go to a
  temporary file that is fsynced and renamed over `path`; on GCS the one object is written
  directly (already atomic). See `rzero_jax.fileio`.
  """
  path = os.fspath(path)
  if not fileio.is_remote(path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
  digest, count = hashlib.sha256(), 0
  with fileio.atomic_writer(path) as f:
    for k, record in enumerate(records):
      try:
        line = json.dumps(record, ensure_ascii=False)
      except (TypeError, ValueError) as e:
        raise ValueError(f"record {k} for {path} is not JSON-serialisable: {e}") from e
      f.write(line + "\n")
      digest.update(line.encode("utf-8") + b"\n")
      count += 1
    f.write(json.dumps({HEADER_KEY: {"records": count, "sha256": digest.hexdigest()}}) + "\n")


def read_jsonl(path: str | os.PathLike, *, require_header: bool = False) -> list[dict[str, Any]]:
  """Records from a JSONL file written by `write_jsonl_atomic`; each must hold the core fields.

  A file with an integrity line must match it (CorruptDatasetError otherwise). A file
  without one (written by other tools) is read as it is, unless require_header is set, as
  the loop does for its own datasets: an emptied file then fails instead of training on
  nothing.
  """
  path = os.fspath(path)
  if not fileio.exists(path):
    raise FileNotFoundError(f"dataset file {path} does not exist")
  records, lines, header = [], [], None
  # One read, split on "\n" only: a question may hold other Unicode line separators.
  for lineno, line in enumerate(fileio.read_text(path).split("\n"), start=1):
    if not line.strip():
      continue
    if header is not None:
      raise CorruptDatasetError(f"{path}:{lineno}: records after the integrity line")
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise CorruptDatasetError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
    if isinstance(record, dict) and set(record) == {HEADER_KEY}:
      header = record[HEADER_KEY]
      continue
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in _CORE_FIELDS if k not in record]
    if missing:
      raise ValueError(f"{path}:{lineno}: record lacks fields {missing}")
    records.append(record)
    lines.append(line)
  if header is None:
    if require_header:
      raise CorruptDatasetError(
        f"{path}: no integrity line (the file was emptied, cut or not written by rzero-jax)"
      )
    return records
  if (
    not isinstance(header, dict)
    or header.get("records") != len(records)
    or header.get("sha256") != _digest(lines)
  ):
    raise CorruptDatasetError(
      f"{path}: its records do not match its integrity line ({len(records)} records "
      f"read, {header.get('records') if isinstance(header, dict) else '?'} written); the "
      "file was cut or edited"
    )
  return records
