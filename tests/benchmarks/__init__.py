"""Tests of the benchmark scripts, and what they share."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest


def usage_error(monkeypatch, capsys, script: ModuleType, *argv: str) -> str:
    """What ``script.main()`` prints on stderr when ``argv`` is refused as a usage error (exit
    status 2) before any work: its ``environment()``, the first thing a run does, must not be
    reached."""
    monkeypatch.setattr(sys, "argv", [f"{script.__name__}.py", *argv])
    monkeypatch.setattr(script, "environment", lambda: pytest.fail("ran"))
    with pytest.raises(SystemExit) as stop:
        script.main()
    assert stop.value.code == 2
    return capsys.readouterr().err
