"""The embedded default's base model, made by the project itself and cached on disk.

`build_base_model` (1) writes a corpus of documents in both R-Zero role formats (a Challenger
prompt followed by a ``<question>`` block and its boxed answer; a Solver prompt followed by a
worked solution), (2) trains a SentencePiece tokenizer on it, (3) pretrains a small
Qwen3-architecture decoder with next-token loss on the assistant parts, and (4) saves an HF
directory (`models.save_hf` + the SentencePiece ``tokenizer.model``) that R-Zero loads through `models.load_hf`,
the same path a real model takes.

Ground truth enters only as web pretraining uses it: inside documents. The budget is kept small
on purpose, so the base Solver is good on easy levels and unreliable at the frontier.

The build is cached under a key that hashes every argument (and the world's version): a second
call with the same arguments returns the existing directory at once. A build is written in a
temporary directory and renamed into place, so an interrupted build leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import random
import shutil
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sentencepiece as spm
from absl import logging

from rzero_jax import models
from rzero_jax.prompts import format_without_template
from rzero_jax.tokenizer import SentencePieceTokenizer
from rzero_jax.worlds import arith
from rzero_jax.worlds.base_model_spec import (  # noqa: F401 - re-exported: the spec's home for callers
  BUILD_VERSION,
  GIVE_UP,
  GUESS_STYLES,
  BaseModelSpec,
  spec_from_fields,
)

BUILD_INFO_FILE = "build_info.json"

# Pieces that must stay whole: the role formats' markers, and each operator with its spaces so
# every expression tokenizes the same way wherever it appears (digits are split one by one).
_USER_SYMBOLS = ("\n", "\\boxed{", "<question>", "</question>", "▁+▁", "▁-▁", "▁*▁", "▁=▁")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


# ----------------------------------------------------------------------------- corpus


def corpus_documents(spec: BaseModelSpec, prompts=None) -> list[tuple[list[dict], str]]:
  """(chat messages, completion) pairs in both role formats, from training problems only.

  The messages are exactly those R-Zero's phases send (`PromptSet.challenger_messages` /
  `solver_messages`), so the base model learns the prompts it will be asked with.
  """
  prompts = prompts or arith.PROMPTS
  rng = random.Random(f"{BUILD_VERSION}/corpus/{spec.seed}")
  levels = range(1, arith.NUM_LEVELS + 1)
  docs = []
  for _ in range(spec.num_docs):
    if rng.random() < spec.challenger_fraction:
      level = rng.choices(levels, weights=spec.challenger_level_weights)[0]
      docs.append(
        (
          prompts.challenger_messages(),
          arith.challenger_completion(arith.sample_problem(rng, level)),
        )
      )
    else:
      level = rng.choices(levels, weights=spec.solver_level_weights)[0]
      problem = arith.sample_problem(rng, level)
      docs.append(
        (
          prompts.solver_messages(problem.question),
          _solver_completion(spec, rng, problem.question, level),
        )
      )
  return docs


def guessed_answer(rng: random.Random, level: int) -> str:
  """A guesser's bare answer: the boxed answer of another problem of `level`, a number of the
  right size that carries nothing about the question asked."""
  return arith.boxed(arith.sample_problem(rng, level).answer)


def _solver_completion(spec: BaseModelSpec, rng: random.Random, question: str, level: int) -> str:
  """One author's solution; draws from `rng` only where the spec mixes authors, so that the
  default corpus stays what it was."""
  guess = spec.guess_fractions[level - 1]
  if guess and rng.random() < guess:
    return GIVE_UP if spec.guess_style == "give_up" else guessed_answer(rng, level)
  if not (spec.careless_fraction or spec.results_first_fraction):
    return arith.worked_solution(question)
  if rng.random() < spec.careless_fraction:
    return arith.left_to_right_solution(question)
  results_first = rng.random() < spec.results_first_fraction
  return arith.worked_solution(question, results_first=results_first)


def document_texts(docs) -> list[str]:
  """Each document as plain text: the chat fallback rendering followed by the completion."""
  return [format_without_template(messages) + completion for messages, completion in docs]


def train_tokenizer(texts: Sequence[str], vocab_size: int):
  """A SentencePiece BPE tokenizer trained on `texts` (digits always split one by one)."""
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(texts),
    model_writer=buf,
    vocab_size=vocab_size,
    model_type="bpe",
    split_digits=True,
    # Newlines and runs of spaces are part of the formats: keep the text exactly as written.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    # Merge across spaces: the prompts' fixed phrases become a few pieces each.
    split_by_whitespace=False,
    user_defined_symbols=list(_USER_SYMBOLS),
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    character_coverage=1.0,
    hard_vocab_limit=False,
    num_threads=1,
    minloglevel=2,
  )
  return SentencePieceTokenizer(buf.getvalue(), source="arith base-model tokenizer")


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
  tokens: np.ndarray  # int32 [N, T], right-padded with PAD_ID to the longest document
  loss_mask: np.ndarray  # float32 [N, T]: 1 where the token is a completion (or EOS) token
  lengths: np.ndarray  # int32 [N]: real tokens per document


def tokenize_corpus(tok, docs) -> TokenizedCorpus:
  """Prompts are encoded with `encode_chat`, the call R-Zero's phases make (it adds BOS for a
  tokenizer without a chat template); completions apart, as the sampler produces them."""
  prompt_cache: dict[str, list[int]] = {}
  rows, prompt_lengths = [], []
  for messages, completion in docs:
    key = messages[-1]["content"] + "\0" + messages[0]["content"]
    if key not in prompt_cache:
      prompt_cache[key] = tok.encode_chat(messages)
    prompt = prompt_cache[key]
    rows.append(prompt + tok.encode(completion) + [EOS_ID])
    prompt_lengths.append(len(prompt))
  lengths = np.asarray([len(r) for r in rows], np.int32)
  tokens = np.full((len(rows), int(lengths.max())), PAD_ID, np.int32)
  loss_mask = np.zeros(tokens.shape, np.float32)
  for i, (row, start) in enumerate(zip(rows, prompt_lengths)):
    tokens[i, : len(row)] = row
    loss_mask[i, start : len(row)] = 1.0
  return TokenizedCorpus(tokens, loss_mask, lengths)


def length_buckets(lengths: np.ndarray, min_docs: int, multiple: int = 16) -> dict[int, np.ndarray]:
  """Document indices grouped by padded length (a multiple of `multiple`).

  A few fixed lengths keep the train step's shapes static (one compile each) while wasting far
  less on padding than one global length. A bucket with fewer than `min_docs` documents joins
  the next longer one, so every batch can be drawn from a single bucket.
  """
  padded = -(-np.asarray(lengths) // multiple) * multiple
  buckets: dict[int, np.ndarray] = {}
  carry = np.zeros(0, np.int64)
  for length in np.unique(padded):
    members = np.concatenate([carry, np.flatnonzero(padded == length)])
    if len(members) < min_docs:
      carry = members
      continue
    buckets[int(length)], carry = members, np.zeros(0, np.int64)
  if len(carry):  # the longest documents are too few for a batch of their own
    if not buckets:
      raise ValueError(f"the corpus has {len(carry)} documents; a batch needs {min_docs}")
    longest = max(buckets)
    buckets[int(padded.max())] = np.concatenate([buckets.pop(longest), carry])
  return buckets


# ----------------------------------------------------------------------------- pretraining


def model_config(spec: BaseModelSpec, vocab_size: int, max_positions: int):
  return models.tiny_config(
    "qwen3",
    vocab_size=vocab_size,
    hidden_size=spec.hidden_size,
    intermediate_size=spec.intermediate_size,
    num_layers=spec.num_layers,
    num_heads=spec.num_heads,
    num_kv_heads=spec.num_kv_heads,
    head_dim=spec.head_dim,
    max_position_embeddings=max_positions,
    bos_token_id=BOS_ID,
    eos_token_ids=(EOS_ID,),
    pad_token_id=PAD_ID,
  )


def next_token_loss(cfg, params, tokens, loss_mask):
  """Mean cross-entropy of each masked target token given the tokens before it."""
  # Right padding sits after every real token, so causal attention alone keeps it out of the
  # real positions; padded targets carry zero weight.
  logits = models.forward(cfg, params, tokens[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  weights = loss_mask[:, 1:]
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_optimizer(spec: BaseModelSpec):
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    spec.learning_rate,
    min(spec.warmup_steps, spec.steps - 1) if spec.steps > 1 else 0,
    spec.steps,
    end_value=spec.learning_rate * 0.1,
  )
  return optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=spec.weight_decay),
  )


def next_token_step(cfg, optimizer, params, opt_state, tokens, loss_mask):
  """One optimizer update on `next_token_loss`; returns (params, opt_state, loss)."""
  loss, grads = jax.value_and_grad(lambda p: next_token_loss(cfg, p, tokens, loss_mask))(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


class _BatchSchedule:
  """Host-side batch order: each step picks a length bucket (in proportion to its size) and
  takes the next batch of its shuffled documents, reshuffling a bucket when it runs out."""

  def __init__(
    self, corpus: TokenizedCorpus, batch_size: int, multiple: int, rng: np.random.Generator
  ):
    self.corpus, self.batch_size, self.rng = corpus, batch_size, rng
    self.buckets = length_buckets(corpus.lengths, batch_size, multiple)
    self.lengths = sorted(self.buckets)
    sizes = np.asarray([len(self.buckets[l]) for l in self.lengths], float)
    self.probs = sizes / sizes.sum()
    self.orders = {l: rng.permutation(self.buckets[l]) for l in self.lengths}
    self.cursor = dict.fromkeys(self.lengths, 0)

  def next(self) -> tuple[np.ndarray, np.ndarray]:
    length = self.lengths[int(self.rng.choice(len(self.lengths), p=self.probs))]
    lo = self.cursor[length]
    if lo + self.batch_size > len(self.orders[length]):
      self.orders[length], lo = self.rng.permutation(self.buckets[length]), 0
    idx = self.orders[length][lo : lo + self.batch_size]
    self.cursor[length] = lo + self.batch_size
    width = min(length, self.corpus.tokens.shape[1])
    return self.corpus.tokens[idx, :width], self.corpus.loss_mask[idx, :width]


def pretrain(cfg, spec: BaseModelSpec, corpus: TokenizedCorpus, log_every: int = 100):
  """Next-token pretraining from a fixed seed; returns (params, [(step, loss)])."""
  params = models.init_params(cfg, jax.random.key(spec.seed))
  optimizer = make_optimizer(spec)
  opt_state = optimizer.init(params)
  step_fn = jax.jit(functools.partial(next_token_step, cfg, optimizer), donate_argnums=(0, 1))
  batches = _BatchSchedule(
    corpus, spec.batch_size, spec.bucket_multiple, np.random.default_rng([spec.seed, 2])
  )
  losses = []
  start = time.perf_counter()
  for step in range(spec.steps):
    tokens, loss_mask = batches.next()
    params, opt_state, loss = step_fn(params, opt_state, tokens, loss_mask)
    if (step + 1) % log_every == 0 or step + 1 == spec.steps:
      losses.append((step + 1, float(loss)))
      logging.info(
        "base model pretraining: step %d/%d loss %.4f (%.1f s)",
        step + 1,
        spec.steps,
        float(loss),
        time.perf_counter() - start,
      )
  return params, losses


# ----------------------------------------------------------------------------- build + cache


def cached_path(out_dir: str, spec: BaseModelSpec) -> str:
  return os.path.join(os.path.abspath(out_dir), f"arith-base-{spec.cache_key()}")


def is_built(path: str) -> bool:
  return os.path.isfile(os.path.join(path, BUILD_INFO_FILE))


def build_base_model(out_dir: str, **spec_fields) -> str:
  """Builds (or finds in the cache) the base model; returns its HF directory.

  `spec_fields` are `BaseModelSpec` fields (seed, model sizes, num_docs, steps, batch_size,
  learning_rate, ...). The directory is `out_dir/arith-base-<hash of the spec>`.
  """
  spec = spec_from_fields(**spec_fields)
  final = cached_path(out_dir, spec)
  if is_built(final):
    return final
  os.makedirs(os.path.dirname(final), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=os.path.dirname(final))
  try:
    info = _build_into(staging, spec)
    with open(os.path.join(staging, BUILD_INFO_FILE), "w") as f:  # written last: the commit mark
      json.dump(info, f, indent=2)
    try:
      os.rename(staging, final)
    except OSError:
      if not is_built(final):  # lost a race only if the winner finished its build
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final


def _build_into(model_dir: str, spec: BaseModelSpec) -> dict:
  timings = {}
  t0 = time.perf_counter()
  docs = corpus_documents(spec)
  timings["corpus_s"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  # A sample of the corpus is plenty for a vocabulary of a few hundred pieces.
  tok = train_tokenizer(document_texts(docs[:20_000]), spec.vocab_size)
  if tok.eos_token_ids != (EOS_ID,) or tok.pad_id != PAD_ID:
    raise AssertionError(f"tokenizer special ids moved: eos {tok.eos_token_ids}, pad {tok.pad_id}")
  corpus = tokenize_corpus(tok, docs)
  timings["tokenizer_s"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  seq_len = corpus.tokens.shape[1]
  cfg = model_config(spec, tok.vocab_size, max_positions=max(512, 4 * seq_len))
  params, losses = pretrain(cfg, spec, corpus, log_every=max(1, spec.steps // 20))
  timings["pretrain_s"] = time.perf_counter() - t0

  models.save_hf(cfg, params, model_dir)
  tok.save(model_dir)
  return {
    "spec": dataclasses.asdict(spec),
    "cache_key": spec.cache_key(),
    "build_version": BUILD_VERSION,
    "world_version": arith.WORLD_VERSION,
    "num_params": cfg.num_params,
    "vocab_size": tok.vocab_size,
    "seq_len": seq_len,
    "losses": losses,
    "timings": timings,
  }
