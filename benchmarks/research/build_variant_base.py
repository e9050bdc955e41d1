"""Question: is a different base-model design worth an R-Zero run? This builds the variant, so
that `solver_headroom.py` can measure its headroom before any R-Zero run. Each argument overrides one `BaseModelSpec` field of configs/arith_tiny.py (a
Python literal); the build is cached like the default's, and its directory is printed last.

  .venv/bin/python benchmarks/research/build_variant_base.py steps=27000 num_docs=216000
  .venv/bin/python benchmarks/research/solver_headroom.py --eval_set=train --base_model=<printed dir>
"""

import ast
import dataclasses
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from configs import arith_tiny  # noqa: E402
from rzero_jax.rzero import experiment  # noqa: E402
from rzero_jax.worlds import base_model  # noqa: E402


def main(argv):
  config = arith_tiny.get_config()
  known = {f.name for f in dataclasses.fields(base_model.BaseModelSpec)}
  for arg in argv:
    name, sep, value = arg.partition("=")
    if not sep or name not in known:
      sys.exit(
        f"build_variant_base: {arg!r}: expected FIELD=VALUE with FIELD one of {sorted(known)}"
      )
    try:
      config.world.base[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      sys.exit(f"build_variant_base: {arg!r}: the value must be a Python literal")
  start = time.perf_counter()
  path = experiment.resolve_base_model(config)  # the default run's own build and cache
  print(f"built in {time.perf_counter() - start:.0f} s")
  print(path)


if __name__ == "__main__":
  main(sys.argv[1:])
