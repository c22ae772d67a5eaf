"""Figures for toy densities, learning curves, images, dynamics and sweeps (PNG only).

Every function takes plain tensors, arrays or callables (never models or trainers), draws on a
private ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no display, no global
backend change), writes a PNG to ``path`` atomically (temporary file in the same folder, then
``os.replace``; parent folders are created) and returns the path as a ``pathlib.Path``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .files import atomic_write

__all__ = [
    "plot_toy_figure",
    "plot_density_comparison",
    "plot_histograms",
    "plot_learning_curve",
    "plot_image_grid",
    "plot_reconstructions",
    "plot_trajectories",
    "plot_sweep",
]

PathLike = str | os.PathLike[str]
Extent = tuple[float, float, float, float]
LogDensity = Callable[[torch.Tensor], Any]

_CMAP = "inferno"
_CHUNK = 10_000
_DPI = 100


# ----------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _points(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {tuple(arr.shape)}")
    return arr


def _save(fig: Figure, path: PathLike) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically and release the figure."""
    try:
        FigureCanvasAgg(fig)
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=_DPI))
    finally:
        fig.clear()


def _check_extent(extent: Sequence[float]) -> Extent:
    vals = tuple(float(v) for v in extent)
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"extent must be 4 finite numbers (xmin, xmax, ymin, ymax), got {extent}")
    if not (vals[0] < vals[1] and vals[2] < vals[3]):
        raise ValueError(f"extent needs xmin < xmax and ymin < ymax, got {vals}")
    return vals  # type: ignore[return-value]


def _auto_extent(data: np.ndarray, margin: float = 0.15) -> Extent:
    """A square window around the 0.5%-99.5% quantiles of ``data``, widened by ``margin``."""
    finite = data[np.isfinite(data).all(axis=1)]
    if len(finite) == 0:
        raise ValueError("cannot choose an extent: data has no finite points; pass extent=")
    lo, hi = np.quantile(finite, [0.005, 0.995], axis=0)
    centre = (lo + hi) / 2
    half = float(np.max(hi - lo)) / 2 * (1 + margin)
    if not half > 0:
        half = 1.0
    return (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)


def _resolve_extent(extent: Sequence[float] | None, data: np.ndarray) -> Extent:
    return _auto_extent(data) if extent is None else _check_extent(extent)


def _eval_density(log_density: LogDensity, extent: Extent, grid: int) -> np.ndarray:
    """``exp(log_density)`` on a ``grid x grid`` mesh; rows are y (for ``origin='lower'``)."""
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    xs = np.linspace(extent[0], extent[1], grid)
    ys = np.linspace(extent[2], extent[3], grid)
    xx, yy = np.meshgrid(xs, ys)
    mesh = np.stack([xx.ravel(), yy.ravel()], axis=1)
    pts = torch.as_tensor(mesh, dtype=torch.get_default_dtype())
    out = []
    with torch.no_grad():
        for chunk in torch.split(pts, _CHUNK):
            lp = _to_numpy(log_density(chunk))
            if lp.size != len(chunk) or (lp.ndim > 1 and lp.shape[0] != len(chunk)):
                raise ValueError(
                    f"log_density must return shape ({len(chunk)},), got {tuple(lp.shape)}"
                )
            out.append(lp.reshape(-1))
    with np.errstate(over="ignore", invalid="ignore"):
        dens = np.exp(np.concatenate(out))
    dens[~np.isfinite(dens)] = 0.0
    return dens.reshape(grid, grid)


def _hist(data: np.ndarray, extent: Extent, grid: int) -> np.ndarray:
    """2-D histogram of ``data`` (rows are y), with a bin count that suits the sample size."""
    bins = int(np.clip(math.sqrt(max(len(data), 1) / 4), 20, max(grid, 20)))
    finite = data[np.isfinite(data).all(axis=1)]
    counts, _, _ = np.histogram2d(
        finite[:, 0], finite[:, 1], bins=bins, range=[extent[:2], extent[2:]]
    )
    return counts.T


def _panel(ax: Axes, image: np.ndarray, extent: Extent, title: str) -> None:
    kw = {"origin": "lower", "cmap": _CMAP, "aspect": "equal", "interpolation": "nearest"}
    ax.imshow(image, extent=extent, vmin=0.0, **kw)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.tick_params(labelsize=7)
    ax.set_xlabel("$x_1$ (data units)", fontsize=8)
    ax.set_ylabel("$x_2$ (data units)", fontsize=8)
    ax.set_facecolor("black")
    ax.set_title(title)


