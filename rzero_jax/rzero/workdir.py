"""The run's working directory: everything a killed run needs to resume.

  WORKDIR/config.json            the run's config, frozen at the first start
  WORKDIR/progress.json          which iteration/phase/step is done (for people and tools;
                                 the checkpoints' own metadata is the source of truth)
  WORKDIR/checkpoints/{role}/    Orbax, after every train step (keep-last-N)
  WORKDIR/checkpoints/{role}_final/  Orbax, step t = the role after iteration t (kept)
  WORKDIR/datasets/iter_{t}.jsonl    the Solver dataset of iteration t (atomic)
  WORKDIR/eval/iter_{t}.json         held-out evaluation after iteration t (0 = base)
  WORKDIR/metrics.jsonl, WORKDIR/tb/ metrics; WORKDIR/report.md, progress.png
  WORKDIR/model/                 the base model's tokenizer and config.json, copied once, so
                                 the workdir can be moved or read from another host
WORKDIR may be local or gs://. Every file goes through `fileio`: atomic on a local disk
(temporary name, then rename), a direct single-object write on GCS. Process 0 writes them all.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from rzero_jax import fileio

MODEL_DIR = "model"


def atomic_write_text(path: str, text: str) -> None:
  fileio.write_text(path, text)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, (set, frozenset, tuple)):
    return list(x)
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: str, default=None):
  if not fileio.exists(path):
    return default
  try:
    return json.loads(fileio.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Human-readable lines for every key whose value differs between two nested configs."""
  a, b = flatten(old), flatten(new)
  lines = []
  for key in sorted(set(a) | set(b)):
    if a.get(key, "<absent>") != b.get(key, "<absent>"):
      lines.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
  return lines


class ConfigChangedError(ValueError):
  pass


def config_hash(config: Mapping[str, Any]) -> str:
  """A short digest of a config, stored in checkpoint metadata: the config guard still holds
  when config.json is deleted."""
  canonical = json.dumps(json.loads(json.dumps(config, default=_jsonable)), sort_keys=True)
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def check_or_store_config(
  workdir: str, config: Mapping[str, Any], allow_change: bool = False, is_writer: bool = True
) -> None:
  """Freezes the config of a workdir; a resumed run with another config is refused."""
  path = fileio.join(workdir, "config.json")
  stored = read_json(path)
  current = json.loads(json.dumps(config, default=_jsonable))
  if stored is not None:
    diff = config_diff(stored, current)
    if diff and not allow_change:
      raise ConfigChangedError(
        f"{path}: the config differs from the one this workdir was started with "
        f"({'; '.join(diff)}); use another --workdir, or pass --allow_config_change"
      )
    if not diff:
      return
  if is_writer:
    atomic_write_json(path, current)


def dataset_path(workdir: str, iteration: int) -> str:
  return fileio.join(workdir, "datasets", f"iter_{iteration}.jsonl")


def eval_path(workdir: str, iteration: int) -> str:
  return fileio.join(workdir, "eval", f"iter_{iteration}.json")


def checkpoint_dir(workdir: str, role: str, final: bool = False) -> str:
  return fileio.join(workdir, "checkpoints", f"{role}_final" if final else role)


def model_dir(workdir: str) -> str:
  """The workdir's own copy of the base model's tokenizer and config (not its weights)."""
  return fileio.join(workdir, MODEL_DIR)


def resolve(workdir: str, recorded: str) -> str:
  """A path recorded in checkpoint metadata: relative ones are relative to the workdir."""
  if "://" in recorded or os.path.isabs(recorded):
    return recorded
  return fileio.join(workdir, recorded)
