"""Benchmark loaders: local JSONL / JSON / parquet files (or CHAMP, a world's sets, tfds)
turned into one uniform list of `Problem`s.

Each benchmark has one small adapter that knows the field layout of its common public release
(MATH-500: problem/answer, GSM8K: question/answer with `#### n`, OlympiadBench: final_answer
list, MMLU-Pro: question/options/answer letter, ...). A record that lacks a field is an error
naming the file, the row and the field; nothing is guessed or skipped silently.

Where the data lives: `--benchmarks=math500` reads `DATA_DIR/math500.{jsonl,json,parquet}` or
every such file under `DATA_DIR/math500/`; `math500=/some/file.parquet` names the file itself;
`tfds:gsm8k[:split]` reads a dataset prepared with tensorflow-datasets.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from rzero_jax import worlds

# Graders a problem can ask for (see answers.py).
MATH, CHOICE, FUZZY = "math", "choice", "fuzzy"

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DATA_EXTENSIONS = (".jsonl", ".json", ".parquet")
# The instruction appended to multiple-choice questions: the Solver system prompt asks for a
# boxed answer; this says the box holds the option letter, as the paper's evaluation does.
CHOICE_INSTRUCTION = (
  "Put only the letter of the correct option in \\boxed{}, e.g. \\boxed{A}. "
  "There is only one correct answer."
)


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str
  question: str  # the user turn, options included for multiple choice
  gold: str  # the reference answer; an option letter for multiple choice
  grader: str  # MATH | CHOICE | FUZZY
  subset: str = ""  # subject / category / level / task, for per-subset breakdowns


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  group: str  # "math" | "general" | "other": which paper aggregate it feeds
  problems: tuple[Problem, ...]
  source: str  # where the problems came from, for the results file


class MissingField(Exception):
  """Raised by adapters; the reader turns it into a ValueError naming file, row and field."""

  def __init__(self, fields: Sequence[str], detail: str = ""):
    super().__init__(fields, detail)
    self.fields = tuple(fields)
    self.detail = detail


Adapter = Callable[[Mapping[str, Any], int, str], Problem]  # (record, index, default subset)


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  name: str
  title: str
  group: str
  schema: str  # the fields it reads, for error messages
  release: str  # a public release in that layout, for error messages
  adapter: Adapter | None = None  # None: not file based (CHAMP, a world's sets)


# --- field helpers --------------------------------------------------------------------------


def _field(record: Mapping[str, Any], *names: str, required: bool = True):
  for name in names:
    value = record.get(name)
    if value is not None and value != "":
      return value
  if required:
    raise MissingField(names)
  return None


def _text(value: Any, names: Sequence[str]) -> str:
  """An answer or question as text; integral floats (parquet's 27.0) print as integers."""
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float):
    if not math.isfinite(value):
      raise MissingField(names, f"is {value}")
    return str(int(value)) if value.is_integer() else repr(value)
  if isinstance(value, (int, str)):
    return str(value).strip()
  raise MissingField(names, f"has type {type(value).__name__}, expected text or a number")


def _record_id(record: Mapping[str, Any], index: int, *names: str) -> str:
  value = _field(record, *names, required=False)
  return str(value) if value is not None else str(index)


def _strip_dollars(answer: str) -> str:
  answer = answer.strip()
  while len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
    answer = answer[1:-1].strip()
  return answer


# --- math adapters --------------------------------------------------------------------------


def _math_adapter(
  question: Sequence[str], answer: Sequence[str], ids: Sequence[str], subset: Sequence[str] = ()
) -> Adapter:
  def adapt(record, index, default_subset):
    return Problem(
      id=_record_id(record, index, *ids),
      question=_text(_field(record, *question), question),
      gold=_text(_field(record, *answer), answer),
      grader=MATH,
      subset=str(_field(record, *subset, required=False) or default_subset)
      if subset
      else default_subset,
    )

  return adapt


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def _gsm8k(record, index, default_subset):
  solution = _text(_field(record, "answer"), ("answer",))
  match = _GSM8K_FINAL.search(solution)
  if match is None:
    raise MissingField(("answer",), "lacks the final '#### <answer>' line")
  # "1,000" in the gold line is a thousands separator, not a tuple.
  gold = match.group(1).replace(",", "").strip()
  return Problem(
    id=_record_id(record, index, "id"),
    question=_text(_field(record, "question"), ("question",)),
    gold=gold,
    grader=MATH,
    subset=default_subset,
  )


