"""Tests of user-array loading, splitting and standardization."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from iresnet.datasets.arrays import (
    Standardizer,
    check_array_file,
    check_spread,
    discrete_columns,
    load_array,
    note_outliers,
    split_array,
)
from iresnet.errors import ConfigError, DataError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _data(n: int = 50, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.array([1.0, 10.0, 0.01])[:d] + np.arange(d)


# --- round trips -------------------------------------------------------------------------------


def test_npy_round_trip(tmp_path: Path) -> None:
    x = _data()
    np.save(tmp_path / "x.npy", x)
    y = load_array(tmp_path / "x.npy")
    assert y.dtype == np.float64 and y.shape == (50, 3)
    np.testing.assert_array_equal(x, y)
    # Integer and float32 arrays are promoted to float64 exactly.
    np.save(tmp_path / "i.npy", np.arange(6, dtype=np.int32).reshape(3, 2))
    np.testing.assert_array_equal(load_array(str(tmp_path / "i.npy")), np.arange(6.0).reshape(3, 2))


@pytest.mark.parametrize("header", [None, "a,b,c", '"x 1","y",z'])
def test_csv_round_trip(tmp_path: Path, header: str | None) -> None:
    x = _data()
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in x)
    text = (header + "\n" if header else "") + body + "\n\n"  # trailing blank line ignored
    y = load_array(_write(tmp_path / "x.csv", text))
    np.testing.assert_array_equal(x, y)  # repr round-trips floats exactly


def test_csv_single_column_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_bytes("\ufeffvalue\r\n1.5\r\n-2\r\n 3e2 \r\n".encode())
    np.testing.assert_array_equal(load_array(path), [[1.5], [-2.0], [300.0]])


# --- refusals ----------------------------------------------------------------------------------


def _refused(path: Path, *fragments: str, **kw: int) -> None:
    with pytest.raises(DataError) as info:
        load_array(path, **kw)
    msg = str(info.value)
    assert path.name in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_missing_file(tmp_path: Path) -> None:
    _refused(tmp_path / "nope.npy", "does not exist")
    _refused(tmp_path, "directory")


def test_unknown_extension(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "x.txt", "1,2\n3,4\n"), "'.txt'", ".npy", ".csv")


def test_empty_and_zero_rows(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "empty.csv", ""), "empty")
    _refused(_write(tmp_path / "header_only.csv", "a,b\n"), "zero data rows")
    _refused(_write(tmp_path / "blank.csv", "\n\n"), "zero data rows")
    np.save(tmp_path / "zero.npy", np.zeros((0, 3)))
    _refused(tmp_path / "zero.npy", "zero data rows")


def test_one_row(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "one.csv", "a,b\n1,2\n"), "1-row file")
    np.save(tmp_path / "one.npy", np.zeros((1, 4)))
    _refused(tmp_path / "one.npy", "1-row file")


def test_comment_lines_are_skipped_as_numpy_does(tmp_path: Path) -> None:
    """A first line ``# comment`` was "ragged CSV: line 2 has 2 columns but line 1 has 1"."""
    text = '# made by hand, "quoted\n  # x, y\n1,2\n# a note\n3,4\n'
    np.testing.assert_array_equal(load_array(_write(tmp_path / "c.csv", text)), [[1, 2], [3, 4]])
    header = tmp_path / "h.csv"  # numpy.savetxt's header is a comment: not a header row
    np.savetxt(header, [[1.0, 2.0], [3.0, 4.0]], delimiter=",", header="x,y")
    np.testing.assert_array_equal(load_array(header), np.loadtxt(header, delimiter=","))
    # line numbers still count the comments
    _refused(_write(tmp_path / "r.csv", "# c\n1,2\n# c\n3,4,5\n"), "line 4", "line 2 has 2")


