"""Tests for iresnet.plots: every figure is a valid PNG, written atomically."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from iresnet.app import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_hw: tuple[int, int] = (100, 100)) -> np.ndarray:
    assert path.is_file()
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_hw[0] and img.shape[1] >= min_hw[1]
    assert float(img[..., :3].std()) > 0.0  # not a blank canvas
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return img


def gaussian_log_density(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x**2).sum(dim=1) - math.log(2 * math.pi)


@pytest.fixture
def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2000, 2, generator=g)


class Recorder:
    """A log-density that records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.dtype, tuple[int, ...], bool]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.dtype, tuple(x.shape), torch.is_grad_enabled()))
        return gaussian_log_density(x)


def test_toy_figure_calls_density_in_float_chunks(tmp_path: Path, data: torch.Tensor) -> None:
    rec = Recorder()
    out = plots.plot_toy_figure(data, rec, data + 0.1, tmp_path / "sub" / "toy.png", grid=150)
    assert out == tmp_path / "sub" / "toy.png"
    img = assert_png(out)
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side
    assert sum(shape[0] for _, shape, _ in rec.calls) == 150 * 150
    assert len(rec.calls) == math.ceil(150 * 150 / 10_000)
    for dtype, shape, grad in rec.calls:
        assert dtype.is_floating_point and len(shape) == 2 and shape[1] == 2
        assert shape[0] <= 10_000 and not grad


def test_toy_figure_truth_panel_and_extent(tmp_path: Path, data: torch.Tensor) -> None:
    learned, truth = Recorder(), Recorder()
    three = plots.plot_toy_figure(data, learned, data, tmp_path / "three.png", grid=40)
    four = plots.plot_toy_figure(
        data.numpy(),
        learned,
        data.numpy(),
        tmp_path / "four.png",
        grid=40,
        extent=(-4, 4, -4, 4),
        truth_log_density=truth,
    )
    assert len(truth.calls) == 1 and truth.calls[0][1] == (1600, 2)
    assert assert_png(four).shape[1] > assert_png(three).shape[1]


