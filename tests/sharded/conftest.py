"""tests/sharded runs in its own pytest process with 8 virtual CPU devices.

XLA reads the device count when jax initialises its backend, so it is set here: pytest imports
this file before any test module below it, also when one module is run alone (the Makefile
sets it on the command line as well). Where jax was initialised first, by tests collected
earlier in the same process, every test here is skipped with the reason.
"""

import os

import pytest

DEVICES = 8
_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(config, items):
  import jax

  have = jax.device_count()
  if have >= DEVICES:
    return
  here = os.path.dirname(os.path.abspath(__file__))
  skip = pytest.mark.skip(
    reason=f"needs {DEVICES} devices, have {have}: run tests/sharded in "
    f"its own process (XLA_FLAGS={_FLAG})"
  )
  for item in items:
    if os.path.abspath(str(item.fspath)).startswith(here + os.sep):
      item.add_marker(skip)