def _olympiadbench(record, index, default_subset):
  final = _field(record, "final_answer", "answer")
  if isinstance(final, str):
    final = [final]
  try:
    answers = [_strip_dollars(_text(a, ("final_answer",))) for a in list(final)]
  except TypeError:
    raise MissingField(("final_answer",), "is neither a list nor text") from None
  if not answers or not all(answers):
    raise MissingField(("final_answer",), "is empty")
  return Problem(
    id=_record_id(record, index, "id"),
    question=_text(_field(record, "question", "problem"), ("question",)),
    gold=", ".join(answers),
    grader=MATH,
    subset=str(_field(record, "subfield", "subject", required=False) or default_subset),
  )


# --- multiple-choice adapters ---------------------------------------------------------------


def format_choice_question(question: str, options: Sequence[str]) -> str:
  lines = [question.strip(), "", "Options:"]
  lines += [f"({OPTION_LETTERS[i]}) {str(opt).strip()}" for i, opt in enumerate(options)]
  return "\n".join(lines + ["", CHOICE_INSTRUCTION])


def _options(record, name="options") -> list[str]:
  options = _field(record, name)
  if isinstance(options, str) or not hasattr(options, "__len__") or not len(options):
    raise MissingField((name,), "must be a non-empty list of option texts")
  if len(options) > len(OPTION_LETTERS):
    raise MissingField((name,), f"has {len(options)} options; at most {len(OPTION_LETTERS)}")
  return [str(o) for o in options]


def _gold_letter(record, names: Sequence[str], num_options: int) -> str:
  letter = _text(_field(record, *names), names).strip("() ").upper()
  if len(letter) != 1 or letter not in OPTION_LETTERS[:num_options]:
    raise MissingField(
      names, f"is {letter!r}, expected an option letter A..{OPTION_LETTERS[num_options - 1]}"
    )
  return letter


def _choice_adapter(answer: Sequence[str], ids: Sequence[str], subset: Sequence[str]) -> Adapter:
  def adapt(record, index, default_subset):
    options = _options(record)
    return Problem(
      id=_record_id(record, index, *ids),
      question=format_choice_question(_text(_field(record, "question"), ("question",)), options),
      gold=_gold_letter(record, answer, len(options)),
      grader=CHOICE,
      subset=str(_field(record, *subset, required=False) or default_subset),
    )

  return adapt


_LETTER_TARGET = re.compile(r"^\(?([A-Z])\)?$")


def _bbeh(record, index, default_subset):
  # BBEH mixes multiple-choice tasks (targets like "(A)", options inside the question text)
  # with free-form ones; the first are graded on the letter, the rest with BBEH's own fuzzy
  # match.
  question = _text(_field(record, "question", "input"), ("question", "input"))
  target = _text(_field(record, "answer", "target"), ("answer", "target"))
  letter = _LETTER_TARGET.match(target)
  if letter:
    question, gold, grader = f"{question}\n\n{CHOICE_INSTRUCTION}", letter.group(1), CHOICE
  else:
    gold, grader = target, FUZZY
  return Problem(
    id=_record_id(record, index, "id", "idx"),
    question=question,
    gold=gold,
    grader=grader,
    subset=str(_field(record, "task", required=False) or default_subset),
  )


MATH_BENCHMARKS = ("math500", "gsm8k", "amc23", "minerva", "olympiadbench", "aime24", "aime25")
GENERAL_BENCHMARKS = ("supergpqa", "mmlu_pro", "bbeh")

_AIME_QUESTION, _AIME_ANSWER, _AIME_ID = (
  ("problem", "Problem", "question"),
  ("answer", "Answer"),
  ("id", "ID"),
)

