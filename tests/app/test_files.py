"""``iresnet.app.files``: atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from iresnet.app.files import atomic_write


def test_a_write_removes_its_own_stale_temporaries_and_no_others(tmp_path: Path) -> None:
    """A process killed mid-write left ``.fig.png.XXXXXXXX.tmp`` in the run folder for good,
    though a resumed run wrote ``fig.png`` again."""
    stale = ["fig.png.k3_9abcd", "fig.png.00000000"]  # mkstemp's 8 random characters
    others = [
        ".fig.XXXXXXXX.png.abcdefgh.tmp",
        ".fig.png.abcdefgh.tmp.keep",
        ".other.png.abcdefgh.tmp",
        "fig.png.abcdefgh.tmp",
        ".fig.png.short.tmp",
    ]
    old = os.stat(tmp_path).st_mtime - 3600
    for name in [f".{s}.tmp" for s in stale] + others:
        (tmp_path / name).write_bytes(b"half")
        os.utime(tmp_path / name, (old, old))
    busy = tmp_path / ".fig.abcdefgh.tmp"  # fig's own, written to by another process now
    busy.write_bytes(b"half")
    os.utime(busy, (old + 7200, old + 7200))
    atomic_write(tmp_path / "fig.png", b"new")
    atomic_write(tmp_path / "fig", b"new")  # its temporaries are named .fig.XXXXXXXX.tmp
    assert (tmp_path / "fig.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["fig.png", "fig", ".fig.abcdefgh.tmp", *others]
    )
