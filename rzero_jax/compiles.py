"""A process-wide count of the programs JAX compiles, by function and by input signature.

Every jitted call whose (function, input shapes and dtypes, shardings) has no compiled program
yet is traced, lowered and compiled (or fetched from the persistent cache, which still costs the
trace and the lowering). JAX announces each lowering on its `pxla` logger at DEBUG level; this
module counts those announcements. A function lowered twice for the same signature was rebuilt
around a new closure (a fresh `jax.jit` per phase): that is a recompile, and `recompiles` counts
it. The loop puts these counts in every metrics record, and a test holds the default run to
zero recompiles of the step functions.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading

_LOGGER = "jax._src.interpreters.pxla"
_PREFIX = "Compiling %s with global shapes and types"


class _Counter(logging.Filter):
  """A filter on JAX's lowering logger: counts, then lets through only what the logger would
  have shown before (so the DEBUG announcements it enables never reach a handler)."""

  def __init__(self, shown_level: int):
    super().__init__()
    self.shown_level = shown_level
    self.lock = threading.Lock()
    self.by_key: collections.Counter = collections.Counter()

  def filter(self, record: logging.LogRecord) -> bool:
    if isinstance(record.msg, str) and record.msg.startswith(_PREFIX) and record.args:
      name = str(record.args[0])
      # The message gives the inputs only; the outputs tell apart two programs that a static
      # argument makes different (sampling's plan: same prompts, another token budget).
      signature = " ".join(str(a) for a in record.args[1:]) + " -> " + _out_avals()
      with self.lock:
        self.by_key[(name, signature)] += 1
    return record.levelno >= self.shown_level


def _out_avals() -> str:
  """The output shapes of the program being lowered, from the lowering's frame."""
  frame = sys._getframe(1)
  for _ in range(12):
    if frame is None:
      break
    if frame.f_code.co_name == "_cached_lowering_to_hlo":
      jaxpr = frame.f_locals.get("closed_jaxpr")
      return str(getattr(jaxpr, "out_avals", ""))
    frame = frame.f_back
  return ""


_counter: _Counter | None = None


def install() -> None:
  """Starts counting (idempotent). Call before the first compile you want counted."""
  global _counter
  if _counter is not None:
    return
  logger = logging.getLogger(_LOGGER)
  _counter = _Counter(logger.getEffectiveLevel())
  logger.addFilter(_counter)
  logger.setLevel(logging.DEBUG)


def _short(name: str) -> str:
  # JAX names the module "jit(<python name>)" (older versions "jit_<name>"); the metrics key
  # by the python name.
  if name.startswith("jit(") and name.endswith(")"):
    return name[4:-1]
  return name[len("jit_") :] if name.startswith("jit_") else name


def counts(names=None) -> dict:
  """{function: programs compiled, 'function/signatures': distinct signatures} for `names`
  (python function names; all seen if None), plus 'total' over everything.

  Only named functions have a meaningful recompile count (`recompiled`): a primitive run
  outside jit lowers once per output shape under one input signature.
  """
  if _counter is None:
    return {}
  with _counter.lock:
    items = list(_counter.by_key.items())
  per_name: collections.Counter = collections.Counter()
  signatures: collections.Counter = collections.Counter()
  for (name, _), n in items:
    per_name[_short(name)] += n
    signatures[_short(name)] += 1
  out = {"total": sum(per_name.values())}
  for name in names if names is not None else sorted(per_name):
    out[name] = per_name.get(name, 0)
    out[f"{name}/signatures"] = signatures.get(name, 0)
  return out


def recompiled(names) -> dict:
  """{function: extra compiles beyond one per signature} for the named functions."""
  if _counter is None:
    return {}
  with _counter.lock:
    items = list(_counter.by_key.items())
  out = collections.Counter()
  for (name, _), n in items:
    if _short(name) in names:
      out[_short(name)] += n - 1
  return {name: out.get(name, 0) for name in names}
