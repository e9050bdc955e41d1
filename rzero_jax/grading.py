"""Answer extraction and equivalence for rewards and evaluation.

`is_equiv(a, b)` decides whether two final answers are the same, with one of two graders
(docs/ALGORITHM.md, "Answer equivalence"):

* "mathruler": mathruler's `grade_answer`, both ways, which the official R-Zero code uses for its
  votes and Solver rewards. It is strict: `2/4` is not `1/2`, `10\\%` is not `0.1`.
* "math_verify": math-verify plus our canonical forms, more lenient (the paper's evaluation grader).

It must never hang and must never run model text as code, because both answers come from a model:

* Cheap, bounded-time checks run in this process: identical strings, canonical LaTeX strings,
  plain numbers (integers compare exactly, as rationals), and pure-text answers.
* Everything else goes to math-verify (its own LaTeX parser + sympy) in a pool of worker
  *subprocesses*. Each comparison has a hard wall-clock limit; a worker that passes it (say, sympy
  stuck in a C bignum loop on `9^{9^{9^9}}`) is SIGKILLed and replaced. No signals are used in this
  process, so it works from any thread. Workers are fresh interpreters started with exec (never a
  fork of this, possibly JAX-threaded, process), capped in address space, and they exit when this
  process goes away.
* This process never calls `eval`, `sympify` on raw strings or `parse_expr`: math-verify is used with
  its LaTeX extractor only, which parses with an ANTLR grammar. mathruler does call sympy's
  `parse_expr` (an eval) on answers with at most two distinct letters; it runs only in the capped,
  killable workers.

The module imports only the standard library at the top: the worker runs this same file with
`runpy`, outside the package, so its start-up does not depend on what `rzero_jax` imports.
"""

from __future__ import annotations

import atexit
import collections
import functools
import json
import math
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from fractions import Fraction

DEFAULT_TIMEOUT_S = 5.0
# Answers longer than this are compared as exact strings only; nobody's final answer is 2,000
# characters of LaTeX, and parsing junk of that size is how graders get stuck.
MAX_PARSE_CHARS = 2000
_BOX_COMMANDS = ("\\boxed", "\\fbox")
# A box command not followed by a letter (`\boxedfoo` is another command).
BOX_START = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# An escaped character (\{ and \} included, which never open or close) or a brace.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.S)
_SPACE_TOKEN = re.compile(r"[^\s$]+")
# extract_boxed reads only this many trailing characters (first_box_argument, leading): about
# 25 times the longest completion the paper's configs sample (4,096 tokens), so a real answer is
# always inside, while a degenerate megabyte-long rollout is cut to a bounded cost.
MAX_SCAN_CHARS = 100_000
GRADERS = ("math_verify", "mathruler")
# The official Solver reward: (1 - w) * agreement + w * format (docs/ALGORITHM.md, "Solver reward").
FORMAT_WEIGHT = 0.1
SOLVER_REWARD_FORMS = ("paper", "code")


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------


