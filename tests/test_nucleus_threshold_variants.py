"""benchmarks/nucleus_threshold.py's candidate threshold searches give the sampler's exact
nucleus threshold: a GPU session picks among them by speed alone."""
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "nucleus_threshold.py")
_spec = importlib.util.spec_from_file_location("nucleus_threshold", _PATH)
variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(variants)


@pytest.mark.parametrize("peaked", [False, True])
@pytest.mark.parametrize("top_p", [0.5, 0.99])
def test_every_variant_finds_the_bisection_threshold(peaked, top_p):
  scaled = variants._logits(4, 3000, peaked, seed=1)
  scaled = scaled.at[0, :].set(0.0)  # all tied
  top_p = jnp.float32(top_p)
  want = np.asarray(variants.bisection(scaled, top_p))
  for name, fn in [("radix", variants.radix), ("sort", variants.sort),
                   ("top_k", lambda s, p: variants.top_k(s, p, candidates=64))]:
    np.testing.assert_array_equal(np.asarray(fn(scaled, top_p)), want, err_msg=name)