SPECS: dict[str, BenchmarkSpec] = {
  s.name: s
  for s in (
    BenchmarkSpec(
      "math500",
      "MATH-500",
      "math",
      "problem, answer[, unique_id, subject]",
      "HuggingFaceH4/MATH-500",
      _math_adapter(("problem",), ("answer",), ("unique_id", "id"), ("subject",)),
    ),
    BenchmarkSpec(
      "gsm8k",
      "GSM8K",
      "math",
      "question, answer ending in '#### <answer>'",
      "openai/gsm8k (main, test)",
      _gsm8k,
    ),
    BenchmarkSpec(
      "amc23",
      "AMC23",
      "math",
      "question|problem, answer",
      "math-ai/amc23",
      _math_adapter(("question", "problem"), ("answer",), ("id",)),
    ),
    BenchmarkSpec(
      "minerva",
      "Minerva-Math",
      "math",
      "question|problem, answer",
      "math-ai/minervamath",
      _math_adapter(("question", "problem"), ("answer",), ("id",), ("type",)),
    ),
    BenchmarkSpec(
      "olympiadbench",
      "OlympiadBench",
      "math",
      "question, final_answer (list)[, id, subfield]",
      "Hothan/OlympiadBench",
      _olympiadbench,
    ),
    BenchmarkSpec(
      "aime24",
      "AIME 2024",
      "math",
      "problem|Problem, answer|Answer",
      "Maxwell-Jia/AIME_2024",
      _math_adapter(_AIME_QUESTION, _AIME_ANSWER, _AIME_ID),
    ),
    BenchmarkSpec(
      "aime25",
      "AIME 2025",
      "math",
      "problem|question, answer",
      "yentinglin/aime_2025",
      _math_adapter(_AIME_QUESTION, _AIME_ANSWER, _AIME_ID),
    ),
    BenchmarkSpec(
      "mmlu_pro",
      "MMLU-Pro",
      "general",
      "question, options (list), answer (letter)[, question_id, category]",
      "TIGER-Lab/MMLU-Pro (test)",
      _choice_adapter(("answer",), ("question_id", "id"), ("category",)),
    ),
    BenchmarkSpec(
      "supergpqa",
      "SuperGPQA",
      "general",
      "question, options (list), answer_letter[, uuid, discipline]",
      "m-a-p/SuperGPQA",
      _choice_adapter(("answer_letter",), ("uuid", "id"), ("discipline",)),
    ),
    BenchmarkSpec(
      "bbeh",
      "BBEH",
      "general",
      "question|input, answer|target[, task]",
      "MrLight/bbeh-eval, or google-deepmind/bbeh task.json files",
      _bbeh,
    ),
    BenchmarkSpec("champ", "CHAMP", "other", "champ_dataset package", "PyPI champ-dataset"),
  )
} | {
  name: BenchmarkSpec(name, b.title, "other", f"world {world.name}", "generated")
  for world in map(worlds.get, worlds.names())
  for name, b in world.benchmarks.items()
}

ALIASES = {
  "math-500": "math500",
  "math_500": "math500",
  "minerva_math": "minerva",
  "minerva-math": "minerva",
  "olympiad": "olympiadbench",
  "aime2024": "aime24",
  "aime_2024": "aime24",
  "aime2025": "aime25",
  "aime_2025": "aime25",
  "mmlupro": "mmlu_pro",
  "mmlu-pro": "mmlu_pro",
  "amc": "amc23",
}


def canonical_name(name: str) -> str:
  key = name.strip().lower()
  key = ALIASES.get(key, key)
  if key not in SPECS:
    raise ValueError(
      f"unknown benchmark {name!r}; known: {', '.join(SPECS)} (or tfds:NAME[:SPLIT], or NAME=PATH)"
    )
  return key


# --- readers --------------------------------------------------------------------------------


def _read_jsonl(path: str) -> Iterator[tuple[str, Any]]:
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield f"line {lineno}", json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None


_JSON_LIST_KEYS = ("examples", "data", "rows", "problems", "test")


def _read_json(path: str) -> Iterator[tuple[str, Any]]:
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if isinstance(data, Mapping):
    keys = [k for k in _JSON_LIST_KEYS if isinstance(data.get(k), list)]
    if not keys:
      raise ValueError(
        f"{path}: expected a JSON list of records or an object with one of "
        f"the list fields {', '.join(_JSON_LIST_KEYS)}"
      )
    data = data[keys[0]]
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  for i, record in enumerate(data):
    yield f"record {i}", record


