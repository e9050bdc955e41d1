"""File I/O for local paths and gs:// alike, through etils.epath.

One atomic writer: on a local disk the bytes go to a temporary file in the same directory,
which is fsynced and renamed over the target; on an object store (gs://) a single object's
write is already atomic, so it is written directly (a rename there is a copy plus a delete).
`staging_dir` builds a whole folder the same way, and `staging_files` adds files to a local
folder that may hold others. A gs:// path without gcsfs installed is one
clear error, not a local folder named `gs:`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
from typing import Iterator

from etils import epath

_REMOTE_PREFIXES = ("gs://", "s3://")


def is_remote(p) -> bool:
  return os.fspath(p).startswith(_REMOTE_PREFIXES)


def check_backend(path) -> None:
  """Refuses a gs:// path when gcsfs (the `gcs` extra) is missing."""
  if os.fspath(path).startswith("gs://") and importlib.util.find_spec("gcsfs") is None:
    raise ValueError(
      f"{os.fspath(path)}: gs:// paths need gcsfs; install it with pip install 'rzero-jax[gcs]'"
    )


def path(p) -> epath.Path:
  """epath.Path of a local path (user-expanded, absolute) or of a gs:// URL."""
  s = os.fspath(p)
  check_backend(s)
  if "://" in s:
    return epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def join(base, *parts) -> str:
  """Joins path parts, keeping a gs:// prefix intact."""
  return (
    os.fspath(path(base).joinpath(*parts))
    if is_remote(base)
    else os.path.join(os.fspath(base), *parts)
  )


def exists(p) -> bool:
  return path(p).exists()


def isdir(p) -> bool:
  return path(p).is_dir()


def isfile(p) -> bool:
  return path(p).is_file()


def makedirs(p) -> None:
  """Creates a folder and its parents (a no-op on object stores, whose folders are implicit)."""
  if not is_remote(p):
    os.makedirs(os.fspath(path(p)), exist_ok=True)


def listdir(p) -> list[str]:
  return sorted(child.name for child in path(p).iterdir())


def glob(folder, pattern: str) -> list[str]:
  """Names under `folder` matching a glob pattern, sorted, as paths."""
  return sorted(os.fspath(x) for x in path(folder).glob(pattern))


def read_text(p) -> str:
  return path(p).read_text(encoding="utf-8")


def read_bytes(p) -> bytes:
  return path(p).read_bytes()


def open_file(p, mode: str = "r"):
  return path(p).open(mode)


@contextlib.contextmanager
def atomic_writer(p, mode: str = "w") -> Iterator:
  """A file object whose content replaces `p` only when the block ends without an error: a
  reader (or a crash) sees the old file or the new one, never a partial one. Locally it writes
  a temporary file beside `p`, fsyncs and renames it; on GCS one object upload (atomic)."""
  target = path(p)
  if is_remote(p):
    # Buffered and uploaded once at the end: an error midway uploads nothing.
    buf = io.BytesIO() if "b" in mode else io.StringIO()
    yield buf
    data = buf.getvalue()
    target.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return
  directory = os.path.dirname(os.fspath(target))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(target))
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  with contextlib.suppress(OSError):  # make the rename itself durable
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)


def write_bytes(p, data: bytes) -> None:
  """Writes `p` so that a reader sees the old content or the new, never a partial file."""
  with atomic_writer(p, "wb") as f:
    f.write(data)


def write_text(p, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def append_text(p, text: str) -> None:
  """Appends to a log-like file. Locally one write call (a kill leaves at most a truncated last
  line); on an object store, which cannot append, the object is rewritten whole."""
  if is_remote(p):
    target = path(p)
    old = target.read_bytes() if target.exists() else b""
    target.write_bytes(old + text.encode("utf-8"))
    return
  local = os.fspath(path(p))
  os.makedirs(os.path.dirname(local), exist_ok=True)
  with open(local, "a", encoding="utf-8") as f:
    f.write(text)
    f.flush()


def remove(p) -> None:
  target = path(p)
  if target.is_dir():
    target.rmtree()
  elif target.exists():
    target.unlink()


def copy_tree(src, dst) -> None:
  """Copies every file under `src` into `dst` (either may be remote)."""
  src_path, dst_path = path(src), path(dst)
  for child in src_path.iterdir():
    if child.is_dir():
      copy_tree(child, dst_path / child.name)
    else:
      if not is_remote(dst_path):
        os.makedirs(os.fspath(dst_path), exist_ok=True)
      (dst_path / child.name).write_bytes(child.read_bytes())


_local_copies: dict[str, str] = {}


def local_copy(p) -> str:
  """A local path for `p`: itself when local; for a remote file or folder, a copy downloaded
  once per process into a temporary folder (for readers that need a real file, such as
  safetensors' memory map or a tokenizer)."""
  s = os.fspath(p)
  if not is_remote(s):
    return s
  if s not in _local_copies:
    src = path(s)
    if not src.exists():
      raise FileNotFoundError(f"{s}: no such file or directory")
    local = os.path.join(tempfile.mkdtemp(prefix="rzero-copy-"), src.name)
    if src.is_dir():
      copy_tree(src, local)
    else:
      with open(local, "wb") as f:
        f.write(src.read_bytes())
    _local_copies[s] = local
  return _local_copies[s]


@contextlib.contextmanager
def staging_dir(final, commit_file: str | None = None) -> Iterator[str]:
  """A local folder to build `final` in; on success its files move into `final`.

  Locally the folder is a sibling of `final` (the same filesystem) and replaces it by rename,
  so `final` is either absent or complete. For a remote `final`, the files are built in a local
  temporary folder and uploaded; `commit_file`, if given, is uploaded last, so its presence
  marks a complete folder. On error nothing is moved and the staging folder is removed.
  """
  if is_remote(final):
    staging = tempfile.mkdtemp(prefix="rzero-staging-")
    try:
      yield staging
      names = sorted(os.listdir(staging), key=lambda n: n == commit_file)
      for name in names:
        src = os.path.join(staging, name)
        dst = path(final) / name
        if os.path.isdir(src):
          copy_tree(src, dst)
        else:
          dst.write_bytes(open(src, "rb").read())
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    return
  final = os.fspath(path(final))
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
  try:
    yield staging
    if os.path.isdir(final):
      shutil.rmtree(final)
    os.replace(staging, final)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


@contextlib.contextmanager
def staging_files(out_dir, last: str | None = None) -> Iterator[str]:
  """A temporary folder inside the local folder `out_dir`; on success each file built in it
  replaces its namesake in `out_dir` by rename (`last` last, so its presence marks the others
  complete), and the folder's other files are kept. On error nothing is moved."""
  out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
  os.makedirs(out_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".staging-", dir=out_dir)
  try:
    yield staging
    for name in sorted(os.listdir(staging), key=lambda n: n == last):
      os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