def _save_panels(panels: list[tuple[np.ndarray, str]], extent: Extent, path: PathLike) -> Path:
    """Draw ``(image, title)`` panels side by side on a shared extent and save them."""
    fig = Figure(figsize=(3.2 * len(panels), 3.5), dpi=_DPI, layout="constrained")
    for ax, (img, title) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        _panel(ax, img, extent, title)
    return _save(fig, path)


def _images(images: Any, name: str) -> np.ndarray:
    """``(N, C, H, W)`` (or ``(N, H, W)``) with C in {1, 3} -> ``(N, H, W, C)`` in [0, 1]."""
    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (N, C, H, W), N > 0, C in (1, 3); got {tuple(arr.shape)}"
        )
    return np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0).transpose(0, 2, 3, 1)


def _mosaic(rows: list[np.ndarray], pad: int = 2, fill: float = 1.0) -> np.ndarray:
    """Tile a list of rows, each ``(k, H, W, C)`` with k <= columns, into one image."""
    cols = max(len(r) for r in rows)
    _, h, w, c = rows[0].shape
    canvas = np.full((pad + len(rows) * (h + pad), pad + cols * (w + pad), c), fill)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return canvas


def _show_mosaic(mosaic: np.ndarray, title: str | None, tile_hw: tuple[int, int]) -> Figure:
    h, w = mosaic.shape[:2]
    scale = 0.9 / max(tile_hw)  # about 0.9 inch per tile
    width = float(np.clip(w * scale, 2.5, 14.0))
    fig = Figure(
        figsize=(width, width * h / w + (0.5 if title else 0.1)), dpi=_DPI, layout="constrained"
    )
    ax = fig.add_subplot()
    if mosaic.shape[2] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def _axes(height: float = 4.0) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.4, height), dpi=_DPI, layout="constrained")
    return fig, fig.add_subplot()


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str | None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None for missing / non-numeric / non-finite values."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _curve_points(records: Sequence[Mapping[str, Any]], x: str, key: str) -> np.ndarray:
    """``(n, 2)`` array of ``(x, key)`` from the records that hold both, sorted by x."""
    pts = []
    for rec in records:
        xv, yv = _number(rec.get(x)), _number(rec.get(key))
        if xv is not None and yv is not None:
            pts.append((xv, yv))
    arr = np.array(pts, dtype=np.float64).reshape(-1, 2)
    return arr[np.argsort(arr[:, 0], kind="stable")]


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average whose window shrinks at the start (no edge bias to zero)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    idx = np.arange(1, len(y) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


# ----------------------------------------------------------------------------- public API
def plot_toy_figure(
    data: Any,
    log_density: LogDensity,
    samples: Any,
    path: PathLike,
    *,
    extent: Sequence[float] | None = None,
    grid: int = 200,
    titles: Sequence[str] = ("data", "learned density", "samples (inverse)"),
    truth_log_density: LogDensity | None = None,
) -> Path:
    """The i-ResNet paper's toy figure: data | [true density |] learned density | samples.

    ``data`` and ``samples`` are ``(N, 2)`` points shown as 2-D histograms; ``log_density`` (and
    ``truth_log_density``) take a float tensor ``(M, 2)`` and return ``(M,)`` log-densities.
    They are called in chunks of 10k mesh points under ``torch.no_grad()`` (a callable that
    needs autograd internally must wrap itself in ``torch.enable_grad()``). ``extent`` is
    ``(xmin, xmax, ymin, ymax)``, by default a square around the data's quantiles. Each panel
    has its own colour scale from 0 to its maximum.
    """
    if len(titles) != 3:
        raise ValueError(f"titles must hold 3 strings, got {len(titles)}")
    pts, smp = _points(data, "data"), _points(samples, "samples")
    ext = _resolve_extent(extent, pts)
    panels = [(_hist(pts, ext, grid), titles[0])]
    if truth_log_density is not None:
        panels.append((_eval_density(truth_log_density, ext, grid), "true density"))
    panels.append((_eval_density(log_density, ext, grid), titles[1]))
    panels.append((_hist(smp, ext, grid), titles[2]))
    return _save_panels(panels, ext, path)


def plot_density_comparison(
    data: Any,
    densities: Mapping[str, LogDensity],
    path: PathLike,
    *,
    extent: Sequence[float] | None = None,
    grid: int = 200,
    data_title: str = "data (histogram)",
) -> Path:
    """One panel of ``data`` (2-D histogram, titled ``data_title``), then one density panel
    per named log-density, with axes in the data's units.

    ``densities`` maps a panel title (e.g. ``"ours"``, ``"RealNVP"``) to a callable as in
    ``plot_toy_figure``; panels follow the mapping's order, all on the same ``extent``.
    """
    pts = _points(data, "data")
    ext = _resolve_extent(extent, pts)
    panels = [(_hist(pts, ext, grid), data_title)]
    panels += [(_eval_density(fn, ext, grid), name) for name, fn in densities.items()]
    return _save_panels(panels, ext, path)


def plot_histograms(samples: Sequence[tuple[Any, str]], path: PathLike, *, grid: int = 200) -> Path:
    """One 2-D histogram panel per ``(points (N, 2), title)``, side by side on one extent (that
    of all the points together), e.g. a conditional flow's samples at each context."""
    sets = [(_points(x, "samples"), title) for x, title in samples]
    if not sets:
        raise ValueError("plot_histograms needs at least one set of points")
    ext = _resolve_extent(None, np.concatenate([pts for pts, _ in sets]))
    return _save_panels([(_hist(pts, ext, grid), title) for pts, title in sets], ext, path)


def plot_learning_curve(
    records: Sequence[Mapping[str, Any]],
    path: PathLike,
    *,
    x: str = "step",
    keys: Sequence[str] = ("loss",),
    ylabel: str | None = None,
    title: str | None = None,
) -> Path:
    """Plot each of ``keys`` against ``x`` over records such as the rows of ``metrics.jsonl``.

    Records lacking ``x`` or the key (or holding a non-numeric / non-finite value) are skipped
    for that key. Curves with more than 20 points are drawn faint and raw, with a trailing
    moving average (window ~ n/25) on top; shorter curves are drawn with markers.
    """
    fig, ax = _axes()
    drawn = 0
    for i, key in enumerate(keys):
        pts = _curve_points(records, x, key)
        if len(pts) == 0:
            continue
        colour = f"C{i % 10}"
        if len(pts) > 20:
            ax.plot(pts[:, 0], pts[:, 1], color=colour, alpha=0.25, linewidth=0.8)
            window = max(2, len(pts) // 25)
            ax.plot(pts[:, 0], _smooth(pts[:, 1], window), color=colour, linewidth=1.6, label=key)
        else:
            ax.plot(pts[:, 0], pts[:, 1], color=colour, marker="o", markersize=3, label=key)
        drawn += 1
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    _finish(ax, x, ylabel if ylabel is not None else ", ".join(keys), title)
    return _save(fig, path)


def plot_image_grid(
    images: Any, path: PathLike, *, nrow: int | None = None, title: str | None = None
) -> Path:
    """Tile ``images`` ``(N, C, H, W)`` (C = 1 greyscale or 3 RGB, clamped to [0, 1]).

    ``nrow`` is the number of images per row (as in ``torchvision.utils.make_grid``); by
    default about ``sqrt(N)``.
    """
    imgs = _images(images, "images")
    per_row = nrow if nrow is not None else math.ceil(math.sqrt(len(imgs)))
    if per_row < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    rows = [imgs[i : i + per_row] for i in range(0, len(imgs), per_row)]
    return _save(_show_mosaic(_mosaic(rows), title, imgs.shape[1:3]), path)


def plot_reconstructions(
    originals: Any, reconstructions: Any, path: PathLike, *, n: int = 16
) -> Path:
    """The first ``n`` originals above their reconstructions (rows of at most 16 pairs).

    The title reports ``max |x - x_rec|`` over *all* given pairs, computed before clamping.
    """
    a, b = _to_numpy(originals), _to_numpy(reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: originals {a.shape} vs reconstructions {b.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    top, bottom = _images(a[:n], "originals"), _images(b[:n], "reconstructions")
    cols = min(len(top), 16)
    rows = []
    for i in range(0, len(top), cols):
        rows += [top[i : i + cols], bottom[i : i + cols]]
    title = f"originals (top) / reconstructions (bottom) - max abs error {err:.3g}"
    return _save(_show_mosaic(_mosaic(rows), title, top.shape[1:3]), path)


def plot_trajectories(
    paths: Any,
    path: PathLike,
    *,
    crossings: Sequence[tuple[float, float]] | None = None,
    title: str | None = None,
) -> Path:
    """Hidden-state trajectories through the layers of a toy network.

    ``paths`` is ``(n_points, n_layers + 1)`` for 1-D states (drawn as depth on x vs state on
    y) or ``(n_points, n_layers + 1, 2)`` for 2-D states (drawn in the plane, start marked with
    a dot, end with a cross). ``crossings`` are points circled in red: ``(depth, value)`` in the
    1-D case, ``(x, y)`` in the 2-D case. Lines are coloured by their point's index.
    """
    arr = _to_numpy(paths)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 2) or arr.shape[1] < 1:
        raise ValueError(
            f"paths must be (n_points, n_layers + 1) or (n_points, n_layers + 1, 2),"
            f" got {tuple(arr.shape)}"
        )
    fig, ax = _axes(4.8)
    n = arr.shape[0]
    cmap = colormaps["viridis"]
    colours = [cmap(i / max(n - 1, 1)) for i in range(n)]
    if arr.ndim == 2:
        depth = np.arange(arr.shape[1], dtype=np.float64)
        segs = [np.stack([depth, row], axis=1) for row in arr]
        labels = ("depth (layer)", "state")
    else:
        segs = list(arr)
        ax.scatter(arr[:, 0, 0], arr[:, 0, 1], s=8, c=colours, zorder=3)
        ax.scatter(arr[:, -1, 0], arr[:, -1, 1], s=18, c=colours, marker="x", zorder=3)
        ax.set_aspect("equal", adjustable="datalim")
        labels = ("$h_1$", "$h_2$")
    ax.add_collection(LineCollection(segs, colors=colours, linewidths=0.8, alpha=0.8))
    ax.autoscale_view()
    if crossings is not None and len(crossings) > 0:
        cr = _to_numpy(crossings).reshape(-1, 2)
        ring = {"facecolors": "none", "edgecolors": "red", "linewidths": 1.5, "zorder": 4}
        ax.scatter(cr[:, 0], cr[:, 1], s=90, label="crossing", **ring)
        ax.legend(loc="best")
    _finish(ax, *labels, title)
    return _save(fig, path)


def plot_sweep(
    rows: Sequence[Mapping[str, Any]], path: PathLike, *, x: str = "coeff", y: str = "error"
) -> Path:
    """Marker-and-line plot of ``y`` against ``x`` for a sweep table.

    x values are placed at evenly spaced categorical positions: numeric values ascending, other
    strings after them in order of appearance, and ``"vanilla"`` at the right end (drawn as a
    square with a dotted reference line). Rows sharing an x are all marked; the line joins their
    means. Rows missing ``x`` or a numeric ``y`` are skipped.
    """
    groups: dict[Any, list[float]] = {}
    for row in rows:
        xv, yv = row.get(x), _number(row.get(y))
        if xv is None or yv is None:
            continue
        key = float(xv) if _number(xv) is not None else str(xv)
        groups.setdefault(key, []).append(yv)
    nums = sorted(k for k in groups if isinstance(k, float))
    strs = [k for k in groups if isinstance(k, str) and k != "vanilla"]
    order: list[Any] = nums + strs + (["vanilla"] if "vanilla" in groups else [])
    fig, ax = _axes()
    pos = np.arange(len(order), dtype=np.float64)
    main = [i for i, k in enumerate(order) if k != "vanilla"]
    for i, k in enumerate(order):
        ax.scatter([pos[i]] * len(groups[k]), groups[k], s=14, color="C0", alpha=0.5)
    if main:
        means = [float(np.mean(groups[order[i]])) for i in main]
        ax.plot(pos[main], means, color="C0", marker="o", label=y)
    if "vanilla" in groups:
        v = float(np.mean(groups["vanilla"]))
        ax.plot([pos[-1]], [v], color="C3", marker="s", linestyle="none", label="vanilla")
        ax.axhline(v, color="C3", linestyle=":", linewidth=1.0)
    if not order:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_xticks(pos, [f"{k:g}" if isinstance(k, float) else k for k in order])
    _finish(ax, x, y, None)
    return _save(fig, path)