def test_inline_comments_are_cut_as_numpy_does(tmp_path: Path) -> None:
    """``1,2  # note`` was "non-numeric field '2  # note'": only whole-line comments were
    skipped, where ``numpy.loadtxt(comments="#")`` cuts every comment to the end of its line."""
    text = "x,y # units: m\n1.0,2.0  # first\n3,4#\n# 5,6\n7,8\n"
    path = _write(tmp_path / "c.csv", text)
    np.testing.assert_array_equal(load_array(path), np.loadtxt(path, delimiter=",", skiprows=1))
    # a '#' inside a quoted header name is the name's; line numbers still count every line
    _refused(_write(tmp_path / "q.csv", '"#id",b\n1,2 # c\n3,x # c\n'), "'x'", "line 3")


def test_ragged_csv_names_line_and_counts(tmp_path: Path) -> None:
    path = _write(tmp_path / "ragged.csv", "a,b\n1,2\n3,4\n5,6,7\n")
    _refused(path, "line 4", "3 columns", "line 1 has 2")


def test_non_numeric_field_names_line_and_column(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "bad.csv", "1,2\n3,x\n"), "'x'", "line 2", "column 2")
    # A mixed first row is not a header: the non-numeric field is reported.
    _refused(_write(tmp_path / "mixed.csv", "a,2\n3,4\n"), "'a'", "line 1", "column 1")
    _refused(_write(tmp_path / "mixed.csv", "a,2\n3,4\n"), "only a first header row")


@pytest.mark.parametrize(
    "text, hint",
    [
        ("a;b;c\n1;2;3\n4;5;6\n", "semicolon-separated: save it comma-separated"),
        ("1\t2\n3\t4\n", "tab-separated"),
        ("0,37;-0,53\n1,25;2,5\n", "semicolon-separated: save it comma-separated with decimal"),
        ("1,2,\n3,4,\n", "every row ends in an empty field (a trailing comma after the last"),
        ("1,,2\n3,4,5\n", "empty field (a missing value?) at line 1, column 2;"),
    ],
)
def test_a_non_numeric_field_says_what_it_likely_is(tmp_path: Path, text: str, hint: str) -> None:
    """A semicolon CSV and a trailing comma met the header advice (try-out 8, F10)."""
    _refused(_write(tmp_path / "x.csv", text), hint)


def test_a_long_field_is_quoted_short(tmp_path: Path) -> None:
    """A semicolon file's whole row was quoted as the field (try-out 11, F7)."""
    row = ";".join(["1.5"] * 400)
    with pytest.raises(DataError) as exc:
        load_array(_write(tmp_path / "x.csv", f"{row}\n{row}\n"))
    assert len(str(exc.value)) < 300 and "semicolon-separated" in str(exc.value)


@pytest.mark.parametrize("value, kind", [("nan", "NaN"), ("inf", "Inf"), ("-1e999", "Inf")])
def test_non_finite_csv(tmp_path: Path, value: str, kind: str) -> None:
    path = _write(tmp_path / "nf.csv", f"a,b,c\n1,2,3\n\n4,5,6\n7,{value},9\n{value},1,1\n")
    # Line numbers count the header and the blank line: the first bad value is line 5, col 2.
    _refused(path, kind, "line 5, column 2", "first of 2")
    _refused(path, "drop or impute those rows" if kind == "NaN" else "clip the infinite")


@pytest.mark.parametrize("value", ["NA", "nan", "NaN", "", "?", "N/A", "null", "None", " na "])
def test_a_missing_value_is_refused_naming_its_line_and_column(tmp_path: Path, value: str) -> None:
    """``NA`` or ``?`` met the header advice ("only a first header row may hold names"), and
    ``nan`` the advice for NaN in an array; each is a missing value, refused where it is, with
    the count of rows to drop or impute."""
    text = f"a,b,c\n1,2,3\n\n4,{value},6\n7,8,9\n{value},1,{value}\n"
    with pytest.raises(DataError) as refused:
        load_array(_write(tmp_path / "m.csv", text))
    what = f"missing value {value.strip()!r}" if value else "empty field (a missing value?)"
    assert str(refused.value) == (
        f"{tmp_path / 'm.csv'}: {what} at line 4, column 2 (first of 2 rows with missing "
        "values); missing values (NA, NaN, ?, empty fields) are not supported: drop or impute "
        "those rows"
    )


