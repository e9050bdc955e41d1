"""Evaluation: loaders per schema, grading rules, scores, outputs, checkpoints, the CLI.

Fixture files in every supported schema are written by the tests. A scripted "model" (a
generation function that answers from a script) gives scores that are checked against values
computed by hand; a real tiny random model (init_params on tiny_config + a byte-level HF
tokenizer) checks the plumbing end to end, with its scores recomputed from samples.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rzero_jax.evaluation import answers, loaders, runner, scoring

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- fixture files


def _write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _write_json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f)


def _write_parquet(path, records):
  import pyarrow as pa
  import pyarrow.parquet as pq

  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(records), path)


# Each fixture problem carries the scripted response; SCRIPT maps question text -> response.
# Expected verdicts (first box) are written next to each, and the fractions in EXPECTED.
def write_fixtures(data_dir: str) -> dict[str, str]:
  """Writes one small file per benchmark schema; returns {question substring: response}."""
  script = {}

  def q(text, response):
    script[text] = response
    return text

  _write_jsonl(
    os.path.join(data_dir, "math500.jsonl"),
    [
      {
        "problem": q("M1: What is 1/2 + 0?", "So \\boxed{0.5}."),  # equivalent: right
        "solution": "...",
        "answer": "\\frac{1}{2}",
        "subject": "Algebra",
        "level": 1,
        "unique_id": "test/algebra/1.json",
      },
      {
        "problem": q("M2: What is 1 + 2?", "\\boxed{3}. Wait, \\boxed{4}."),  # first right
        "solution": "...",
        "answer": "3",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/2.json",
      },
      {
        "problem": q("M3: What is 5 + 5?", "I think it is 10."),  # no box: wrong
        "solution": "...",
        "answer": "10",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/3.json",
      },
    ],
  )
  _write_parquet(
    os.path.join(data_dir, "gsm8k.parquet"),
    [
      {
        "question": q("G1: How many apples?", "Total \\boxed{1234}"),
        "answer": "She has 1000 + 234 = <<1000+234=1234>>1234.\n#### 1,234",
      },
      {"question": q("G2: How many pears?", "\\boxed{6}"), "answer": "2 + 3 = 5\n#### 5"},
    ],
  )
  _write_json(
    os.path.join(data_dir, "amc23.json"),
    [
      {"id": 0, "question": q("A1: AMC problem?", "\\boxed{27}"), "answer": 27.0, "url": "x"},
    ],
  )
  _write_jsonl(
    os.path.join(data_dir, "minerva.jsonl"),
    [
      {"question": q("N1: Period of sin?", "\\boxed{2\\pi}"), "answer": "2\\pi"},
      {"question": q("N2: Seven?", "\\boxed{}"), "answer": "7"},  # empty box: wrong
    ],
  )
  _write_parquet(
    os.path.join(data_dir, "olympiadbench.parquet"),
    [
      {
        "id": 11,
        "question": q("O1: Both roots?", "\\boxed{3, 5}"),
        "final_answer": ["$3$", "$5$"],
        "subfield": "Algebra",
      },
      {
        "id": 12,
        "question": q("O2: Square of x?", "\\boxed{x^{2}}"),
        "final_answer": ["$x^2$"],
        "subfield": "Algebra",
      },
    ],
  )
  _write_jsonl(
    os.path.join(data_dir, "aime24.jsonl"),
    [
      {
        "ID": "2024-I-1",
        "Problem": q("I1: AIME one?", "\\boxed{204}"),
        "Solution": "...",
        "Answer": 204,
      },
      {
        "ID": "2024-I-2",
        "Problem": q("I2: AIME two?", "\\boxed{24}"),
        "Solution": "...",
        "Answer": 25,
      },
    ],
  )
  _write_jsonl(
    os.path.join(data_dir, "aime25.jsonl"),
    [
      {"id": 0, "problem": q("J1: AIME 2025 one?", "\\boxed{70}"), "answer": "70"},
    ],
  )
  letters = ["alpha", "beta", "gamma", "delta"]
  _write_parquet(
    os.path.join(data_dir, "mmlu_pro.parquet"),
    [
      {
        "question_id": 1,
        "question": q("P1: Which is third?", "\\boxed{C}"),
        "options": letters,
        "answer": "C",
        "answer_index": 2,
        "category": "math",
      },
      {
        "question_id": 2,
        "question": q("P2: Which is first?", "\\boxed{(A) alpha}"),
        "options": letters,
        "answer": "A",
        "answer_index": 0,
        "category": "math",
      },
      {
        "question_id": 3,
        "question": q("P3: Which is second?", "I do not know."),
        "options": letters,
        "answer": "B",
        "answer_index": 1,
        "category": "law",
      },
    ],
  )
  _write_jsonl(
    os.path.join(data_dir, "supergpqa.jsonl"),
    [
      {
        "uuid": "u1",
        "question": q("S1: Which is fourth?", "\\boxed{\\text{D}}"),
        "options": letters,
        "answer": "delta",
        "answer_letter": "D",
        "discipline": "Science",
      },
      {
        "uuid": "u2",
        "question": q("S2: Which is second?", "\\boxed{42}"),  # no letter
        "options": letters,
        "answer": "beta",
        "answer_letter": "B",
        "discipline": "Science",
      },
    ],
  )
  _write_json(
    os.path.join(data_dir, "bbeh", "bbeh_choice", "task.json"),
    {
      "examples": [
        {"input": q("B1: Pick one. (A) x (B) y", "\\boxed{B}"), "target": "(B)"},
      ]
    },
  )
  _write_json(
    os.path.join(data_dir, "bbeh", "bbeh_free", "task.json"),
    {
      "examples": [
        {"input": q("B2: Is it true?", "\\boxed{true}"), "target": "True"},
        {"input": q("B3: How many?", "\\boxed{3.0}"), "target": "3"},
        {"input": q("B4: Yes or no?", "\\boxed{yes}"), "target": "no"},
      ]
    },
  )
  return script


# Hand-computed accuracies (first box) of the script above.
EXPECTED = {
  "math500": 2 / 3,
  "gsm8k": 1 / 2,
  "amc23": 1.0,
  "minerva": 1 / 2,
  "olympiadbench": 1.0,
  "aime24": 1 / 2,
  "aime25": 1.0,
  "mmlu_pro": 2 / 3,
  "supergpqa": 1 / 2,
  "bbeh": 3 / 4,
}
ALL = tuple(EXPECTED)


# --------------------------------------------------------------------------- scripted model


class ByteChatTokenizer:
  """A duck-typed tokenizer for the scripted model: UTF-8 bytes, a plain chat format."""

  eos_token_ids = (256,)
  pad_id = 257

  def apply_chat_template(self, messages):
    return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

  def encode(self, text):
    return list(text.encode("utf-8"))

  def encode_chat(self, messages):
    return self.encode(self.apply_chat_template(messages))

  def decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8")


@dataclasses.dataclass
class FakeOutput:
  tokens: list
  finish_reasons: list


class ScriptedModel:
  """A GenerateFn answering from a script keyed by question text. `respond(question, j)`
  gives sample j's response; every call's arguments are recorded."""

  def __init__(self, tokenizer, script=None, respond=None):
    self.tokenizer = tokenizer
    self.respond = respond or (lambda question, j: script[question])
    self.script = script
    self.calls = []

  def _question(self, prompt_text):
    keys = [k for k in (self.script or {}) if k in prompt_text]
    assert len(keys) == 1, prompt_text
    return keys[0]

  def __call__(
    self, prompts, *, max_new_tokens, temperature, top_p, top_k, n, seed, stop_token_ids
  ):
    self.calls.append(
      dict(
        lengths=[len(p) for p in prompts],
        n=n,
        seed=seed,
        temperature=temperature,
        stop=tuple(stop_token_ids),
        max_new_tokens=max_new_tokens,
      )
    )
    tokens, reasons = [], []
    for p in prompts:
      text = self.tokenizer.decode(p)
      for j in range(n):
        tokens.append(
          self.tokenizer.encode(self.respond(self._question(text), j)) + [stop_token_ids[0]]
        )
        reasons.append("stop")
    return FakeOutput(tokens, reasons)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("data"))
  return d, write_fixtures(d)


def _read_samples(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _problem_of(row):
  return loaders.Problem(id=row["id"], question="", gold=row["gold"], grader=row["grader"])


# --------------------------------------------------------------------------- loaders


def test_loaders_read_every_schema(data_dir):
  d, _ = data_dir
  sizes = {
    "math500": 3,
    "gsm8k": 2,
    "amc23": 1,
    "minerva": 2,
    "olympiadbench": 2,
    "aime24": 2,
    "aime25": 1,
    "mmlu_pro": 3,
    "supergpqa": 2,
    "bbeh": 4,
  }
  golds = {}
  for name, size in sizes.items():
    b = loaders.load_benchmark(name, d)
    assert b.name == name and len(b.problems) == size
    golds[name] = [p.gold for p in b.problems]
  assert golds["math500"] == ["\\frac{1}{2}", "3", "10"]
  assert golds["gsm8k"] == ["1234", "5"]  # "#### 1,234": separator dropped
  assert golds["amc23"] == ["27"]  # parquet/JSON float 27.0
  assert golds["olympiadbench"] == ["3, 5", "x^2"]  # list joined, $ stripped
  assert golds["aime24"] == ["204", "25"]  # capitalised fields
  assert golds["mmlu_pro"] == ["C", "A", "B"]
  assert golds["supergpqa"] == ["D", "B"]  # answer_letter, not the option text
  assert golds["bbeh"] == ["B", "True", "3", "no"]
  bbeh = loaders.load_benchmark("bbeh", d)
  assert [p.grader for p in bbeh.problems] == ["choice", "fuzzy", "fuzzy", "fuzzy"]
  assert [p.subset for p in bbeh.problems] == ["bbeh_choice"] + ["bbeh_free"] * 3
  mmlu = loaders.load_benchmark("mmlu_pro", d).problems[0]
  assert "(A) alpha" in mmlu.question and "(D) delta" in mmlu.question
  assert "\\boxed{" in mmlu.question and mmlu.grader == "choice"
  assert loaders.load_benchmark("math500", d, limit=2).problems[1].id == "test/prealgebra/2.json"
  # NAME=PATH names the file itself; aliases map onto the canonical names.
  explicit = loaders.load_benchmark(f"AIME2024={os.path.join(d, 'aime24.jsonl')}")
  assert explicit.name == "aime24" and len(explicit.problems) == 2


def test_champ_loader_reads_the_package():
  b = loaders.load_benchmark("champ")
  assert len(b.problems) == 270 and b.group == "other"
  assert all(p.question and p.gold and p.grader == "math" for p in b.problems)
  assert len({p.id for p in b.problems}) == 270
  assert len(loaders.load_benchmark("champ", limit=20).problems) == 20


@pytest.mark.parametrize(
  "name,sets_fn", [("arith", "heldout_sets"), ("arith_design", "design_sets")]
)
def test_arith_loaders_use_the_worlds_sets(name, sets_fn):
  arith = pytest.importorskip("rzero_jax.worlds.arith")
  sets = getattr(arith, sets_fn)()
  b = loaders.load_benchmark(name)
  assert len(b.problems) == sum(len(v) for v in sets.values())
  first_level = next(iter(sets))
  assert b.problems[0].question == sets[first_level][0].question
  assert b.problems[0].gold == str(sets[first_level][0].answer)
  assert {p.subset for p in b.problems} == {str(level) for level in sets}


@pytest.mark.parametrize(
  "name,content,match",
  [
    (
      "math500.jsonl",
      '{"problem": "a", "answer": "1"}\n{"problem": "b", "answ\n',
      r"math500\.jsonl: line 2: not valid JSON",
    ),
    (
      "math500.jsonl",
      '{"problem": "a", "answer": "1"}\n{"problem": "b"}\n',
      r"math500\.jsonl: line 2: missing field 'answer'",
    ),
    (
      "gsm8k.jsonl",
      '{"question": "a", "answer": "no final line"}\n',
      r"gsm8k\.jsonl: line 1: field 'answer' lacks the final '#### <answer>' line",
    ),
    (
      "mmlu_pro.json",
      '[{"question": "a", "options": ["x", "y"], "answer": "E"}]',
      r"mmlu_pro\.json: record 0: field 'answer' is 'E', expected an option letter A..B",
    ),
    ("supergpqa.json", '{"not_a_list": 1}', r"supergpqa\.json: expected a JSON list"),
    (
      "olympiadbench.jsonl",
      '{"question": "a", "final_answer": []}\n',
      r"olympiadbench\.jsonl: line 1: field 'final_answer' is empty",
    ),
    ("aime25.parquet", "not parquet at all", r"aime25\.parquet: not a readable parquet file"),
  ],
)
def test_bad_data_files_name_the_file_and_field(tmp_path, name, content, match):
  (tmp_path / name).write_text(content)
  with pytest.raises(ValueError, match=match):
    loaders.load_benchmark(name.split(".")[0], str(tmp_path))


def test_unknown_or_missing_benchmarks_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r"unknown benchmark 'math5000'; known: math500"):
    loaders.load_benchmark("math5000", str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"benchmark 'amc23': no data under .*amc23\.jsonl"):
    loaders.load_benchmark("amc23", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no --data_dir given"):
    loaders.load_benchmark("amc23", None)
  (tmp_path / "aime24.jsonl").write_text("")
  (tmp_path / "aime24.json").write_text("[]")
  with pytest.raises(ValueError, match="several data sources"):
    loaders.load_benchmark("aime24", str(tmp_path))


def test_tfds_source_without_the_extra_names_it():
  try:
    import tensorflow_datasets  # noqa: F401

    pytest.skip("tensorflow-datasets is installed")
  except ImportError:
    pass
  with pytest.raises(
    ValueError, match=r"needs tensorflow-datasets: pip install 'rzero-jax\[tfds\]'"
  ):
    loaders.load_benchmark("tfds:gsm8k")


# --------------------------------------------------------------------------- answers, scores


def test_box_extraction_first_and_last():
  text = "a \\boxed{\\frac{1}{2}} then \\boxed{3}"
  assert answers.extract(text, "first") == "\\frac{1}{2}"
  assert answers.extract(text, "last") == "3"
  assert answers.extract("no box", "first") is None
  # An unclosed first box holds the rest of the text: no answer, as an unclosed last box.
  assert answers.extract("\\boxed{ unclosed \\boxed{7}", "first") is None
  assert answers.extract("\\boxed{7} then \\boxed{ unclosed", "last") is None
  # With a single box, first and last agree, whatever grading's matcher accepts.
  from rzero_jax import grading

  for single in (
    "\\boxed{\\{1, 2\\}}",
    "so \\boxed 5 is it",
    "\\fbox{x^{2}}",
    "\\boxedfoo{1}",
    "\\boxed{\\frac{a}{b}} ok",
  ):
    assert answers.extract(single, "first") == grading.extract_boxed(single), single
  with pytest.raises(ValueError, match="boxed answer choice"):
    answers.extract(text, "middle")


def test_option_letters_are_never_guessed():
  assert [
    answers.option_letter(x)
    for x in ("B", "(b)", " \\text{C} ", "D. delta", "(A) alpha", "$E$", "A: x")
  ] == ["B", "B", "C", "D", "A", "E", "A"]
  assert [answers.option_letter(x) for x in (None, "", "42", "AB", "Alpha", "A quantity")] == [
    None
  ] * 6


def test_bbeh_fuzzy_match():
  assert answers.fuzzy_match("True", "true") and answers.fuzzy_match("3.0", "3")
  assert answers.fuzzy_match("(b)", "b") and answers.fuzzy_match("a, b", "a,b")
  assert not answers.fuzzy_match("yes", "no") and not answers.fuzzy_match(None, "no")


def test_wilson_interval_matches_known_values():
  lo, hi = scoring.wilson_interval(5, 10)
  assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
  lo, hi = scoring.wilson_interval(0, 10)
  assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)


def test_aggregates_need_all_their_inputs():
  acc = dict(EXPECTED)
  agg = scoring.aggregates(acc)
  math_avg = (2 / 3 + 1 / 2 + 1 + 1 / 2 + 1 + 1 / 2 + 1) / 7
  assert agg["math_average"] == pytest.approx(math_avg)
  assert agg["overall"] == pytest.approx((math_avg + 1 / 2 + 2 / 3 + 3 / 4) / 4)
  del acc["bbeh"]
  agg = scoring.aggregates(acc)
  assert agg["math_average"] == pytest.approx(math_avg) and agg["overall"] is None
  assert agg["overall_missing"] == ["bbeh"]
  assert scoring.aggregates({"math500": 1.0})["math_average"] is None


# --------------------------------------------------------------------------- the runner


def test_scripted_model_scores_equal_hand_computed_values(data_dir, tmp_path):
  d, script = data_dir
  tok = ByteChatTokenizer()
  model = ScriptedModel(tok, script)
  config = runner.EvalConfig(benchmarks=",".join(ALL), data_dir=d, batch_size=2, max_new_tokens=64)
  out = str(tmp_path / "out")
  results = runner.evaluate(model, tok, config, output_dir=out, progress=False)

  for name, expected in EXPECTED.items():
    assert results["benchmarks"][name]["score"]["accuracy"] == pytest.approx(expected), name
  assert results["benchmarks"]["math500"]["score"]["num_no_answer"] == 1
  assert results["benchmarks"]["minerva"]["score"]["num_no_answer"] == 1  # empty box
  math_avg = sum(EXPECTED[n] for n in loaders.MATH_BENCHMARKS) / 7
  assert results["aggregates"]["math_average"] == pytest.approx(math_avg)
  assert results["aggregates"]["overall"] == pytest.approx(
    (math_avg + EXPECTED["supergpqa"] + EXPECTED["mmlu_pro"] + EXPECTED["bbeh"]) / 4
  )
  assert results["complete"] is True
  # Sorted by length, longest first, in batches of at most batch_size; greedy, one sample.
  for call in model.calls:
    assert call["lengths"] == sorted(call["lengths"], reverse=True)
    assert len(call["lengths"]) <= 2 and call["n"] == 1 and call["temperature"] == 0.0
    assert call["stop"] == (256,) and call["max_new_tokens"] == 64

  on_disk = json.load(open(os.path.join(out, "results.json")))
  assert on_disk["benchmarks"]["bbeh"]["score"] == results["benchmarks"]["bbeh"]["score"]
  assert on_disk["config"]["benchmarks"] == list(ALL)
  table = open(os.path.join(out, "results.md")).read()
  assert "| MATH-500 | 3 | 1 | 66.67 |" in table and "**Math average**" in table
  rows = _read_samples(os.path.join(out, "samples.jsonl"))
  assert len(rows) == 22
  row = next(r for r in rows if r["id"] == "test/prealgebra/2.json")
  assert (
    row["extracted"] == "3"
    and row["correct"] is True
    and "M2: What is 1 + 2?" in row["prompt"]
    and row["response"] == script["M2: What is 1 + 2?"]
  )
  assert "Please reason step by step" in row["prompt"]  # the Solver system prompt
  assert not any(f.startswith(".tmp") for f in os.listdir(out))


def test_last_box_changes_only_the_multi_box_answer(data_dir):
  d, script = data_dir
  tok = ByteChatTokenizer()
  config = runner.EvalConfig(benchmarks="math500", data_dir=d, boxed="last")
  results = runner.evaluate(ScriptedModel(tok, script), tok, config, progress=False)
  assert results["benchmarks"]["math500"]["score"]["accuracy"] == pytest.approx(1 / 3)


def test_mean_at_k_with_sampling(data_dir):
  d, script = data_dir
  tok = ByteChatTokenizer()
  answer = {"I1: AIME one?": "204", "I2: AIME two?": "25"}
  # Problem I1 is right in samples 0, 1, 2 of 4; problem I2 only in sample 3.
  right = {"I1: AIME one?": {0, 1, 2}, "I2: AIME two?": {3}}

  def respond(question, j):
    return f"\\boxed{{{answer[question] if j in right[question] else 1}}}"

  model = ScriptedModel(tok, script, respond)
  config = runner.EvalConfig(
    benchmarks="aime24", data_dir=d, num_samples=4, temperature=0.7, seed=5
  )
  score = runner.evaluate(model, tok, config, progress=False)["benchmarks"]["aime24"]["score"]
  assert score["accuracy"] == pytest.approx((3 / 4 + 1 / 4) / 2)
  assert score["num_samples"] == 4 and score["num_correct"] == 4
  per_problem = [3 / 4, 1 / 4]
  lo, hi = scoring.mean_interval(per_problem)
  assert (score["ci_low"], score["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
  assert model.calls[0]["n"] == 4 and model.calls[0]["seed"] == 5


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="needs --temperature > 0"):
    runner.EvalConfig(benchmarks="math500", num_samples=4)
  with pytest.raises(ValueError, match="--batch_size must be an integer >= 1"):
    runner.EvalConfig(benchmarks="math500", batch_size=0)
  with pytest.raises(ValueError, match="--benchmarks: give at least one"):
    runner.EvalConfig(benchmarks="")


def test_comparison_table_shows_differences(data_dir):
  d, script = data_dir
  tok = ByteChatTokenizer()
  config = runner.EvalConfig(benchmarks="math500,gsm8k", data_dir=d)
  base = runner.evaluate(
    ScriptedModel(tok, respond=lambda q, j: "no answer", script=script), tok, config, progress=False
  )
  better = runner.evaluate(ScriptedModel(tok, script), tok, config, progress=False)
  table = runner.compare(base, better, "base", "iteration 3")
  assert "| benchmark | base (%) | iteration 3 (%) | Δ (points) |" in table
  assert "| MATH-500 | 0.00 | 66.67 | +66.67 |" in table
  assert "| GSM8K | 0.00 | 50.00 | +50.00 |" in table


# --------------------------------------------------------------------------- a real tiny model

CHAT_TEMPLATE = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
  "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
  "{% endif %}"
)


def make_tiny_tokenizer(out_dir: str) -> str:
  """A byte-level BPE without merges (259 ids) with a ChatML template, saved as an HF dir."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tok = Tokenizer(tok_models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
  )
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(out_dir)
  return out_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  import jax

  from rzero_jax import models
  from rzero_jax.tokenizer import load_tokenizer

  tok_dir = make_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))
  tok = load_tokenizer(tok_dir)
  cfg = models.tiny_config(vocab_size=tok.vocab_size)
  params = models.init_params(cfg, jax.random.key(0))
  return cfg, params, tok, tok_dir