def _read_parquet(path: str) -> Iterator[tuple[str, Any]]:
  import pyarrow as pa
  import pyarrow.parquet as pq

  try:
    rows = pq.read_table(path).to_pylist()
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: not a readable parquet file ({e})") from None
  for i, record in enumerate(rows):
    yield f"row {i}", record


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def read_records(path: str) -> Iterator[tuple[str, Any]]:
  """(where, record) for every record of a JSONL, JSON or parquet file."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in _READERS:
    raise ValueError(
      f"{path}: unsupported file type {ext!r}; expected one of {', '.join(DATA_EXTENSIONS)}"
    )
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such data file")
  return _named_decode_errors(path, _READERS[ext](path))


def _named_decode_errors(path: str, records: Iterator[tuple[str, Any]]):
  # The text readers decode lazily; a stray byte must name the file, not just the codec.
  try:
    yield from records
  except UnicodeDecodeError as e:
    raise ValueError(
      f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
    ) from None


def _adapt_all(
  spec: BenchmarkSpec,
  records: Iterator[tuple[str, Any]],
  source: str,
  default_subset: str,
  limit: int | None,
  start: int,
) -> list[Problem]:
  problems = []
  for where, record in records:
    if limit is not None and start + len(problems) >= limit:
      break
    if not isinstance(record, Mapping):
      raise ValueError(
        f"{source}: {where}: expected an object with fields {spec.schema}, got "
        f"{type(record).__name__}"
      )
    try:
      problems.append(spec.adapter(record, start + len(problems), default_subset))
    except MissingField as e:
      names = " or ".join(repr(f) for f in e.fields)
      what = f"field {names} {e.detail}" if e.detail else f"missing field {names}"
      raise ValueError(f"{source}: {where}: {what} ({spec.title} schema: {spec.schema})") from None
  return problems


def find_data_files(name: str, data_dir: str | None) -> list[str]:
  """The files holding benchmark `name` under `data_dir`: NAME.ext, or all files in NAME/."""
  spec = SPECS[name]
  expected = (
    f"{', '.join(name + e for e in DATA_EXTENSIONS)} or a directory {name}/ "
    f"({spec.title} schema: {spec.schema}; e.g. the public release {spec.release})"
  )
  if not data_dir:
    raise FileNotFoundError(f"benchmark {name!r}: no --data_dir given; expected {expected}")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"--data_dir {data_dir}: no such directory")
  files = [
    os.path.join(data_dir, name + ext)
    for ext in DATA_EXTENSIONS
    if os.path.isfile(os.path.join(data_dir, name + ext))
  ]
  folder = os.path.join(data_dir, name)
  folder_files = _files_under(folder) if os.path.isdir(folder) else []
  if len(files) + bool(folder_files) > 1:
    found = [os.path.basename(f) for f in files] + ([name + "/"] if folder_files else [])
    raise ValueError(
      f"benchmark {name!r}: several data sources under {data_dir} ({', '.join(found)}); keep one"
    )
  files += folder_files
  if not files:
    raise FileNotFoundError(f"benchmark {name!r}: no data under {data_dir}; expected {expected}")
  return files


def _files_under(folder: str) -> list[str]:
  found = []
  for ext in DATA_EXTENSIONS:
    found += glob.glob(os.path.join(folder, "**", "*" + ext), recursive=True)
  return sorted(found)


def _subset_from_path(path: str, root: str) -> str:
  # google-deepmind/bbeh keeps one task per folder (bbeh_boardgame_qa/task.json).
  rel = os.path.relpath(os.path.dirname(path), root)
  return "" if rel == "." else rel.replace(os.sep, "/")


def _load_files(
  spec: BenchmarkSpec, paths: Sequence[str], root: str, limit: int | None
) -> list[Problem]:
  problems: list[Problem] = []
  for path in paths:
    problems += _adapt_all(
      spec, read_records(path), path, _subset_from_path(path, root), limit, start=len(problems)
    )
  return problems


def _load_champ(limit: int | None) -> tuple[list[Problem], str]:
  try:
    import champ_dataset
  except ImportError:
    raise ValueError(
      "benchmark 'champ' needs the champ-dataset package: pip install 'rzero-jax[eval]'"
    ) from None
  dataset = champ_dataset.load("v0")
  problems = [
    Problem(id=key, question=p.text, gold=p.answer, grader=MATH, subset=p.category)
    for key, p in dataset.problems.items()
  ]
  return problems[:limit] if limit is not None else problems, "champ_dataset v0"


def _load_world_sets(limit: int | None, name: str) -> tuple[list[Problem], str]:
  """A world's evaluation set `name`, one subset per difficulty level."""
  world, benchmark = worlds.find_benchmark(name)
  problems = []
  for level, items in benchmark.sets().items():
    problems += [
      Problem(id=f"{level}-{i}", question=question, gold=answer, grader=MATH, subset=str(level))
      for i, (question, answer) in enumerate(items)
    ]
  return problems[:limit] if limit is not None else problems, f"world {world.name}: {name}"


