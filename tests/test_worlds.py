"""The arithmetic world (generator, levels, held-out split, formats) and the base-model builder."""

import ast
import collections
import json
import operator
import os
import re
from unittest import mock

import numpy as np
import pytest

from rzero_jax import worlds
from rzero_jax.worlds import arith, base_model
from tests import tiny_run

_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def reference_eval(text: str) -> int:
  """An independent evaluator (Python's own parser, walked by hand; never eval)."""

  def walk(node):
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
      return _AST_OPS[type(node.op)](walk(node.left), walk(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      return -walk(node.operand)
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    raise ValueError(f"unexpected node {ast.dump(node)}")

  return walk(ast.parse(text, mode="eval").body)


def expression_of(question: str) -> str:
  match = re.fullmatch(r"What is (.+)\?", question)
  assert match, question
  return match.group(1)


def samples(level, n=150, seed=0):
  rng = np.random.default_rng([seed, level])
  return [arith.sample_problem(rng, level) for _ in range(n)]


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("level", range(1, arith.NUM_LEVELS + 1))
def test_answers_are_exact_and_levels_parse_back(level):
  for p in samples(level):
    expr = expression_of(p.question)
    assert p.answer == reference_eval(expr), p
    assert arith.true_answer(p.question) == p.answer
    assert arith.difficulty_of(p.question) == p.level == level, p
    # The question is already canonical: parsing and printing it changes nothing.
    assert arith.canonical_question(p.question) == p.question


@pytest.mark.parametrize("level", range(1, arith.NUM_LEVELS + 1))
def test_problems_have_their_level_shape(level):
  patterns = arith.LEVELS[level - 1].patterns
  for p in samples(level, 100):
    f = arith.features(arith.parse_question(p.question))
    assert any(
      f.operands == pat.operands
      and f.digits == pat.digits
      and f.ops <= set(pat.ops)
      and (pat.parens or not f.parens)
      for pat in patterns
    ), (p, f)


def test_sampling_is_deterministic_and_checks_level():
  assert samples(5, 20, seed=3) == samples(5, 20, seed=3)
  assert samples(5, 20, seed=3) != samples(5, 20, seed=4)
  for bad in (0, arith.NUM_LEVELS + 1, 2.0, True):
    with pytest.raises(ValueError, match="level"):
      arith.sample_problem(np.random.default_rng(0), bad)


@pytest.mark.parametrize(
  "question,level,answer",
  [
    ("What is 3 + 4?", 1, 7),
    ("What is 3 - 4?", 2, -1),
    ("What is 3 * 4?", 2, 12),
    ("What is 3 + 4 - 5?", 3, 2),
    ("What is 3 + 4 * 5?", 4, 23),
    ("What is (3 + 4) * 5?", 5, 35),
    ("What is 23 + 4?", 6, 27),
    ("What is 23 * 4?", 6, 92),
    ("What is 1 + 2 + 3 * 4?", 8, 15),
    ("What is 23 + 4 * 5?", 7, 43),
    ("What is (23 + 4) * 5?", 7, 135),
    ("What is 12 + 3 + 4 + 5?", 8, 24),
    ("What is 123 + 4?", 8, 127),  # beyond every pattern: the top level
    ("What is 1 + 2 + 3 + 4 + 5?", 8, 15),
    ("what is (3+4)*5 ?", 5, 35),  # spacing and case do not matter
    ("(3)+((4))", 1, 7),  # redundant parentheses are not structure
    ("What is (3 * 4) + 5?", 4, 17),
    ("What is 3 - (4 - 5)?", 5, 4),
    ("3 + 4 =", 1, 7),
  ],
)
def test_difficulty_and_true_answer_of_written_questions(question, level, answer):
  assert arith.difficulty_of(question) == level
  assert arith.true_answer(question) == answer


@pytest.mark.parametrize(
  "question",
  [
    "",
    "hello",
    "What is 3 + -4?",
    "What is -3 + 4?",
    "What is 3 +?",
    "What is (3 + 4?",
    "What is 3 + 4)?",
    "What is 3 / 4?",
    "What is 3 ** 4?",
    "__import__('os').getcwd()",
    "What is 03 + 4?",
    "What is 1234567 + 1?",
    "What is " + "(" * 40 + "1" + ")" * 40 + "?",
    "What is " + " + ".join(["1"] * 40) + "?",
    None,
    7,
  ],
)
def test_questions_outside_the_world_give_none(question):
  assert arith.true_answer(question) is None
  assert arith.difficulty_of(question) is None


def test_a_lone_number_has_an_answer_but_no_level():
  assert arith.true_answer("What is 5?") == 5
  assert arith.difficulty_of("What is 5?") is None


# ----------------------------------------------------------------------------- held-out split


def test_training_problems_are_never_heldout():
  heldout = {p.question for ps in arith.heldout_sets().values() for p in ps}
  for level in range(1, arith.NUM_LEVELS + 1):
    for seed in (0, 1):
      for p in samples(level, 300, seed):
        assert not arith.is_heldout(p.question)
        assert p.question not in heldout


def test_heldout_sets_are_fixed_distinct_and_heldout():
  sets = arith.heldout_sets(per_level=40)
  assert sets == arith.heldout_sets(per_level=40)
  assert sorted(sets) == list(range(1, arith.NUM_LEVELS + 1))
  for level, problems in sets.items():
    questions = [p.question for p in problems]
    assert len(set(questions)) == len(questions)
    # Level 1 has 100 problems in all; its held-out share still makes a usable set.
    assert len(problems) >= (30 if level == 1 else 40)
    for p in problems:
      assert p.level == level and arith.is_heldout(p.question)
      assert p.answer == reference_eval(expression_of(p.question))
  with pytest.raises(ValueError, match="per_level"):
    arith.heldout_sets(per_level=0)


def test_design_sets_are_fixed_distinct_and_never_heldout():
  sets = arith.design_sets(per_level=40)
  assert sets == arith.design_sets(per_level=40)
  assert sorted(sets) == list(range(1, arith.NUM_LEVELS + 1))
  heldout = {p.question for ps in arith.heldout_sets().values() for p in ps}
  for level, problems in sets.items():
    questions = [p.question for p in problems]
    assert len(set(questions)) == len(questions) >= 40
    for p in problems:
      assert p.level == level and not arith.is_heldout(p.question)
      assert p.question not in heldout
      assert p.answer == reference_eval(expression_of(p.question))
  with pytest.raises(ValueError, match="per_level"):
    arith.design_sets(per_level=0)


def test_heldout_membership_ignores_spelling():
  held = arith.heldout_sets(per_level=5)[8][0]
  squashed = held.question.replace(" ", "").replace("Whatis", "What is ")
  assert squashed != held.question and arith.is_heldout(squashed)
  assert not arith.is_heldout("not a question")


def test_small_levels_split_both_ways():
  # Level 1 enumerated: the keyed hash puts some of its 100 problems on each side.
  flags = [arith.is_heldout(f"What is {a} + {b}?") for a in range(10) for b in range(10)]
  assert 20 <= sum(flags) <= 60


# ----------------------------------------------------------------------------- text formats


@pytest.mark.parametrize("level", range(1, arith.NUM_LEVELS + 1))
def test_worked_solutions_reduce_step_by_step_to_the_box(level):
  for p in samples(level, 60):
    text = arith.worked_solution(p.question)
    chain, box = text.rsplit("\n", 1)
    assert box == f"\\boxed{{{p.answer}}}"
    steps = chain.split(" = ")
    assert steps[0] == expression_of(p.question)
    assert steps[-1] == str(p.answer)
    assert all(reference_eval(s) == p.answer for s in steps)
    # One operation per step.
    counts = [len(re.findall(r"(?<=\S) [-+*] ", s)) for s in steps]
    assert counts == list(range(counts[0], -1, -1))


def test_worked_solution_example_and_bad_question():
  assert arith.worked_solution("What is (3 + 4) * 5?") == "(3 + 4) * 5 = 7 * 5 = 35\n\\boxed{35}"
  assert arith.worked_solution("What is 2 - 9 * 1?") == "2 - 9 * 1 = 2 - 9 = -7\n\\boxed{-7}"
  assert (
    arith.worked_solution("What is (1 - 5) * 9?") == "(1 - 5) * 9 = (-4) * 9 = -36\n\\boxed{-36}"
  )
  with pytest.raises(ValueError, match="not an arithmetic question"):
    arith.worked_solution("What is love?")


@pytest.mark.parametrize("level", range(1, arith.NUM_LEVELS + 1))
def test_results_first_solutions_are_right_and_differ_only_in_order(level):
  differ = 0
  for p in samples(level, 60):
    text = arith.worked_solution(p.question, results_first=True)
    chain, box = text.rsplit("\n", 1)
    assert box == f"\\boxed{{{p.answer}}}"
    steps = chain.split(" = ")
    assert steps[0] == expression_of(p.question) and steps[-1] == str(p.answer)
    assert all(reference_eval(s) == p.answer for s in steps)
    plain = arith.worked_solution(p.question).rsplit("\n", 1)[0].split(" = ")
    assert len(steps) == len(plain)  # the same work, one operation per step
    differ += steps != plain
  # Only a result landing right of a + or * moves: never in one-step levels (1, 2, 6), nor
  # in level 3 (+ and - worked from the left).
  assert (differ > 0) == (level in (4, 5, 7, 8))


def _left_fold(expression: str) -> int:
  """An independent left-to-right reading: drop the parentheses, fold the rest."""
  tokens = expression.replace("(", " ").replace(")", " ").split()
  value = int(tokens[0])
  for op, lit in zip(tokens[1::2], tokens[2::2]):
    value = _AST_OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult}[op]](value, int(lit))
  return value


