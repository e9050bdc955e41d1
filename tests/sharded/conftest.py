"""tests/sharded runs in its own pytest process with 8 virtual CPU devices.

XLA reads the device count when jax initialises its backend, so it is set here, before any test
module imports jax (the Makefile also sets it on the command line)."""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
