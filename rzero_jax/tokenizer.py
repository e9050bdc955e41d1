"""One tokenizer interface over HF tokenizer directories, SentencePiece models and GGUF files.

`load_tokenizer(path)` picks the backend from what `path` is:
  * a directory with `tokenizer.json` (or only `tokenizer_config.json`): transformers'
    AutoTokenizer, local files only, never remote code;
  * a directory with a SentencePiece `tokenizer.model` and no tokenizer.json, or a `.model` file:
    SentencePiece directly;
  * a `.gguf` file: the vocabulary in its metadata, built once into a transformers fast tokenizer
    with transformers' GGUF converter (read with the `gguf` package, so no torch is needed).

Chat formatting uses the tokenizer's own chat template; without one it falls back to R-Zero's
`"system: " + system + "\\nuser: " + user` (`prompts.format_without_template`).
"""

from __future__ import annotations

import abc
import copy
import json
import os
from typing import Any, Mapping, Sequence

from rzero_jax import fileio
from rzero_jax.models.gguf import read_tokenizer_metadata
from rzero_jax.prompts import PLAIN_CHAT_TEMPLATE, format_without_template

Messages = Sequence[Mapping[str, str]]

HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_FILE = "tokenizer.model"
GENERATION_CONFIG = "generation_config.json"


def _check_messages(messages: Messages) -> None:
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
    raise TypeError(
      f"messages: expected a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
    )
  for i, m in enumerate(messages):
    if (
      not isinstance(m, Mapping)
      or not isinstance(m.get("role"), str)
      or not isinstance(m.get("content"), str)
    ):
      raise ValueError(
        f"messages[{i}]: expected a dict with string 'role' and 'content', got {m!r}"
      )


