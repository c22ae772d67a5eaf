"""``iresnet.app.scoring``: how ``iresnet score`` reads the points it is given."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

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


def test_per_class_categoricals_score_each_image_under_its_own_class() -> None:
    """The class-conditional yardstick by hand: two classes, two pixels, two levels, add-one
    smoothing; each test image is scored under its class's counts."""
    from iresnet.app.tasks.base import categorical_bits_per_dim

    train = torch.tensor([[0, 0], [0, 0], [1, 1]])
    labels = torch.tensor([0, 0, 1])
    test, test_labels = torch.tensor([[0, 0], [1, 1]]), torch.tensor([0, 1])
    mean, _ = categorical_bits_per_dim(train, test, 2, labels, test_labels)
    # class 0: p(0) = 3/4 per pixel; class 1: p(1) = 2/3 per pixel
    expected = (-math.log2(3 / 4) - math.log2(2 / 3)) / 2
    assert mean == pytest.approx(expected, rel=1e-12)
    pooled, _ = categorical_bits_per_dim(train, test, 2)  # p(0) = 3/5, p(1) = 2/5
    assert pooled == pytest.approx((-math.log2(3 / 5) - math.log2(2 / 5)) / 2, rel=1e-12)
