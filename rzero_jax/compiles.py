"""A process-wide count of the programs JAX compiles, by function and by program.

Every jitted call whose (function, input shapes and dtypes, shardings) has no compiled program
yet is traced, lowered and compiled (or fetched from the persistent cache, which still costs the
trace and the lowering). JAX announces each lowering on its `pxla` logger at DEBUG level; this
module counts those announcements, keyed by the function's name, its signature and a
fingerprint of the traced program. The same program lowered twice was rebuilt around a new
closure (a fresh `jax.jit` per phase): that is a recompile, and `recompiles` counts it. Two
functions that only share a name and a signature (two roles' train steps under different static
settings, such as micro-batch counts) trace different programs, and count as two. The loop puts
these counts in every metrics record, and a test holds the default run to zero recompiles of the
step functions.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
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
    self.level_before = logging.NOTSET
    self.lock = threading.Lock()
    self.by_key: collections.Counter = collections.Counter()

  def filter(self, record: logging.LogRecord) -> bool:
    if isinstance(record.msg, str) and record.msg.startswith(_PREFIX) and record.args:
      name = str(record.args[0])
      out_avals, program = _program()
      # The message gives the inputs only; the outputs and the program tell apart two
      # programs that a static argument or a closure's settings make different (sampling's
      # plan: same prompts, another token budget; a role's micro-batch count).
      signature = " ".join(str(a) for a in record.args[1:]) + " -> " + out_avals
      with self.lock:
        self.by_key[(name, signature, program)] += 1
    return record.levelno >= self.shown_level


def _program() -> tuple[str, str]:
  """(output shapes, fingerprint) of the program being lowered, from the lowering's frame.

  The fingerprint hashes the jaxpr's text and its constants' shapes: equal for two traces of
  the same code with the same settings, different once any operation or static value differs.
  """
  frame = sys._getframe(1)
  for _ in range(12):
    if frame is None:
      break
    if frame.f_code.co_name == "_cached_lowering_to_hlo":
      closed = frame.f_locals.get("closed_jaxpr")
      consts = getattr(closed, "consts", ())
      text = f"{getattr(closed, 'jaxpr', '')}\n" + " ".join(
        f"{getattr(c, 'dtype', type(c).__name__)}{getattr(c, 'shape', '')}" for c in consts
      )
      # A function object printed by address would split one program in two.
      text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
      digest = hashlib.sha256(text.encode()).hexdigest()[:16]
      return str(getattr(closed, "out_avals", "")), digest
    frame = frame.f_back
  return "", ""


_counter: _Counter | None = None


def install() -> None:
  """Starts counting (idempotent). Call before the first compile you want counted."""
  global _counter
  if _counter is not None:
    return
  logger = logging.getLogger(_LOGGER)
  _counter = _Counter(logger.getEffectiveLevel())
  _counter.level_before = logger.level
  logger.addFilter(_counter)
  logger.setLevel(logging.DEBUG)


def uninstall() -> None:
  """Stops counting and forgets the counts; the lowering logger is as it was before install()."""
  global _counter
  if _counter is None:
    return
  logger = logging.getLogger(_LOGGER)
  logger.removeFilter(_counter)
  logger.setLevel(_counter.level_before)
  _counter = None


def _short(name: str) -> str:
  # JAX names the module "jit(<python name>)" (older versions "jit_<name>"); the metrics key
  # by the python name.
  if name.startswith("jit(") and name.endswith(")"):
    return name[4:-1]
  return name[len("jit_") :] if name.startswith("jit_") else name


def counts(names=None) -> dict:
  """{function: programs compiled, 'function/signatures': distinct programs (signature and
  traced program)} for `names` (python function names; all seen if None), plus 'total' over
  everything.

  Only named functions have a meaningful recompile count (`recompiled`): a primitive run
  outside jit lowers once per output shape under one input signature.
  """
  if _counter is None:
    return {}
  with _counter.lock:
    items = list(_counter.by_key.items())
  per_name: collections.Counter = collections.Counter()
  signatures: collections.Counter = collections.Counter()
  for (name, *_), n in items:
    per_name[_short(name)] += n
    signatures[_short(name)] += 1
  out = {"total": sum(per_name.values())}
  for name in names if names is not None else sorted(per_name):
    out[name] = per_name.get(name, 0)
    out[f"{name}/signatures"] = signatures.get(name, 0)
  return out


def recompiled(names) -> dict:
  """{function: extra compiles beyond one per distinct program} for the named functions."""
  if _counter is None:
    return {}
  with _counter.lock:
    items = list(_counter.by_key.items())
  out = collections.Counter()
  for (name, *_), n in items:
    if _short(name) in names:
      out[_short(name)] += n - 1
  return {name: out.get(name, 0) for name in names}
