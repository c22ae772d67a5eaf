"""Words for the application's messages and summaries: a count in the singular for one.

A module of its own, below the config and the CLI, so that both use it (the library, which
never imports the application, keeps its few plurals inline).
"""

from __future__ import annotations

__all__ = ["count"]


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (a plain ``s`` added).

    Examples:
        >>> count(1, "fc block"), count(2, "step"), count(0, "image")
        ('1 fc block', '2 steps', '0 images')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
