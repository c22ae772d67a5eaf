"""Words for the application's messages and summaries: a count in the singular for one.

The library's own ``iresnet.words.count``, re-exported where the config and the CLI have always
imported it.
"""

from __future__ import annotations

from ..words import count

__all__ = ["count"]
