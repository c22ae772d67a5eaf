"""``iresnet score`` and the contexts of ``iresnet sample``: new data read strictly, scored in
the data's own units with the estimator named.

A vector run scores ``(N, d)`` points in nats: the density of the data in the units it was
trained in (the flow carries its standardisation). An image run scores images ``(N, C, H, W)``
or their flattened rows ``(N, C*H*W)`` (a ``.npy``, or a ``.csv`` such as ``iresnet sample``
writes), integer levels or floats in ``[0, 1]`` (each read as the level it falls in), with the
flow's own ``log_prob`` (uniform dequantisation noise drawn per evaluation), in nats and
bits/dim; a hybrid run's images likewise, with its density (the ``test_bpd`` of
``iresnet evaluate``). The log-det is exact where the dimension allows (the estimator
``iresnet evaluate`` reports with), else the unbiased Russian roulette; a stochastic score is
evaluated ``repeats`` times per point, so each point gets a standard error.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..datasets.arrays import load_array, read_npy, uncommented
from ..errors import ConfigError, DataError
from ..transforms import VariationalDequantize, swap_logdets
from .tasks import DensityTask, HybridTask, Task
from .tasks.base import evaluating, scoring_estimator, scoring_lipschitz
from .words import count

__all__ = [
    "ScoreResult",
    "context_columns",
    "extrapolation_warning",
    "parse_contexts",
    "read_contexts",
    "score_file",
]

#: Training standard deviations from the training contexts' mean beyond which a context is
#: far outside the training range (a uniform context's range is mean +- 1.73 std).
EXTRAPOLATION_STDS = 4.0


@dataclass
class ScoreResult:
    """Per-point columns (``log_prob`` in nats; ``log_prob_se`` for a stochastic estimator;
    ``bpd`` and ``bpd_se`` for images), the estimator's name, and the contexts the points were
    scored at as given (as the flow takes them: one row per point, or one row for every point;
    None for an unconditional run).

    ``estimator`` names the whole estimate (for images, the log-det's estimator and the
    dequantisation); ``logdet`` and ``dequantisation`` are its two parts, apart, since the
    dequantisation is no part of the log-det (``""`` where the run has none)."""

    columns: dict[str, np.ndarray]
    estimator: str
    contexts: torch.Tensor | None = None
    logdet: str = ""
    dequantisation: str = ""


def _span(values: np.ndarray) -> str:
    """``"3..11"`` for the range of integer values, or ``"11"`` when there is one value."""
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}..{high}"


def _density_task(task: Task, command: str) -> DensityTask | HybridTask:
    """The run's task if it has a density (a flow, or a hybrid: unconditional images), else a
    ConfigError that names ``command``, the thing that needs one."""
    if not isinstance(task, DensityTask | HybridTask):
        raise ConfigError(
            f"{command} needs a run with a density (a flow or model.kind=hybrid); "
            "this classifier models none"
        )
    return task


def _as_contexts(task: DensityTask | HybridTask, values: np.ndarray, where: str) -> torch.Tensor:
    """Rows of user contexts as the flow takes them: floats ``(m, k)``; class labels ``(m, 1)``
    integers in ``[0, n_classes)`` become one-hot."""
    k = task.context_dim
    if values.ndim == 1:  # a file's 1-D array: one value per point where k = 1 (or labels)
        values = values[:, None] if task.data.class_context or k == 1 else values[None, :]
    if not np.isfinite(values).all():
        raise DataError(f"{where}: contexts hold NaN or Inf; give finite numbers")
    if task.data.class_context:
        if values.shape[1] != 1:
            raise DataError(
                f"{where}: this run is class-conditional: give one integer class label per row "
                f"(0..{k - 1}), got {values.shape[1]} values per row"
            )
        if not np.all(values == np.round(values)):
            bad = values[values != np.round(values)][0]
            raise DataError(f"{where}: class labels are integers 0..{k - 1}, got {bad:g}")
        labels = values[:, 0].astype(np.int64)
        if labels.min() < 0 or labels.max() >= k:
            raise DataError(f"{where}: class labels must lie in 0..{k - 1}, got {_span(labels)}")
        return task.one_hot(torch.as_tensor(labels))
    if values.shape[1] != k:
        raise DataError(
            f"{where}: expected contexts with {count(k, 'value')} per row, got {values.shape[1]}"
        )
    return torch.as_tensor(values, dtype=torch.float64, device=task.device)


def read_contexts(path: Path) -> np.ndarray:
    """A ``.npy`` / ``.csv`` file of context rows (one row is allowed), float64 ``(m, k)``.

    Raises:
        DataError: a missing file, another extension, or content that is not numeric.
    """
    if path.suffix.lower() == ".npy" and path.is_file():
        arr = read_npy(path)
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise DataError(
                f"{path}: expected numeric contexts of shape (m, k) or (k,), got {arr.dtype} "
                f"array of shape {arr.shape}"
            )
        return np.atleast_2d(arr.astype(np.float64)) if arr.ndim == 2 else arr.astype(np.float64)
    if path.suffix.lower() == ".csv" and path.is_file():
        # The data's reader (one row is a context too); the width is checked against the run's
        # context size afterwards, with a message that names it.
        return load_array(path, min_rows=1, max_dim=2**31)
    raise DataError(f"{path}: no such .npy or .csv file of contexts")


def parse_contexts(task: Task, spec: str | Path, command: str = "sample") -> torch.Tensor:
    """``--context`` of ``iresnet sample`` and ``iresnet score``: ``'a,b'`` (one context),
    ``'a,b;c,d'`` (several), a class label, or a ``.npy`` / ``.csv`` file of rows; returned as
    the flow takes them, ``(m, k)``. ``command`` names the command in the errors.

    Raises:
        ConfigError: the run is not conditional, or not a density run.
        DataError: a malformed or ill-sized context, or a file that is not there.
    """
    task = _density_task(task, f"{command} --context")
    if not task.context_dim:
        raise ConfigError("--context: this run is not conditional; leave it out")
    spec = str(spec)
    path = Path(spec)
    where = "--context"
    if path.suffix.lower() in (".npy", ".csv"):
        values, where = read_contexts(path), str(path)
    else:
        try:
            rows = [[float(v) for v in part.split(",")] for part in spec.split(";") if part]
        except ValueError:
            raise DataError(
                f"--context {spec!r}: not numbers ('a,b' for one context, 'a,b;c,d' for "
                "several) and no such .npy or .csv file of contexts"
            ) from None
        if not rows or len({len(r) for r in rows}) != 1:
            raise DataError(f"--context {spec!r}: every context needs the same number of values")
        values = np.asarray(rows, dtype=np.float64)
    return _as_contexts(task, values, where)


def context_columns(task: Task, contexts: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """Contexts ``(m, k)`` as a user writes them, with column names: ``c1..ck`` floats, or
    one integer column ``label`` for class-conditional runs (the form ``--context`` reads)."""
    task = _density_task(task, "a context")
    c = contexts.detach().double().cpu()
    if task.data.class_context:
        return c.argmax(1, keepdim=True).numpy().astype(np.int64), ["label"]
    return c.numpy(), [f"c{j + 1}" for j in range(c.shape[1])]


def extrapolation_warning(task: Task, contexts: torch.Tensor | None) -> str | None:
    """One line when a context lies more than ``EXTRAPOLATION_STDS`` training standard
    deviations from the training contexts' mean (the statistics the run saved): the column,
    the value, the training range, and that the flow extrapolates there; None when every
    context is inside (or the run has no such statistics, as for class labels, which are
    checked against the classes instead)."""
    if contexts is None or not isinstance(task, DensityTask):
        return None
    std = task.data.context_standardizer
    if std is None or task.data.class_context:
        return None
    c = contexts.detach().double().cpu().numpy()
    mean, sd = np.asarray(std.mean), np.asarray(std.std)
    if c.ndim != 2 or c.shape[1] != mean.shape[0]:
        return None
    z = np.abs(c - mean) / sd
    far = z > EXTRAPOLATION_STDS
    if not far.any():
        return None
    i, j = np.unravel_index(int(np.argmax(z)), z.shape)
    lo = mean[j] - EXTRAPOLATION_STDS * sd[j]
    hi = mean[j] + EXTRAPOLATION_STDS * sd[j]
    rows = int(far.any(1).sum())
    which = f"{rows} of {c.shape[0]} contexts lie" if c.shape[0] > 1 else "the context lies"
    return (
        f"{which} far outside the training contexts: column {j + 1} = {c[i, j]:.6g} is "
        f"{z[i, j]:.1f} training standard deviations from their mean {mean[j]:.4g} (training "
        f"range mean +- {EXTRAPOLATION_STDS:g} std: {lo:.4g}..{hi:.4g}); the flow extrapolates "
        "there, so its samples and densities are not backed by data"
    )


def _sample_file_columns(task: DensityTask | HybridTask, path: Path) -> np.ndarray | None:
    """The points and contexts of a ``.csv`` that ``iresnet sample`` wrote for this
    conditional run (header ``x1..xd,c1..ck``, or ``x1..xd,label``; an image run's ``d`` is
    ``C*H*W``, its images flattened), as one float64 array ``(N, d + k)`` (``d + 1`` for
    labels); None for any other file.

    Raises:
        DataError: a file with that header whose rows are malformed (the strict reader's
            errors: ragged rows, non-numeric fields, NaN/Inf).
    """
    if not task.context_dim or path.suffix.lower() != ".csv" or not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            first = next((f for f in csv.reader(uncommented(fh)) if f), [])
    except (OSError, UnicodeDecodeError):
        return None  # the strict reader says what is wrong
    names = [f.strip() for f in first]
    _, header = context_columns(task, torch.zeros(1, task.context_dim))
    if names != [f"x{i + 1}" for i in range(task.dim)] + header:
        return None
    return load_array(path, max_dim=task.dim + len(header) + 64, min_rows=1)


#: A CSV field written as a whole number (no decimal point, no exponent): an integer level.
_INTEGER_FIELD = re.compile(r"[+-]?\d+")


def _csv_integer_columns(path: Path, width: int) -> np.ndarray:
    """Whether each of the ``width`` columns of a ``.csv`` that ``load_array`` has read is
    written as integers only (``3``, not ``3.0`` or ``3e0``), as pandas types a column int64:
    the CSV counterpart of an integer ``.npy`` dtype. A bool array ``(width,)``; header names
    and blank lines are skipped, comments cut as ``load_array`` cuts them."""
    integer = np.ones(width, dtype=bool)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for fields in csv.reader(uncommented(fh)):
            if len(fields) != width:
                continue  # a blank line (load_array refused ragged rows)
            for j, field in enumerate(fields):
                if integer[j] and not _INTEGER_FIELD.fullmatch(field.strip()):
                    try:
                        float(field)
                    except ValueError:
                        continue  # a header name, not a value
                    integer[j] = False
            if not integer.any():
                break
    return integer


def _image_forms(shape: tuple[int, ...]) -> str:
    """The array shapes ``iresnet score`` takes for images of ``shape`` ``(C, H, W)``: the
    images, or their flattened rows (what a ``.csv`` of ``iresnet sample`` holds)."""
    return f"(N, {', '.join(map(str, shape))}) or flattened rows (N, {math.prod(shape)})"


def _image_points(
    task: DensityTask | HybridTask, arr: np.ndarray, path: Path, integers: bool, what: str
) -> torch.Tensor:
    """Images given as ``arr`` (``(N, C, H, W)`` or flattened ``(N, C*H*W)``) as the integer
    levels the flow scores, ``(N, C, H, W)``. ``integers``: the values are integer levels
    ``0..K-1`` (an integer ``.npy`` dtype, or a ``.csv`` written in whole numbers), else
    floats in ``[0, 1]`` as ``iresnet sample`` writes them, each read as the level it falls in
    (``floor(u K)``, ``u = 1`` in the top level). ``what`` names the array's extent in the
    shape error (its shape, or a CSV's columns). Checked in this order: rows, shape, values.

    Raises:
        DataError: no rows; another shape; floats that are NaN/Inf or outside ``[0, 1]``;
            levels outside ``0..K-1``.
    """
    shape = tuple(task.data.event_shape)
    forms = _image_forms(shape)
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise DataError(
            f"{path}: no images to score (shape {arr.shape}: zero rows); save at least one "
            f"image, as {forms}"
        )
    if arr.ndim == 2 and arr.shape[1] == math.prod(shape):
        arr = arr.reshape(arr.shape[0], *shape)
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        hint = ""
        if shape[0] == 1 and arr.ndim == len(shape) and tuple(arr.shape[1:]) == shape[1:]:
            hint = "; add the channel axis (x[:, None]) or flatten each image"
        raise DataError(f"{path}: expected images of shape {forms}, got {what}{hint}")
    levels = task.data.n_levels or 256
    if not integers:
        if not np.isfinite(arr).all():
            raise DataError(
                f"{path}: images are integer levels 0..{levels - 1} or floats in [0, 1]; got "
                "NaN or Inf"
            )
        if arr.min() < 0 or arr.max() > 1:
            whole = ""
            if path.suffix.lower() == ".csv" and np.all(arr == np.round(arr)):
                whole = " (for integer levels write whole numbers: 3, not 3.0)"
            raise DataError(
                f"{path}: images are integer levels 0..{levels - 1} or, as `iresnet sample` "
                f"writes them, floats in [0, 1]; got floats in {arr.min():g}..{arr.max():g}" + whole
            )
        arr = np.minimum(np.floor(arr * levels), levels - 1)
    if arr.min() < 0 or arr.max() >= levels:
        raise DataError(
            f"{path}: levels must lie in 0..{levels - 1}, got {_span(arr.astype(np.int64))}"
        )
    return torch.as_tensor(arr.astype(np.int64)).to(task.data.train_x.dtype)


def _read_run_array(task: DensityTask | HybridTask, path: Path) -> np.ndarray:
    """A CSV or ``.npy`` of rows read as the run read its training data (an unnamed index
    column dropped if it was dropped), with no cap of its own on the width (the callers check
    it against the run's). A file with an unnamed index that the run refuses is told what
    ``score`` can offer: the run's ``data.index_column`` is not an option of ``score``."""
    choice = task.cfg.data.index_column
    return load_array(
        path,
        max_dim=2**31,
        min_rows=1,
        index_column=choice,
        index_advice=(
            f"score reads the file as the run read its training data, data.index_column="
            f"{choice}: the run's choice, not an option of score"
        ),
    )


def _read_points(task: DensityTask | HybridTask, path: Path) -> torch.Tensor:
    """The points of ``path`` as the run scores them: ``(N, d)`` float64 for a vector run,
    ``(N, C, H, W)`` levels for an image run (from a ``.npy`` of images or flattened rows, or
    a ``.csv`` of flattened rows: see ``_image_points``).

    Raises:
        DataError: a missing or malformed file, another extension, or points of another
            width, shape or range.
    """
    if not task.images:
        x = _read_run_array(task, path)  # a file of another width: the mismatch line below
        if x.shape[1] != task.dim:
            raise DataError(
                f"{path}: {count(x.shape[1], 'column')}, but the run "
                f"models {task.dim}-dimensional points"
            )
        return torch.as_tensor(x, dtype=torch.float64)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    forms = _image_forms(tuple(task.data.event_shape))
    if path.suffix.lower() == ".csv" and path.is_file():
        x = _read_run_array(task, path)
        integers = bool(_csv_integer_columns(path, x.shape[1]).all())
        return _image_points(task, x, path, integers, count(x.shape[1], "column"))
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise DataError(f"{path}: image runs score a .npy array or a .csv of images, {forms}")
    arr = read_npy(path)
    top = (task.data.n_levels or 256) - 1
    if arr.dtype.kind == "b":  # np.save(path, x > 0.5) was scored as the levels 0 and 1
        raise DataError(
            f"{path}: a boolean array is not images; save integer levels 0..{top} or floats in "
            f"[0, 1] (x.astype(float) reads True as 1.0, the level {top})"
        )
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: images must be integer levels (e.g. uint8 0..{top}) or floats in [0, 1] "
            f"as `iresnet sample` writes them, got {arr.dtype}"
        )
    return _image_points(task, arr, path, arr.dtype.kind in "iu", f"shape {arr.shape}")


def score_file(
    task: Task,
    model: nn.Module,
    data_path: Path,
    context: str | Path | None = None,
    *,
    repeats: int = 8,
    batch_size: int = 1024,
) -> ScoreResult:
    """Score the points of ``data_path`` under ``model``: ``(N, d)`` rows (``.npy`` / ``.csv``)
    for a vector run; for an image run images ``(N, C, H, W)`` or flattened rows
    ``(N, C*H*W)`` (``.npy``, or ``.csv`` rows as ``iresnet sample`` writes them), integer levels
    ``0..K-1`` (an integer dtype, or a ``.csv`` written in whole numbers) or floats in ``[0, 1]``
    (read as the level each falls in). A conditional run is scored at ``context``:
    a ``.npy`` / ``.csv`` file of one context row per point, or the forms of
    [`parse_contexts`][iresnet.app.scoring.parse_contexts] (one context for every point, or as
    many as there are points).

    Raises:
        ConfigError: not a density run; contexts given to an unconditional run or missing for
            a conditional one; ``repeats`` below 2 for a stochastic estimate (below 1 for an
            exact one, which is evaluated once whatever ``repeats`` says).
        DataError: a malformed or empty file, a wrong number of columns or shape (checked
            before the values), out-of-range image levels or floats outside ``[0, 1]``, a
            boolean array of images (neither levels nor floats), NaN/Inf, or context rows
            that do not pair with the points.
    """
    task = _density_task(task, "score")
    table = _sample_file_columns(task, data_path)
    if table is not None and context is not None:
        names = context_columns(task, torch.zeros(1, task.context_dim))[1]
        raise DataError(
            f"{data_path}: a sample file of this run, its context columns "
            f"({', '.join(names)}) already pair each point with its context: leave out "
            "--context to score it at them, or drop those columns to score at another"
        )
    if table is not None:  # a sample file of this run: its own contexts, row by row
        points, context_values = table[:, : task.dim], table[:, task.dim :]
        if task.images:  # flattened images: floats in [0, 1], or levels written as integers
            integers = bool(_csv_integer_columns(data_path, table.shape[1])[: task.dim].all())
            x = _image_points(task, points, data_path, integers, f"{task.dim} columns")
        else:
            x = torch.as_tensor(points, dtype=torch.float64)
    else:
        x = _read_points(task, data_path)
    c = given = None
    if table is not None:
        c = given = _as_contexts(task, context_values, f"{data_path} (its context columns)")
    elif task.context_dim:
        if context is None:
            beside = data_path.with_name(f"{data_path.stem}.contexts.npy")
            pair = (
                f" (here: --context {beside}, the contexts `iresnet sample` wrote beside it)"
                if beside.is_file()
                else ""
            )
            raise ConfigError(
                "this run is conditional: pass --context, a file of one row per point or one "
                "context for every point ('a,b'), or score a .csv that `iresnet sample` wrote "
                f"(its context columns are read){pair}"
            )
        c = given = parse_contexts(task, context, "score")
        is_file = Path(str(context)).suffix.lower() in (".npy", ".csv")
        if c.shape[0] == 1 and not is_file:
            c = c.expand(x.shape[0], -1)
        if c.shape[0] != x.shape[0]:
            where = str(context) if is_file else f"--context {str(context)!r}"
            raise DataError(
                f"{where}: {count(c.shape[0], 'context row')} for {count(x.shape[0], 'point')}; "
                "give one context per point, or a single context ('a,b') for every point"
            )
    elif context is not None:
        raise ConfigError("--context: this run is not conditional; score without it")
    # exact or not: known before certifying
    name, estimator = scoring_estimator(task.dim, task.scored_exactly_up_to())
    stochastic = name != "exact" or task.images  # dequantisation noise is random too
    if repeats < (2 if stochastic else 1):
        why = "the SE of a stochastic estimate needs two draws" if stochastic else "one pass"
        kind = "exact" if name == "exact" else "Russian-roulette"
        raise ConfigError(
            f"--repeats must be >= {2 if stochastic else 1} ({why}; the {kind} log-det"
            + (" with dequantisation noise" if task.images else "")
            + f" scores this run), got {repeats}"
        )
    if name != "exact":  # the roulette's law from the certified bound (seconds for convolutions)
        bound = scoring_lipschitz(model, certified=True)
        name, estimator = scoring_estimator(task.dim, task.scored_exactly_up_to(), lipschitz=bound)
    draws = []
    # The dtypes `evaluate` feeds the model (the run's data, as data.json records them), so
    # that the same points get the same numbers bit for bit: cast to the model's dtype before
    # its standardisation, a float64 data set's points scored a float32 ulp or two away.
    x_dtype = task.data.test_x.dtype if task.data.test_x.is_floating_point() else None
    test_c = getattr(task.data, "test_c", None)
    c_dtype = test_c.dtype if test_c is not None else task.model_dtype(model)
    with evaluating(model), swap_logdets(model, estimator):
        for _ in range(repeats if stochastic else 1):
            parts = []
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(task.device)
                if xb.is_floating_point() and x_dtype is not None:
                    xb = xb.to(x_dtype)
                cb = None if c is None else c[start : start + batch_size].to(task.device, c_dtype)
                parts.append(task.log_prob(model, xb if cb is None else (xb, cb)).double().cpu())
            draws.append(torch.cat(parts))
    logp = torch.stack(draws)
    columns = {"log_prob": logp.mean(0).numpy()}
    if stochastic:
        columns["log_prob_se"] = (logp.std(0) / math.sqrt(logp.shape[0])).numpy()
    if task.images:
        nats = task.dim * math.log(2)
        columns["bpd"] = task.value(logp.mean(0)).numpy()
        columns["bpd_se"] = columns["log_prob_se"] / nats
    if not np.isfinite(columns["log_prob"]).all():
        bad = int(np.argmin(np.isfinite(columns["log_prob"])))
        raise DataError(f"{data_path}: point {bad} has a non-finite log-density under the model")
    if not task.images:
        dequantisation = ""
    elif any(isinstance(m, VariationalDequantize) for m in model.modules()):
        dequantisation = (
            "variational dequantisation (one-sample estimates of the ELBO, a lower bound of "
            "log P(x))"
        )
    else:
        # E_u log p(x + u) <= log P(x) by Jensen (Theis et al. 2016, arXiv:1511.01844): a
        # bound as the variational one is, which the label said only for that one (try-out 9).
        dequantisation = (
            "uniform dequantisation (estimates of E_u log p(x + u), a lower bound of log P(x))"
        )
    label = f"{name} + {dequantisation}" if dequantisation else name
    return ScoreResult(columns, label, given, logdet=name, dequantisation=dequantisation)