def _audit(out_dir, boxed="first"):
  """Recomputes every verdict and every score from samples.jsonl alone."""
  results = json.load(open(os.path.join(out_dir, "results.json")))
  rows = _read_samples(os.path.join(out_dir, "samples.jsonl"))
  for r in rows:
    assert r["extracted"] == answers.extract(r["response"], boxed)
    assert r["correct"] == answers.verdict(_problem_of(r), r["extracted"])
  for name, entry in results["benchmarks"].items():
    mine = [r["correct"] for r in rows if r["benchmark"] == name]
    assert entry["score"]["num_problems"] * entry["score"]["num_samples"] == len(mine)
    assert entry["score"]["accuracy"] == pytest.approx(sum(mine) / len(mine))
  return results, rows


def test_tiny_model_end_to_end_and_deterministic(data_dir, tiny, tmp_path):
  d, _ = data_dir
  cfg, params, tok, _ = tiny
  # One benchmark and one prompt bucket: every generate call after the first hits the jit
  # cache (compiling dominates this test on CPU).
  config = runner.EvalConfig(benchmarks="math500", data_dir=d, max_new_tokens=8)
  generate = runner.model_generate_fn(cfg, params)
  first, second = str(tmp_path / "a"), str(tmp_path / "b")
  runner.evaluate(generate, tok, config, output_dir=first, progress=False)
  runner.evaluate(generate, tok, config, output_dir=second, progress=False)
  results, rows = _audit(first)
  assert len(rows) == 3 and all(r["finish_reason"] in ("stop", "length") for r in rows)
  assert (
    open(os.path.join(first, "samples.jsonl"), "rb").read()
    == open(os.path.join(second, "samples.jsonl"), "rb").read()
  )


