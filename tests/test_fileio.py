"""rzero_jax.fileio: one atomic writer for local and gs:// paths, staging folders, and the
one-line error for gs:// without gcsfs. (A real gs:// run is in tests/multihost/test_pod_run.py.)"""

import os
import subprocess
import sys

import pytest

from rzero_jax import fileio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "sub" / "a.json"
  fileio.write_text(str(target), "one")
  fileio.write_text(str(target), "two")
  assert target.read_text() == "two"
  assert os.listdir(target.parent) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "a.txt"
  fileio.write_text(str(target), "old")

  def broken_replace(*_):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    fileio.write_text(str(target), "new")
  monkeypatch.undo()
  assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_append_read_glob_and_join(tmp_path):
  path = fileio.join(str(tmp_path), "logs", "m.jsonl")
  fileio.append_text(path, "a\n")
  fileio.append_text(path, "b\n")
  assert fileio.read_text(path) == "a\nb\n"
  assert fileio.glob(fileio.join(str(tmp_path), "logs"), "*.jsonl") == [path]
  assert fileio.join("gs://bucket/run", "eval", "x.json") == "gs://bucket/run/eval/x.json"


def test_staging_dir_is_all_or_nothing(tmp_path):
  final = tmp_path / "model"
  with pytest.raises(RuntimeError):
    with fileio.staging_dir(str(final)) as staging:
      open(os.path.join(staging, "config.json"), "w").write("{}")
      raise RuntimeError("crash while building")
  assert not final.exists() and os.listdir(tmp_path) == []
  with fileio.staging_dir(str(final)) as staging:
    open(os.path.join(staging, "config.json"), "w").write("{}")
  assert os.listdir(final) == ["config.json"] and os.listdir(tmp_path) == ["model"]


def test_gs_without_gcsfs_is_a_clear_error(monkeypatch):
  real = fileio.importlib.util.find_spec
  monkeypatch.setattr(
    fileio.importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a)
  )
  with pytest.raises(ValueError, match=r"gs://b/run: gs:// paths need gcsfs.*\[gcs\]"):
    fileio.exists("gs://b/run")


def test_launcher_refuses_gs_without_gcsfs_in_one_line(tmp_path):
  # sitecustomize hides gcsfs from the launched process, as on a machine without the extra.
  (tmp_path / "sitecustomize.py").write_text(
    "import importlib.util\n"
    "_find = importlib.util.find_spec\n"
    "importlib.util.find_spec = lambda name, *a, **k: (None if name == 'gcsfs' else "
    "_find(name, *a, **k))\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
  proc = subprocess.run(
    [sys.executable, "-m", "launch.train", "--workdir=gs://bucket/run"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "error: gs://bucket/run: gs:// paths need gcsfs" in proc.stderr, proc.stderr[-3000:]
  assert not os.path.exists(os.path.join(REPO, "gs:"))
