"""launch/export.py: a run's checkpoint as an HF directory that transformers loads and runs
exactly as we do (logits to 1e-4, the same greedy tokens, the same chat prompt ids)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from rzero_jax import checkpoint, models
from rzero_jax.evaluation import export
from rzero_jax.tokenizer import load_tokenizer
from rzero_jax.worlds import arith, base_model
from tests.test_evaluation import make_tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = arith.PROMPTS.solver_messages("What is 12 + 7 * 3?")


def _sentencepiece_tokenizer(out_dir: str) -> str:
  """The arithmetic world's kind of tokenizer (no chat template), trained on a few documents."""
  docs = base_model.corpus_documents(base_model.BaseModelSpec(num_docs=300))
  base_model.train_tokenizer(base_model.document_texts(docs), 256).save(out_dir)
  return out_dir


def _random_params(cfg, seed):
  import jax

  params = models.init_params(cfg, jax.random.key(seed))
  # Norm scales of exactly 1 and zero biases would hide a transposed or misnamed tensor.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(
    tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


def _workdir(root: str, cfg, params, tok_path: str) -> str:
  """A run workdir in the loop's layout: a Solver step checkpoint and a kept final."""
  workdir = os.path.join(root, "run")
  for sub, step, phase in (("solver", 7, "solver"), ("solver_final", 1, "final")):
    mgr = checkpoint.CheckpointManager(
      os.path.join(workdir, "checkpoints", sub), max_to_keep=None, async_save=False
    )
    mgr.save(
      step,
      {"params": params},
      metadata={
        "model_config": cfg.to_hf_dict(),
        "tokenizer": tok_path,
        "role": "solver",
        "iteration": 1,
        "phase": phase,
        "step": step,
      },
    )
    mgr.wait()
    mgr.close()
  return workdir


@pytest.fixture(scope="module", params=["hf_tokenizer", "sentencepiece"])
def exported(request, tmp_path_factory):
  root = str(tmp_path_factory.mktemp(request.param))
  tok_dir = os.path.join(root, "tok")
  if request.param == "hf_tokenizer":
    make_tiny_tokenizer(tok_dir)
  else:
    _sentencepiece_tokenizer(tok_dir)
  tok = load_tokenizer(tok_dir)
  family = "qwen3" if request.param == "sentencepiece" else "llama"
  cfg = models.tiny_config(family, vocab_size=tok.vocab_size)
  params = _random_params(cfg, seed=len(request.param))
  workdir = _workdir(root, cfg, params, tok_dir)
  out = export.export(workdir, os.path.join(root, "hf"), iteration=1)
  return cfg, params, tok, out


def test_transformers_runs_the_export_as_we_do(exported):
  import jax.numpy as jnp
  import torch
  import transformers

  cfg, params, tok, out = exported
  assert {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
  } <= set(os.listdir(out))
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  prompt = hf_tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
  prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
  assert prompt == tok.encode_chat(MESSAGES)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    generated = model.generate(
      torch.tensor([prompt]),
      max_new_tokens=6,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=tok.pad_id,
    )[0].tolist()
    theirs = model(torch.tensor([generated])).logits.float().numpy()
  assert len(generated) == len(prompt) + 6
  ours = np.asarray(models.forward(cfg, params, jnp.asarray([generated], jnp.int32)))
  assert np.abs(ours).max() > 0.1  # the comparison below is not between two near-zero arrays
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  # transformers' greedy tokens are our argmax at every generated position.
  assert generated[len(prompt) :] == ours[0, len(prompt) - 1 : -1].argmax(-1).tolist()
  assert hf_tok.decode(generated, skip_special_tokens=True) == tok.decode(generated)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "launch.export", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _one_error_line(proc, expected):
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def test_bad_input_is_one_line_naming_the_flag(tmp_path):
  missing = tmp_path / "gone"
  proc = _cli(f"--checkpoint={missing}", f"--output={tmp_path / 'a'}")
  _one_error_line(proc, f"--checkpoint: checkpoint {missing}: no such file or directory")
  assert not (tmp_path / "a").exists()
  # An existing folder is never written into.
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("mine")
  proc = _cli(f"--checkpoint={missing}", f"--output={taken}")
  _one_error_line(proc, f"--output: {taken} exists and is not an empty directory")
  assert os.listdir(taken) == ["keep.txt"]


class _FailingTokenizer:
  """Stands in for the loaded tokenizer: `write(out_dir)` runs where the real one would save."""

  def __init__(self, write):
    self.save_for_transformers = write


def _export_with(monkeypatch, tmp_path, write):
  import jax

  cfg = models.tiny_config("llama", vocab_size=64)
  params = models.init_params(cfg, jax.random.key(0))
  monkeypatch.setattr(export.checkpoints, "resolve_checkpoint", lambda *a: "spec")
  monkeypatch.setattr(
    export.checkpoints, "load_resolved", lambda *a, **k: (cfg, params, _FailingTokenizer(write))
  )
  return export.export("spec", str(tmp_path / "hf"))


def test_a_failed_export_leaves_nothing_on_disk(monkeypatch, tmp_path):
  def write(out_dir):
    assert os.path.exists(os.path.join(out_dir, "config.json"))  # the weights went first
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    _export_with(monkeypatch, tmp_path, write)
  assert os.listdir(tmp_path) == []  # no --output, no staging folder


def test_an_output_filled_during_the_export_is_kept_and_refused(monkeypatch, tmp_path):
  def write(out_dir):
    os.makedirs(tmp_path / "hf")
    (tmp_path / "hf" / "theirs.txt").write_text("mine")

  with pytest.raises(export.OutputError, match="not an empty directory"):
    _export_with(monkeypatch, tmp_path, write)
  assert os.listdir(tmp_path) == ["hf"] and os.listdir(tmp_path / "hf") == ["theirs.txt"]
