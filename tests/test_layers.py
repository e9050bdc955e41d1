"""Imports go in layers, never upwards: a module may import from its own layer or below.

docs/ARCHITECTURE.md shows the same list. Imports inside functions count: a lazy import hides
a cycle, it does not remove it.
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "rzero_jax")

# Lowest first. A module is in the layer of the longest prefix listed here.
LAYERS = (
  (
    "rzero_jax.prompts",
    "rzero_jax.sharding",
    "rzero_jax.grading",
    "rzero_jax.fileio",
    "rzero_jax.multihost",
    "rzero_jax.compiles",
  ),
  ("rzero_jax.models", "rzero_jax.tokenizer", "rzero_jax.checkpoint"),
  ("rzero_jax.sampling", "rzero_jax.rl"),
  ("rzero_jax.worlds",),
  ("rzero_jax.evaluation",),
  ("rzero_jax.rzero",),
  ("launch", "configs"),  # entry points and config files: the library never imports them
)


def layer_of(module: str) -> int | None:
  best = None
  for i, names in enumerate(LAYERS):
    for name in names:
      if (module == name or module.startswith(name + ".")) and (
        best is None or len(name) > len(best[1])
      ):
        best = (i, name)
  return None if best is None else best[0]


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path: str) -> list[tuple[int, str]]:
  """(line, imported module) for every import of ours in the file, at any depth."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  package = _module_name(path).rsplit(".", 0 if path.endswith("__init__.py") else 1)[0]
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      # `from rzero_jax import models` imports rzero_jax.models.
      found += [
        (node.lineno, f"{base}.{alias.name}")
        if layer_of(f"{base}.{alias.name}") is not None
        else (node.lineno, base)
        for alias in node.names
      ]
  ours = ("rzero_jax", "launch", "configs")
  return [(line, name) for line, name in found if name.split(".")[0] in ours]


def _sources():
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        yield os.path.join(root, name)


def upward_imports() -> list[str]:
  bad = []
  for path in _sources():
    module = _module_name(path)
    own = layer_of(module)
    if own is None:
      continue
    for line, name in imports_of(path):
      target = layer_of(name)
      if target is not None and target > own:
        bad.append(
          f"{os.path.relpath(path, REPO)}:{line}: {module} (layer {own}) imports "
          f"{name} (layer {target})"
        )
  return bad


def test_every_module_is_in_a_layer():
  unplaced = [
    _module_name(p)
    for p in _sources()
    if layer_of(_module_name(p)) is None and _module_name(p) != "rzero_jax"
  ]
  assert not unplaced, f"add these to LAYERS (and docs/ARCHITECTURE.md): {unplaced}"


def test_no_import_goes_upwards():
  bad = upward_imports()
  assert not bad, "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
  # The walk must catch an import hidden inside a function, absolute or relative.
  fake = tmp_path / "rzero_jax"
  (fake / "models").mkdir(parents=True)
  (fake / "models" / "bad.py").write_text(
    "def f():\n  from rzero_jax.rzero import loop\n  from ..evaluation import runner\n"
  )
  globals_ = globals()
  monkeypatch.setitem(globals_, "REPO", str(tmp_path))
  monkeypatch.setitem(globals_, "PACKAGE", str(fake))
  bad = upward_imports()
  assert (
    len(bad) == 2
    and "rzero_jax.rzero.loop (layer 5)" in bad[0]
    and "rzero_jax.evaluation.runner (layer 4)" in bad[1]
  ), bad