def test_toy_figure_rejects_bad_input(tmp_path: Path, data: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        plots.plot_toy_figure(data[:, :1], gaussian_log_density, data, tmp_path / "a.png")
    with pytest.raises(ValueError):
        plots.plot_toy_figure(
            data, lambda x: torch.zeros(len(x), 3), data, tmp_path / "b.png", grid=20
        )
    with pytest.raises(ValueError):
        plots.plot_toy_figure(
            data, gaussian_log_density, data, tmp_path / "c.png", extent=(1, 0, 0, 1)
        )
    assert not list(tmp_path.iterdir())


def test_toy_figure_survives_nonfinite_log_density(tmp_path: Path, data: torch.Tensor) -> None:
    def bad(x: torch.Tensor) -> torch.Tensor:
        lp = gaussian_log_density(x)
        lp[::7] = float("nan")
        lp[::11] = float("inf")
        return lp

    assert_png(plots.plot_toy_figure(data, bad, data, tmp_path / "nan.png", grid=30))


def test_density_comparison(tmp_path: Path, data: torch.Tensor) -> None:
    recs = {name: Recorder() for name in ("ours", "RealNVP", "NSF")}
    out = plots.plot_density_comparison(data, recs, tmp_path / "cmp.png", grid=50)
    img = assert_png(out)
    assert img.shape[1] > 3 * img.shape[0]  # four panels
    for rec in recs.values():
        assert sum(shape[0] for _, shape, _ in rec.calls) == 2500


def test_overwrite_is_atomic_and_clean(tmp_path: Path, data: torch.Tensor) -> None:
    target = tmp_path / "fig.png"
    target.write_bytes(b"old contents")
    os.chmod(target, 0o640)
    plots.plot_density_comparison(data, {"g": gaussian_log_density}, target, grid=20)
    assert_png(target)
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_failed_render_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "fig.png"
    target.write_bytes(b"old contents")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_sweep([{"coeff": 0.5, "error": 0.1}], target)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_learning_curve_skips_records_without_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records: list[dict[str, object]] = []
    for step in range(200):
        records.append({"step": step, "loss": float(3 * np.exp(-step / 50) + rng.normal(0, 0.1))})
        if step % 50 == 49:
            records.append({"step": step, "test_nll": 2.0 - step / 200})
    records.append({"step": 300, "loss": None})
    records.append({"step": 301, "loss": float("nan")})
    records.append({"loss": 1.0})  # no x

    pts = plots._curve_points(records, "step", "test_nll")
    assert pts.shape == (4, 2) and list(pts[:, 0]) == [49, 99, 149, 199]
    assert plots._curve_points(records, "step", "loss").shape == (200, 2)

    out = plots.plot_learning_curve(
        records, tmp_path / "curve.png", keys=("loss", "test_nll"), title="t"
    )
    assert_png(out)
    # no record holds the key: still a valid figure ("no data")
    assert_png(plots.plot_learning_curve(records, tmp_path / "empty.png", keys=("acc",)))


def test_smooth_is_moving_average() -> None:
    y = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(plots._smooth(y, 2), [1.0, 2.0, 4.0, 6.0])


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid(tmp_path: Path, channels: int) -> None:
    images = torch.rand(10, channels, 28, 28) * 1.4 - 0.2  # out of range: clamped
    out = plots.plot_image_grid(images, tmp_path / f"grid{channels}.png", title="samples")
    assert_png(out)
    assert_png(plots.plot_image_grid(images, tmp_path / "row.png", nrow=10))
    with pytest.raises(ValueError):
        plots.plot_image_grid(torch.rand(4, 2, 8, 8), tmp_path / "bad.png")


def test_reconstructions(tmp_path: Path) -> None:
    x = torch.rand(20, 3, 16, 16)
    out = plots.plot_reconstructions(x, x + 1e-6, tmp_path / "rec.png", n=8)
    assert_png(out)
    assert_png(plots.plot_reconstructions(x, x, tmp_path / "rec_all.png", n=20))
    with pytest.raises(ValueError):
        plots.plot_reconstructions(x, x[:5], tmp_path / "bad.png")


def test_trajectories_1d_and_2d(tmp_path: Path) -> None:
    depth = np.linspace(0, 1, 11)
    starts = np.linspace(-2, 2, 30)
    paths_1d = starts[:, None] * (1 + depth[None, :])
    out = plots.plot_trajectories(
        paths_1d, tmp_path / "traj1.png", crossings=[(5, 0.0), (7, 1.0)], title="1-D"
    )
    assert_png(out)

    angles = np.linspace(0, 2 * np.pi, 25)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    paths_2d = circle[:, None, :] * (1 + depth[None, :, None])
    crossings = np.array([[1.0, 0.0]])  # an array, not a list: must not be truth-tested
    out = plots.plot_trajectories(
        torch.as_tensor(paths_2d), tmp_path / "t2.png", crossings=crossings
    )
    assert_png(out)
    with pytest.raises(ValueError):
        plots.plot_trajectories(np.zeros((3, 4, 3)), tmp_path / "bad.png")


def test_sweep_puts_vanilla_last(tmp_path: Path) -> None:
    rows = [
        {"coeff": "vanilla", "error": 0.08},
        {"coeff": 0.9, "error": 0.07},
        {"coeff": 0.5, "error": 0.09},
        {"coeff": 0.9, "error": 0.075},
        {"coeff": 0.7, "error": None},
        {"other": 1},
    ]
    assert_png(plots.plot_sweep(rows, tmp_path / "sweep.png"))
    assert_png(plots.plot_sweep([], tmp_path / "empty.png"))


def test_module_is_standalone_and_avoids_pyplot() -> None:
    tree = ast.parse(Path(plots.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            # the one atomic-write helper is its only import from the package
            assert node.level == 0 or node.module == "files", node.module
            imported.add(node.module or "")
    assert not [m for m in imported if m.split(".")[0] == "iresnet"]
    assert "matplotlib.pyplot" not in imported


def test_histograms_share_one_extent_and_refuse_nothing_to_draw(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    left = torch.randn(500, 2, generator=g) - 3
    right = torch.randn(500, 2, generator=g) + 3
    out = plots.plot_histograms([(left, "c = -3"), (right, "c = 3")], tmp_path / "h.png")
    img = mpimg.imread(out)
    assert img.shape[1] > img.shape[0]  # two panels side by side
    with pytest.raises(ValueError, match="at least one"):
        plots.plot_histograms([], tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        plots.plot_histograms([(torch.zeros(5, 3), "3-D")], tmp_path / "bad.png")
