"""The arithmetic world as a `World`: `arith`'s grammar, prompts and problem sets, and the base
model `base_model` builds."""

from __future__ import annotations

import functools
import os
import types
from typing import Any, Mapping

from rzero_jax.worlds import arith, base_model_spec
from rzero_jax.worlds.world import WorldBenchmark, register


def _as_pairs(sets) -> Mapping[int, tuple[tuple[str, str], ...]]:
  pairs = {
    level: tuple((p.question, str(p.answer)) for p in items) for level, items in sets.items()
  }
  return types.MappingProxyType(pairs)


# Built once per process, read-only: a run evaluates every iteration, and drawing the held-out
# sets by rejection takes seconds each time.
_heldout_pairs = functools.cache(lambda: _as_pairs(arith.heldout_sets()))
_design_pairs = functools.cache(lambda: _as_pairs(arith.design_sets()))


class ArithWorld:
  name = "arith"
  prompts = arith.PROMPTS
  benchmarks = {
    "arith": WorldBenchmark(
      title="Arithmetic world (held-out)",
      report_title="Held-out Solver accuracy (%)",
      held_out=True,
      sets=_heldout_pairs,
    ),
    "arith_design": WorldBenchmark(
      title="Arithmetic world (training distribution, for design checks)",
      report_title="Solver accuracy on training-distribution design sets, never held-out (%)",
      held_out=False,
      sets=_design_pairs,
    ),
  }

  def check_base_model(self, fields: Mapping[str, Any]) -> None:
    base_model_spec.spec_from_fields(**fields)

  def base_model(self, cache_dir: str, fields: Mapping[str, Any]) -> str:
    from rzero_jax.worlds import base_model  # the builder's jax/flax load only when it is used

    return base_model.build_base_model(os.path.join(cache_dir, "arith_base"), **fields)

  def annotate(self, question: str) -> dict[str, Any]:
    return {"true_answer": arith.true_answer(question), "level": arith.difficulty_of(question)}

  def exclude(self, question: str) -> bool:
    return arith.is_heldout(question)

  def level_of(self, question: str) -> int | None:
    return arith.difficulty_of(question)


WORLD = register(ArithWorld())
