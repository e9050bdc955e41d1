"""The one loader of pretrained weights: a GGUF file or an HF directory, placed on a mesh."""

from __future__ import annotations

import os

import jax.numpy as jnp

from rzero_jax import sharding
from rzero_jax.models.config import ModelConfig
from rzero_jax.models.gguf import load_gguf
from rzero_jax.models.hf import load_hf


def is_gguf(path: str) -> bool:
  """A file that starts with the GGUF magic (whatever its name ends with)."""
  if not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    return f.read(4) == b"GGUF"


def load_pretrained(
  path: str, dtype=jnp.float32, mesh=None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> tuple[ModelConfig, dict]:
  """(cfg, params) of a GGUF file or an HF directory; each param created in its sharding on
  `mesh` from `rules` (on the default device without a mesh)."""
  if is_gguf(path):
    return load_gguf(path, dtype=dtype, mesh=mesh, rules=rules)
  return load_hf(path, dtype=dtype, mesh=mesh, rules=rules)