@pytest.mark.parametrize("level", range(1, arith.NUM_LEVELS + 1))
def test_left_to_right_solutions_read_the_question_from_the_left(level):
  wrong = 0
  for p in samples(level, 60):
    expected = _left_fold(expression_of(p.question))
    chain, box = arith.left_to_right_solution(p.question).rsplit("\n", 1)
    assert box == f"\\boxed{{{expected}}}"
    steps = chain.split(" = ")
    assert steps[0] == expression_of(p.question) and steps[-1] == str(expected)
    assert all(reference_eval(s) == expected for s in steps[1:])
    wrong += expected != p.answer
  # Precedence and parentheses only matter from level 4 on (and not at level 6: two operands).
  assert (wrong > 0) == (level in (4, 5, 7, 8))


def test_left_to_right_examples():
  assert arith.left_to_right_solution("What is 3 + 4 * 5?") == "3 + 4 * 5 = 7 * 5 = 35\n\\boxed{35}"
  assert (
    arith.left_to_right_solution("What is 3 * (4 + 5)?") == "3 * (4 + 5) = 12 + 5 = 17\n\\boxed{17}"
  )
  assert (
    arith.worked_solution("What is 3 * (4 + 5)?", results_first=True)
    == "3 * (4 + 5) = 9 * 3 = 27\n\\boxed{27}"
  )
  with pytest.raises(ValueError, match="not an arithmetic question"):
    arith.left_to_right_solution("What is love?")