def _tfds_records(dataset: str, split: str, data_dir: str | None) -> Iterator[tuple[str, Any]]:
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ValueError(
      f"benchmark 'tfds:{dataset}' needs tensorflow-datasets: pip install 'rzero-jax[tfds]'"
    ) from None
  try:
    ds = tfds.load(dataset, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises many types; the message is what the user needs
    raise ValueError(f"tfds:{dataset}:{split}: cannot load ({e})") from None

  def decode(value):
    if isinstance(value, bytes):
      return value.decode("utf-8")
    if hasattr(value, "tolist"):
      value = value.tolist()
    if isinstance(value, list):
      return [decode(v) for v in value]
    return value

  for i, example in enumerate(tfds.as_numpy(ds)):
    yield f"example {i}", {k: decode(v) for k, v in example.items()}


def benchmark_name(spec_text: str) -> str:
  """The canonical benchmark name of one `--benchmarks` entry (NAME, NAME=PATH, tfds:NAME)."""
  text = spec_text.strip()
  if text.startswith("tfds:"):
    return canonical_name(text[len("tfds:") :].partition(":")[0])
  return canonical_name(text.partition("=")[0])


def load_benchmark(
  spec_text: str, data_dir: str | None = None, limit: int | None = None
) -> Benchmark:
  """One entry of `--benchmarks`: NAME, NAME=PATH or tfds:NAME[:SPLIT]."""
  if limit is not None and limit <= 0:
    raise ValueError(f"--limit must be positive, got {limit}")
  text = spec_text.strip()
  if text.startswith("tfds:"):
    name, _, split = text[len("tfds:") :].partition(":")
    spec = SPECS[canonical_name(name)]
    if spec.adapter is None:
      raise ValueError(f"{text}: {spec.name} is not read from files, so not from tfds either")
    records = _tfds_records(name, split or "test", data_dir)
    problems = _adapt_all(spec, records, text, "", limit, 0)
    source = text
  else:
    name, _, path = text.partition("=")
    spec = SPECS[canonical_name(name)]
    if spec.name == "champ":
      problems, source = _load_champ(limit)
    elif worlds.find_benchmark(spec.name) is not None:
      problems, source = _load_world_sets(limit, spec.name)
    elif path:
      path = os.path.expanduser(path)
      if not os.path.exists(path):
        raise FileNotFoundError(f"benchmark {spec.name!r}: {path}: no such file or directory")
      files = _files_under(path) if os.path.isdir(path) else [path]
      root = path if os.path.isdir(path) else os.path.dirname(path)
      problems, source = _load_files(spec, files, root, limit), path
    else:
      files = find_data_files(spec.name, data_dir)
      problems = _load_files(spec, files, os.path.join(data_dir, spec.name), limit)
      source = ", ".join(files)
  if not problems:
    raise ValueError(f"benchmark {spec.name!r}: {source} holds no problems")
  ids = [p.id for p in problems]
  if len(set(ids)) != len(ids):
    # Duplicate ids would make samples.jsonl ambiguous; number them instead.
    problems = [dataclasses.replace(p, id=f"{i}:{p.id}") for i, p in enumerate(problems)]
  return Benchmark(name=spec.name, group=spec.group, problems=tuple(problems), source=source)
