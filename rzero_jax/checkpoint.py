"""Checkpoints: a thin layer over Orbax's `CheckpointManager` that survives crashes.

A step directory holds named pytree items (by convention `params`, `opt_state`, `rng`) plus a
JSON `metadata` item. Saving is asynchronous (the call returns once arrays are on the host, so
the caller may donate the device buffers) and only the newest `max_to_keep` steps are kept.

Restoring goes straight into the caller's target shardings: the target is an abstract pytree of
`jax.ShapeDtypeStruct` with `.sharding` (or concrete arrays, whose sharding is used), and it also
fixes the container types, so optax's namedtuple states come back as namedtuples.

A run that dies mid-save must resume from the last complete step. Orbax writes each step into a
`<step>.orbax-checkpoint-tmp` directory and renames it when done, so an interrupted save leaves
a tmp directory, which is ignored (and cleaned up). Beyond that, this module also refuses
  * a step directory without a commit marker (`commit_success.txt`, or a commit timestamp in
    `_CHECKPOINT_METADATA`), as a non-atomic copy or an object store can leave behind, and
  * a step whose files turn out unreadable (truncated by a crash before the data reached the
    disk): `restore(step=None)` then logs a warning and falls back to the previous step.
  * a step whose arrays read back but differ from what was saved (flipped bytes): each item's
    checksum is stored in the step's metadata at save time and verified on restore.
Broken steps are renamed to `<step>.corrupt-<time>` rather than deleted, so nothing is lost if
the diagnosis was wrong, and so that the step number can be saved again; such a folder is
removed once a newer step has been saved and committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rzero_jax import multihost

METADATA_ITEM = "metadata"
_TMP_MARKER = ".orbax-checkpoint-tmp"
_COMMIT_FILE = "commit_success.txt"
_STEP_METADATA_FILE = "_CHECKPOINT_METADATA"
# Per-item checksums, stored inside the JSON metadata and removed from what restore returns.
CHECKSUMS_KEY = "_rzero_checksums"
_SET_ASIDE = re.compile(r"^(\d+)\.corrupt-\d+$")
# Orbax's StandardSave wants a container; a bare array (e.g. an rng key) is saved inside this.
_BARE_ARRAY_KEY = "__array__"


class Restored(NamedTuple):
  step: int
  items: dict[str, Any]
  metadata: dict[str, Any]


class CorruptCheckpointError(RuntimeError):
  """A committed step whose files cannot be read back."""


def abstract_like(tree: Any) -> Any:
  """Concrete arrays -> `jax.ShapeDtypeStruct` with their sharding: a restore target."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
  )


def _is_bare_array(item: Any) -> bool:
  return len(jax.tree.leaves(item)) == 1 and jax.tree.leaves(item)[0] is item


def _wrap(item: Any) -> Any:
  return {_BARE_ARRAY_KEY: item} if _is_bare_array(item) else item


def _unwrap(item: Any) -> Any:
  if isinstance(item, dict) and set(item) == {_BARE_ARRAY_KEY}:
    return item[_BARE_ARRAY_KEY]
  return item


