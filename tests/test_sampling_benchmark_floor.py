"""benchmarks/sampling.py's GEMM floor multiplies by exactly the decode step's weights, and
XLA and torch time the same computation."""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

from rzero_jax import models

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "sampling.py")
_spec = importlib.util.spec_from_file_location("sampling_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_step_matrices_are_every_projection_once(model_type):
  cfg = models.tiny_config(model_type)
  params = models.init_params(cfg, jax.random.key(0))
  layers, head = bench.step_matrices(cfg, params)
  assert len(layers) == cfg.num_layers
  kernels = [
    leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(params["layers"])[0]
    if path[-1].key == "kernel"
  ]
  assert sum(m.size for w in layers for m in w.values()) == sum(k.size for k in kernels)
  np.testing.assert_array_equal(
    layers[1]["o_proj"],
    np.asarray(params["layers"]["attn"]["o_proj"]["kernel"][1]).reshape(
      cfg.num_heads * cfg.head_dim, cfg.hidden_size
    ),
  )
  assert head.shape == (cfg.hidden_size, cfg.vocab_size)


def test_xla_and_torch_time_the_same_step():
  import torch

  cfg = models.tiny_config("llama")
  params = models.init_params(cfg, jax.random.key(1))
  layers, head = bench.step_matrices(cfg, params)
  x = np.random.RandomState(0).standard_normal((4, cfg.hidden_size)).astype(np.float32)
  ours = bench._gemm_step(x, layers, head, jax.nn.silu)
  theirs = bench._gemm_step(
    torch.from_numpy(x),
    [{k: torch.from_numpy(m) for k, m in w.items()} for w in layers],
    torch.from_numpy(head),
    torch.nn.functional.silu,
  )
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-4, atol=1e-5)
  floor = bench.gemm_floor(cfg, params, batch=4, steps=2, repeats=1)
  assert floor["flops"] == 2 * 4 * (sum(m.size for w in layers for m in w.values()) + head.size)
