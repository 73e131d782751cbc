"""Atomic file writes that honour the umask.

Results, exported graphs, engines and their sidecars are written to a temporary file in the
target's folder and renamed over the target, so a reader never sees half a file and an
interrupted write leaves the previous file (or none). `tempfile.mkstemp` would create the
temporary file with mode 0600, which the rename carries over: a service running as another
user could not read the exported model. Here the temporary file is created the way `open()`
creates a file, with mode 0o666 filtered by the process's umask (or a default ACL of the
folder), so the final file gets the permissions any ordinary new file would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(path: Path, suffix: str) -> tuple[int, Path]:
    """Create a new, empty, uniquely named file beside `path`; return its descriptor and path."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            # 0o666 & ~umask, exactly as open(..., "w") would create it.
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write `path`'s contents to, renamed to `path` when the block succeeds.

    The temporary file exists (empty) when the block starts, in `path`'s folder (created if
    needed), with the permissions of an ordinary new file. Any exception in the block removes it
    and leaves `path` untouched. Writers may open it by name (libraries that take a path).

    Example:
        with atomic_path("model.onnx", suffix=".onnx") as tmp:
            onnx.save(model, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, suffix)
    mode = os.fstat(fd).st_mode & 0o7777
    os.close(fd)
    try:
        yield tmp
        # Some writers (safetensors) replace the file by name with one of mode 0600: give back the mode.
        if os.stat(tmp).st_mode & 0o7777 != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` through a temporary file and a rename; return the path."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    return write_bytes_atomic(path, text.encode(encoding))