# --------------------------------------------------------------------------- checkpoints


def _save_run(workdir, cfg, tok_dir, params_by_step):
  """A run workdir in the launcher's layout: rolling solver checkpoints plus kept finals."""
  from rzero_jax import checkpoint

  _write_json(os.path.join(workdir, "progress.json"), {"iteration": 2})
  for sub, entries in params_by_step.items():
    mgr = checkpoint.CheckpointManager(
      os.path.join(workdir, "checkpoints", sub), max_to_keep=None, async_save=False
    )
    for step, (iteration, params) in entries.items():
      mgr.save(
        step,
        {"params": params},
        metadata={
          "model_config": cfg.to_hf_dict(),
          "tokenizer": tok_dir,
          "role": "solver",
          "iteration": iteration,
          "phase": "final" if sub.endswith("_final") else "solver",
          "step": step,
        },
      )
    mgr.wait()
    mgr.close()


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
  import jax

  cfg, params, _, tok_dir = tiny
  # Distinct parameters per checkpoint, without compiling another init.
  p = {i: jax.tree.map(lambda x, i=i: x * (1 + 0.25 * i), params) for i in (1, 2, 3)}
  workdir = str(tmp_path_factory.mktemp("run"))
  _save_run(
    workdir,
    cfg,
    tok_dir,
    {"solver": {14: (1, p[1]), 29: (2, p[2]), 30: (2, p[3])}, "solver_final": {1: (1, p[1])}},
  )
  return workdir, p


