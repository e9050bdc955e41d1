"""Mesh construction and the one table that maps logical axis names onto mesh axes.

Model code names only logical axes (`batch`, `embed`, `heads`, ...). This module is the only
place that knows the mesh axes `data`, `fsdp` and `tensor`; configs may override the rules.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axes). Batch is split over data and fsdp; weights are split over fsdp
# (ZeRO-3 style) on their embed dimension and over tensor on heads / mlp / vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("cache_length", None),
  ("embed", "fsdp"),
  ("act_embed", None),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  ("act_mlp", "tensor"),
  ("vocab", "tensor"),
  ("act_vocab", "tensor"),
  ("layers", None),
  ("norm", None),
)

Rules = Sequence[tuple[str, Any]]


def make_mesh(
  shape: Mapping[str, int] | Sequence[int] | None = None,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh. One entry may be -1: it takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  if shape is None:
    shape = {"data": 1, "fsdp": -1, "tensor": 1}
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"mesh: unknown axis name(s) {sorted(unknown)}; expected {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  else:
    sizes = [int(s) for s in shape]
    if len(sizes) != len(MESH_AXES):
      raise ValueError(f"mesh: expected {len(MESH_AXES)} sizes for {MESH_AXES}, got {sizes}")
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
        f"mesh: {len(devices)} devices are not divisible by the fixed axes "
        f"{dict(zip(MESH_AXES, sizes))}"
      )
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(
      f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
      f"{len(devices)} available"
    )
  # Auto axes: the model places activations with sharding constraints and lets XLA propagate.
  return jax.make_mesh(
    tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def check_rules(rules: Rules) -> None:
  """Rejects rules that name unknown mesh axes (a typo would otherwise silently replicate)."""
  for logical, mesh_axes in rules:
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
    for a in axes:
      if a not in MESH_AXES:
        raise ValueError(
          f"sharding rule {logical!r} -> {mesh_axes!r}: unknown mesh axis {a!r}; "
          f"expected one of {MESH_AXES}"
        )


def logical_to_spec(
  logical_axes: Iterable[str | None], rules: Rules = DEFAULT_RULES, mesh: Mesh | None = None
) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec. A mesh axis is used at most once per array
  (first dimension wins), and axes of size 1 are dropped so specs stay readable."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in logical_axes:
    mesh_axes = table.get(name) if name is not None else None
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    keep = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1))
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else keep)
  return PartitionSpec(*out)


def fit_spec_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide their dimension (e.g. 2 kv heads on tensor=4)."""
  out = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    keep, size = [], 1
    for a in axes:
      if dim % (size * mesh.shape[a]) == 0:
        keep.append(a)
        size *= mesh.shape[a]
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return PartitionSpec(*out)


def shardings_for(
  abstract_tree: Any, logical_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) given their logical axes."""

  def one(x, axes):
    spec = fit_spec_to_shape(logical_to_spec(axes, rules, mesh), x.shape, mesh)
    return NamedSharding(mesh, spec)

  return jax.tree.map(one, abstract_tree, logical_tree)


def place(tree: Any, logical_tree: Any, mesh: Mesh | None, rules: Rules = DEFAULT_RULES) -> Any:
  """Puts a pytree of arrays onto the mesh according to its logical axes."""
  if mesh is None:
    return tree
  return jax.device_put(tree, shardings_for(tree, logical_tree, mesh, rules))


def constrain(
  x: jax.Array, logical_axes: Sequence[str | None], mesh: Mesh | None, rules: Rules = DEFAULT_RULES
) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op without a mesh."""
  if mesh is None or mesh.size == 1:
    return x
  spec = fit_spec_to_shape(logical_to_spec(logical_axes, rules, mesh), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def rules_from_config(overrides: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
  """DEFAULT_RULES with per-name overrides from a config (e.g. {'embed': None} disables FSDP)."""
  table = dict(DEFAULT_RULES)
  for name, axes in (overrides or {}).items():
    table[name] = tuple(axes) if isinstance(axes, list) else axes
  rules = tuple(table.items())
  check_rules(rules)
  return rules