class Tokenizer(abc.ABC):
  """encode / decode, special ids and chat formatting, whatever the backend."""

  #: where it was loaded from, for error messages
  source: str

  @abc.abstractmethod
  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`; `add_special_tokens` adds what the tokenizer adds (e.g. BOS)."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

  @property
  @abc.abstractmethod
  def eos_token_ids(self) -> tuple[int, ...]:
    """Every id that ends a completion (the tokenizer's EOS plus the generation config's)."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None: ...

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids, including added special tokens."""

  @property
  @abc.abstractmethod
  def chat_template(self) -> str | None: ...

  @property
  def pad_id(self) -> int:
    """The pad id; the first EOS id (then 0) where the tokenizer defines none."""
    pad = self._pad_id()
    if pad is not None:
      return pad
    return self.eos_token_ids[0] if self.eos_token_ids else 0

  def _pad_id(self) -> int | None:
    return None

  def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True) -> str:
    _check_messages(messages)
    if self.chat_template is None:
      return format_without_template(messages)
    return self._render_template(messages, add_generation_prompt)

  def _render_template(self, messages: Messages, add_generation_prompt: bool) -> str:
    raise NotImplementedError(f"{type(self).__name__} has no chat template support")

  def encode_chat(self, messages: Messages, add_generation_prompt: bool = True) -> list[int]:
    """Prompt ids for a conversation. A chat template writes its own special tokens (BOS
    included, where the model wants it); the plain fallback gets the tokenizer's usual ones."""
    text = self.apply_chat_template(messages, add_generation_prompt)
    return self.encode(text, add_special_tokens=self.chat_template is None)

  @abc.abstractmethod
  def save(self, out_dir: str) -> None:
    """Writes the tokenizer into `out_dir` so that `load_tokenizer(out_dir)` reads it back."""

  @abc.abstractmethod
  def to_transformers(self) -> Any:
    """A transformers fast tokenizer that encodes, and renders chats, exactly as this one."""

  def save_for_transformers(self, out_dir: str) -> None:
    """Writes what `transformers.AutoTokenizer` (and vLLM) load: tokenizer.json, its config
    with a chat template (the plain format where this tokenizer has none) and the stop ids."""
    with fileio.staging_files(out_dir) as staging:
      self.to_transformers().save_pretrained(staging)
      if self.eos_token_ids:
        _write_json(
          os.path.join(staging, GENERATION_CONFIG),
          {
            **_read_json(os.path.join(out_dir, GENERATION_CONFIG)),
            "eos_token_id": list(self.eos_token_ids),
          },
        )


# ----------------------------------------------------------------------------- transformers


class HFTokenizer(Tokenizer):
  """A transformers tokenizer (from an HF directory, or built from a GGUF file)."""

  def __init__(self, tokenizer: Any, source: str, extra_eos_ids: Sequence[int] = ()):
    self._tok = tokenizer
    self.source = source
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    self._eos = tuple(dict.fromkeys(eos + [int(i) for i in extra_eos_ids]))

  @property
  def hf_tokenizer(self) -> Any:
    return self._tok

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    return self._eos

  @property
  def bos_id(self) -> int | None:
    return self._tok.bos_token_id

  def _pad_id(self) -> int | None:
    return self._tok.pad_token_id

  @property
  def vocab_size(self) -> int:
    return len(self._tok)

  @property
  def chat_template(self) -> str | None:
    return self._tok.chat_template or None

  def _render_template(self, messages: Messages, add_generation_prompt: bool) -> str:
    return self._tok.apply_chat_template(
      [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )

  def to_transformers(self) -> Any:
    if self.chat_template is not None:
      return self._tok
    tok = copy.deepcopy(self._tok)
    tok.chat_template = PLAIN_CHAT_TEMPLATE
    return tok

  def save(self, out_dir: str) -> None:
    with fileio.staging_files(out_dir) as staging:
      self._tok.save_pretrained(staging)
      if self._eos:
        # Keep the extra stop ids (they came from generation_config.json) with the tokenizer.
        _write_json(
          os.path.join(staging, GENERATION_CONFIG),
          {**_read_json(os.path.join(out_dir, GENERATION_CONFIG)), "eos_token_id": list(self._eos)},
        )


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      value = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  return value if isinstance(value, dict) else {}


def _write_json(path: str, value: Any) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=2)


def _generation_eos_ids(model_dir: str) -> list[int]:
  eos = _read_json(os.path.join(model_dir, GENERATION_CONFIG)).get("eos_token_id")
  if eos is None:
    return []
  return [int(i) for i in eos] if isinstance(eos, list) else [int(eos)]


def _load_hf_dir(path: str) -> HFTokenizer:
  import transformers

  try:
    tok = transformers.AutoTokenizer.from_pretrained(
      path, local_files_only=True, trust_remote_code=False
    )
  except Exception as e:
    raise ValueError(
      f"{path}: transformers could not load the tokenizer here ({type(e).__name__}: {e})"
    ) from None
  return HFTokenizer(tok, path, _generation_eos_ids(path))


def _load_gguf(path: str) -> HFTokenizer:
  import transformers
  from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

  architecture, tokenizer_dict, tokenizer_config = read_tokenizer_metadata(path)
  try:
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
  except ValueError as e:
    raise ValueError(f"{path}: cannot build a tokenizer from this GGUF file: {e}") from None
  tok = transformers.PreTrainedTokenizerFast(
    tokenizer_object=backend, **{**tokenizer_config, **extra}
  )
  return HFTokenizer(tok, path)


# ----------------------------------------------------------------------------- SentencePiece


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model. Control pieces (BOS/EOS/PAD) are its special tokens."""

  def __init__(self, model_proto: bytes, source: str):
    import sentencepiece as spm

    self.source = source
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(model_proto)
    except Exception as e:
      raise ValueError(f"{source}: not a SentencePiece model ({e})") from None
    self._proto = model_proto

  @classmethod
  def from_file(cls, path: str) -> "SentencePieceTokenizer":
    with open(path, "rb") as f:
      return cls(f.read(), path)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    ids = list(self._sp.encode(text))
    if add_special_tokens and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in ids]
    size = self._sp.get_piece_size()
    bad = [i for i in ids if not 0 <= i < size]
    if bad:
      raise ValueError(f"{self.source}: token id(s) {bad[:5]} out of range [0, {size})")
    if skip_special_tokens:
      return self._sp.decode(ids)
    # sp.decode drops control pieces; write them out where they occur.
    out, run = [], []
    for i in ids:
      if self._sp.is_control(i):
        out.append(self._sp.decode(run))
        out.append(self._sp.id_to_piece(i))
        run = []
      else:
        run.append(i)
    out.append(self._sp.decode(run))
    return "".join(out)

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    eos = self._sp.eos_id()
    return (eos,) if eos >= 0 else ()

  @property
  def bos_id(self) -> int | None:
    bos = self._sp.bos_id()
    return bos if bos >= 0 else None

  def _pad_id(self) -> int | None:
    pad = self._sp.pad_id()
    return pad if pad >= 0 else None

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def chat_template(self) -> str | None:
    return None

  def save(self, out_dir: str) -> None:
    with fileio.staging_files(out_dir) as staging:
      with open(os.path.join(staging, SENTENCEPIECE_FILE), "wb") as f:
        f.write(self._proto)

  def to_transformers(self) -> Any:
    """The same BPE as a `tokenizers` pipeline. It covers what our SentencePiece models use
    (identity normalisation, no dummy prefix, digits split, user-defined symbols); a model
    trained with other options is refused rather than converted approximately."""
    import transformers
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import (
      AddedToken,
      Tokenizer as RawTokenizer,
      decoders,
      models as tok_models,
      normalizers,
      pre_tokenizers,
      processors,
    )
    from transformers.tokenization_utils_base import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self._proto)
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if (
      trainer.model_type != trainer.BPE
      or norm.add_dummy_prefix
      or norm.precompiled_charsmap
      or trainer.byte_fallback
      or not norm.escape_whitespaces
    ):
      raise ValueError(
        f"{self.source}: only BPE SentencePiece models with identity "
        "normalisation, no dummy prefix and no byte fallback convert to "
        "transformers"
      )
    pieces = [p.piece for p in proto.pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    # SentencePiece merges pieces in score order; the BPE merge list is that order.
    kinds = {p.piece: p.type for p in proto.pieces}
    merges = generate_merges(
      vocab,
      {p.piece: p.score for p in proto.pieces},
      skip_tokens=[p for p, kind in kinds.items() if kind != 1],
    )
    unk = pieces[trainer.unk_id]
    raw = RawTokenizer(tok_models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True))
    raw.normalizer = normalizers.Replace(" ", "\u2581")
    if trainer.split_digits:
      raw.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    raw.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Fuse()])
    raw.add_special_tokens(
      [AddedToken(p, normalized=False, special=True) for p, kind in kinds.items() if kind in (2, 3)]
    )  # unknown, control
    raw.add_tokens(
      [AddedToken(p, normalized=True, special=False) for p, kind in kinds.items() if kind == 4]
    )  # user-defined
    specials = {}
    for name, i in (
      ("bos_token", self.bos_id),
      ("eos_token", self._sp.eos_id()),
      ("pad_token", self._pad_id()),
      ("unk_token", trainer.unk_id),
    ):
      if i is not None and i >= 0:
        specials[name] = pieces[i]
    if "bos_token" in specials:  # `encode(add_special_tokens=True)` adds BOS, as ours does
      bos = specials["bos_token"]
      raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, self.bos_id)]
      )
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, **specials)
    tok.chat_template = PLAIN_CHAT_TEMPLATE
    return tok


# ----------------------------------------------------------------------------- saving & loading


def load_tokenizer(path: str) -> Tokenizer:
  """The tokenizer at `path`: an HF model/tokenizer directory, a SentencePiece `.model` file, or
  a `.gguf` file (see the module docstring for how each is recognised)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path}: no such file or directory; expected an HF tokenizer "
      "directory, a SentencePiece .model file or a .gguf file"
    )
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, HF_TOKENIZER_FILE)):
      return _load_hf_dir(path)
    if os.path.exists(os.path.join(path, SENTENCEPIECE_FILE)):
      return SentencePieceTokenizer.from_file(os.path.join(path, SENTENCEPIECE_FILE))
    if os.path.exists(os.path.join(path, HF_TOKENIZER_CONFIG)):
      return _load_hf_dir(path)
    raise FileNotFoundError(
      f"{path}: no tokenizer here; expected {HF_TOKENIZER_FILE}, "
      f"{HF_TOKENIZER_CONFIG} or a SentencePiece {SENTENCEPIECE_FILE}"
    )
  if path.endswith(".gguf"):
    return _load_gguf(path)
  if path.endswith(".model"):
    return SentencePieceTokenizer.from_file(path)
  raise ValueError(
    f"{path}: not a tokenizer; expected an HF tokenizer directory, a "
    "SentencePiece .model file or a .gguf file"
  )