def _same_params(a, b):
  import jax

  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_workdir_resolution_and_loading(run_dir):
  from rzero_jax.evaluation import checkpoints

  workdir, p = run_dir
  latest = checkpoints.resolve_checkpoint(workdir)
  assert latest.kind == "orbax" and latest.step == 30
  assert latest.describe()["iteration"] == 2
  assert checkpoints.resolve_checkpoint(workdir, iteration=1).path.endswith("solver_final")
  assert checkpoints.resolve_checkpoint(workdir, iteration=2).step == 30
  manager = os.path.join(workdir, "checkpoints", "solver")
  assert checkpoints.resolve_checkpoint(manager).step == 30
  assert checkpoints.resolve_checkpoint(os.path.join(manager, "14")).step == 14
  cfg, params, tok = checkpoints.load_policy(workdir)
  assert _same_params(params, p[3]) and tok.vocab_size == cfg.vocab_size
  _, params, _ = checkpoints.load_policy(workdir, iteration=1)
  assert _same_params(params, p[1])
  _, params, _ = checkpoints.load_policy(os.path.join(manager, "29"))
  assert _same_params(params, p[2])


def test_checkpoint_errors_are_clear(run_dir, tmp_path):
  from rzero_jax.evaluation import checkpoints

  workdir, _ = run_dir
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=f"checkpoint {missing}: no such file"):
    checkpoints.load_policy(missing)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of iteration 5 .*present: \[1, 2\]"):
    checkpoints.resolve_checkpoint(workdir, iteration=5)
  with pytest.raises(FileNotFoundError, match="without any challenger checkpoint"):
    checkpoints.resolve_checkpoint(workdir, role="challenger")
  (tmp_path / "junk").mkdir()
  with pytest.raises(ValueError, match="not a recognised checkpoint"):
    checkpoints.resolve_checkpoint(str(tmp_path / "junk"))
  (tmp_path / "weights.gguf").write_bytes(b"nope")
  with pytest.raises(ValueError, match="not a GGUF file"):
    checkpoints.resolve_checkpoint(str(tmp_path / "weights.gguf"))