@pytest.mark.parametrize("text", ["1,2,\n3,4,\n", "a,b,\n1,2,\n3,4,\n", "1,2,\n\n3,4, \n"])
def test_a_trailing_comma_on_every_row_is_named_as_one(tmp_path: Path, text: str) -> None:
    """A file whose every row ends in a comma was told its rows hold missing values to drop
    or impute (every row): the trailing comma is what to remove."""
    path = _write(tmp_path / "t.csv", text)
    with pytest.raises(DataError) as refused:
        load_array(path)
    first = 2 if text.startswith("a") else 1
    assert str(refused.value) == (
        f"{path}: every row ends in an empty field (a trailing comma after the last column, "
        f"line {first} first); remove the trailing commas, or the empty last column"
    )
    # a missing value elsewhere too: the missing-value message, as before
    _refused(_write(tmp_path / "u.csv", "1,2,\n3,NA,\n"), "missing values (NA, NaN, ?")


def test_a_spreadsheet_error_value_is_a_field_not_a_comment(tmp_path: Path) -> None:
    """Excel's ``#N/A`` was cut as a comment and met the comment hint: it is a missing
    value, and ``#DIV/0!`` a non-numeric field, named as written; a comment stays one."""
    path = _write(tmp_path / "x.csv", "a,b\n1,2\n3, #N/A\n")
    _refused(path, "missing value '#N/A' at line 3, column 2; missing values")
    _refused(_write(tmp_path / "y.csv", "1,2\n#DIV/0!,4\n"), "'#DIV/0!' at line 2, column 1")
    assert load_array(_write(tmp_path / "z.csv", "1,2 #N/A is a note here\n3,4\n")).shape == (2, 2)
    assert load_array(_write(tmp_path / "w.csv", "1,2\n3,4 #N/A\n")).shape == (2, 2)


def test_one_missing_value_in_the_last_column_may_be_a_trailing_comma(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", "1,2\n3,\n5,6\n")
    _refused(path, "empty field (a missing value, or a trailing comma?) at line 2, column 2; ")
    with pytest.raises(DataError) as refused:
        load_array(path)
    assert "first of" not in str(refused.value)


def test_names_that_are_not_missing_values_keep_their_own_advice(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "x.csv", "1,2\n3,NAN-ish\n"), "non-numeric field 'NAN-ish'")
    # a valid file reads as before, a header of missing-value words included
    path = _write(tmp_path / "h.csv", "NA,?\n1,2\n3,4\n")
    np.testing.assert_array_equal(load_array(path), [[1, 2], [3, 4]])


def test_non_finite_npy(tmp_path: Path) -> None:
    x = _data()
    x[7, 2] = np.nan
    x[9, 0] = np.inf
    np.save(tmp_path / "nan.npy", x)
    _refused(tmp_path / "nan.npy", "NaN", "x[7, 2]")


def test_not_2d(tmp_path: Path) -> None:
    np.save(tmp_path / "vec.npy", np.arange(10.0))
    _refused(tmp_path / "vec.npy", "1-D", "reshape(-1, 1)", "(10, 1)")
    np.save(tmp_path / "img.npy", np.zeros((4, 2, 2)))
    _refused(tmp_path / "img.npy", "(4, 2, 2)", "reshape")
    np.save(tmp_path / "scalar.npy", np.float64(3.0))
    _refused(tmp_path / "scalar.npy", "2-D")


def test_non_numeric_npy_dtype(tmp_path: Path) -> None:
    np.save(tmp_path / "str.npy", np.array([["a", "b"], ["c", "d"]]))
    _refused(tmp_path / "str.npy", "dtype", "astype")
    np.save(tmp_path / "obj.npy", np.array([[1, None], [2, 3]], dtype=object), allow_pickle=True)
    _refused(tmp_path / "obj.npy", "pickle")
    np.save(tmp_path / "cplx.npy", np.ones((3, 2), dtype=complex))
    _refused(tmp_path / "cplx.npy", "complex")
    _write(tmp_path / "garbage.npy", "not an npy file at all")
    _refused(tmp_path / "garbage.npy", "not a .npy file")


