"""The World protocol: a synthetic setting R-Zero can run in, registered by name.

A world brings everything a run needs besides the algorithm: its role prompts, a base model it
builds and caches itself, evaluation sets, report-only annotations of a generated question, the
questions training must never see, and the difficulty levels the report groups by. The loop,
evaluation, report and experiment code reach a world only through this protocol and `get`;
docs/ARCHITECTURE.md says how to add one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

from rzero_jax import prompts as prompts_lib


@dataclasses.dataclass(frozen=True)
class WorldBenchmark:
  """One evaluation set of a world, scored per difficulty level."""

  title: str  # its name in result tables
  report_title: str  # the heading of the report's accuracy table
  held_out: bool  # False: training-distribution problems, for design checks only
  sets: Callable[[], Mapping[int, Sequence[tuple[str, str]]]]  # level -> [(question, answer)]


class World(Protocol):
  name: str
  prompts: prompts_lib.PromptSet
  benchmarks: Mapping[str, WorldBenchmark]  # by benchmark name (`--benchmarks`)

  def check_base_model(self, fields: Mapping[str, Any]) -> None:
    """Refuses bad base-model fields (config.world.base) before anything is written."""

  def base_model(self, cache_dir: str, fields: Mapping[str, Any]) -> str:
    """The world's base model as an HF directory, built once under `cache_dir` and reused."""

  def annotate(self, question: str) -> dict[str, Any]:
    """Report-only facts about a generated question (e.g. its true answer); never trained on."""

  def exclude(self, question: str) -> bool:
    """True for questions training must never see (the held-out sets' problems)."""

  def level_of(self, question: str) -> int | None:
    """A question's difficulty level, for the report; None outside the world's grammar."""


_WORLDS: dict[str, World] = {}


def register(world: World) -> World:
  if world.name in _WORLDS or world.name == "paper":
    raise ValueError(f"a world named {world.name!r} is already registered")
  _WORLDS[world.name] = world
  return world


def names() -> tuple[str, ...]:
  return tuple(sorted(_WORLDS))


def get(name: str) -> World:
  """The world registered as `name` (config.world.name)."""
  if name not in _WORLDS:
    raise ValueError(f"config.world.name={name!r}; expected '' (none) or one of {names()}")
  return _WORLDS[name]


def prompt_set(name: str) -> prompts_lib.PromptSet:
  """The prompt set config.prompts names: "paper" (docs/ALGORITHM.md, "Prompts") or a world's."""
  if name == "paper":
    return prompts_lib.PAPER
  if name not in _WORLDS:
    raise ValueError(f"prompt set {name!r} is unknown; expected one of {('paper',) + names()}")
  return _WORLDS[name].prompts


def find_benchmark(name: str) -> tuple[World, WorldBenchmark] | None:
  """The world whose evaluation set is called `name`, and that set; None if no world has it."""
  for world in _WORLDS.values():
    if name in world.benchmarks:
      return world, world.benchmarks[name]
  return None


def benchmarks() -> dict[str, WorldBenchmark]:
  """Every registered world's evaluation sets, by name."""
  return {n: b for w in _WORLDS.values() for n, b in w.benchmarks.items()}
