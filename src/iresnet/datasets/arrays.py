"""User data given as ``--data path.npy|.csv``: strict loading, a fixed split, standardization.

[`load_array`][iresnet.datasets.arrays.load_array] returns a float64 array of shape ``(N, d)``
or raises [`DataError`][iresnet.errors.DataError] with a message naming the file, the
offending place and what to do. CSV files are parsed with the ``csv`` module (not
``numpy.loadtxt``) so ragged rows and bad fields are reported by line and column.
[`Standardizer`][iresnet.datasets.arrays.Standardizer] holds the per-column affine map
``z = (x - mean) / std`` and its log-determinant, so densities fitted on ``z`` convert back to
densities on ``x``.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..words import count

__all__ = [
    "load_array",
    "check_array_file",
    "read_npy",
    "uncommented",
    "split_array",
    "check_range",
    "note_outliers",
    "check_spread",
    "constant_columns",
    "discrete_columns",
    "Standardizer",
]

_ArrayT = TypeVar("_ArrayT", np.ndarray, torch.Tensor)


#: Fields that spreadsheets, R, pandas and the UCI files write for a missing value (compared
#: stripped and lower-cased); an empty field and any spelling of NaN are missing values too.
MISSING_VALUES = frozenset(
    {
        *("na", "n/a", "nan", "-nan", "+nan", "null", "none", "<na>", "nil", "missing"),
        *("?", "-", ".", "#n/a", "#na"),
    }
)

#: Spreadsheet error values (Excel's, LibreOffice's) that a CSV export writes as a field's
#: whole text: a ``#`` that starts one of them starts a field, not a comment.
SPREADSHEET_ERRORS = (
    "#N/A",
    "#NA",
    "#VALUE!",
    "#DIV/0!",
    "#REF!",
    "#NAME?",
    "#NUM!",
    "#NULL!",
)


def _spreadsheet_error_at(line: str, i: int) -> bool:
    """Whether the ``#`` at ``line[i]`` begins a whole field that is a spreadsheet error
    value (``#N/A``, ``#DIV/0!``...): after a comma or the line's start (blanks aside) and up
    to the next comma or the line's end."""
    if line[:i].rstrip(" \t")[-1:] not in ("", ","):
        return False
    rest = line[i:].split(",", 1)[0].rstrip(" \t\r\n").upper()
    return rest in SPREADSHEET_ERRORS


def _is_missing(field: str, value: float | None) -> bool:
    """Whether a CSV field is a missing value (``NA``, ``?``, an empty field, ``nan``...)."""
    return (value is not None and math.isnan(value)) or field.strip().lower() in {
        "",
        *MISSING_VALUES,
    }


def _missing_message(path: Path, where: tuple[int, int, str, bool], rows: int) -> str:
    """One line for the first missing value of a CSV and the count of rows with one."""
    line, col, field, last = where
    first = f" (first of {count(rows, 'row')} with missing values)" if rows > 1 else ""
    if field.strip():
        what = f"missing value {_shorten(field.strip())!r}"
    else:
        what = f"empty field (a missing value{', or a trailing comma?' if last else '?'})"
    what += f" at line {line}, column {col}{first}"
    return (
        f"{path}: {what}; missing values (NA, NaN, ?, empty fields) are not supported: drop "
        "or impute those rows"
    )


def _parse_float(field: str) -> float | None:
    try:
        return float(field)
    except ValueError:
        return None


def uncommented(lines: Iterable[str], cuts: dict[int, int] | None = None) -> Iterator[str]:
    r"""``lines`` of a CSV file with their comments cut, as ``numpy.loadtxt(comments="#")``
    cuts them: from a ``#`` to the end of the line (a ``#`` inside a double-quoted field, a
    header name such as ``"#id"``, is kept, and so is a field that is a spreadsheet's error
    value, ``#N/A`` or ``#DIV/0!``: ``SPREADSHEET_ERRORS``). A whole-line comment
    (``numpy.savetxt``'s ``header=``) becomes a blank line, so the line numbers still hold;
    ``1,2  # note`` reads as ``1,2``.

    Args:
        lines: the file's lines.
        cuts: if given, filled with ``{line: column}`` (both 1-based) for each line whose
            comment was cut after some data, so that an error about the line can say that
            what the parser saw is less than the line shows (``1.0#2.0,3.0`` is one field).

    Examples:
        >>> list(uncommented(["# x, y\n", "1,2  # note\r\n", '"#id",b\n']))
        ['\n', '1,2  \r\n', '"#id",b\n']
    """
    for number, line in enumerate(lines, start=1):
        if "#" not in line:
            yield line
            continue
        quoted = False
        for i, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted and not _spreadsheet_error_at(line, i):
                end = line[len(line.rstrip("\r\n")) :]
                if cuts is not None and line[:i].strip():
                    cuts[number] = i + 1
                yield line[:i] + end
                break
        else:
            yield line


def _cut_note(cuts: dict[int, int], line: int) -> str:
    """`` (after cutting the comment at '#' in character C)`` where ``line`` lost a comment
    (a character, since the message counts its fields as columns: try-out 14, F11)."""
    if line not in cuts:
        return ""
    return f" (after cutting the comment at '#' in character {cuts[line]})"


def _read_csv(path: Path) -> tuple[np.ndarray, list[int], list[str] | None]:
    """Parse ``path`` into a float64 ``(N, d)`` array, the 1-based file line of each row and
    the header's names (None without a header)."""
    header: list[str] | None = None
    rows: list[list[float]] = []
    lines: list[int] = []
    empty: list[int] = []  # lines of empty fields only (``,,``) since the last row
    missing: tuple[int, int, str, bool] | None = None  # the first: line, column, field, last?
    missing_rows: list[int] = []  # the lines of the rows that hold a missing value
    empty_last = 0  # rows whose last field is empty (a trailing comma where it is every row)
    other_missing = False  # a missing value other than an empty last field
    first_line = 0
    width = 0
    try:
        # utf-8-sig drops a byte-order mark that spreadsheet exports like to prepend.
        with path.open(newline="", encoding="utf-8-sig") as fh:
            # Comments are cut before the CSV parser sees a quote in them (numpy.savetxt's
            # header is a whole-line comment, read as a blank line).
            cuts: dict[int, int] = {}
            reader = csv.reader(uncommented(fh, cuts))
            for fields in reader:
                line = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    if len(fields) > 1:
                        empty.append(line)  # ",,": a row of missing values, or padding
                    continue  # blank lines carry no row
                if empty:  # dropping it would shift every row below (and its context's)
                    raise DataError(
                        f"{path}: line {empty[0]} holds only empty fields"
                        f"{_cut_note(cuts, empty[0])} above more rows (a row of missing "
                        "values?); fill it or delete the line"
                    )
                if not width:
                    width, first_line = len(fields), line
                    values = [_parse_float(f) for f in fields]
                    if all(v is None for v in values):
                        header = [f.strip() for f in fields]
                        continue  # a header row of column names
                elif len(fields) != width:
                    raise DataError(
                        f"{path}: ragged CSV: line {line} has {count(len(fields), 'column')}"
                        f"{_cut_note(cuts, line)} but "
                        f"line {first_line} has {width}{_cut_note(cuts, first_line)}; every row "
                        "needs the same number of fields"
                    )
                parsed: list[float] = []
                for col, field in enumerate(fields, start=1):
                    value = _parse_float(field)
                    # Only the last field can end where a comment was cut from the line.
                    cut = cuts.get(line) if col == len(fields) else None
                    if _is_missing(field, value) and not (cut is not None and not field.strip()):
                        if not missing_rows or missing_rows[-1] != line:
                            missing_rows.append(line)
                        if missing is None:
                            missing = (line, col, field, col == len(fields))
                        if col == len(fields) and not field.strip():
                            empty_last += 1
                        else:
                            other_missing = True
                        value = math.nan
                    if value is None:
                        shown = _shorten(field.strip())
                        raise DataError(
                            f"{path}: non-numeric field {shown!r} at line {line}, column {col}; "
                            f"{_field_hint(field, cut)}"
                        )
                    parsed.append(value)
                rows.append(parsed)
                lines.append(line)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); save the CSV as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}); check quoting and delimiters") from exc
    if not rows and empty:
        raise DataError(
            f"{path}: no values: its {count(len(empty), 'row')} "
            f"{'holds' if len(empty) == 1 else 'hold'} only empty fields (like ',,'); put the "
            "data in the file (save or export it again)"
        )
    if missing is not None and not other_missing and empty_last == len(rows) and width > 1:
        raise DataError(
            f"{path}: every row ends in an empty field (a trailing comma after the last "
            f"column, line {missing[0]} first); remove the trailing commas, or the empty last "
            "column"
        )
    if missing is not None:  # after the whole file: how many rows there are to drop
        raise DataError(_missing_message(path, missing, len(missing_rows)))
    # Empty-field lines after the last row (a spreadsheet export's padding) shift nothing.
    array = np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    return array, lines, header


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters: a semicolon file's whole row is one "field"
    (1,600 characters quoted in one error line; try-out 11, F7)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_hint(field: str, cut: int | None = None) -> str:
    """What a field that is not a number most likely means, as advice (try-out 8, F10);
    ``cut``: the character where a comment was cut from the end of the field, if one was."""
    if not field.strip() and cut is not None:
        # ``0.12,#0.34``: not empty in the file, but a '#' starts a comment (try-out 14, F11).
        return (
            f"a comment was cut at '#' in character {cut}, which left it empty: a '#' starts "
            "a comment to the end of the line; drop the '#' or fill the field"
        )
    if not field.strip():
        return "an empty field (a missing value, or a trailing comma?): fill or drop it"
    for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
        if sep in field and all(_parse_float(f) is not None for f in field.split(sep)):
            return (
                f"the file looks {name}-separated: save it comma-separated with decimal points "
                "(1.5, not 1,5)"
            )
    return "only a first header row may hold names (and then every field of it must be a name)"