def test_max_dim(tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((5, 65)))
    _refused(tmp_path / "wide.npy", "65 columns", "max_dim=64")
    assert load_array(tmp_path / "wide.npy", max_dim=65).shape == (5, 65)
    _refused(tmp_path / "wide.npy", "max_dim=8", max_dim=8)
    np.save(tmp_path / "nocols.npy", np.zeros((5, 0)))
    _refused(tmp_path / "nocols.npy", "zero columns")


# --- split -------------------------------------------------------------------------------------


def test_split_is_a_fixed_partition() -> None:
    x = np.arange(100.0).reshape(50, 2)
    train, test = split_array(x, 0.2, seed=3)
    assert train.shape == (40, 2) and test.shape == (10, 2)
    rows = np.concatenate([train, test])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), x[:, 0])  # a partition of the rows
    train2, test2 = split_array(x, 0.2, seed=3)
    np.testing.assert_array_equal(test, test2)
    _, test3 = split_array(x, 0.2, seed=4)
    assert not np.array_equal(test, test3)
    # Both parts non-empty even at extreme fractions.
    for frac in (1e-6, 1 - 1e-6):
        tr, te = split_array(x[:2], frac)
        assert len(tr) == 1 and len(te) == 1
    with pytest.raises(DataError):
        split_array(x[:1])
    with pytest.raises(ValueError):
        split_array(x, 1.0)


# --- Standardizer ------------------------------------------------------------------------------


