"""The sampler: greedy parity with transformers, sampling rules, logprobs, stops, recompiles."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from rzero_jax import models, sampling

PROMPTS = [[5, 17, 42, 9, 77], [3] * 3 + list(range(20, 31)), list(range(100, 120))]


def peaked(params, factor: float):
  """Scales the final norm so random logits spread over several nats: rules such as top-p
  and temperature then make a visible difference to the distribution."""
  params = jax.tree.map(lambda x: x, params)
  params["final_norm"]["scale"] = params["final_norm"]["scale"] * factor
  return params


@pytest.fixture(scope="module")
def tiny():
  cfg = models.tiny_config("qwen3")
  return cfg, peaked(models.init_params(cfg, jax.random.key(1)), 5.0)


@pytest.fixture(scope="module")
def big_vocab():
  """A vocabulary large enough for the sampler's rejection route to top-p."""
  cfg = models.tiny_config("qwen3", vocab_size=sampling.REJECTION_MIN_VOCAB)
  return cfg, peaked(models.init_params(cfg, jax.random.key(3)), 5.0)


@pytest.fixture(scope="module")
def small_vocab():
  cfg = models.tiny_config("qwen3", vocab_size=16)
  return cfg, peaked(models.init_params(cfg, jax.random.key(2)), 3.0)


# Most tests share one shape plan (prompt bucket 32, batch 4, 8 new tokens) so they reuse
# compiled code instead of paying a compilation each.
NEW = 8
ROWS = 8  # samples per prompt where a test needs many


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens):
  return models.forward(cfg, params, tokens)


