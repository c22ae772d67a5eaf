"""The README's Python examples run as they are written."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from iresnet.errors import RouletteVarianceWarning

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        # the first thing a reader runs shows no estimator of infinite variance
        warnings.simplefilter("error", RouletteVarianceWarning)
        for code in BLOCKS[: index + 1]:  # later blocks may use names from earlier ones
            exec(compile(code, f"README.md block {index}", "exec"), namespace)
    assert "guaranteed invertible" in capsys.readouterr().out or index > 0
