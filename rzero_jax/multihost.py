"""The host/device boundary and agreement between processes, in one place.

On a pod slice every host runs the same program, and an array sharded over the mesh spans
devices that other processes own. So:
  * host numpy -> global array: `to_global`, every process holding the same full batch;
  * global array -> numpy on every process: `to_host` (an all-gather where the array is not
    fully addressable here). Nothing else in the library fetches a sharded array;
  * offloading an idle model keeps its sharding: `offload` / `onload` move it between device
    and pinned host memory, shard by shard;
  * a decision that changes which collective runs next (a phase already done, a resume step,
    SIGTERM, a verdict that depends on a wall-clock timeout) is taken on process 0 and
    broadcast with `agree`, or or-ed over processes with `any_process`;
  * `barrier` waits for the others for a bounded time: a dead peer is an error, not a hang.
With one process all of these are cheap no-ops around `device_get` / `device_put`.
"""

from __future__ import annotations

import pickle
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

# How long a barrier waits for the slowest process. Generous: a peer may still be compiling or
# writing a checkpoint; a dead one is reported by the coordination service well before this.
BARRIER_TIMEOUT_S = 30 * 60


class PeerLost(RuntimeError):
  """Another process of the run died or stopped answering."""


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Process 0: the one writer of every file other than Orbax's."""
  return jax.process_index() == 0


# ----------------------------------------------------------------------------- arrays


def to_global(tree: Any, sharding: Any) -> Any:
  """Host numpy (the same full values on every process) -> global arrays with `sharding`
  (one sharding for every leaf, or a matching pytree of them)."""
  if not isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x, s: _one_global(x, s), tree, sharding)
  return jax.tree.map(lambda x: _one_global(x, sharding), tree)


def _one_global(x, sharding):
  x = np.asarray(x)
  # global_shape == the local shape: each process holds the whole array and contributes the
  # slices its own devices own.
  return jax.make_array_from_process_local_data(sharding, x, x.shape)


def to_host(tree: Any) -> Any:
  """Arrays -> numpy on every process. An array that spans other processes' devices is
  all-gathered (a collective: every process must call this at the same point)."""
  return jax.tree.map(_one_host, tree)


def _one_host(x):
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:  # every process holds it all: no communication needed
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _with_memory(x, kind: str):
  sharding = getattr(x, "sharding", None)
  if not isinstance(x, jax.Array) or sharding is None:
    return x
  if sharding.memory_kind == kind:
    return x
  return jax.device_put(x, sharding.with_memory_kind(kind))


def has_pinned_host() -> bool:
  """Whether the backend offers pinned host memory (TPU and GPU; recent CPU backends too)."""
  try:
    return any(m.kind == "pinned_host" for m in jax.devices()[0].addressable_memories())
  except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
    return False


def offload(tree: Any) -> Any:
  """Moves a frozen pytree (the KL reference, an idle role) to pinned host memory between
  uses, each shard staying on the host of the device that owns it: the same sharding, so no
  process ever holds a full copy. Without pinned host memory it becomes a device copy with the
  same sharding. Either way the result owns its buffers: donating the arrays it came from (a
  train step does) leaves it intact."""
  if not has_pinned_host():
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)
  return jax.tree.map(lambda x: _with_memory(x, "pinned_host"), tree)


def onload(tree: Any) -> Any:
  """The inverse of `offload`: back into device memory with the same sharding."""
  if not has_pinned_host():
    return tree
  return jax.tree.map(lambda x: _with_memory(x, "device"), tree)


# ----------------------------------------------------------------------------- agreement


def agree(obj: Any) -> Any:
  """Process 0's value of a picklable Python object, on every process (a collective).

  For host-side results that decide what runs next and could differ between processes: a file
  one host sees and another not, a grading verdict that hit a wall-clock timeout on one host.
  """
  if jax.process_count() == 1:
    return obj
  payload = np.frombuffer(pickle.dumps(obj), np.uint8) if is_primary() else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int64(payload.size)))
  buf = np.zeros(size, np.uint8)
  if is_primary():
    buf[:] = payload
  buf = multihost_utils.broadcast_one_to_all(buf)
  return pickle.loads(np.asarray(buf, np.uint8).tobytes())


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (e.g. a SIGTERM that reached one host)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.int32(bool(flag)))
  return bool(np.any(flags))


def _client():
  from jax._src import distributed  # the coordination-service client; no public accessor

  return distributed.global_state.client


_barrier_uses: dict[str, int] = {}


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """All processes reach `name` before any goes on; at most timeout_s of waiting."""
  if jax.process_count() == 1:
    return
  # The coordination service wants a fresh id per barrier; every process counts the same.
  uses = _barrier_uses[name] = _barrier_uses.get(name, 0) + 1
  name = f"{name}#{uses}"
  client = _client()
  if client is None:  # multi-process without the coordination service (unusual)
    multihost_utils.sync_global_devices(name)
    return
  try:
    client.wait_at_barrier(name, int(timeout_s * 1000))
  except Exception as e:  # noqa: BLE001 - the client raises its own runtime error types
    raise PeerLost(
      f"barrier {name!r}: another process did not arrive within {timeout_s:.0f} s "
      f"or has died ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
    ) from e


def is_peer_failure(e: BaseException) -> bool:
  """Whether an error comes from a peer that died (a collective or the coordination service),
  rather than from this process's own work."""
  if isinstance(e, PeerLost):
    return True
  text = f"{type(e).__name__}: {e}".lower()
  # Narrow on purpose: anything else keeps its traceback (it may be a bug of ours).
  return any(
    s in text
    for s in (
      "connection closed by peer",
      "connection reset by peer",
      "coordination service",
      "missed heartbeat",
      "barrier timed out",
    )
  )