def test_standardizer_moments_and_round_trip() -> None:
    x = _data(200)
    s = Standardizer.fit(x)
    z = s.transform(x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(s.inverse_transform(z), x, rtol=1e-12, atol=1e-12)
    # Torch tensors keep their type and dtype and give the same numbers.
    zt = s.transform(torch.from_numpy(x).float())
    assert isinstance(zt, torch.Tensor) and zt.dtype == torch.float32
    # Compare against the float32-rounded input: that rounding (~1e-7 on values ~2) divided by
    # std = 0.01 is all that separates the float32 and float64 results.
    z32 = s.transform(x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(zt.numpy(), z32, rtol=1e-5, atol=1e-5)
    xt = s.inverse_transform(torch.from_numpy(z))
    assert xt.dtype == torch.float64
    np.testing.assert_allclose(xt.numpy(), x, rtol=1e-12, atol=1e-12)
    with pytest.raises(DataError, match="2 columns"):
        s.transform(np.zeros((3, 2)))


def test_standardizer_constant_column() -> None:
    x = np.column_stack([np.full(10, 0.1), np.zeros(10), np.arange(10.0)])
    s = Standardizer.fit(x)
    assert s.std[:2] == [1.0, 1.0]
    z = s.transform(x)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[:, :2], 0.0, atol=1e-15)


def test_standardizer_log_abs_det_brute_force() -> None:
    x = _data(100)
    s = Standardizer.fit(x)
    # The map z = (x - mean) / std is affine with Jacobian diag(1 / std); build it as a matrix.
    jac = np.diag(1.0 / np.asarray(s.std))
    sign, logdet = np.linalg.slogdet(jac)
    assert sign == 1.0
    assert math.isclose(s.log_abs_det, logdet, rel_tol=1e-12, abs_tol=1e-12)
    # Finite-difference Jacobian of transform at a sample agrees too.
    eps, x0 = 1e-6, x[0]
    fd = np.stack(
        [(s.transform(x0 + eps * e) - s.transform(x0 - eps * e)) / (2 * eps) for e in np.eye(3)],
        axis=1,
    )
    assert math.isclose(np.linalg.slogdet(fd)[1], s.log_abs_det, abs_tol=1e-6)
    # Change of variables: a standard normal on z is the N(mean, diag std^2) density on x.
    mean, std = np.asarray(s.mean), np.asarray(s.std)
    z = s.transform(x)
    log_pz = -0.5 * (z**2).sum(1) - 1.5 * math.log(2 * math.pi)
    log_px = (
        -0.5 * (((x - mean) / std) ** 2).sum(1) - 1.5 * math.log(2 * math.pi) - np.log(std).sum()
    )
    np.testing.assert_allclose(log_pz + s.log_abs_det, log_px, rtol=1e-12)


def test_standardizer_dict_round_trip() -> None:
    s = Standardizer.fit(_data())
    d = json.loads(json.dumps(s.to_dict()))
    s2 = Standardizer.from_dict(d)
    assert s2 == s
    assert s2.dim == 3
    with pytest.raises(ConfigError):
        Standardizer.from_dict({"mean": [0.0]})
    with pytest.raises(ConfigError):
        Standardizer.from_dict({"mean": [0.0], "std": [0.0]})
    with pytest.raises(ConfigError):
        Standardizer.from_dict({"mean": [0.0, 1.0], "std": [1.0]})
    with pytest.raises(ConfigError):
        Standardizer.from_dict({"mean": ["a"], "std": [1.0]})


def test_integer_data_is_refused_or_dequantised_in_its_cells(tmp_path):
    from iresnet.datasets import load_dataset

    path = tmp_path / "counts.npy"
    levels = np.random.default_rng(0).integers(0, 5, size=(400, 2)).astype(float)
    np.save(path, levels)
    with pytest.raises(DataError, match="column 1 takes only 5 values"):
        load_dataset("array", path=str(path))
    bundle = load_dataset("array", path=str(path), dequantize="uniform")
    assert bundle.dequantize_width == [1.0, 1.0]
    # The test split holds one fixed draw within each value's cell, the same on every load.
    offsets = bundle.test_x - bundle.test_x.round()
    assert offsets.abs().max() <= 0.5 and offsets.std() > 0.2
    again = load_dataset("array", path=str(path), dequantize="uniform")
    assert torch.equal(bundle.test_x, again.test_x)
    plain = load_dataset("array", path=str(path), dequantize="off")
    assert plain.dequantize_width is None and torch.equal(plain.test_x, plain.test_x.round())


def test_discrete_columns_finds_grids_but_not_continuous_data():
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(size=1000), rng.integers(0, 3, 1000) * 0.1, rng.integers(0, 900, 1000)]
    widths = discrete_columns(x)
    assert widths[0] == 0.0 and widths[1] == pytest.approx(0.1) and widths[2] == 0.0


def test_constant_columns_are_named(tmp_path):
    x = np.c_[np.arange(10.0), np.full(10, 7.0), np.full(10, 7.0)]
    with pytest.raises(
        DataError, match=r"src.csv: column 2 is constant \(every value is 7\) \(and 1 more\)"
    ):
        check_spread(x, "src.csv")
    check_spread(np.c_[np.arange(10.0), np.arange(10.0) ** 2], "fine")


@pytest.mark.parametrize("header", [",x,y", "Unnamed: 0,x,y"])
def test_a_pandas_index_column_is_found(tmp_path, header):
    path = tmp_path / "frame.csv"
    path.write_text(
        header + "\n" + "".join(f"{i},{i * 0.3 % 1},{i * 0.7 % 1}\n" for i in range(20))
    )
    with pytest.raises(DataError, match=r"to_csv\(index=False\).*data.index_column=drop"):
        load_array(path)
    assert load_array(path, index_column="drop").shape == (20, 2)
    assert load_array(path, index_column="keep").shape == (20, 3)
    named = tmp_path / "named.csv"
    named.write_text("id,x,y\n" + "".join(f"{i},{i * 0.3 % 1},{i * 0.7 % 1}\n" for i in range(20)))
    assert load_array(named).shape == (20, 3)  # a named column is the user's choice