def test_challenger_completion_has_the_r_zero_format():
  p = arith.Problem("What is (3 + 4) * 5?", 35, 5)
  text = arith.challenger_completion(p)
  assert text == "<question>\nWhat is (3 + 4) * 5?\n</question>\n\n\\boxed{35}"
  question = re.findall(r"<question>(.*?)</question>", text, re.S)[-1].strip()
  assert question == p.question
  assert re.findall(r"\\boxed\{([^{}]*)\}", text)[-1] == "35"


def test_prompts_are_short_and_ask_for_the_formats():
  prompts = arith.PROMPTS
  assert "<question>" in prompts.challenger_system and "\\boxed{" in prompts.challenger_system
  assert "\\boxed{}" in prompts.solver_system
  assert all(
    len(s) < 200
    for s in (prompts.challenger_system, prompts.challenger_user, prompts.solver_system)
  )


# ----------------------------------------------------------------------------- base model

# One length bucket (one compile) and enough steps at a high learning rate to see the loss fall.
TINY = dict(
  seed=0,
  **tiny_run.TINY_MODEL,
  num_docs=256,
  steps=30,
  batch_size=32,
  learning_rate=1e-2,
  warmup_steps=5,
  bucket_multiple=128,
)


def test_corpus_has_both_roles_and_no_heldout_question():
  spec = base_model.BaseModelSpec(**{**TINY, "num_docs": 400})
  docs = base_model.corpus_documents(spec)
  assert docs == base_model.corpus_documents(spec)
  prompts = worlds.prompt_set("arith")
  challenger = [c for _, c in docs if c.startswith("<question>")]
  assert 0.2 < len(challenger) / len(docs) < 0.4
  for messages, completion in docs:
    if completion.startswith("<question>"):
      assert messages == prompts.challenger_messages()
      question = re.findall(r"<question>\n(.*)\n</question>", completion)[0]
      assert completion.endswith(f"\\boxed{{{arith.true_answer(question)}}}")
    else:
      question = messages[1]["content"]
      assert messages == prompts.solver_messages(question)
      assert completion == arith.worked_solution(question)
    assert not arith.is_heldout(question)


