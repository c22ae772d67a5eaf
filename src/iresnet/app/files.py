"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def atomic_write(
    path: str | os.PathLike[str], content: str | bytes | Callable[[BinaryIO], None]
) -> Path:
    """Write ``content`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: the file to (re)place; missing parent folders are created; an existing file keeps
            its permissions.
        content: text (UTF-8), bytes, or a function that writes to a binary file object.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the folder is not writable or the disk is full; the temporary file is removed
            and an existing file at ``path`` is left as it was.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = out.stat().st_mode & 0o777 if out.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, str):
                fh.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out