def recomputed_logits(cfg, params, prompts, completions, per_prompt):
  """For each row, the logits that predict each of its completion tokens, recomputed with
  `models.forward` on the whole sequence (no cache). Rows are right-padded to one width:
  causal attention keeps padding after a token from changing its logits."""
  seqs = [list(prompts[r // per_prompt]) + list(c) for r, c in enumerate(completions)]
  width = max(len(s) for s in seqs)
  tokens = np.zeros((len(seqs), width), np.int32)
  for r, s in enumerate(seqs):
    tokens[r, : len(s)] = s
  logits = np.asarray(_forward(cfg, params, tokens))
  return [
    logits[r, len(prompts[r // per_prompt]) - 1 :][: len(c)] for r, c in enumerate(completions)
  ]


# ----------------------------------------------------------------------------- HF parity


def _hf_tiny(model_type: str):
  import torch
  import transformers

  torch.manual_seed(0)
  common = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,
    pad_token_id=0,
  )
  if model_type == "qwen3":
    hf_cfg = transformers.Qwen3Config(head_dim=24, tie_word_embeddings=True, **common)
    model = transformers.Qwen3ForCausalLM(hf_cfg)
  elif model_type == "qwen2":
    hf_cfg = transformers.Qwen2Config(tie_word_embeddings=False, **common)
    model = transformers.Qwen2ForCausalLM(hf_cfg)
  else:
    hf_cfg = transformers.LlamaConfig(
      tie_word_embeddings=False,
      rope_scaling={
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
      },
      **common,
    )
    model = transformers.LlamaForCausalLM(hf_cfg)
  model = model.eval()
  # Random biases are zero-initialised; give them values so the bias path is exercised.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0, 0.1)
  return models.from_hf_dict(hf_cfg.to_dict()), model


def _params_from_torch(cfg, model):
  """transformers' state_dict -> our parameter tree (layout in transformer.py's docstring)."""
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  n_layers, d, h, kv, hd = (
    cfg.num_layers,
    cfg.hidden_size,
    cfg.num_heads,
    cfg.num_kv_heads,
    cfg.head_dim,
  )

  def stack(name):
    return np.stack([sd[f"model.layers.{i}.{name}"] for i in range(n_layers)])

  def kernel(name, heads):  # torch [out, in] -> ours [in, heads, head_dim]
    return stack(f"self_attn.{name}.weight").transpose(0, 2, 1).reshape(n_layers, d, heads, hd)

  attn = {
    "q_proj": {"kernel": kernel("q_proj", h)},
    "k_proj": {"kernel": kernel("k_proj", kv)},
    "v_proj": {"kernel": kernel("v_proj", kv)},
    "o_proj": {
      "kernel": stack("self_attn.o_proj.weight").transpose(0, 2, 1).reshape(n_layers, h, hd, d)
    },
  }
  if cfg.qkv_bias:
    for name, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
      attn[name]["bias"] = stack(f"self_attn.{name}.bias").reshape(n_layers, heads, hd)
  if cfg.qk_norm:
    attn["q_norm"] = {"scale": stack("self_attn.q_norm.weight")}
    attn["k_norm"] = {"scale": stack("self_attn.k_norm.weight")}
  params = {
    "embed": {"embedding": sd["model.embed_tokens.weight"]},
    "final_norm": {"scale": sd["model.norm.weight"]},
    "layers": {
      "input_norm": {"scale": stack("input_layernorm.weight")},
      "post_attn_norm": {"scale": stack("post_attention_layernorm.weight")},
      "attn": attn,
      "mlp": {
        n: {"kernel": stack(f"mlp.{n}.weight").transpose(0, 2, 1)}
        for n in ("gate_proj", "up_proj", "down_proj")
      },
    },
  }
  if not cfg.tie_word_embeddings:
    params["lm_head"] = {"kernel": sd["lm_head.weight"].T}
  expected = models.abstract_params(cfg)
  jax.tree.map(lambda e, p: np.testing.assert_equal(e.shape, p.shape), expected, params)
  return jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize("model_type", ["qwen3", "qwen2", "llama"])
def test_greedy_matches_transformers(model_type):
  cfg, model = _hf_tiny(model_type)
  params = _params_from_torch(cfg, model)
  from tests import torch_reference

  expected = torch_reference.greedy(model, PROMPTS, 80)
  out = sampling.generate(cfg, params, PROMPTS, max_new_tokens=80, temperature=0.0)
  assert out.tokens == expected
  assert out.finish_reasons == ["length"] * len(PROMPTS)


# ----------------------------------------------------------------------------- sampling rules


def _allowed(logits, temperature, top_k, top_p):
  """The usual definitions, by sorting: top-k, then the smallest top set with mass >= top_p."""
  scaled = logits.astype(np.float64) / temperature
  order = np.argsort(-scaled)
  keep = np.ones(len(scaled), bool)
  if top_k:
    keep[top_k:] = False
  probs = np.where(keep, np.exp(scaled[order] - scaled[order][0]), 0.0)
  probs /= probs.sum()
  before = np.cumsum(probs) - probs
  keep &= before < top_p
  return set(order[keep].tolist())


_truncate = jax.jit(sampling.truncate_logits)


@pytest.mark.parametrize("top_k,top_p", [(7, 1.0), (0, 0.6), (12, 0.8), (1, 1.0), (0, 1.0)])
def test_truncation_matches_sorted_definition(top_k, top_p):
  rng = np.random.RandomState(top_k)
  logits = rng.normal(0, 3, (64, 300)).astype(np.float32)
  logits[0, :] = 0.0  # all tied: every token survives top-p, top-k keeps all ties
  logits[1, :150] = -logits[1, 150:]  # negative and positive keys of equal size
  masked = np.asarray(_truncate(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
  for row in range(1, 64):
    assert set(np.flatnonzero(np.isfinite(masked[row])).tolist()) == _allowed(
      logits[row], 1.0, top_k, top_p
    )
    np.testing.assert_array_equal(
      masked[row][np.isfinite(masked[row])], logits[row][np.isfinite(masked[row])]
    )


def test_greedy_tokens_are_argmax_with_first_index_on_ties():
  rng = np.random.RandomState(0)
  logits = rng.randn(6, 300).astype(np.float32)
  logits[1, [7, 250]] = 9.0  # a tie: the first index wins, as in argmax
  logits[2, :] = -1.5  # all equal
  logits[3, 299] = 50.0  # the last index
  tokens, logprobs = jax.jit(sampling.greedy_tokens)(jnp.asarray(logits))
  np.testing.assert_array_equal(tokens, np.argmax(logits, axis=-1))
  expected = np.take_along_axis(
    jax.nn.log_softmax(logits, axis=-1), np.argmax(logits, -1)[:, None], axis=-1
  )[:, 0]
  np.testing.assert_allclose(logprobs, expected, rtol=1e-6, atol=1e-6)
  nan_row = np.full((1, 300), np.nan, np.float32)
  token, _ = sampling.greedy_tokens(jnp.asarray(nan_row))
  assert 0 <= int(token[0]) < 300


def test_categorical_never_draws_excluded_tokens():
  vocab = 300  # not a multiple of the CDF block: the padded tail must stay unreachable
  logits = np.full((5, vocab), -np.inf, np.float32)
  logits[0, vocab - 1] = 0.0  # only the last token
  logits[1, 0] = 0.0  # only the first
  logits[2, [3, 150, 299]] = [0.0, 1.0, 2.0]
  logits[3, 128] = 50.0  # a block boundary
  logits[4] = np.linspace(-30, 30, vocab)  # everything allowed, very uneven mass
  draw = jax.jit(jax.vmap(sampling.categorical, in_axes=(0, None)))
  tokens = np.asarray(draw(jax.random.split(jax.random.key(0), 2000), jnp.asarray(logits)))
  assert (tokens[:, 0] == vocab - 1).all() and (tokens[:, 1] == 0).all()
  assert set(tokens[:, 2].tolist()) == {3, 150, 299} and (tokens[:, 3] == 128).all()
  assert np.isfinite(logits[4][tokens[:, 4]]).all() and tokens[:, 4].max() < vocab
  # Frequencies of row 2 follow softmax([0, 1, 2]).
  counts = [(tokens[:, 2] == t).sum() for t in (3, 150, 299)]
  # The expected counts in float64: chisquare wants them to sum to the draws within 1.5e-8,
  # which a float32 softmax misses on some backends (a GPU's exp: 6e-8 off).
  expected = special.softmax(np.arange(3.0)) * len(tokens)
  assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("candidates", [1, 4])
@pytest.mark.parametrize("top_k,top_p", [(0, 0.8), (6, 1.0)])
def test_rejection_draws_the_truncated_distribution(candidates, top_k, top_p):
  """Rejection draws, their fallback included, follow the renormalised top-k or top-p
  distribution exactly, and candidates are accepted as often as the kept mass says."""
  rng = np.random.RandomState(3)
  logits = rng.normal(0, 2, 40).astype(np.float32)
  draws = 20000
  scaled = jnp.broadcast_to(jnp.asarray(logits), (draws, 40))
  key = jax.random.key(11)
  tokens = np.asarray(
    jax.jit(sampling.draw_by_rejection, static_argnums=4)(key, scaled, top_k, top_p, candidates)
  )
  allowed = sorted(_allowed(logits, 1.0, top_k, top_p))
  assert set(tokens.tolist()) <= set(allowed)
  assert 3 < len(allowed) < 30  # the rule truncates, and leaves room for a frequency test
  _, accepted = sampling.truncation_candidates(
    jax.random.fold_in(key, 1), scaled, top_k, top_p, candidates
  )
  missed = 1.0 - float(np.mean(np.any(np.asarray(accepted), axis=-1)))
  kept_mass = special.softmax(logits.astype(np.float64))[allowed].sum()
  assert abs(missed - (1.0 - kept_mass) ** candidates) < 0.02
  if candidates == 1:
    assert missed > 0.1  # the fallback is exercised
  expected = special.softmax(logits.astype(np.float64)[allowed]) * draws
  counts = np.asarray([(tokens == t).sum() for t in allowed])
  assert (expected >= 5).all()  # the chi-square rule: no bin to pool
  assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("min_vocab", [0, 301])
@pytest.mark.parametrize("top_k,top_p", [(7, 1.0), (0, 0.95), (0, 0.5), (7, 0.95)])
def test_sample_truncated_draws_the_truncated_distribution(top_k, top_p, min_vocab):
  """Whatever route a setting takes (by rejection for one rule alone over a large enough
  vocabulary, else truncate then draw), the draws follow the renormalised truncated
  distribution."""
  rng = np.random.RandomState(4)
  logits = rng.normal(0, 2, 300).astype(np.float32)
  draws = 20000
  scaled = jnp.broadcast_to(jnp.asarray(logits), (draws, 300))
  draw = jax.jit(functools.partial(sampling.sample_truncated, rejection_min_vocab=min_vocab))
  tokens = np.asarray(draw(jax.random.key(5), scaled, top_k, top_p))
  allowed = sorted(_allowed(logits, 1.0, top_k, top_p))
  assert set(tokens.tolist()) <= set(allowed)
  expected = special.softmax(logits.astype(np.float64)[allowed]) * draws
  counts = np.asarray([(tokens == t).sum() for t in allowed])
  rare = expected < 5  # pool rare tokens: the chi-square rule
  if rare.any():
    expected = np.append(expected[~rare], expected[rare].sum())
    counts = np.append(counts[~rare], counts[rare].sum())
  assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.3, 6, 0.9)])
def test_first_token_frequencies_match_distribution(small_vocab, temperature, top_k, top_p):
  cfg, params = small_vocab
  prompt = [3, 1, 4, 1, 5]
  num = 20000
  out = sampling.generate(
    cfg,
    params,
    [prompt],
    max_new_tokens=1,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    n=num,
    seed=123,
  )
  logits = np.asarray(_forward(cfg, params, np.asarray([prompt], np.int32)))[0, -1]
  allowed = sorted(_allowed(logits, temperature, top_k, top_p))
  first = np.asarray([t[0] for t in out.tokens])
  assert set(first.tolist()) <= set(allowed)

  def chi_square_pvalue(logits_for_expectation):
    expected = np.exp(logits_for_expectation[allowed] - logits_for_expectation.max())
    expected = expected / expected.sum() * num
    counts = np.asarray([(first == tok).sum() for tok in allowed])
    # Pool the rare tokens into one bin so every bin expects >= 5 (the usual chi-square rule).
    rare = expected < 5
    if rare.any():
      expected = np.append(expected[~rare], expected[rare].sum())
      counts = np.append(counts[~rare], counts[rare].sum())
    assert len(expected) >= 4, "too few bins for a meaningful test"
    return stats.chisquare(counts, expected).pvalue

  assert chi_square_pvalue(logits.astype(np.float64) / temperature) > 1e-3
  # The test has power: the untempered distribution is rejected.
  assert chi_square_pvalue(logits.astype(np.float64)) < 1e-6


@pytest.mark.parametrize(
  "top_k,top_p,model",
  [
    (5, 1.0, "tiny"),
    (0, 0.7, "tiny"),
    (20, 0.5, "tiny"),
    (0, 0.95, "big_vocab"),
    (5, 1.0, "big_vocab"),
  ],
)
def test_truncated_sampling_stays_in_allowed_set(request, top_k, top_p, model):
  """big_vocab's vocabulary takes top-p 0.95 and top-k 5 through the rejection route."""
  cfg, params = request.getfixturevalue(model)
  out = sampling.generate(
    cfg,
    params,
    PROMPTS,
    max_new_tokens=NEW,
    temperature=1.0,
    top_k=top_k,
    top_p=top_p,
    n=ROWS,
    seed=7,
  )
  all_logits = recomputed_logits(cfg, params, PROMPTS, out.tokens, ROWS)
  for row, (completion, logits) in enumerate(zip(out.tokens, all_logits)):
    for step, tok in enumerate(completion):
      assert tok in _allowed(logits[step], 1.0, top_k, top_p), (row, step)
  # Truncation is not vacuous: a sampler that ignored it would have stayed inside every
  # allowed set with probability under 1e-3 (the product of the sets' masses).
  log_inside = sum(
    np.log(
      special.softmax(lg[step].astype(np.float64))[
        sorted(_allowed(lg[step], 1.0, top_k, top_p))
      ].sum()
    )
    for lg, completion in zip(all_logits, out.tokens)
    for step in range(len(completion))
  )
  assert log_inside < np.log(1e-3)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_match_recomputed_distribution(tiny, temperature):
  cfg, params = tiny
  # top_k truncates the sampling but never the recorded (untruncated) logprob.
  out = sampling.generate(
    cfg, params, PROMPTS, max_new_tokens=NEW, temperature=temperature, top_k=5, n=ROWS, seed=3
  )
  t = temperature or 1.0
  all_logits = recomputed_logits(cfg, params, PROMPTS, out.tokens, ROWS)
  for completion, logprobs, logits in zip(out.tokens, out.logprobs, all_logits):
    expected = np.asarray(jax.nn.log_softmax(jnp.asarray(logits) / t, axis=-1))
    expected = expected[np.arange(len(completion)), completion]
    np.testing.assert_allclose(logprobs, expected, atol=2e-4, rtol=0)


def test_logprobs_match_recomputed_distribution_over_a_long_budget(tiny):
  """72 sampled tokens per row: every step's cache write must hold exactly the keys and
  values that a forward over the whole sequence computes."""
  cfg, params = tiny
  out = sampling.generate(cfg, params, PROMPTS, max_new_tokens=72, temperature=0.8, n=2, seed=4)
  assert {len(t) for t in out.tokens} == {72}
  all_logits = recomputed_logits(cfg, params, PROMPTS, out.tokens, 2)
  for completion, logprobs, logits in zip(out.tokens, out.logprobs, all_logits):
    expected = np.asarray(jax.nn.log_softmax(jnp.asarray(logits) / 0.8, axis=-1))
    np.testing.assert_allclose(logprobs, expected[np.arange(72), completion], atol=2e-4, rtol=0)


def test_peak_memory_is_the_cache_and_the_prompts_cache(tiny):
  """Decode holds one KV cache of prompt bucket + budget slots, plus the prompts' cache it is
  built from and one layer's slice of it (read by that layer's attention), not a second
  cache: the bound fails if it held two."""
  cfg, params = tiny
  new, n = 200, 8  # 4 prompt rows x 8 samples
  peak = sampling.peak_memory_bytes(cfg, params, PROMPTS, max_new_tokens=new, n=n)
  rows, bucket = sampling.batch_bucket(len(PROMPTS)) * n, 32
  cache = sampling.kv_cache_bytes(cfg, rows, bucket + new)
  prompt_cache = sampling.kv_cache_bytes(cfg, rows // n, bucket)
  weights = sum(x.nbytes for x in jax.tree.leaves(params))
  outputs = rows * new * 8  # tokens and logprobs
  assert cache <= peak
  one_layer = cache // cfg.num_layers
  # Small change: token ids, masks, logits, one layer's attention scores and the like.
  assert peak <= cache + one_layer + prompt_cache + weights + 2 * outputs + 2**20
  assert peak < 2 * cache


def test_seed_determines_samples(tiny):
  cfg, params = tiny
  kw = dict(max_new_tokens=NEW, temperature=1.0, n=ROWS)
  a = sampling.generate(cfg, params, PROMPTS, seed=11, **kw)
  b = sampling.generate(cfg, params, PROMPTS, seed=11, **kw)
  c = sampling.generate(cfg, params, PROMPTS, seed=12, **kw)
  assert a == b
  assert a.tokens != c.tokens
  # The n samples of one prompt differ from each other.
  assert len({tuple(t) for t in a.tokens[:ROWS]}) > 1


def test_n_samples_are_grouped_by_prompt(tiny):
  cfg, params = tiny
  single = sampling.generate(cfg, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
  grouped = sampling.generate(cfg, params, PROMPTS, max_new_tokens=NEW, temperature=0.0, n=ROWS)
  assert grouped.tokens == [t for t in single.tokens for _ in range(ROWS)]


def test_stop_tokens_cut_completions(tiny):
  cfg, params = tiny
  kw = dict(max_new_tokens=NEW, temperature=1.0, n=ROWS, seed=5)
  free = sampling.generate(cfg, params, PROMPTS, **kw)
  stop = free.tokens[0][3]
  stops = (stop, cfg.vocab_size - 1)
  out = sampling.generate(cfg, params, PROMPTS, stop_token_ids=stops, **kw)
  reasons = set()
  for full, cut, logprobs, reason in zip(free.tokens, out.tokens, out.logprobs, out.finish_reasons):
    hits = [i for i, t in enumerate(full) if t in stops]
    if hits:
      assert (cut, reason) == (full[: hits[0] + 1], "stop")
    else:
      assert (cut, reason) == (full, "length")
    assert len(logprobs) == len(cut)
    reasons.add(reason)
  assert reasons == {"stop", "length"}


def test_all_rows_stopping_ends_early(tiny):
  cfg, params = tiny
  greedy = sampling.generate(cfg, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
  stops = sorted({t[0] for t in greedy.tokens})
  out = sampling.generate(
    cfg, params, PROMPTS, max_new_tokens=NEW, temperature=0.0, stop_token_ids=stops
  )
  assert out.tokens == [t[:1] for t in greedy.tokens]
  assert out.finish_reasons == ["stop"] * len(PROMPTS)


def test_same_shapes_do_not_recompile(tiny):
  cfg, params = tiny
  sampling.generate(cfg, params, PROMPTS, max_new_tokens=NEW, temperature=1.0, top_p=0.7)
  before = sampling.compile_count()
  # Greedy, top-k, top-p, seeds and stop tokens are all runtime values.
  sampling.generate(cfg, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
  sampling.generate(
    cfg,
    params,
    PROMPTS,
    max_new_tokens=NEW,
    temperature=0.5,
    top_k=3,
    top_p=0.9,
    seed=9,
    stop_token_ids=(4, 5),
  )
  # Different prompt lengths and count, same buckets (length 32, batch 4).
  sampling.generate(
    cfg, params, [[1] * 17, [2] * 30, [3], [4] * 20], max_new_tokens=NEW, temperature=2.0, seed=1
  )
  assert sampling.compile_count() == before
  sampling.generate(cfg, params, PROMPTS, max_new_tokens=NEW + 1, temperature=1.0)
  assert sampling.compile_count() == before + 2  # a new budget: prefill and decode


def test_buckets():
  assert [sampling.prompt_bucket(n) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]
  assert [sampling.batch_bucket(n) for n in (1, 3, 64, 65, 200)] == [1, 4, 64, 128, 256]
  assert sampling.batch_bucket(3, multiple=8) == 8
  assert sampling.batch_bucket(100, multiple=6) == 132


def test_kv_cache_bytes_is_the_cache_size():
  cfg = models.tiny_config("llama")
  cache = models.init_cache(cfg, 6, 48)
  assert sampling.kv_cache_bytes(cfg, 6, 48) == sum(x.nbytes for x in cache.values())
  assert sampling.kv_cache_bytes(cfg, 6, 48, jnp.bfloat16) == 2 * 6 * 2 * 48 * 16 * 2 * 2


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(prompts=[]), "prompts"),
    (dict(prompts=[[1], []]), r"prompts\[1\]"),
    (dict(prompts=[[1, 999]]), r"prompts\[0\].*999"),
    (dict(prompts=[[1, 2.5]]), r"prompts\[0\].*int token ids"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(n=0), "n must"),
    (dict(stop_token_ids=(256,)), "stop token id 256"),
  ],
)
def test_bad_arguments_are_clear_errors(tiny, kwargs, match):
  cfg, params = tiny
  args = dict(prompts=[[1, 2]], max_new_tokens=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.generate(cfg, params, **args)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(prompts=[[1, 999]]), r"^peak_memory_bytes: prompts\[0\].*999"),
    (dict(max_new_tokens=0), r"^peak_memory_bytes: max_new_tokens"),
  ],
)
def test_peak_memory_bytes_errors_name_it(tiny, kwargs, match):
  cfg, params = tiny
  args = dict(prompts=[[1, 2]], max_new_tokens=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    sampling.peak_memory_bytes(cfg, params, **args)


def test_prompts_per_call_keeps_padded_rows_within_the_limit():
  # 204 prompts x 10 would pad to 256 x 10 = 2,560 rows: the limit must hold after padding.
  assert sampling.prompts_per_call(2048, 10) == 192
  assert sampling.prompts_per_call(1024, 10) == 64
  assert sampling.prompts_per_call(5, 10) == 1  # one prompt's samples are split elsewhere
  for max_rows in (1, 7, 64, 100, 640, 2048, 5000):
    for n in (1, 3, 10):
      p = sampling.prompts_per_call(max_rows, n)
      assert p >= 1
      if p > 1 or n <= max_rows:
        assert sampling.batch_bucket(p) * n <= max_rows, (max_rows, n, p)
      # The largest such count: one more prompt would overflow after padding.
      assert sampling.batch_bucket(p + 1) * n > max_rows or p + 1 > max_rows // n