def _is_unnamed_index(array: np.ndarray, header: list[str] | None) -> bool:
    """The ``to_csv()`` pattern: an unnamed first column (or pandas' "Unnamed: 0") of distinct
    integers (0..N-1 for a fresh frame; any integers after filtering rows)."""
    if header is None or array.shape[1] < 2:
        return False
    if header[0] and not header[0].startswith("Unnamed"):
        return False
    first = array[:, 0]
    return bool(np.all(first == np.round(first))) and len(np.unique(first)) == len(first)


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """One real numeric array from a ``.npy`` file, read without pickle, any shape.

    Raises:
        DataError: a missing or empty file, one that is not ``.npy`` (bad magic bytes), an
            object array or pickle, a truncated file, or a dtype that is not real numeric.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as fh:
        magic = fh.read(6)
    if not magic:
        raise DataError(f"{path}: the file is empty; save the data with numpy.save")
    if magic != b"\x93NUMPY":
        # Without this, numpy.load takes any other file for a pickle and blames allow_pickle.
        raise DataError(f"{path}: not a .npy file (bad magic bytes); save the data with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        # Object arrays (and pickles) need allow_pickle, which we never enable: unsafe to load.
        raise DataError(
            f"{path}: cannot load without pickle ({exc}); save a plain numeric array, "
            "e.g. numpy.save(path, x.astype(float))"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npy file ({exc}); re-save it with numpy.save"
        ) from exc
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: expected a single .npy array, got {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: array dtype {array.dtype} is not real-valued numeric; {_fix(array)}"
        )
    return array


def _fix(array: np.ndarray) -> str:
    """How to turn an array of a non-numeric dtype into numbers, by the dtype's kind."""
    kind = array.dtype.kind
    if kind == "c":
        return "split complex data into real and imaginary columns, e.g. np.c_[x.real, x.imag]"
    if kind in "US":
        return "it holds text: save the numbers themselves, e.g. x.astype(float) if it parses"
    if kind == "V":
        return (
            "a record (structured) array: save its fields as plain columns, e.g. "
            "numpy.lib.recfunctions.structured_to_unstructured(x).astype(float)"
        )
    return "convert it to numbers, e.g. x.astype(float)"