def test_tokenizer_keeps_the_formats_and_splits_digits():
  spec = base_model.BaseModelSpec(**{**TINY, "num_docs": 400})
  docs = base_model.corpus_documents(spec)
  texts = base_model.document_texts(docs)
  tok = base_model.train_tokenizer(texts, spec.vocab_size)
  for text in texts[:50]:
    assert tok.decode(tok.encode(text)) == text
  for whole in ("<question>", "</question>", "\\boxed{", "\n", " + ", " * "):
    assert len(tok.encode(whole)) == 1, whole
  assert [tok.decode([i]) for i in tok.encode("123")] == ["1", "2", "3"]
  assert tok.eos_token_ids == (base_model.EOS_ID,) and tok.pad_id == base_model.PAD_ID

  corpus = base_model.tokenize_corpus(tok, docs[:20])
  for i, (messages, completion) in enumerate(docs[:20]):
    row = corpus.tokens[i][: corpus.lengths[i]].tolist()
    assert (corpus.tokens[i][corpus.lengths[i] :] == base_model.PAD_ID).all()
    prompt = tok.encode_chat(messages)  # what R-Zero's phases send
    assert row[: len(prompt)] == prompt and row[0] == tok.bos_id
    kept = corpus.tokens[i][corpus.loss_mask[i] > 0].tolist()
    assert kept == row[len(prompt) :]
    assert kept[-1] == base_model.EOS_ID and tok.decode(kept[:-1]) == completion


def test_length_buckets_cover_every_document_once():
  lengths = np.array([30, 33, 40, 47, 50, 64, 65, 70, 90])
  buckets = base_model.length_buckets(lengths, min_docs=2)
  assert sorted(np.concatenate(list(buckets.values())).tolist()) == list(range(len(lengths)))
  for width, members in buckets.items():
    assert width % 16 == 0 and len(members) >= 2 and lengths[members].max() <= width
  assert list(base_model.length_buckets(lengths, min_docs=9)) == [96]
  with pytest.raises(ValueError, match="batch needs"):
    base_model.length_buckets(lengths, min_docs=10)


def test_corpus_mixes_authors_in_the_shares_asked():
  spec = base_model.BaseModelSpec(
    **{**TINY, "num_docs": 3000, "careless_fraction": 0.3, "results_first_fraction": 0.5}
  )
  authors = {"careless": 0, "results_first": 0, "plain": 0}
  for messages, completion in base_model.corpus_documents(spec):
    if completion.startswith("<question>"):
      continue
    question = messages[1]["content"]
    forms = {
      "careless": arith.left_to_right_solution(question),
      "results_first": arith.worked_solution(question, results_first=True),
      "plain": arith.worked_solution(question),
    }
    assert completion in forms.values()
    if len(set(forms.values())) == 3:  # only here can the author be told
      authors[next(k for k, v in forms.items() if v == completion)] += 1
  total = sum(authors.values())
  assert total > 200
  assert abs(authors["careless"] / total - 0.3) < 0.06
  assert abs(authors["results_first"] / total - 0.35) < 0.06


def test_mixed_authors_change_the_cache_key_and_zero_shares_do_not():
  default = base_model.BaseModelSpec(**TINY)
  zeros = base_model.BaseModelSpec(**TINY, careless_fraction=0.0, results_first_fraction=0.0)
  mixed = base_model.BaseModelSpec(**TINY, careless_fraction=0.3)
  assert default.cache_key() == zeros.cache_key() != mixed.cache_key()
  assert base_model.corpus_documents(default) == base_model.corpus_documents(zeros)


@pytest.mark.parametrize("style", base_model.GUESS_STYLES)
def test_guessing_authors_write_per_level_shares_in_their_style(style):
  shares = (0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.9)
  spec = base_model.BaseModelSpec(
    **{**TINY, "num_docs": 4000, "guess_fractions": shares, "guess_style": style}
  )
  guessed = collections.Counter()
  seen = collections.Counter()
  for messages, completion in base_model.corpus_documents(spec):
    if completion.startswith("<question>"):
      continue
    question = messages[1]["content"]
    level = arith.difficulty_of(question)
    seen[level] += 1
    if completion == arith.worked_solution(question):
      continue
    guessed[level] += 1
    if style == "give_up":
      assert completion == base_model.GIVE_UP
    else:  # a bare box, no working
      assert re.fullmatch(r"\\boxed\{-?\d+\}", completion), completion
  assert set(guessed) == {5, 8}
  assert abs(guessed[5] / seen[5] - 0.5) < 0.08 and abs(guessed[8] / seen[8] - 0.9) < 0.06


