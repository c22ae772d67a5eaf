"""Statistical tests of the 2-D toy densities: samplers, exact log-densities and entropies."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch

from iresnet.datasets.toy import TOY_DATASETS, sample_toy, toy_log_density, toy_split, true_entropy
from iresnet.errors import DataError

CLOSED_FORM = ("8gaussians", "checkerboard", "rings", "circles")
# Quadrature step: <= s/4 for the thinnest component (rings, s = 0.08). The midpoint rule on
# a Gaussian profile has aliasing error ~ exp(-2 pi^2 s^2 / h^2) < 1e-100 at h = s/4, so grid
# sums are exact up to rounding and the mass outside the box.
GRID_H = 0.02

# Exact means from the definitions in iresnet.data.toy: all sets are point-symmetric about 0
# except moons (E[outer] = (0, 2/pi), E[inner] = (1, 1/2 - 2/pi), so 2 * avg + (-1, -0.2)
# = (0, 0.3)) and swissroll (t ~ U(3pi/2, 9pi/2): E[t cos t] = 2, E[t sin t] = 2/(3pi)).
EXACT_MEANS = {
    "moons": (0.0, 0.3),
    "swissroll": (0.4, 2.0 / (15.0 * math.pi)),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grid(lo: float, hi: float, h: float) -> tuple[torch.Tensor, int]:
    """Midpoints of an ``m x m`` grid of step ``h`` over ``[lo, hi]^2`` as ``(m*m, 2)``."""
    m = round((hi - lo) / h)
    c = lo + h * (torch.arange(m, dtype=torch.float64) + 0.5)
    gx, gy = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1), m


@cache
def _grid_log_density(name: str) -> torch.Tensor:
    """``log p`` at the midpoints of a step-``GRID_H`` grid over ``[-5, 5]^2`` (cached)."""
    log_p = toy_log_density(name)
    assert log_p is not None
    return log_p(_grid(-5.0, 5.0, GRID_H)[0])


def _chi2_upper_quantile(q: float, dof: int) -> float:
    try:
        from scipy.stats import chi2
    except ImportError:  # Wilson-Hilferty: (X/k)^(1/3) is close to N(1 - 2/9k, 2/9k).
        z = {0.999: 3.0902, 0.9999: 3.7190}[q]
        a = 2.0 / (9.0 * dof)
        return dof * (1.0 - a + z * math.sqrt(a)) ** 3
    return float(chi2.ppf(q, dof))


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_sampler_shape_dtype_determinism(name: str) -> None:
    a = sample_toy(name, 1000, generator=_gen(1))
    b = sample_toy(name, 1000, generator=_gen(1))
    c = sample_toy(name, 1000, generator=_gen(2))
    d = sample_toy(name, 1000, generator=_gen(1), dtype=torch.float64)
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    assert d.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(d).all()
    # Draws are made in float64, so the dtype only changes the final rounding.
    torch.testing.assert_close(a, d.float(), rtol=0, atol=0)
    assert sample_toy(name, 0).shape == (0, 2)
    # The bulk of the mass sits in the usual [-4, 4]^2 box.
    assert (d.abs() <= 4.0).all(dim=1).double().mean() > 0.99


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_sample_mean_matches_exact_mean(name: str) -> None:
    n = 40_000
    x = sample_toy(name, n, generator=_gen(3), dtype=torch.float64)
    mean = torch.tensor(EXACT_MEANS.get(name, (0.0, 0.0)), dtype=torch.float64)
    se = x.std(dim=0) / math.sqrt(n)
    # 5 standard errors: a false alarm has probability ~1e-6 per coordinate.
    assert ((x.mean(dim=0) - mean).abs() < 5.0 * se).all(), (x.mean(dim=0), mean, se)


def test_unknown_name_lists_valid_names() -> None:
    for call in (
        lambda: sample_toy("spiral", 3),
        lambda: toy_log_density("spiral"),
        lambda: toy_split("spiral", 3, 3),
    ):
        with pytest.raises(DataError, match="spiral.*8gaussians.*swissroll"):
            call()
    with pytest.raises(DataError):
        sample_toy("moons", -1)
    # the conditional toys refuse a bad size with the same one line (was torch's RuntimeError)
    from iresnet.datasets.conditional import conditional_toy_split

    for sizes in ((-1, 3), (3, 2.5), (True, 3)):
        with pytest.raises(DataError, match="non-negative int"):
            conditional_toy_split("rotated-8gaussians", *sizes)


def test_closed_form_availability() -> None:
    for name in TOY_DATASETS:
        assert (toy_log_density(name) is not None) == (name in CLOSED_FORM)
        assert (true_entropy(name, n=10) is not None) == (name in CLOSED_FORM)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_density_integrates_to_one(name: str) -> None:
    total = float(_grid_log_density(name).exp().sum()) * GRID_H**2
    # Tolerance 1e-6: the mass outside [-5, 5]^2 is < 1e-9 (nearest Gaussian centre or ring is
    # > 6 std from the box edge); quadrature error is negligible (see GRID_H); checkerboard
    # edges lie on grid lines, so its sum is exact; the rings' 1/|x| singularity at 0 carries
    # weight < 1e-20.
    assert abs(total - 1.0) < 1e-6, total


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_samples_follow_density_chi_square(name: str) -> None:
    log_p = toy_log_density(name)
    assert log_p is not None
    n, lo, hi, bins, sub = 20_000, -4.0, 4.0, 16, 20
    width = (hi - lo) / bins
    # Expected bin probabilities: midpoint rule on a sub x sub grid inside each bin
    # (step 0.025 ~ s/3 for the thinnest rings: quadrature error << sampling noise).
    pts, _ = _grid(lo, hi, width / sub)
    dens = log_p(pts).exp().reshape(bins, sub, bins, sub)
    prob = dens.sum(dim=(1, 3)).reshape(-1) * (width / sub) ** 2

    x = sample_toy(name, n, generator=_gen(4), dtype=torch.float64)
    idx = torch.floor((x - lo) / width).long()
    inside = ((idx >= 0) & (idx < bins)).all(dim=1)
    flat = idx[inside, 0] * bins + idx[inside, 1]
    counts = torch.bincount(flat, minlength=bins * bins).double()

    # Bins with expected count < 5 (and all mass outside the box) are pooled into one cell so
    # the chi-square approximation holds.
    keep = prob * n >= 5.0
    observed = torch.cat([counts[keep], (counts[~keep].sum() + (~inside).sum()).reshape(1)])
    expected = torch.cat([prob[keep], (1.0 - prob[keep].sum()).reshape(1)]) * n
    assert expected[-1] > -1e-9  # pooled mass is 1 - sum(kept), up to rounding
    expected[-1] = expected[-1].clamp_min(0.0)
    if expected[-1] < 5.0:  # too little pooled mass for its own cell: merge into the largest
        j = int(torch.argmax(expected[:-1]))
        observed[j] += observed[-1]
        expected[j] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = len(expected) - 1
    assert dof >= 20
    assert stat < _chi2_upper_quantile(0.999, dof), (stat, dof)


def test_checkerboard_entropy_is_log_32() -> None:
    result = true_entropy("checkerboard")
    assert result is not None
    h, se = result
    # log p is constant, so se is 0 up to rounding: allow 1e-12 absolute on top of 4 se.
    assert abs(h - math.log(32.0)) <= max(4.0 * se, 1e-12)


@pytest.mark.parametrize("name", ["8gaussians", "rings", "circles"])
def test_entropy_matches_grid_integral(name: str) -> None:
    lp = _grid_log_density(name)
    # Quadrature error is < 1e-6 (see test_density_integrates_to_one), far below 4 se ~ 1e-2.
    h_grid = float(-(lp.exp() * lp).sum()) * GRID_H**2
    result = true_entropy(name, n=50_000, seed=5)
    assert result is not None
    h, se = result
    assert 0.0 < se < 0.05
    assert abs(h - h_grid) < 4.0 * se, (h, h_grid, se)


def test_entropy_of_8gaussians_matches_well_separated_limit() -> None:
    # Centres are 2 R sin(pi/8) / sigma ~ 6.1 std apart, so overlaps are tiny and
    # H ~ log 8 + log(2 pi e sigma^2) (mixture of disjoint equal components).
    sigma2 = 1.0 / 8.0
    expected = math.log(8.0) + math.log(2.0 * math.pi * math.e * sigma2)
    result = true_entropy("8gaussians", n=50_000, seed=6)
    assert result is not None
    assert abs(result[0] - expected) < 4.0 * result[1] + 0.01


def test_rings_log_density_radial_form() -> None:
    # p(x) = p_r(|x|) / (2 pi |x|): a rotated point has the same density, and the density at
    # radius r_k (a ring centre) matches the folded-normal formula computed by hand.
    log_p = toy_log_density("rings")
    assert log_p is not None
    r, s, radii = 1.65, 0.08, (0.75, 1.65, 2.4, 3.0)
    pr = sum(
        math.exp(-0.5 * ((r - c) / s) ** 2) + math.exp(-0.5 * ((r + c) / s) ** 2) for c in radii
    ) / (4.0 * s * math.sqrt(2.0 * math.pi))
    angles = torch.tensor([0.0, 1.0, 2.5, -2.0], dtype=torch.float64)
    x = r * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    expected = torch.full((4,), math.log(pr / (2.0 * math.pi * r)), dtype=torch.float64)
    torch.testing.assert_close(log_p(x), expected)
    assert torch.isfinite(log_p(torch.zeros(1, 2, dtype=torch.float64))).all()


def test_checkerboard_support() -> None:
    log_p = toy_log_density("checkerboard")
    assert log_p is not None
    pts = torch.tensor(
        [[-3.0, -3.0], [-1.0, -3.0], [-3.0, -1.0], [1.0, 1.0], [3.0, -1.0], [4.5, 0.5]],
        dtype=torch.float64,
    )
    expected = [-math.log(32.0), -math.inf, -math.inf, -math.log(32.0), -math.log(32.0)]
    torch.testing.assert_close(log_p(pts), torch.tensor([*expected, -math.inf]).double())
    with pytest.raises(DataError, match=r"\(m, 2\)"):
        log_p(torch.zeros(3, 3))


def test_toy_split_fixed_and_independent() -> None:
    train, test = toy_split("moons", 500, 200, seed=7)
    assert train.shape == (500, 2) and test.shape == (200, 2)
    train2, test2 = toy_split("moons", 900, 200, seed=7)
    assert torch.equal(test, test2)  # the test set does not depend on n_train
    _, test3 = toy_split("moons", 500, 200, seed=8)
    assert not torch.allclose(test, test3)
    # Train and test come from different streams (no shared prefix).
    assert not torch.allclose(train[:200], test)
