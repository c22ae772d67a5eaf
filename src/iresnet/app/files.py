"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "json_safe", "out_path"]


def atomic_write(
    path: str | os.PathLike[str], content: str | bytes | Callable[[BinaryIO], None]
) -> Path:
    """Write ``content`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: the file to (re)place; missing parent folders are created; an existing file keeps
            its permissions.
        content: text (UTF-8), bytes, or a function that writes to a binary file object.

    A temporary file of ``path`` that a killed process left (``.NAME.XXXXXXXX.tmp``, older than
    this write) is removed once the new file is in place; other files' are left alone.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the folder is not writable or the disk is full; the temporary file is removed
            and an existing file at ``path`` is left as it was.
    """
    out = Path(path)
    started = time.time()
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
    _remove_stale_temporaries(out, started)
    return out


def _remove_stale_temporaries(out: Path, before: float) -> None:
    """Delete the temporary files of ``out`` (``mkstemp``'s ``.NAME.`` + 8 characters +
    ``.tmp``) last modified before ``before``: a process killed mid-write leaves one, and no
    later write would. ``.a.png.XXXXXXXX.tmp`` is ``a.png``'s, not ``a``'s (no dot in the
    random part). One written to since ``before`` may be another process's write under way:
    it stays."""
    own = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            if own.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < before:
                        os.unlink(entry.path)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, recursively through dicts,
    lists and tuples: strict JSON (what ``jq`` and most parsers accept) has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def out_path(text: str) -> Path:
    """An ``--out`` argument as a path; an empty one is refused (``Path("")`` is the current
    folder, where a run would scatter its files among the user's).

    Raises:
        argparse.ArgumentTypeError: an empty or blank path.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a folder or file")
    return Path(text)
