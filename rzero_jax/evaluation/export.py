"""A checkpoint as an HF directory that transformers and vLLM load.

`export(spec, out_dir)` resolves `spec` as evaluation does (a run workdir with role/iteration,
an Orbax checkpoint, an HF directory or a GGUF file) and writes config.json, safetensors, the
tokenizer (tokenizer.json with a chat template: the plain R-Zero format where the base model
had none) and generation_config.json. The directory appears whole or not at all.
"""

from __future__ import annotations

import os

from rzero_jax import fileio, models
from rzero_jax.evaluation import checkpoints


class OutputError(ValueError):
  """`out_dir` cannot receive the export (the launcher names --output)."""


def check_output(out_dir: str) -> str:
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise OutputError(f"{out_dir} exists and is not an empty directory; expected a new folder")
  return out_dir


def export(
  spec: str,
  out_dir: str,
  role: str = "solver",
  iteration: int | None = None,
  dtype: str = "float32",
) -> str:
  """Writes the checkpoint `spec` to `out_dir` as an HF directory; returns its path."""
  out_dir = check_output(out_dir)
  resolved = checkpoints.resolve_checkpoint(spec, role, iteration)
  cfg, params, tok = checkpoints.load_resolved(resolved, dtype=dtype)
  with fileio.staging_dir(out_dir) as staging:
    models.save_hf(cfg, params, staging)
    tok.save_for_transformers(staging)
    # Loading and writing take a while: a folder filled meanwhile is refused, not replaced.
    check_output(out_dir)
  return out_dir