def _path_key(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _stored_spec(x) -> tuple[tuple[int, ...], str]:
  """(shape, dtype) as Orbax stores a leaf: typed PRNG keys are stored as their key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
  return tuple(x.shape), str(np.dtype(x.dtype))


def _leaf_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_key(p): _stored_spec(x) for p, x in flat}


def _to_abstract_leaf(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, np.ndarray):
    return x  # restored as numpy, like Orbax does for numpy targets
  raise ValueError(
    f"restore target leaves must be jax.ShapeDtypeStruct or arrays; got {type(x).__name__}"
  )


def _leaf_words(x):
  """A leaf's bits as uint32 values of the same shape (PRNG keys as their key data)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = np.dtype(x.dtype).itemsize
  if size == 8:  # two words per element, in a trailing axis of 2
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _mix(h):
  # murmur3's 32-bit finaliser: every input bit affects every output bit.
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


@jax.jit
def _fingerprints(leaves):
  """Two position-dependent uint32 sums per leaf, computed where the arrays live (sharded
  arrays included), so a checksum never gathers a model onto one host."""
  out = []
  for x in leaves:
    w = _leaf_words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    for d in range(w.ndim):  # the row-major position, wrapping mod 2**32
      index = index * jnp.uint32(w.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d)
    a = jnp.sum(_mix(w ^ (index * jnp.uint32(0x9E3779B1))), dtype=jnp.uint32)
    b = jnp.sum(_mix(w + _mix(index + jnp.uint32(0x7F4A7C15))), dtype=jnp.uint32)
    out.append(jnp.stack([a, b]))
  return out


def checksum(tree: Any) -> str:
  """A digest of a pytree's array contents and leaf paths; container types do not matter, so a
  namedtuple and the dict Orbax may restore it as give the same digest."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  if not flat:
    return hashlib.sha256(b"").hexdigest()[:16]
  arrays = [jnp.asarray(x) for _, x in flat]
  prints = multihost.to_host(_fingerprints(arrays))
  lines = sorted(
    f"{_path_key(p)}:{_stored_spec(x)}:{int(f[0]):08x}{int(f[1]):08x}"
    for (p, _), x, f in zip(flat, arrays, prints)
  )
  return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _is_primary() -> bool:
  return multihost.is_primary()


def _sync(name: str) -> None:
  # Bounded: a peer that died is an error here, not a hang.
  multihost.barrier(name)


class CheckpointManager:
  """Async, keep-last-N, crash-tolerant checkpoints of named pytrees plus JSON metadata.

  Usage:
      ckpt = CheckpointManager(workdir / "checkpoints" / "solver", max_to_keep=2)
      ckpt.save(step, {"params": params, "opt_state": opt_state, "rng": key}, {"phase": 1})
      if ckpt.latest_step() is not None:
          step, items, meta = ckpt.restore(target={"params": abstract_params, ...})
      ckpt.close()
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = 3,
    async_save: bool = True,
    read_only: bool = False,
  ):
    """Opens (creating if needed) `directory`, which must have a single writer: leftovers
    of interrupted saves in it are deleted, and uncommitted steps are set aside.

    read_only=True is for readers of a live run (evaluation): it touches nothing on disk,
    so a save in flight in the trainer is never mistaken for debris. (Orbax's own read_only
    option is not used: it logs a warning on every open.) Such a manager must not save."""
    if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
      raise ValueError(
        f"max_to_keep={max_to_keep!r}; expected a positive int or None (keep everything)"
      )
    # Orbax's OCDBT writer refuses relative paths (deep inside an async save thread), and a
    # relative workdir such as the README's `runs/default` is the common case.
    if "://" not in os.fspath(directory):
      directory = os.path.abspath(directory)
    self._directory = epath.Path(directory)
    if self._directory.exists() and not self._directory.is_dir():
      raise NotADirectoryError(f"checkpoint directory {self._directory} is a file")
    if read_only and not self._directory.is_dir():
      raise FileNotFoundError(f"checkpoint directory {self._directory} does not exist")
    self._read_only = read_only
    self._saved: int | None = None  # the newest step this manager saved
    if not read_only:
      self._set_aside_unfinished_steps()
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      enable_async_checkpointing=async_save,
      create=not read_only,
    )
    self._manager = ocp.CheckpointManager(self._directory, options=options)

  @property
  def directory(self) -> epath.Path:
    return self._directory

  # -- discovery ------------------------------------------------------------------------------
  def _set_aside_unfinished_steps(self) -> None:
    """Warns about interrupted saves and moves uncommitted step dirs out of Orbax's view.

    Every process reaches the barrier at the end, whatever it found: the processes must
    pass the same barriers in the same order.
    """
    paths = sorted(self._directory.iterdir()) if self._directory.exists() else []
    for path in paths:
      if _TMP_MARKER in path.name:
        logging.warning(
          "Ignoring checkpoint %s: its save was interrupted before it was committed; deleting it.",
          path,
        )
        # Done here, synchronously, rather than by Orbax's background cleanup, so that
        # the directory is tidy once the constructor returns.
        if _is_primary():
          path.rmtree()
      elif path.is_dir() and path.name.isdigit() and not _is_committed(path):
        self._quarantine(path, "it has no commit marker (incomplete write)")
    _sync("rzero_checkpoint_set_aside")

  def _quarantine(self, path: epath.Path, reason: str) -> None:
    target = path.parent / f"{path.name}.corrupt-{time.time_ns()}"
    logging.warning(
      "Ignoring checkpoint %s: %s. Moving it to %s so that the step can be "
      "written again; the previous complete step is used instead.",
      path,
      reason,
      target,
    )
    if _is_primary():
      path.rename(target)

  def all_steps(self) -> list[int]:
    """Committed steps, oldest first. Waits for a save in flight, so it is counted."""
    self.wait()
    self._manager.reload()
    return sorted(s for s in self._manager.all_steps() if _is_committed(self._directory / str(s)))

  def latest_step(self) -> int | None:
    """The newest committed step, or None. Its files are only fully checked by `restore`."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  # -- save -----------------------------------------------------------------------------------
  def save(
    self, step: int, items: Mapping[str, Any], metadata: Mapping[str, Any] | None = None
  ) -> None:
    """Starts an async save of `items` (name -> pytree of arrays) and JSON `metadata`.

    Returns once the arrays have been copied off the devices; the write to disk goes on in
    the background (see `wait`). Steps must increase.
    """
    if self._read_only:
      raise ValueError(f"checkpoint directory {self._directory} was opened read-only")
    if not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"save: step={step!r}; expected a non-negative int")
    step = int(step)
    if not items:
      raise ValueError("save: items is empty; pass e.g. {'params': params}")
    for name in items:
      if not isinstance(name, str) or not name.isidentifier() or name == METADATA_ITEM:
        raise ValueError(
          f"save: item name {name!r} must be an identifier other than "
          f"{METADATA_ITEM!r} (reserved for the JSON metadata)"
        )
    metadata = dict(metadata or {})
    try:
      json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
      raise ValueError(f"save: metadata must be JSON-serialisable: {e}") from e
    # Orbax's own list also holds the step still being written, without waiting for it.
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      raise ValueError(
        f"save: step {step} is not after the latest saved step {latest} in {self._directory}"
      )
    metadata[CHECKSUMS_KEY] = {name: checksum(tree) for name, tree in items.items()}
    args = {name: ocp.args.StandardSave(_wrap(tree)) for name, tree in items.items()}
    args[METADATA_ITEM] = ocp.args.JsonSave(metadata)
    saved = self._manager.save(step, args=ocp.args.Composite(**args))
    if not saved:  # Orbax declined (e.g. its save policy); silent skips hide lost work.
      raise RuntimeError(f"save: Orbax declined to save step {step} in {self._directory}")
    self._saved = max(self._saved if self._saved is not None else -1, step)

  def wait(self) -> None:
    """Blocks until the save in flight (if any) is on disk and committed, then removes the
    set-aside folders that this newer, good step makes obsolete."""
    self._manager.wait_until_finished()
    if self._saved is not None and not self._read_only:
      self._remove_set_asides(up_to=self._saved)

  def _remove_set_asides(self, up_to: int) -> None:
    if not _is_primary() or not self._directory.exists():
      return
    for path in self._directory.iterdir():
      m = _SET_ASIDE.match(path.name)
      if m and int(m.group(1)) <= up_to and _is_committed(self._directory / str(up_to)):
        logging.info("Removing %s: step %d was saved since it was set aside.", path, up_to)
        path.rmtree()

  def set_aside(self, step: int, reason: str) -> None:
    """Moves a committed step out of the way (renamed, not deleted), e.g. once a caller has
    found it unusable, so that its number can be saved again."""
    self._quarantine(self._directory / str(int(step)), reason)
    _sync(f"rzero_checkpoint_set_aside_{step}")
    self._manager.reload()

  # -- restore --------------------------------------------------------------------------------
  def restore(self, step: int | None = None, target: Mapping[str, Any] | None = None) -> Restored:
    """Reads a step back. step=None: the newest step that reads back intact.

    Args:
      step: which step; None picks the newest committed step and, if its files are
        unreadable, warns and tries the one before, and so on; the unreadable newer steps
        are then set aside.
      target: item name -> abstract pytree (`jax.ShapeDtypeStruct` leaves with `.sharding`,
        or concrete arrays). Arrays are placed straight into those shardings, and the
        pytree's structure (namedtuples included) is rebuilt. Only the named items are
        read. A value of None restores that item as saved (plain dicts and lists).
        target=None restores only the metadata.

    Raises:
      FileNotFoundError: no (readable) committed step.
      ValueError: the target does not match what was saved (names, shapes, dtypes);
        that is a caller error, never treated as corruption.
      CorruptCheckpointError: the requested step (or, with step=None, every committed
        step) cannot be read. Steps are only set aside once an older step has been read
        with the same target, so a bad target never costs a good checkpoint.
    """
    target = dict(target or {})
    steps = self.all_steps()
    if step is not None:
      if int(step) not in steps:
        raise FileNotFoundError(
          f"restore: no committed step {step} in {self._directory}; committed steps: {steps}"
        )
      return self._restore_step(int(step), target)
    if not steps:
      raise FileNotFoundError(f"restore: no committed checkpoint in {self._directory}")
    failures: list[tuple[int, CorruptCheckpointError]] = []
    for candidate in reversed(steps):
      try:
        restored = self._restore_step(candidate, target)
      except CorruptCheckpointError as e:
        logging.warning(
          "Checkpoint step %d in %s is unreadable; trying the previous step. (%s)",
          candidate,
          self._directory,
          e,
        )
        failures.append((candidate, e))
        continue
      # Only now, with an older step read back through the very same target, is a newer
      # failure known to be the step's fault and not the caller's (a bad mesh, say).
      for bad_step, error in failures:
        self._quarantine(self._directory / str(bad_step), f"unreadable: {error}")
      if failures:
        _sync(f"rzero_checkpoint_quarantine_{restored.step}")
        self._manager.reload()
      return restored
    raise CorruptCheckpointError(
      f"restore: no committed step in {self._directory} could be read; the newest "
      f"({failures[0][0]}) failed with: {failures[0][1]}"
    ) from failures[0][1]

  def _restore_step(self, step: int, target: dict[str, Any]) -> Restored:
    step_dir = self._directory / str(step)
    saved_items = {p.name for p in step_dir.iterdir() if p.is_dir()} - {METADATA_ITEM}
    metadata = None
    if (step_dir / METADATA_ITEM).exists():  # absent in checkpoints written by other tools
      try:
        metadata = self._manager.restore(
          step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()})
        )[METADATA_ITEM]
      except Exception as e:  # noqa: BLE001 - a truncated JSON file is corruption
        raise CorruptCheckpointError(f"step {step}: unreadable metadata: {e}") from e
    metadata = dict(metadata or {})
    checksums = metadata.pop(CHECKSUMS_KEY, None) or {}
    missing = set(target) - saved_items
    lost = sorted(m for m in missing if m in checksums)
    if lost:  # saved (the checksums say so) and gone since: the step is damaged
      raise CorruptCheckpointError(
        f"step {step}: item(s) {lost} were saved but are missing from {step_dir}"
      )
    if missing:
      raise ValueError(
        f"restore: step {step} in {self._directory} has no item(s) "
        f"{sorted(missing)}; it has {sorted(saved_items)}"
      )
    args = {}
    for name, tree in target.items():
      if tree is None:
        args[name] = ocp.args.StandardRestore()
        continue
      abstract = _wrap(jax.tree.map(_to_abstract_leaf, tree))
      self._check_matches_saved(step, name, abstract)
      args[name] = ocp.args.StandardRestore(abstract)
    if not args:  # metadata only, read above
      return Restored(step, {}, metadata)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001 - TensorStore raises plain Exception on bad data
      raise CorruptCheckpointError(f"step {step}: {type(e).__name__}: {e}") from e
    items = {name: _unwrap(restored[name]) for name in target}
    for name, tree in items.items():
      if name in checksums and checksum(tree) != checksums[name]:
        raise CorruptCheckpointError(
          f"step {step}, item {name!r}: its contents differ from what was saved "
          f"(checksum mismatch: flipped or overwritten bytes)"
        )
    return Restored(step, items, metadata)

  def _check_matches_saved(self, step: int, name: str, abstract: Any) -> None:
    try:
      saved = ocp.StandardCheckpointHandler().metadata(self._directory / str(step) / name)
      saved_specs = _leaf_specs(saved.tree)
    except Exception as e:  # noqa: BLE001 - unreadable metadata is corruption
      raise CorruptCheckpointError(
        f"step {step}, item {name!r}: cannot read its metadata: {e}"
      ) from e
    wanted = _leaf_specs(abstract)
    if wanted != saved_specs:
      diff = sorted(set(wanted.items()) ^ set(saved_specs.items()))[:6]
      raise ValueError(
        f"restore: target for item {name!r} does not match step {step} in "
        f"{self._directory}: (path, (shape, dtype)) differing, first few: "
        f"{diff}"
      )

  # -- lifecycle ------------------------------------------------------------------------------
  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads."""
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _is_committed(step_dir: epath.Path) -> bool:
  if (step_dir / _COMMIT_FILE).exists():
    return True
  # Older Orbax versions committed by rename alone and only stamped the commit time.
  meta_file = step_dir / _STEP_METADATA_FILE
  try:
    meta = json.loads(meta_file.read_text())
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and meta.get("commit_timestamp_nsecs") is not None