def test_standardizer_names_the_place_of_a_bad_value():
    with pytest.raises(DataError, match="row 2, column 1"):
        Standardizer.fit(np.array([[0.0, 1.0], [np.inf, 2.0]]))


def test_the_fewest_rows_in_a_message_are_the_readers_own(tmp_path: Path) -> None:
    """An empty file said "at least 2 samples" to ``iresnet score``, which takes one row."""
    empty = _write(tmp_path / "empty.csv", "")
    _refused(empty, "file is empty", "at least 1 sample (row)", min_rows=1)
    _refused(empty, "file is empty", "at least 2 samples (rows)")
    _refused(_write(tmp_path / "blank.csv", "\n\n"), "at least 1 sample (row)", min_rows=1)
    _refused(_write(tmp_path / "h.csv", "a,b\n"), "at least 2 samples (rows)")
    _refused(_write(tmp_path / "two.csv", "1,2\n3,4\n"), "2-row file", "at least 3", min_rows=3)


@pytest.mark.parametrize(
    "array,needles",
    [
        (np.array([["a", "b"]]), ["<U1", "text"]),
        (np.array([[b"1", b"2"]]), ["|S1", "text"]),
        (np.zeros(3, dtype=[("x", "f8"), ("y", "f8")]), ["record", "structured_to_unstructured"]),
        (np.zeros((2, 2), dtype="datetime64[s]"), ["datetime64[s]", "astype(float)"]),
        (np.ones((3, 2), dtype=complex), ["complex128", "real and imaginary columns"]),
    ],
    ids=["unicode", "bytes", "record", "datetime", "complex"],
)
def test_a_non_numeric_dtype_gets_the_hint_for_its_kind(tmp_path, array, needles):
    """The complex-data hint was given for every dtype (strings and records too)."""
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError) as info:
        load_array(tmp_path / "x.npy")
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert ("imaginary" in msg) == (array.dtype.kind == "c"), msg


@pytest.mark.parametrize("max_dim", [None, "80", 0, 2.5, True])
def test_max_dim_must_be_a_positive_integer(tmp_path: Path, max_dim) -> None:
    """``max_dim=None`` raised a bare TypeError from a comparison, and 2.5 was taken (try-out
    8, F9)."""
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="max_dim must be a positive integer"):
        load_array(tmp_path / "x.npy", max_dim=max_dim)


def test_a_constant_context_column_is_named_once_when_the_run_starts(tmp_path: Path) -> None:
    """A constant data column is refused by name; a constant context column was accepted
    silently (std set to 1). It is harmless (no unbounded likelihood), only useless: a warning
    names it when the contexts are first fitted, not on every evaluation."""
    import warnings

    from iresnet.datasets import load_dataset

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(100, 2)))
    np.save(tmp_path / "c.npy", np.c_[rng.normal(size=100), np.full(100, 3.0)])
    args = {"path": str(tmp_path / "x.npy"), "context_path": str(tmp_path / "c.npy")}
    with pytest.warns(UserWarning, match=r"c.npy: context column 2 is constant \(every value is 3"):
        bundle = load_dataset("array", **args)
    assert bundle.context_standardizer is not None
    assert bundle.context_standardizer.std[1] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a resumed or evaluated run: said once, at the start
        load_dataset("array", **args, context_standardizer=bundle.context_standardizer)


def test_a_ragged_line_says_a_comment_was_cut_from_it(tmp_path: Path) -> None:
    """Tryout 13: ``1.0#2.0,3.0`` read "line 3 has 1 columns but line 1 has 2", while the line
    shows two fields; the comment cut at its '#' is named, and one column is one. Its place is
    a character, not a "column" next to a count of columns (try-out 14, F11)."""
    path = _write(tmp_path / "cut.csv", "x,y\n1.0,2.0\n1.0#2.0,3.0\n")
    _refused(path, "line 3 has 1 column (after cutting the comment at '#' in character 4) but")
    _refused(path, "but line 1 has 2; every row")
    # a line cut to the right width is not ragged, and a plain ragged line mentions no comment
    np.testing.assert_array_equal(
        load_array(_write(tmp_path / "ok.csv", "1,2\n3,4#,5\n")), [[1, 2], [3, 4]]
    )
    with pytest.raises(DataError) as refused:
        load_array(_write(tmp_path / "r.csv", "1,2 # two\n3\n"))
    assert "line 2 has 1 column but line 1 has 2 (after cutting" in str(refused.value)


