"""``iresnet.app.scoring``: how ``iresnet score`` reads the points it is given."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from iresnet.app.scoring import _as_contexts, _csv_integer_columns
from iresnet.errors import DataError


def test_integer_columns_see_the_values_behind_inline_comments(tmp_path: Path) -> None:
    """``0.5  # note`` was taken for a header name, so its column still read as integer
    levels; the reader of the values (``load_array``) cuts the comment and reads 0.5."""
    path = tmp_path / "x.csv"
    path.write_text("# levels\n3,0.5  # note\n4,1 # another\n", encoding="utf-8")
    assert _csv_integer_columns(path, 2).tolist() == [True, False]


def test_a_context_of_the_wrong_width_is_counted_in_words() -> None:
    """The message said "expected contexts with 1 value(s) per row"."""
    for k, words in ((1, "1 value per row"), (3, "3 values per row")):
        task = SimpleNamespace(context_dim=k, data=SimpleNamespace(class_context=False))
        with pytest.raises(DataError) as refused:
            _as_contexts(task, np.zeros((4, 2)), "c.csv")  # type: ignore[arg-type]
        assert str(refused.value) == f"c.csv: expected contexts with {words}, got 2"