def test_run_evaluates_a_workdir_and_compares(run_dir, data_dir, tmp_path):
  workdir, _ = run_dir
  d, _ = data_dir
  config = runner.EvalConfig(benchmarks="math500", data_dir=d, max_new_tokens=8)
  printed = []
  out = str(tmp_path / "cmp")
  result = runner.run(
    workdir,
    config,
    out,
    compare_to=workdir,
    iteration=2,
    compare_iteration=1,
    progress=False,
    echo=printed.append,
  )
  assert result["checkpoint"]["checkpoint"]["step"] == 30
  assert result["compare_to"]["checkpoint"]["path"].endswith("solver_final")
  for sub in ("checkpoint", "compare_to"):
    _audit(os.path.join(out, sub))
  assert open(os.path.join(out, "comparison.md")).read() == result["comparison"]
  assert "iteration 1 (%)" in result["comparison"] and printed[-1] == result["comparison"]


# --------------------------------------------------------------------------- the CLI


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "launch.evaluate", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


# A bad data file as one case ("corrupt"): the loader's other messages take the same way out
# and are tested above.
@pytest.mark.parametrize("case", ["corrupt", "unknown", "no_checkpoint", "no_compare_to"])
def test_cli_errors_are_one_line(case, run_dir, tmp_path):
  workdir, _ = run_dir
  data = tmp_path / "data"
  data.mkdir()
  (data / "math500.jsonl").write_text('{"problem": "a", "answer": "1"}\n{oops\n')
  (data / "gsm8k.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b"}\n')
  args, expected = {
    "corrupt": (["--benchmarks=math500"], "math500.jsonl: line 2: not valid JSON"),
    "unknown": (["--benchmarks=gsm8k,nosuch"], "unknown benchmark 'nosuch'"),
    "no_checkpoint": (
      [f"--checkpoint={tmp_path / 'gone'}", "--benchmarks=champ"],
      f"checkpoint {tmp_path / 'gone'}: no such file or directory",
    ),
    # After the first checkpoint resolved (Orbax opened, its INFO logs kept quiet).
    "no_compare_to": (
      ["--benchmarks=champ", f"--compare_to={tmp_path / 'gone'}"],
      f"checkpoint {tmp_path / 'gone'}: no such file or directory",
    ),
  }[case]
  proc = _cli(
    f"--checkpoint={workdir}", f"--data_dir={data}", f"--output={tmp_path / 'o'}", *args
  )  # a later --checkpoint overrides the first
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines == [lines[-1]] and lines[-1].startswith("error: ") and expected in lines[-1], (
    proc.stderr
  )
  assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "o")
