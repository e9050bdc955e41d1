"""What decides the arithmetic world's base model: `BaseModelSpec`, its validation and its cache
key. Kept apart from the builder (`base_model`) so that checking a config's `world.base` fields
needs no model code."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from rzero_jax.worlds import arith

BUILD_VERSION = "base-v1"  # bump when the corpus, tokenizer or training code changes meaning
GUESS_STYLES = ("number", "give_up")
GIVE_UP = "I do not know."


@dataclasses.dataclass(frozen=True)
class BaseModelSpec:
  """Every choice that decides the built model; its hash is the cache key.

  The field defaults are the plain corpus (every Solver document worked out, 9,000 steps). The
  embedded default run overrides them in configs/arith_tiny.py: twice the pretraining and
  authors who give up on harder problems, so the base model gives up greedily at the frontier
  while its samples still work such problems out (its headroom: benchmarks/RESULTS.md).
  """

  seed: int = 0
  # model
  hidden_size: int = 64
  intermediate_size: int = 256
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  vocab_size: int = 256
  # corpus: every document is seen once at the defaults (num_docs = steps * batch_size)
  num_docs: int = 72_000
  challenger_fraction: float = 0.2
  # Relative weight of each level (1..NUM_LEVELS) in each role's documents. The Challenger's
  # documents lean easy, so R-Zero's Challenger phase has somewhere to move; the Solver's lean
  # hard, because the easy levels are learned anyway as steps of the harder ones.
  challenger_level_weights: tuple[float, ...] = (4, 4, 3, 3, 2, 1, 1, 1)
  solver_level_weights: tuple[float, ...] = (1, 1, 2, 2, 2, 2, 2, 2)
  # Share of Solver documents written by a careless author who works left to right
  # (`arith.left_to_right_solution`): the wrong worked solutions web text holds beside right
  # ones, which a base model imitates along with the right ones.
  careless_fraction: float = 0.0
  # Share of the other (right) Solver documents whose author writes each step's result in front
  # of a + or a * (`arith.worked_solution(results_first=True)`): a second right way to write
  # the same work.
  results_first_fraction: float = 0.0
  # Per level (1..NUM_LEVELS), the share of Solver documents whose author does not work the
  # problem. With `guess_style="give_up"` the author replies `GIVE_UP` and no answer; with
  # "number" the author writes a bare boxed guess, the answer of another problem of the same
  # level (`guessed_answer`). Authors who give up more often on harder problems make a base
  # model that gives up (greedily) where it is weak, while its sampled attempts still work
  # such problems out and agree with each other: the latent skill R-Zero's votes can find.
  # Guessed numbers made the model's worked steps at those levels much less reliable
  # (measured with benchmarks/research/solver_headroom.py); a give-up teaches it nothing
  # about numbers.
  guess_fractions: tuple[float, ...] = (0.0,) * arith.NUM_LEVELS
  guess_style: str = "number"
  # pretraining
  steps: int = 9000
  batch_size: int = 8
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01
  # Documents are padded to a multiple of this; each multiple is one compiled shape.
  bucket_multiple: int = 16

  def validate(self) -> None:
    for name in (
      "hidden_size",
      "intermediate_size",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "head_dim",
      "num_docs",
      "steps",
      "batch_size",
      "bucket_multiple",
    ):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"build_base_model: {name}={value!r}; expected a positive integer")
    if self.vocab_size < 64:
      raise ValueError(f"build_base_model: vocab_size={self.vocab_size}; expected >= 64")
    # A careless share of 1 would leave the corpus without one right solution.
    for name, below_one in (
      ("challenger_fraction", False),
      ("careless_fraction", True),
      ("results_first_fraction", False),
    ):
      value = getattr(self, name)
      if not _is_share(value, below_one):
        raise ValueError(
          f"build_base_model: {name}={value!r}; expected a number in "
          f"[0, 1{')' if below_one else ']'}"
        )
    if (
      not isinstance(self.guess_fractions, (tuple, list))
      or len(self.guess_fractions) != arith.NUM_LEVELS
      or not all(_is_share(v, below_one=True) for v in self.guess_fractions)
    ):
      raise ValueError(
        f"build_base_model: guess_fractions={self.guess_fractions!r}; expected "
        f"{arith.NUM_LEVELS} numbers in [0, 1), one per level"
      )
    if self.guess_style not in GUESS_STYLES:
      raise ValueError(
        f"build_base_model: guess_style={self.guess_style!r}; expected one of {GUESS_STYLES}"
      )
    for name in ("challenger_level_weights", "solver_level_weights"):
      weights = getattr(self, name)
      if len(weights) != arith.NUM_LEVELS or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
          f"build_base_model: {name}={weights!r}; expected {arith.NUM_LEVELS} "
          "non-negative weights with a positive sum"
        )
    if not self.learning_rate > 0 or self.warmup_steps < 0 or self.weight_decay < 0:
      raise ValueError(
        "build_base_model: learning_rate must be > 0, warmup_steps and weight_decay >= 0"
      )

  def cache_key(self) -> str:
    fields = dataclasses.asdict(self)
    for name in ("careless_fraction", "results_first_fraction"):
      if not fields[name]:  # keeps the keys of models built before these fields
        del fields[name]
    if not any(fields["guess_fractions"]):
      del fields["guess_fractions"]
      del fields["guess_style"]
    else:
      fields["guess_fractions"] = [float(v) for v in fields["guess_fractions"]]
    payload = json.dumps(
      {"build": BUILD_VERSION, "world": arith.WORLD_VERSION, **fields}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _is_share(value, below_one: bool) -> bool:
  """A number in [0, 1], or in [0, 1) with `below_one` (a bool is not a number here)."""
  numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
  return numeric and 0.0 <= value and (value < 1.0 if below_one else value <= 1.0)


def spec_from_fields(**spec_fields) -> BaseModelSpec:
  """The validated spec that `build_base_model` would build; a clear error names a bad field."""
  unknown = sorted(set(spec_fields) - {f.name for f in dataclasses.fields(BaseModelSpec)})
  if unknown:
    raise ValueError(
      f"build_base_model: unknown argument(s) {', '.join(unknown)}; expected "
      f"fields of BaseModelSpec"
    )
  spec_fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec_fields.items()}
  spec = BaseModelSpec(**spec_fields)
  spec.validate()
  return spec