def extract_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, else None.

  Braces are balanced, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`; escaped braces `\\{`, `\\}`
  do not count. The last box decides: if its closing brace is missing (a truncated completion),
  the answer is None, never an earlier box, as mathruler's extraction (the official grader)
  does. The space form `\\boxed 5` gives the next whitespace-delimited token. Only the last
  MAX_SCAN_CHARS characters are read, in linear time, so a degenerate rollout of a megabyte of
  `\\boxed{` costs milliseconds.
  """
  if not isinstance(text, str):
    raise TypeError(f"extract_boxed expects str, got {type(text).__name__}")
  text = text[-MAX_SCAN_CHARS:]
  last = None
  for last in BOX_START.finditer(text):  # noqa: B007 - only the last match is wanted
    pass
  return None if last is None else box_argument(text, last.end())


def first_box_argument(text: str) -> str | None:
  """The first box's content (None when it is unclosed), read from the first MAX_SCAN_CHARS
  characters: an unclosed first box holds everything after it, so no later box can count."""
  match = BOX_START.search(text, 0, MAX_SCAN_CHARS)
  return None if match is None else box_argument(text[:MAX_SCAN_CHARS], match.end())


def box_argument(text: str, i: int) -> str | None:
  """The argument of a box command whose name ends at i, or None if it has none/is unclosed.

  One regex pass over the braces and escapes after i: linear, no recursion."""
  j = i
  while j < len(text) and text[j] in " \t":
    j += 1
  if j < len(text) and text[j] == "{":
    depth = 0
    for m in _BRACE_TOKEN.finditer(text, j):
      c = m.group()
      if c == "{":
        depth += 1
      elif c == "}":
        depth -= 1
        if depth == 0:
          return text[j + 1 : m.start()]
    return None
  if j > i:  # "\boxed 5": the space form takes one token
    m = _SPACE_TOKEN.match(text, j)
    return m.group(0) if m else None
  return None


# ----------------------------------------------------------------------------------------------
# Cheap checks in this process
# ----------------------------------------------------------------------------------------------


def _sanitize(s: str) -> str:
  """Trimmed text that survives JSON and pipes: lone surrogates become visible escapes."""
  return s.encode("utf-8", "backslashreplace").decode("utf-8").strip()


_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox)\s*\{([^{}]*)\}")
_NUMERAL = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
_UNIT_AFTER_NUMBER = re.compile(
  rf"^({_NUMERAL})\s*\\(?:text|mathrm|mbox)\s*\{{\s*[A-Za-z][A-Za-z .]*\}}$"
)
_SPACING = re.compile(r"\\(?:left|right|displaystyle)\b|\\[!,;:> ]|\\q?quad\b|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree\b")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*(?=[^=]*$)")
_TEXT_ANSWER = re.compile(r"^[A-Za-z]{2,}(?:[ '\-][A-Za-z]+)*$|^[A-Za-z]+(?:[ '\-][A-Za-z]+)+$")
_CHOICE = re.compile(r"^\(?([A-Za-z])\)$")


def _canonical(s: str) -> str:
  """A canonical spelling for string comparison. Only linear-time regexes on bounded input."""
  s = s.strip().strip("$").strip()
  if s.startswith(("\\(", "\\[")) and s.endswith(("\\)", "\\]")):
    s = s[2:-2].strip()
  m = _UNIT_AFTER_NUMBER.match(s)
  if m and m.group(1):
    s = m.group(1)
  s = _WRAPPERS.sub(r"\1", s)
  s = _SPACING.sub(" ", s)
  s = _DEGREES.sub("", s)
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
  s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("\\pi", "pi ")
  s = s.strip().rstrip(".").strip()
  s = _ASSIGNMENT.sub("", s)
  m = _CHOICE.match(s) or re.fullmatch(r"([A-Za-z])", s)
  if m:  # a choice letter or a single variable: math-verify ignores case for these too
    return m.group(1).lower()
  words = " ".join(s.split())
  if _TEXT_ANSWER.match(words):
    return words.lower()
  return "".join(s.split())


_NUMBER = re.compile(
  rf"^(?P<m>{_NUMERAL})(?:(?:[eE]|\\times10\^|\\cdot10\^|×10\^)\{{?(?P<e>[+-]?\d{{1,3}})\}}?)?(?P<pct>%)?$"
)
_FRACTION = re.compile(
  r"^(?P<sign>[+-]?)(?:\\frac\{(?P<n1>[+-]?\d{1,100})\}\{(?P<d1>\d{1,100})\}|\\frac(?P<n2>\d)(?P<d2>\d)"
  r"|(?P<n3>[+-]?\d{1,100})/(?P<d3>\d{1,100}))(?P<pct>%)?$"
)


def _as_number(c: str) -> tuple[Fraction, str, bool] | None:
  """(value, kind, is_percent) for a canonical plain number; kind is 'int', 'dec' or 'frac'."""
  if len(c) > 200:
    return None
  m = _NUMBER.match(c)
  if m and any(ch.isdigit() for ch in m.group("m")):
    mantissa = m.group("m").replace(",", "")
    value = Fraction(mantissa)
    kind = "dec" if "." in mantissa else "int"
    if m.group("e"):
      value *= Fraction(10) ** int(m.group("e"))
      kind = "int" if value.denominator == 1 and kind == "int" else "dec"
    return value, kind, bool(m.group("pct"))
  m = _FRACTION.match(c)
  if m:
    num = m.group("n1") or m.group("n2") or m.group("n3")
    den = m.group("d1") or m.group("d2") or m.group("d3")
    if int(den) == 0:
      return None
    value = Fraction(int(num), int(den)) * (-1 if m.group("sign") == "-" else 1)
    return value, "frac", bool(m.group("pct"))
  return None


@functools.lru_cache(maxsize=1 << 16)
def _analyse(s: str) -> tuple[str, tuple[Fraction, str, bool] | None, bool, bool]:
  """(canonical form, plain-number value, is a word answer, braces balanced), cached: in a
  majority vote every answer meets every other one."""
  c = _canonical(s)
  return c, _as_number(c), _TEXT_ANSWER.match(c) is not None, _braces_balanced(s)


def _quick_verdict(a: str, b: str) -> bool | None:
  """True/False when cheap checks settle it, None when it needs the symbolic grader."""
  if a == b:
    return bool(a)
  if not a or not b or len(a) > MAX_PARSE_CHARS or len(b) > MAX_PARSE_CHARS:
    return False
  (ca, na, text_a, balanced_a), (cb, nb, text_b, balanced_b) = _analyse(a), _analyse(b)
  if not ca or not cb:
    return False
  if ca == cb:
    return True
  if not (balanced_a and balanced_b):
    return False  # "1} + \\boxed{2" must not smuggle a second answer into the parser
  if na is not None and nb is not None:
    # A percentage may be meant as its number or as a fraction of 100 (math-verify agrees).
    values_a = {na[0]} | ({na[0] / 100} if na[2] else set())
    values_b = {nb[0]} | ({nb[0] / 100} if nb[2] else set())
    if values_a & values_b:
      return True
    if {na[1], nb[1]} == {"dec", "frac"}:
      # 0.333333 vs 1/3: math-verify compares at 6 decimals. Values more than 1e-6 apart
      # cannot round to the same 6th decimal, so only close calls go to it.
      gap = min(abs(x - y) for x in values_a for y in values_b)
      return None if gap <= Fraction(1, 10**6) else False
    return False  # integers and terminating decimals compare exactly
  if text_a and text_b:
    return False  # two different words ("monday" vs "tuesday"), never symbols multiplied
  if (text_a and nb is not None) or (text_b and na is not None):
    return False  # a word ("undefined", "no answer") is not a number
  if len(ca) == 1 and len(cb) == 1 and ca.isalpha() and cb.isalpha():
    return False  # two different choice letters
  return None


_SMALL_INT = re.compile(r"^-?\d{1,15}$")


def _quick_verdict_mathruler(a: str, b: str) -> bool | None:
  """What mathruler's grade_answer says without running it, where that is certain."""
  if a == b:
    return bool(a)
  if not a or not b or len(a) > MAX_PARSE_CHARS or len(b) > MAX_PARSE_CHARS:
    return False
  if _SMALL_INT.match(a) and _SMALL_INT.match(b):
    # Plain integers below 2^53 normalise to their value (larger ones go through float there).
    return int(a) == int(b)
  return None


def _check_grader(grader: str) -> None:
  if grader not in GRADERS:
    raise ValueError(f"grader={grader!r}; expected one of {GRADERS} (config.grader)")


def _braces_balanced(s: str) -> bool:
  depth, k = 0, 0
  while k < len(s):
    c = s[k]
    if c == "\\":
      k += 2
      continue
    depth += (c == "{") - (c == "}")
    if depth < 0:
      return False
    k += 1
  return depth == 0


def _worker_form(s: str) -> str:
  """What the symbolic grader sees: scientific notation spelled in LaTeX, which it parses."""
  m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d{1,3})", s)
  return f"{m.group(1)}\\times10^{{{m.group(2)}}}" if m else s


# ----------------------------------------------------------------------------------------------
# Worker pool
# ----------------------------------------------------------------------------------------------


class GraderUnavailableError(RuntimeError):
  """The symbolic grader's worker processes cannot be started."""


class _Worker:
  """One grader subprocess: line-delimited JSON requests in, one '0'/'1' line per pair out."""

  def __init__(self, memory_limit_mb: int, startup_timeout_s: float, grader: str = "math_verify"):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__rzero_grading_worker__')"
    self.proc = subprocess.Popen(
      [
        sys.executable,
        "-c",
        code,
        os.path.abspath(__file__),
        str(os.getpid()),
        str(memory_limit_mb),
        grader,
      ],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      env=env,
      close_fds=True,
    )
    self.fd = self.proc.stdout.fileno()
    os.set_blocking(self.fd, False)
    self.buffer = b""
    self.ready = False
    self.deadline = time.monotonic() + startup_timeout_s
    self.batch: list[int] = []  # item indices sent and not answered yet, in order

  def send(self, indices: list[int], pairs: list[tuple[str, str]], timeout_s: float) -> bool:
    line = json.dumps({"pairs": [pairs[i] for i in indices]}, ensure_ascii=True) + "\n"
    try:
      self.proc.stdin.write(line.encode("ascii"))
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError):
      return False
    self.batch = list(indices)
    self.deadline = time.monotonic() + timeout_s
    return True

  def read_lines(self) -> list[bytes] | None:
    """Complete lines available now; None at end of file (the worker died)."""
    try:
      chunk = os.read(self.fd, 1 << 16)
    except BlockingIOError:
      return []
    except OSError:
      return None
    if not chunk:
      return None
    self.buffer += chunk
    *lines, self.buffer = self.buffer.split(b"\n")
    return lines

  def kill(self) -> None:
    try:
      self.proc.kill()
    except OSError:
      pass
    for stream in (self.proc.stdin, self.proc.stdout):
      try:
        stream.close()
      except OSError:
        pass
    try:
      self.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      pass


class GradingPool:
  """Symbolic answer comparison in worker subprocesses with a hard per-comparison timeout.

  Workers start lazily on the first comparison that needs one and are reused; a worker that
  times out or crashes is killed and replaced. Verdicts are cached (a comparison that timed out
  is cached as False). One batch runs at a time; calls from several threads queue on a lock.
  """

  def __init__(
    self,
    num_workers: int | None = None,
    *,
    memory_limit_mb: int = 4096,
    startup_timeout_s: float = 120.0,
    cache_size: int = 200_000,
    max_chunk: int = 16,
    grader: str = "math_verify",
  ):
    _check_grader(grader)
    self.grader = grader
    if num_workers is None:
      num_workers = max(1, min(4, os.cpu_count() or 1))
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    self.num_workers = num_workers
    self.memory_limit_mb = memory_limit_mb
    self.startup_timeout_s = startup_timeout_s
    self.max_chunk = max_chunk
    self._cache: collections.OrderedDict[tuple[str, str], bool] = collections.OrderedDict()
    self._cache_size = cache_size
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._closed = False
    self.stats = collections.Counter()  # quick / cached / symbolic / timeouts / crashes

  def __enter__(self) -> "GradingPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- public ------------------------------------------------------------------------------

  def equiv_batch(
    self, pairs: Iterable[tuple[str | None, str | None]], timeout: float = DEFAULT_TIMEOUT_S
  ) -> list[bool]:
    """One verdict per (a, b) pair; None on either side is never equivalent to anything."""
    if not timeout > 0:
      raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    pairs = list(pairs)
    verdicts: list[bool | None] = [None] * len(pairs)
    todo: dict[tuple[str, str], list[int]] = {}
    with self._lock:
      for k, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
          raise ValueError(f"pairs[{k}] must be an (a, b) pair, got {pair!r:.80}")
        a, b = pair
        for name, x in (("a", a), ("b", b)):
          if x is not None and not isinstance(x, str):
            raise TypeError(f"pairs[{k}].{name} must be str or None, got {type(x).__name__}")
        if a is None or b is None:
          verdicts[k] = False
          continue
        a, b = sorted((_sanitize(a), _sanitize(b)))
        quick = (
          _quick_verdict(a, b) if self.grader == "math_verify" else _quick_verdict_mathruler(a, b)
        )
        if quick is not None:
          self.stats["quick"] += 1
          verdicts[k] = quick
        elif (a, b) in self._cache:
          self.stats["cached"] += 1
          self._cache.move_to_end((a, b))
          verdicts[k] = self._cache[(a, b)]
        else:
          todo.setdefault((a, b), []).append(k)
      if todo:
        keys = list(todo)
        form = _worker_form if self.grader == "math_verify" else (lambda x: x)
        results = self._run_symbolic([(form(a), form(b)) for a, b in keys], timeout)
        for key, result in zip(keys, results):
          self._cache[key] = result
          for k in todo[key]:
            verdicts[k] = result
        while len(self._cache) > self._cache_size:
          self._cache.popitem(last=False)
    return [bool(v) for v in verdicts]

  def start(self) -> None:
    """Start the workers now and wait until they are ready (otherwise the first call does)."""
    with self._lock:
      self._run_symbolic([], DEFAULT_TIMEOUT_S, wait_ready=True)

  def close(self) -> None:
    with self._lock:
      for w in self._workers:
        w.kill()
      self._workers = []
      self._closed = True

  def worker_pids(self) -> list[int]:
    return [w.proc.pid for w in self._workers]

  # -- the event loop ----------------------------------------------------------------------

  def _run_symbolic(
    self, pairs: list[tuple[str, str]], timeout: float, wait_ready: bool = False
  ) -> list[bool]:
    if self._closed:
      raise RuntimeError("GradingPool is closed")
    results: list[bool | None] = [None] * len(pairs)
    pending = collections.deque(range(len(pairs)))
    chunk = max(1, min(self.max_chunk, math.ceil(len(pairs) / (2 * self.num_workers))))
    start_failures = 0
    for w in [w for w in self._workers if w.proc.poll() is not None]:
      w.kill()  # died while idle (e.g. killed from outside): clean up, start a fresh one
      self._workers.remove(w)
    while len(self._workers) < self.num_workers:
      self._workers.append(_Worker(self.memory_limit_mb, self.startup_timeout_s, self.grader))
    with selectors.DefaultSelector() as sel:
      for w in self._workers:
        sel.register(w.fd, selectors.EVENT_READ, w)

      def replace(w: _Worker, verdict_for_current: bool | None) -> None:
        # The item being compared gets the verdict (False: it hung or crashed the
        # worker); the rest of the worker's batch goes back to the queue.
        if w.batch and verdict_for_current is not None:
          results[w.batch[0]] = verdict_for_current
          pending.extendleft(reversed(w.batch[1:]))
        else:
          pending.extendleft(reversed(w.batch))
        sel.unregister(w.fd)
        w.kill()
        fresh = _Worker(self.memory_limit_mb, self.startup_timeout_s, self.grader)
        self._workers[self._workers.index(w)] = fresh
        sel.register(fresh.fd, selectors.EVENT_READ, fresh)

      while (
        pending
        or any(w.batch for w in self._workers)
        or (wait_ready and not all(w.ready for w in self._workers))
      ):
        for w in self._workers:
          if w.ready and not w.batch and pending:
            batch = [pending.popleft() for _ in range(min(chunk, len(pending)))]
            if not w.send(batch, pairs, timeout):
              pending.extendleft(reversed(batch))
              self.stats["crashes"] += 1
              replace(w, None)
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.batch or not w.ready]
        wait = max(0.0, min(deadlines) - now) if deadlines else 0.0
        for key, _ in sel.select(timeout=wait):
          w = key.data
          lines = w.read_lines()
          if lines is None:  # died: a crash on the current item, or at start-up
            if not w.ready:
              start_failures += 1
              self._check_start_failures(start_failures, w)
              replace(w, None)
            else:
              self.stats["crashes"] += 1
              replace(w, False)
            continue
          for line in lines:
            if not w.ready:
              w.ready = line == b"ready"
              start_failures = 0
              continue
            if w.batch:
              results[w.batch.pop(0)] = line == b"1"
              self.stats["symbolic"] += 1
              w.deadline = time.monotonic() + timeout
        now = time.monotonic()
        for w in list(self._workers):
          if not w.ready and now > w.deadline:
            start_failures += 1
            self._check_start_failures(start_failures, w)
            replace(w, None)
          elif w.batch and now > w.deadline:
            self.stats["timeouts"] += 1
            replace(w, False)
    return [bool(r) for r in results]

  def _check_start_failures(self, failures: int, w: _Worker) -> None:
    if failures >= 3:
      code = w.proc.poll()
      w.kill()
      raise GraderUnavailableError(
        f"grading worker failed to start {failures} times in a row (last exit code {code}); "
        "its traceback, if any, is on stderr. Is math-verify[antlr4_13_2] installed?"
      )


# ----------------------------------------------------------------------------------------------
# Module-level API on a shared default pool
# ----------------------------------------------------------------------------------------------

_default_pools: dict[str, GradingPool] = {}
_default_pool_lock = threading.Lock()


def default_pool(grader: str = "math_verify") -> GradingPool:
  """The process-wide pool of a grader behind `is_equiv` (created on first use, closed at exit)."""
  _check_grader(grader)
  with _default_pool_lock:
    pool = _default_pools.get(grader)
    if pool is None or pool._closed:
      pool = _default_pools[grader] = GradingPool(grader=grader)
    return pool


def close() -> None:
  """Stop the default pools' workers (a later call starts new ones)."""
  with _default_pool_lock:
    for pool in _default_pools.values():
      pool.close()
    _default_pools.clear()


atexit.register(close)


def is_equiv_batch(
  pairs: Iterable[tuple[str | None, str | None]],
  timeout: float = DEFAULT_TIMEOUT_S,
  pool: GradingPool | None = None,
  grader: str = "math_verify",
) -> list[bool]:
  """Verdicts for many (a, b) pairs, compared in parallel; see `is_equiv`. A given `pool`
  brings its own grader."""
  return (pool or default_pool(grader)).equiv_batch(pairs, timeout=timeout)


def is_equiv(
  a: str | None, b: str | None, timeout: float = DEFAULT_TIMEOUT_S, pool: GradingPool | None = None
) -> bool:
  """True iff two final answers are the same string or mathematically equal.

  Symmetric. None (no answer) equals nothing, not even None. Integers compare exactly, and so do
  terminating decimals; sets are unordered; a percentage matches its number or its hundredth;
  degrees and units in `\\text{}` are dropped; a single-variable assignment `x = 3` matches
  `3`; fractions vs decimals, intervals, matrices and symbolic forms follow math-verify.
  Answers longer than MAX_PARSE_CHARS, or with unbalanced braces, only match as equal strings.
  Returns within about `timeout` seconds per symbolic comparison (one that runs out, or crashes
  its worker, counts as not equal).
  """
  return is_equiv_batch([(a, b)], timeout=timeout, pool=pool)[0]


_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
_TAG_SPACE = re.compile(r"\s*(<|>|/)\s*")


def format_reward(response: str) -> float:
  """The official format check: 1.0 iff the response is <think>...</think>...\\boxed{...}...
  (spaces around '<', '>' and '/' ignored, as there)."""
  return 1.0 if _FORMAT.fullmatch(_TAG_SPACE.sub(r"\1", response)) else 0.0


def solver_reward(
  response: str,
  label: str | None,
  timeout: float = DEFAULT_TIMEOUT_S,
  pool: GradingPool | None = None,
  *,
  form: str = "paper",
  grader: str = "math_verify",
) -> float:
  """The Solver's reward for one response; see `solver_rewards`."""
  return solver_rewards([response], [label], timeout=timeout, pool=pool, form=form, grader=grader)[
    0
  ]


def solver_rewards(
  responses: Sequence[str],
  labels: Sequence[str | None],
  timeout: float = DEFAULT_TIMEOUT_S,
  pool: GradingPool | None = None,
  *,
  form: str = "paper",
  grader: str = "math_verify",
) -> list[float]:
  """Solver rewards for a batch, with all comparisons in one parallel grading call.

  form="paper": 1.0 iff the response's last boxed answer equals the label, else 0.0 (no box:
  0.0). form="code" (the official reward): 0.9 * that + 0.1 * `format_reward(response)`.
  """
  if form not in SOLVER_REWARD_FORMS:
    raise ValueError(
      f"form={form!r}; expected one of {SOLVER_REWARD_FORMS} (config.solver.reward_form)"
    )
  if len(responses) != len(labels):
    raise ValueError(f"responses ({len(responses)}) and labels ({len(labels)}) differ in length")
  answers = [extract_boxed(r) for r in responses]
  verdicts = is_equiv_batch(list(zip(answers, labels)), timeout=timeout, pool=pool, grader=grader)
  agreement = [1.0 if v else 0.0 for v in verdicts]
  if form == "paper":
    return agreement
  return [
    (1.0 - FORMAT_WEIGHT) * a + FORMAT_WEIGHT * format_reward(r)
    for a, r in zip(agreement, responses)
  ]


# ----------------------------------------------------------------------------------------------
# Worker process (this file run by runpy in a fresh interpreter)
# ----------------------------------------------------------------------------------------------


def _worker_main() -> None:
  parent_pid, memory_limit_mb = int(sys.argv[2]), int(sys.argv[3])
  grader = sys.argv[4] if len(sys.argv) > 4 else "math_verify"
  # The protocol owns the real stdout; anything a library prints goes to stderr instead.
  protocol = os.fdopen(os.dup(1), "wb", buffering=0)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  try:
    import resource

    limit = memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # runaway bignums fail, not swap
  except (ImportError, ValueError, OSError):
    pass
  _start_orphan_watchdog(parent_pid)
  import logging

  logging.disable(logging.CRITICAL)  # math-verify warns that its own timeouts are off: intended
  if grader == "mathruler":
    _serve_mathruler(protocol)
    return
  from math_verify import LatexExtractionConfig, parse, verify

  config = [LatexExtractionConfig(boxed_match_priority=0)]

  @functools.lru_cache(maxsize=8192)
  def parsed(s: str):
    # LaTeX extraction only (no ExprExtractionConfig, which would call parse_expr); timeouts
    # off because signal.alarm is not ours to use: the parent kills us instead.
    return parse("\\boxed{" + s + "}", extraction_config=config, parsing_timeout=None)

  def equal(a: str, b: str) -> bool:
    pa, pb = parsed(a), parsed(b)
    if not pa or not pb:
      return False
    return verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None)

  parsed("1")  # warm the ANTLR parser before declaring ready
  protocol.write(b"ready\n")
  for line in sys.stdin.buffer:
    for a, b in json.loads(line)["pairs"]:
      try:
        verdict = equal(a, b)
      except Exception:  # noqa: BLE001 - any failure on model text (MemoryError,
        verdict = False  # RecursionError, parser errors) means "not equal"
      protocol.write(b"1\n" if verdict else b"0\n")


def _serve_mathruler(protocol) -> None:
  from mathruler.grader import grade_answer

  def equal(a: str, b: str) -> bool:  # both directions, as the official vote asks
    return bool(grade_answer(a, b) or grade_answer(b, a))

  equal("1", "1")  # import sympy's parser before declaring ready
  protocol.write(b"ready\n")
  for line in sys.stdin.buffer:
    for a, b in json.loads(line)["pairs"]:
      try:
        verdict = equal(a, b)
      except Exception:  # noqa: BLE001 - any failure on model text means "not equal"
        verdict = False
      protocol.write(b"1\n" if verdict else b"0\n")


def _start_orphan_watchdog(parent_pid: int) -> None:
  """Exit when the parent is gone (stdin EOF covers an idle worker; this covers a busy one)."""

  def watch() -> None:
    while True:
      time.sleep(1.0)
      if os.getppid() != parent_pid:
        os._exit(0)

  threading.Thread(target=watch, daemon=True).start()


if __name__ == "__rzero_grading_worker__":
  _worker_main()