def _samples(n: int) -> str:
    return count(n, "sample") + (" (row)" if n == 1 else " (rows)")


def _read_npy(path: Path) -> np.ndarray:
    array = read_npy(path)
    if array.ndim == 1:
        raise DataError(
            f"{path}: array is 1-D with shape {array.shape}; a density needs shape (N, d): for "
            f"N scalar samples save x.reshape(-1, 1), i.e. shape ({array.shape[0]}, 1)"
        )
    if array.ndim != 2:
        raise DataError(
            f"{path}: array has shape {array.shape}, expected 2-D (N, d); flatten each sample, "
            "e.g. x.reshape(len(x), -1)"
        )
    return array.astype(np.float64)


def check_array_file(path: str | os.PathLike[str], min_rows: int = 2) -> None:
    """Refuse, without reading it, a data file that
    [`load_array`][iresnet.datasets.arrays.load_array] cannot read: one that is not there, a
    folder, another extension than ``.npy`` / ``.csv``, or an empty file (its messages; a dry
    run and a run's first check make this one, before the file is read).

    Raises:
        DataError: the file and what to do, in one line.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"{p}: data file {what}; pass the path of a .npy or .csv file")
    ext = p.suffix.lower()
    if ext not in (".npy", ".csv"):
        raise DataError(
            f"{p}: unknown extension {ext or '(none)'!r}; save the data as .npy (numpy.save) "
            "or as a comma-separated .csv"
        )
    if p.stat().st_size == 0:
        raise DataError(f"{p}: file is empty; it must hold at least {_samples(min_rows)}")


def load_array(
    path: str | os.PathLike[str],
    max_dim: int = 64,
    index_column: str = "refuse",
    min_rows: int = 2,
    *,
    index_advice: str | None = None,
) -> np.ndarray:
    """Load user data from a ``.npy`` or ``.csv`` file as a float64 array of shape ``(N, d)``.

    ``.npy`` files are read with ``numpy.load(..., allow_pickle=False)`` and must hold a 2-D
    real array. ``.csv`` files are comma separated, one sample per line; a first row whose
    fields are all non-numeric is taken as a header and skipped, blank lines are ignored and
    comments cut (from a ``#`` to the end of its line, as ``numpy.loadtxt`` cuts them; see
    [`uncommented`][iresnet.datasets.arrays.uncommented]).

    Args:
        path: the ``.npy`` or ``.csv`` file.
        max_dim: the largest number of columns accepted.
        min_rows: the fewest rows accepted (2 for training data, to train and to test; 1 for
            points to score).
        index_column: what to do with a CSV whose first column is an unnamed row index (the
            pattern of pandas' ``to_csv()``: an empty first header name over distinct
            integers): ``"refuse"`` (a ``DataError`` naming the choices), ``"drop"`` or
            ``"keep"`` (model it as a feature).
        index_advice: what the refusal of such a column offers besides re-saving the file
            (default: the training config's ``data.index_column=drop``/``keep``; a caller
            that cannot take that option, such as ``iresnet score``, says what it can).

    Returns:
        A float64 array of shape ``(N, d)`` with ``N >= min_rows``, every value finite.

    Raises:
        DataError: missing file, unknown extension, empty file or zero rows, fewer than
            ``min_rows`` rows,
            ragged CSV rows, non-numeric fields, missing values in a CSV (``NA``, ``?``,
            ``nan``, an empty field: ``MISSING_VALUES``), non-numeric ``.npy`` dtype, an
            array that is not 2-D, zero columns, NaN or Inf values, ``d > max_dim``, or an
            unnamed index
            column with ``index_column="refuse"``. The message names the file and, where it
            applies, the line/row and column.
        ValueError: ``max_dim`` not a positive integer.

    Examples:
        >>> import pathlib, tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(folder.name) / "points.csv"
        >>> np.savetxt(path, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], delimiter=",")
        >>> load_array(path).shape
        (3, 2)
        >>> _ = path.write_text("1,oops")
        >>> load_array(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: ...: non-numeric field 'oops' at line 1, column 2; ...
        >>> folder.cleanup()
    """
    if isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 1:
        raise ValueError(f"max_dim must be a positive integer, got {max_dim!r}")
    check_array_file(path, min_rows)
    p = Path(path)
    ext = p.suffix.lower()
    if index_column not in ("refuse", "drop", "keep"):
        raise ValueError(f"index_column must be refuse, drop or keep, got {index_column!r}")
    lines: list[int] | None = None
    header: list[str] | None = None
    if ext == ".csv":
        array, lines, header = _read_csv(p)
        if _is_unnamed_index(array, header):
            if index_column == "refuse":
                raise DataError(
                    f"{p}: the first column has no name and holds distinct integers: a row "
                    "index as pandas' to_csv() writes it; re-save with to_csv(index=False)"
                    + (
                        ", or pass data.index_column=drop to drop it (data.index_column=keep "
                        "models it)"
                        if index_advice is None
                        else f" ({index_advice})"
                    )
                )
            if index_column == "drop":
                array = array[:, 1:]
    else:
        array = _read_npy(p)

    n, d = array.shape
    if n == 0:
        held = (
            f" (only a header row: {', '.join(header)})"
            if header
            else " (only blank lines and comments)"
            if ext == ".csv"
            else ""
        )
        raise DataError(
            f"{p}: zero data rows{held}; the file must hold at least {_samples(min_rows)}: "
            "put the data in it"
        )
    if n < min_rows:
        why = " (to train and to test)" if min_rows == 2 else ""
        raise DataError(
            f"{p}: {n}-row file; at least {min_rows} samples are needed{why}"
            + ("; if the row is one sample per column, transpose the data" if n == 1 else "")
        )
    if d == 0:
        raise DataError(f"{p}: zero columns; each sample needs at least one value")
    bad = ~np.isfinite(array)
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        kind = "NaN" if math.isnan(array[i, j]) else "Inf"
        where = f"line {lines[i]}, column {j + 1}" if lines is not None else f"x[{i}, {j}]"
        raise DataError(
            f"{p}: {kind} value at {where} (first of {int(bad.sum())}); "
            + (
                "drop or impute missing values first"
                if kind == "NaN"
                else "drop or clip the infinite values first"
            )
        )
    if d > max_dim:
        raise DataError(
            f"{p}: {d} columns (dimensions) exceed max_dim={max_dim}; reduce the dimension "
            f"(e.g. PCA), or raise the limit (`data.max_dim={d}` after `iresnet train`; in "
            "Python, iresnet.datasets.load_array(path, max_dim=...))"
        )
    return array


def constant_columns(x: np.ndarray) -> np.ndarray:
    """The 0-based indices of the columns of ``x`` ``(N, d)`` whose values are all equal (up
    to rounding: ``std <= 1e-12 |mean|``), those ``Standardizer.fit`` gives std 1."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    return np.flatnonzero(std <= 1e-12 * np.abs(mean))


def check_spread(x: np.ndarray, source: str = "data") -> None:
    """Refuse columns without spread: a density has nothing to fit there and its likelihood
    grows without bound as it narrows (all-identical rows train to ever lower NLL).

    Args:
        x: ``(N, d)`` float array.
        source: the data's name for the message (its file).

    Raises:
        DataError: a column whose values are all equal (up to rounding, ``std <= 1e-12
            |mean|``), named by its 1-based number and value.

    Examples:
        >>> check_spread(np.array([[0.0, 1.0], [1.0, 1.0]]), "x.csv")
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: x.csv: column 2 is constant (every value is 1): ...
    """
    flat = constant_columns(x)
    if flat.size:
        j = int(flat[0])
        also = f" (and {flat.size - 1} more)" if flat.size > 1 else ""
        raise DataError(
            f"{source}: column {j + 1} is constant (every value is {x[0, j]:g}){also}: a density "
            "has no spread to fit there and its likelihood grows without bound; drop the column"
        )


#: The largest magnitude accepted in user data: the model computes in float32 (max 3.4e38),
#: and differences, squares and plotting grids of larger values overflow.
MAX_ABS_VALUE = 1e30


def check_range(x: np.ndarray, source: str = "data") -> None:
    """Refuse values whose magnitude float32 arithmetic cannot carry (above ``1e30``).

    Raises:
        DataError: the largest magnitude, where it is, and by what to divide.
    """
    big = np.abs(x)
    if big.size and float(big.max()) > MAX_ABS_VALUE:
        i, j = np.unravel_index(int(big.argmax()), big.shape)
        raise DataError(
            f"{source}: value {x[i, j]:.3g} at row {i + 1}, column {j + 1} is too large for "
            f"the model's float32 arithmetic (|x| <= {MAX_ABS_VALUE:g}); rescale the column, "
            f"e.g. divide it by {10 ** int(np.floor(np.log10(big[:, j].max()))):.0e}"
        )


#: How far (in median absolute deviations from the median) a value may lie before
#: ``note_outliers`` names it: a Cauchy sample of a million points reaches ~3e5.
OUTLIER_SPREADS = 1e6


def note_outliers(x: np.ndarray, source: str = "data") -> None:
    """Warn of a value that lies far outside the rest of its column, more than
    ``OUTLIER_SPREADS`` median absolute deviations from the column's median: a typo or a
    missing-value sentinel (``1e30``, ``-999999``) accepted as data. Standardising by the
    column's standard deviation then squashes every other value towards zero, and the fit and
    its test NLL are ruined without an error.

    Args:
        x: ``(N, d)`` float array.
        source: the data's name for the message (its file).

    Warns:
        UserWarning: the first such value, its row, column and distance, once per call.

    Examples:
        >>> import warnings
        >>> x = np.random.default_rng(0).normal(size=(100, 2))
        >>> x[7, 1] = 1e30
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     note_outliers(x, "x.csv")
        >>> str(caught[0].message)[:44]
        'x.csv: value 1e+30 at row 8, column 2 lies 1'
    """
    if x.ndim != 2 or x.shape[0] < 3:
        return
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        spreads = np.where(mad > 0, np.abs(x - med) / np.where(mad > 0, mad, 1.0), 0.0)
    if not spreads.size or float(spreads.max()) <= OUTLIER_SPREADS:
        return
    i, j = np.unravel_index(int(spreads.argmax()), spreads.shape)
    far = int((spreads[:, j] > OUTLIER_SPREADS).sum())
    others = f" ({far - 1} more in the column)" if far > 1 else ""
    warnings.warn(
        f"{source}: value {x[i, j]:.3g} at row {i + 1}, column {j + 1} lies "
        f"{spreads[i, j]:.1e} median absolute deviations ({mad[j]:.3g}) from the column's "
        f"median {med[j]:.3g}{others}: a typo or a missing-value sentinel? Standardising by the "
        "column's standard deviation squashes its other values to nearly 0; fix or drop the row",
        UserWarning,
        stacklevel=3,
    )


def discrete_columns(x: np.ndarray, max_levels_fraction: float = 0.25) -> list[float]:
    """The level spacing of each column that takes few distinct values (0 for the others).

    A column is discrete when it has at most ``max_levels_fraction * N`` distinct values (and
    at least 2): integer codes, counts, values rounded to a grid. Continuous data repeats no
    value. Its spacing is the smallest gap between distinct values, the width of the cell a
    uniform dequantisation spreads each value over.

    Args:
        x: ``(N, d)`` float array.
        max_levels_fraction: the share of ``N`` below which a column counts as discrete.

    Returns:
        ``d`` floats: the spacing of discrete columns, ``0.0`` for continuous ones.

    Examples:
        >>> discrete_columns(np.array([[0.0, 0.1], [1.0, 0.7], [1.0, 0.3], [0.0, 0.9]]), 0.5)
        [1.0, 0.0]
    """
    out = []
    for column in x.T:
        levels = np.unique(column)
        if 2 <= len(levels) <= max_levels_fraction * len(column):
            out.append(float(np.diff(levels).min()))
        else:
            out.append(0.0)
    return out


def split_array(
    x: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows of ``x`` (shape ``(N, d)``) into ``(train, test)`` by a seeded permutation.

    ``n_test = round(N * test_fraction)`` clipped to ``[1, N - 1]`` so both parts are non-empty;
    the permutation comes from ``numpy.random.default_rng(seed)``.

    Args:
        x: ``(N, d)`` (any array indexable by rows).
        test_fraction: the held-out share.
        seed: the permutation's seed.

    Returns:
        ``(train, test)`` with ``N - n_test`` and ``n_test`` rows.

    Raises:
        DataError: ``x`` has fewer than 2 rows.
        ValueError: ``test_fraction`` not in the open interval ``(0, 1)``.

    Examples:
        >>> train, test = split_array(np.arange(20.0).reshape(10, 2), 0.3)
        >>> train.shape, test.shape
        ((7, 2), (3, 2))
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    n = len(x)
    if n < 2:
        raise DataError(
            f"cannot split {count(n, 'row')} into non-empty train and test sets; give at "
            "least 2 rows"
        )
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return x[perm[n_test:]], x[perm[:n_test]]


@dataclass
class Standardizer:
    """Per-column affine standardization ``z = (x - mean) / std``.

    ``mean`` and ``std`` are plain lists of floats (length ``d``) so the object saves to JSON
    via ``to_dict``. The map has Jacobian ``diag(1 / std)``, hence per sample
    ``log p_x(x) = log p_z(z) + log_abs_det`` with ``log_abs_det = -sum(log std)``. The model
    side of the same map is [`Standardize`][iresnet.transforms.preprocess.Standardize].

    Attributes:
        mean: ``d`` finite floats.
        std: ``d`` finite, positive floats.

    Raises:
        ConfigError: lengths differ, a non-finite mean, or a ``std`` that is not finite and
            positive.
        TypeError: an entry that is not a number (``float()`` refuses it).
        ValueError: an entry that is a string ``float()`` cannot parse.

    Examples:
        >>> st = Standardizer.fit(np.array([[0.0, 5.0], [2.0, 5.0]]))
        >>> st.mean, st.std  # the constant column gets std 1
        ([1.0, 5.0], [1.0, 1.0])
        >>> st.transform(np.array([[2.0, 6.0]])).tolist(), st.log_abs_det
        ([[1.0, 1.0]], -0.0)
    """

    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        if len(self.mean) != len(self.std):
            raise ConfigError(
                f"Standardizer mean has {len(self.mean)} entries but std has {len(self.std)}"
            )
        if not all(math.isfinite(m) for m in self.mean):
            raise ConfigError("Standardizer mean must be finite")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError("Standardizer std must be finite and positive")

    @classmethod
    def fit(cls, x: np.ndarray | torch.Tensor) -> Standardizer:
        """Column means and (population, ``ddof=0``) standard deviations of ``x`` ``(N, d)``.

        A constant column (std zero, or below ``1e-12 |mean|`` which is only rounding noise)
        gets std 1.0, so it is centred but never divided by zero.

        Raises:
            DataError: ``x`` is not a non-empty 2-D array, or holds NaN or Inf.
        """
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        a = a.astype(np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise DataError(f"Standardizer.fit expects a non-empty (N, d) array, got {a.shape}")
        if not np.isfinite(a).all():
            i, j = (int(k) for k in np.argwhere(~np.isfinite(a))[0])
            raise DataError(
                f"Standardizer.fit got a non-finite value at row {i + 1}, column {j + 1}"
            )
        mean = a.mean(axis=0)
        std = a.std(axis=0)
        std = np.where(std <= 1e-12 * np.abs(mean), 1.0, std)
        return cls(mean=mean.tolist(), std=std.tolist())

    @property
    def dim(self) -> int:
        """Number of columns ``d``."""
        return len(self.mean)

    @property
    def log_abs_det(self) -> float:
        """``log |det dz/dx| = -sum_j log std_j`` (per sample)."""
        return -math.fsum(math.log(s) for s in self.std)

    def _params(self, x: _ArrayT) -> tuple[Any, Any]:
        if x.shape[-1] != self.dim:
            raise DataError(
                f"data has {count(x.shape[-1], 'column')} but the standardizer was fitted on "
                f"{self.dim}"
            )
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float64
            kw = {"dtype": dtype, "device": x.device}
            return torch.tensor(self.mean, **kw), torch.tensor(self.std, **kw)
        return np.asarray(self.mean), np.asarray(self.std)

    def transform(self, x: _ArrayT) -> _ArrayT:
        """``z = (x - mean) / std`` for ``x`` of shape ``(..., d)`` (NumPy array or tensor).

        Raises:
            DataError: ``x`` has another number of columns than ``d``.
        """
        mean, std = self._params(x)
        return (x - mean) / std

    def inverse_transform(self, z: _ArrayT) -> _ArrayT:
        """``x = z * std + mean`` for ``z`` of shape ``(..., d)`` (NumPy array or tensor).

        Raises:
            DataError: ``z`` has another number of columns than ``d``.
        """
        mean, std = self._params(z)
        return z * std + mean

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready ``{"mean": [...], "std": [...]}``."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standardizer:
        """Inverse of ``to_dict``.

        Raises:
            ConfigError: missing or extra keys, or non-numeric or invalid values.
        """
        if not isinstance(d, dict) or set(d) != {"mean", "std"}:
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"Standardizer dict needs exactly keys 'mean' and 'std', got {keys}")
        try:
            return cls(mean=list(d["mean"]), std=list(d["std"]))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Standardizer dict holds non-numeric values: {exc}") from exc
