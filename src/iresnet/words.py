"""Words for messages: a count in the singular for one.

At the bottom of the package, so that the library's messages (a CSV reader's "1 column") and
the application's summaries ("1 fc block") count the same way; ``iresnet.app.words`` re-exports
it.
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