def test_guessing_authors_change_the_cache_key_and_zero_shares_do_not():
  default = base_model.BaseModelSpec(**TINY)
  zeros = base_model.BaseModelSpec(
    **TINY, guess_fractions=(0,) * arith.NUM_LEVELS, guess_style="give_up"
  )
  keys = {
    base_model.BaseModelSpec(
      **TINY, guess_fractions=(0.5,) * arith.NUM_LEVELS, guess_style=style
    ).cache_key()
    for style in base_model.GUESS_STYLES
  }
  assert default.cache_key() == zeros.cache_key() and len(keys | {default.cache_key()}) == 3
  assert base_model.corpus_documents(default) == base_model.corpus_documents(zeros)


def test_bad_arguments_are_refused(tmp_path):
  with pytest.raises(ValueError, match="unknown argument"):
    base_model.build_base_model(str(tmp_path), hidden=3)
  with pytest.raises(ValueError, match="steps"):
    base_model.build_base_model(str(tmp_path), steps=0)
  with pytest.raises(ValueError, match="solver_level_weights"):
    base_model.build_base_model(str(tmp_path), solver_level_weights=(1, 2))
  with pytest.raises(ValueError, match="careless_fraction"):
    base_model.build_base_model(str(tmp_path), careless_fraction=1.0)
  with pytest.raises(ValueError, match="results_first_fraction"):
    base_model.build_base_model(str(tmp_path), results_first_fraction=-0.1)
  with pytest.raises(ValueError, match=r"challenger_fraction='0.2'; expected a number"):
    base_model.build_base_model(str(tmp_path), challenger_fraction="0.2")
  with pytest.raises(ValueError, match="guess_fractions=.*one per level"):
    base_model.build_base_model(str(tmp_path), guess_fractions=(0.5, 0.5))
  with pytest.raises(ValueError, match="guess_fractions=0.5; expected 8 numbers"):
    base_model.build_base_model(str(tmp_path), guess_fractions=0.5)
  with pytest.raises(ValueError, match="guess_fractions"):
    base_model.build_base_model(str(tmp_path), guess_fractions=(1.0,) * arith.NUM_LEVELS)
  with pytest.raises(ValueError, match="guess_style='shrug'"):
    base_model.build_base_model(str(tmp_path), guess_style="shrug")
  assert os.listdir(tmp_path) == []


def test_build_makes_a_loadable_cached_hf_dir(tmp_path):
  from rzero_jax import models, tokenizer as tokenizer_lib

  path = base_model.build_base_model(str(tmp_path), **TINY)
  assert os.path.isdir(path) and os.path.dirname(path) == str(tmp_path)
  for name in ("config.json", "tokenizer.model", base_model.BUILD_INFO_FILE):
    assert os.path.isfile(os.path.join(path, name)), name
  assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no staging left

  with open(os.path.join(path, base_model.BUILD_INFO_FILE)) as f:
    losses = [loss for _, loss in json.load(f)["losses"]]
  assert losses[-1] < 0.6 * losses[0], losses  # pretraining learned something

  stamp = os.path.getmtime(os.path.join(path, base_model.BUILD_INFO_FILE))
  with mock.patch.object(base_model, "_build_into", side_effect=AssertionError("rebuilt")):
    assert base_model.build_base_model(str(tmp_path), **TINY) == path  # the cache answers
  assert os.path.getmtime(os.path.join(path, base_model.BUILD_INFO_FILE)) == stamp
  assert (
    base_model.cached_path(str(tmp_path), base_model.BaseModelSpec(**{**TINY, "seed": 1})) != path
  )

  cfg, params = models.load_hf(path)
  assert cfg.model_type == "qwen3" and cfg.hidden_size == TINY["hidden_size"]
  assert cfg.eos_token_ids == (base_model.EOS_ID,)
  logits = models.forward(cfg, params, np.zeros((1, 4), np.int32))
  assert logits.shape == (1, 4, cfg.vocab_size) and np.isfinite(np.asarray(logits)).all()
  tok = tokenizer_lib.load_tokenizer(path)
  assert tok.vocab_size == cfg.vocab_size and tok.eos_token_ids == cfg.eos_token_ids
  text = arith.worked_solution("What is (3 + 4) * 5?")
  assert tok.decode(tok.encode(text)) == text
