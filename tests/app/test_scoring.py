"""``iresnet.app.scoring``: how ``iresnet score`` reads the points it is given."""

from __future__ import annotations

from pathlib import Path

from iresnet.app.scoring import _csv_integer_columns


def test_integer_columns_see_the_values_behind_inline_comments(tmp_path: Path) -> None:
    """``0.5  # note`` was taken for a header name, so its column still read as integer
    levels; the reader of the values (``load_array``) cuts the comment and reads 0.5."""
    path = tmp_path / "x.csv"
    path.write_text("# levels\n3,0.5  # note\n4,1 # another\n", encoding="utf-8")
    assert _csv_integer_columns(path, 2).tolist() == [True, False]