@pytest.mark.parametrize("text", ["0.12,#0.34\n", "0.12,  # no second value\n"])
def test_a_field_emptied_by_a_cut_comment_says_so(tmp_path: Path, text: str) -> None:
    """Try-out 14, F11: ``0.12,#0.34`` was "an empty field (a missing value, or a trailing
    comma?)", while the file shows a value there: the '#' that cut it is named."""
    path = _write(tmp_path / "hash.csv", "1.0,2.0\n" + text)
    _refused(path, "non-numeric field '' at line 2, column 2; a comment was cut at '#' in ")
    _refused(path, "character " + str(text.index("#") + 1))
    with pytest.raises(DataError) as refused:
        load_array(path)
    assert "trailing comma" not in str(refused.value)
    # an empty field with no comment near it keeps its own hint
    _refused(_write(tmp_path / "e.csv", "1,2\n3,\n"), "a missing value, or a trailing comma?")


def _message(path: Path, **kw: int) -> str:
    with pytest.raises(DataError) as info:
        load_array(path, **kw)
    return str(info.value)


def test_a_file_of_empty_fields_or_a_header_alone_says_what_it_held(tmp_path: Path) -> None:
    """A file whose every row is empty fields (``,,``) was told "zero data rows" as if it had
    none, and one such row between rows was dropped without a word, shifting every row below
    it (and a contexts file's pairing). Each is now one line that says what the file held."""
    empty = _write(tmp_path / "empty_fields.csv", ",,\n,,\n,,\n")
    assert _message(empty) == (
        f"{empty}: no values: its 3 rows hold only empty fields (like ',,'); put the data in "
        "the file (save or export it again)"
    )
    middle = _write(tmp_path / "middle.csv", "a,b\n1,2\n,\n3,4\n5,6\n")
    assert _message(middle) == (
        f"{middle}: line 3 holds only empty fields above more rows (a row of missing "
        "values?); fill it or delete the line"
    )
    # after the last row, a spreadsheet's padding: it shifts nothing
    padded = _write(tmp_path / "padded.csv", "1,2\n3,4\n5,6\n,\n, \n\n")
    np.testing.assert_array_equal(load_array(padded), [[1, 2], [3, 4], [5, 6]])
    header = _write(tmp_path / "header.csv", "x, y\n")
    assert _message(header, min_rows=1) == (
        f"{header}: zero data rows (only a header row: x, y); the file must hold at least "
        "1 sample (row): put the data in it"
    )
    comments = _write(tmp_path / "comments.csv", "# x,y\n\n")
    assert _message(comments) == (
        f"{comments}: zero data rows (only blank lines and comments); the file must hold at "
        "least 2 samples (rows): put the data in it"
    )


def test_check_array_file_refuses_without_reading(tmp_path: Path) -> None:
    """What a dry run checks of your data file: there, a file, .npy or .csv, not empty."""
    check_array_file(_write(tmp_path / "unread.csv", "not, read, at all\n"))
    with pytest.raises(DataError) as info:
        check_array_file(tmp_path / "gone.csv")
    assert str(info.value) == (
        f"{tmp_path / 'gone.csv'}: data file does not exist; pass the path of a .npy or .csv file"
    )
    with pytest.raises(DataError, match="file is empty; it must hold at least 2 samples"):
        check_array_file(_write(tmp_path / "zero.csv", ""))
    with pytest.raises(DataError, match="unknown extension '.txt'"):
        check_array_file(_write(tmp_path / "x.txt", "1,2\n"))


