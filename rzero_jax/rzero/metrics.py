"""Per-step metrics: one JSONL line, TensorBoard scalars and one human-readable log line.

Only process 0 writes. Lines are keyed by (iteration, phase, step): a step replayed after a
resume replaces its line instead of adding one (readers also keep only the last of each key).
The workdir may be on GCS: TensorBoard's event file is then written locally and copied up after
each record.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from typing import Any, Iterable, Mapping

from absl import logging

from rzero_jax import fileio


def _clean(value: Any):
  if hasattr(value, "tolist"):
    value = value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = fileio.join(workdir, "metrics.jsonl")
    self._tb = None
    self._tb_remote = None  # (local folder, remote folder) when the workdir is remote
    if enabled:
      fileio.makedirs(workdir)
      if tensorboard:
        from tensorboardX import SummaryWriter  # host-only dependency, imported lazily

        tb_dir = fileio.join(workdir, "tb")
        if fileio.is_remote(tb_dir):
          self._tb_remote = (tempfile.mkdtemp(prefix="rzero-tb-"), tb_dir)
          tb_dir = self._tb_remote[0]
        self._tb = SummaryWriter(tb_dir)

  def write(self, record: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {k: _clean(v) for k, v in record.items()}
    upsert_jsonl(self.path, record)
    if self._tb is not None:
      global_step = int(record.get("global_step", 0))
      prefix = f"{record.get('phase', 'run')}/"
      for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(prefix + key, value, global_step)
      self._tb.flush()
      self._upload_tb()
    logging.info("%s", human_line(record))

  def _upload_tb(self) -> None:
    if self._tb_remote is not None:
      fileio.copy_tree(*self._tb_remote)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._upload_tb()
      if self._tb_remote is not None:
        shutil.rmtree(self._tb_remote[0], ignore_errors=True)
      self._tb = None


_SHOWN = (
  ("reward_mean", "reward {:.3f}"),
  ("reward_std", "±{:.3f}"),
  ("format_valid", "valid {:.0%}"),
  ("p_hat_mean", "p̂ {:.2f}"),
  ("repetition_penalty", "rep {:.3f}"),
  ("kept", "kept {}"),
  ("kl", "kl {:.4f}"),
  ("clip_frac", "clip {:.3f}"),
  ("accuracy", "acc {:.3f}"),
  ("tokens_per_s", "{:.0f} tok/s"),
  ("time_sampling", "sample {:.1f}s"),
  ("time_grading", "grade {:.1f}s"),
  ("time_training", "train {:.1f}s"),
)


def human_line(record: Mapping[str, Any]) -> str:
  head = f"[it {record.get('iteration', '?')} {record.get('phase', '?')}"
  if "step" in record:
    head += f" step {record['step']}"
  parts = [head + "]"]
  for key, fmt in _SHOWN:
    value = record.get(key)
    if value is not None:
      try:
        parts.append(fmt.format(value))
      except (TypeError, ValueError):
        parts.append(f"{key} {value}")
  return " ".join(parts)


KEY_FIELDS = ("iteration", "phase", "step")


def _key(record: Mapping[str, Any]) -> tuple:
  return tuple(record.get(k) for k in KEY_FIELDS)


def upsert_jsonl(path: str, record: Mapping[str, Any]) -> None:
  """Adds `record` to a JSONL file, replacing any line with its (iteration, phase, step).

  The file is rewritten to a temporary name and renamed into place, so a kill leaves either the
  old file or the new one; cut lines left by older versions are dropped."""
  kept = []
  if fileio.exists(path):
    for line in fileio.read_text(path).split("\n"):
      try:
        old = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill, or the empty tail
      if isinstance(old, dict) and _key(old) != _key(record):
        kept.append(line + "\n")
  kept.append(json.dumps(record, sort_keys=True) + "\n")
  fileio.write_text(path, "".join(kept))


def read_metrics(path: str) -> list[dict]:
  """Metrics records, the last one of each (iteration, phase, step) kept, in file order."""
  if not fileio.exists(path):
    return []
  records: dict[tuple, dict] = {}
  for line in fileio.read_text(path).split("\n"):
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by a kill
    records[(rec.get("iteration"), rec.get("phase"), rec.get("step"))] = rec
  return list(records.values())


def histogram(values: Iterable[float], bins: int = 10) -> list[int]:
  """Counts of values in [0, 1] over equal-width bins (the last bin includes 1.0)."""
  counts = [0] * bins
  for v in values:
    if v is None:
      continue
    counts[min(int(float(v) * bins), bins - 1)] += 1
  return counts