def test_counts_in_the_csv_messages_are_singular_for_one_and_plural_otherwise(
    tmp_path: Path,
) -> None:
    """The reader built its plurals by hand: "its 1 row hold only empty fields" and "cannot
    split 1 row(s)". Each count now agrees with its noun (and verb), one or many."""
    one = _write(tmp_path / "one_empty.csv", ",,\n")
    assert _message(one) == (
        f"{one}: no values: its 1 row holds only empty fields (like ',,'); put the data in the "
        "file (save or export it again)"
    )
    narrow = _write(tmp_path / "narrow.csv", "1,2,3\n4\n")
    assert _message(narrow) == (
        f"{narrow}: ragged CSV: line 2 has 1 column but line 1 has 3; every row needs the same "
        "number of fields"
    )
    wide = _write(tmp_path / "wide.csv", "1\n2,3,4\n")
    assert _message(wide) == (
        f"{wide}: ragged CSV: line 2 has 3 columns but line 1 has 1; every row needs the same "
        "number of fields"
    )
    for n, rows in ((0, "0 rows"), (1, "1 row")):
        with pytest.raises(DataError) as info:
            split_array(np.zeros((n, 2)))
        assert str(info.value) == (
            f"cannot split {rows} into non-empty train and test sets; give at least 2 rows"
        )


def test_a_file_of_one_column_for_a_run_of_two_counts_it_in_words(tmp_path: Path) -> None:
    """ "1 columns, but the run was trained on 2" (data, contexts and the standardizer)."""
    from iresnet.datasets import load_dataset

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x2.npy", rng.normal(size=(50, 2)))
    np.save(tmp_path / "x1.npy", rng.normal(size=(50, 1)))
    two = load_dataset(
        "array", path=str(tmp_path / "x2.npy"), context_path=str(tmp_path / "x2.npy")
    )
    with pytest.raises(DataError, match=r"x1.npy: 1 column, but the run was trained on 2$"):
        load_dataset("array", path=str(tmp_path / "x1.npy"), standardizer=two.standardizer)
    with pytest.raises(DataError, match=r"x1.npy: 1 column, but the run was trained on 2$"):
        load_dataset(
            "array",
            path=str(tmp_path / "x2.npy"),
            context_path=str(tmp_path / "x1.npy"),
            context_standardizer=two.context_standardizer,
        )
    assert two.standardizer is not None
    with pytest.raises(DataError, match="data has 1 column but the standardizer was fitted on 2"):
        two.standardizer.transform(np.zeros((3, 1)))


def test_an_outlier_far_beyond_its_column_is_named() -> None:
    """Try-out 17: one value of 1e30 in 2,000 normal rows was accepted without a word; its
    column's standard deviation (2.5e28) squashed every other value, test NLL 65 against 4.4."""
    x = np.random.default_rng(0).normal(size=(2000, 3))
    x[41, 2] = 1e30
    with pytest.warns(UserWarning) as caught:
        note_outliers(x, "huge.csv")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("huge.csv: value 1e+30 at row 42, column 3 lies ")
    assert "a typo or a missing-value sentinel?" in message and "fix or drop the row" in message
    x[41, 2], x[7, 2] = -999999.0, -999999.0  # a sentinel twice
    with pytest.warns(UserWarning, match=r"\(1 more in the column\)"):
        note_outliers(x, "huge.csv")


@pytest.mark.parametrize("kind", ["normal", "cauchy", "integers", "constant"])
def test_heavy_tails_and_plain_data_are_not_outliers(kind: str) -> None:
    rng = np.random.default_rng(1)
    x = {
        "normal": rng.normal(size=(5000, 2)),
        "cauchy": rng.standard_cauchy(size=(100_000, 2)),  # max/MAD ~ 3e4 here
        "integers": rng.integers(0, 3, size=(500, 2)).astype(float),
        "constant": np.ones((50, 2)),
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        note_outliers(x, "x.csv")
