"""Two-dimensional toy densities, with exact log-densities where a closed form exists.

The sets follow the usual FFJORD / Residual-Flows toy benchmarks in spirit and scale (mass
roughly inside ``[-4, 4]^2``), but every density is defined precisely here, and every sample is
drawn with ``torch`` from one ``torch.Generator``, so a fixed seed gives fixed data on any
machine. Notation: ``U(a, b)`` uniform, ``N(m, s^2)`` normal, ``|x|`` the Euclidean norm, all
draws independent.

- ``8gaussians``: ``x = mu_k + sigma * eps``, ``k ~ U{0..7}``,
  ``mu_k = R (cos(k pi/4), sin(k pi/4))``, ``R = 2 sqrt 2``, ``sigma = 1 / (2 sqrt 2)``,
  ``eps ~ N(0, I_2)``; ``p(x) = (1/8) sum_k N(x; mu_k, sigma^2 I_2)``.
- ``checkerboard``: uniform on the 8 squares ``[-4 + 2i, -2 + 2i) x [-4 + 2j, -2 + 2j)``,
  ``i, j in {0..3}``, ``i + j`` even: ``p(x) = 1/32`` there, 0 elsewhere; entropy ``log 32``.
- ``rings``: angle ``theta ~ U(0, 2 pi)``, radius ``r = |r_k + s eps|``, ``k ~ U{0..3}``,
  ``r_k in (0.75, 1.65, 2.4, 3.0)``, ``s = 0.08``, ``eps ~ N(0, 1)``; ``x = r (cos, sin)``.
  The radius law is a folded normal mixture,
  ``p_r(r) = (1/4) sum_k [phi_s(r - r_k) + phi_s(r + r_k)]`` for ``r >= 0``, and
  ``p(x) = p_r(|x|) / (2 pi |x|)`` (polar Jacobian).
- ``circles``: as ``rings`` with ``r_k in (1.5, 3.0)`` (equal weights) and ``s = 0.24``.
- ``moons``: ``t ~ U(0, pi)``, a fair coin picks ``m = (cos t, sin t)`` or
  ``m = (1 - cos t, 0.5 - sin t)``, ``x = 2 (m + 0.1 eps) + (-1, -0.2)``, ``eps ~ N(0, I_2)``.
  No closed form.
- ``2spirals``: ``t = 3 pi sqrt(u)``, ``u ~ U(0, 1)``; ``a = (-t cos t, t sin t) + v``,
  ``v ~ U(0, 0.5)^2``; a fair sign ``b = +-1``; ``x = b a / 3 + 0.1 eps``. No closed form.
- ``pinwheel``: five arms ``k ~ U{0..4}``: ``f = (1 + 0.3 e1, 0.1 e2)``, ``e ~ N(0, I_2)``,
  angle ``theta = 2 pi k / 5 + 0.25 exp(f_1)``, ``x = 2 Rot(theta) f``. No closed form.
- ``swissroll``: ``t = (3 pi / 2)(1 + 2u)``, ``u ~ U(0, 1)``,
  ``x = (t cos t + e1, t sin t + e2) / 5``, ``e ~ N(0, I_2)``. No closed form.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch

from ..errors import DataError

__all__ = [
    "TOY_DATASETS",
    "sample_toy",
    "toy_log_density",
    "true_entropy",
    "toy_split",
]

TOY_DATASETS: tuple[str, ...] = (
    "8gaussians",
    "checkerboard",
    "2spirals",
    "moons",
    "circles",
    "rings",
    "pinwheel",
    "swissroll",
)
"""The toy density names (see the module docstring)."""

# Constants of the densities above (kept in one place so samplers and densities agree).
_GAUSS8_RADIUS = 2.0 * math.sqrt(2.0)
_GAUSS8_STD = 1.0 / (2.0 * math.sqrt(2.0))
_RINGS_RADII = (0.75, 1.65, 2.4, 3.0)
_RINGS_STD = 0.08
_CIRCLES_RADII = (1.5, 3.0)
_CIRCLES_STD = 0.24
_LOG_2PI = math.log(2.0 * math.pi)

_F64 = torch.float64


def _check_name(name: str) -> None:
    if name not in TOY_DATASETS:
        raise DataError(f"unknown toy dataset {name!r}; valid names are: {', '.join(TOY_DATASETS)}")


def _rand(n: int, g: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=g, dtype=_F64)


def _randn(n: int, g: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=g, dtype=_F64)


def _randint(high: int, n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=g)


def _gauss8_centers() -> torch.Tensor:
    angles = torch.arange(8, dtype=_F64) * (math.pi / 4.0)
    return _GAUSS8_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def _sample_8gaussians(n: int, g: torch.Generator | None) -> torch.Tensor:
    k = _randint(8, n, g)
    return _gauss8_centers()[k] + _GAUSS8_STD * _randn(n, g, 2)


def _sample_checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    i = _randint(4, n, g)
    # For column i the allowed rows j (i + j even) are (i mod 2) + {0, 2}.
    j = 2 * _randint(2, n, g) + i % 2
    cell = torch.stack([i, j], dim=1).to(_F64)
    return -4.0 + 2.0 * (cell + _rand(n, g, 2))


def _sample_radial(
    n: int, g: torch.Generator | None, radii: tuple[float, ...], std: float
) -> torch.Tensor:
    k = _randint(len(radii), n, g)
    r = (torch.tensor(radii, dtype=_F64)[k] + std * _randn(n, g)).abs()
    theta = 2.0 * math.pi * _rand(n, g)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)


def _sample_moons(n: int, g: torch.Generator | None) -> torch.Tensor:
    t = math.pi * _rand(n, g)
    outer = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    inner = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    which = _randint(2, n, g).bool().unsqueeze(1)
    m = torch.where(which, inner, outer)
    shift = torch.tensor([-1.0, -0.2], dtype=_F64)
    return 2.0 * (m + 0.1 * _randn(n, g, 2)) + shift


def _sample_2spirals(n: int, g: torch.Generator | None) -> torch.Tensor:
    t = 3.0 * math.pi * torch.sqrt(_rand(n, g))
    arm = torch.stack([-t * torch.cos(t), t * torch.sin(t)], dim=1) + 0.5 * _rand(n, g, 2)
    sign = 2.0 * _randint(2, n, g).to(_F64) - 1.0
    return sign.unsqueeze(1) * arm / 3.0 + 0.1 * _randn(n, g, 2)


def _sample_pinwheel(n: int, g: torch.Generator | None) -> torch.Tensor:
    k = _randint(5, n, g).to(_F64)
    e = _randn(n, g, 2)
    f0 = 1.0 + 0.3 * e[:, 0]
    f1 = 0.1 * e[:, 1]
    theta = 2.0 * math.pi * k / 5.0 + 0.25 * torch.exp(f0)
    c, s = torch.cos(theta), torch.sin(theta)
    return 2.0 * torch.stack([c * f0 - s * f1, s * f0 + c * f1], dim=1)


def _sample_swissroll(n: int, g: torch.Generator | None) -> torch.Tensor:
    t = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, g))
    e = _randn(n, g, 2)
    return torch.stack([t * torch.cos(t) + e[:, 0], t * torch.sin(t) + e[:, 1]], dim=1) / 5.0


_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], torch.Tensor]] = {
    "8gaussians": _sample_8gaussians,
    "checkerboard": _sample_checkerboard,
    "2spirals": _sample_2spirals,
    "moons": _sample_moons,
    "circles": lambda n, g: _sample_radial(n, g, _CIRCLES_RADII, _CIRCLES_STD),
    "rings": lambda n, g: _sample_radial(n, g, _RINGS_RADII, _RINGS_STD),
    "pinwheel": _sample_pinwheel,
    "swissroll": _sample_swissroll,
}


def sample_toy(
    name: str,
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n`` i.i.d. samples of the toy density ``name`` (see the module docstring).

    All randomness comes from ``torch`` draws on ``generator`` (the global CPU generator when
    ``None``); draws are made in float64 and cast to ``dtype`` at the end, so the float32 and
    float64 samples of one seed agree up to rounding.

    Returns:
        Tensor of shape ``(n, 2)`` and dtype ``dtype`` on the CPU.

    Raises:
        DataError: ``name`` is not in [`TOY_DATASETS`][iresnet.datasets.toy.TOY_DATASETS] or
            ``n`` is not a non-negative int.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = sample_toy("checkerboard", 1000, generator=g)
        >>> x.shape, bool((x.abs() <= 4).all())
        (torch.Size([1000, 2]), True)
    """
    _check_name(name)
    return _SAMPLERS[name](sample_count(n), generator).to(dtype)


def sample_count(n: object) -> int:
    """``n`` as a number of samples: a non-negative integer (NumPy integers too).

    Raises:
        DataError: a float, a bool or a negative number.
    """
    try:
        count = operator.index(n)  # accepts NumPy integers, refuses floats
    except TypeError:
        count = -1
    if isinstance(n, bool) or count < 0:
        raise DataError(f"number of samples must be a non-negative int, got {n!r}")
    return count


def _check_points(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"toy log-density expects a tensor of shape (m, 2), got {shape}")
    return x if x.is_floating_point() else x.to(_F64)


def _log_density_8gaussians(x: torch.Tensor) -> torch.Tensor:
    x = _check_points(x)
    mu = _gauss8_centers().to(dtype=x.dtype, device=x.device)
    # Per-coordinate differences: exact (no |x|^2 - 2 x.mu cancellation) and no (m, 8, 2) temp.
    sq = (x[:, 0:1] - mu[:, 0]) ** 2 + (x[:, 1:2] - mu[:, 1]) ** 2  # (m, 8)
    var = _GAUSS8_STD**2
    log_comp = -0.5 * sq / var - _LOG_2PI - math.log(var)
    return torch.logsumexp(log_comp, dim=1) - math.log(8.0)


def _log_density_checkerboard(x: torch.Tensor) -> torch.Tensor:
    x = _check_points(x)
    cell = torch.floor((x + 4.0) / 2.0)
    inside = ((cell >= 0) & (cell <= 3)).all(dim=1)
    even = (cell.sum(dim=1) % 2) == 0
    out = torch.full(x.shape[:1], -math.inf, dtype=x.dtype, device=x.device)
    return out.masked_fill(inside & even, -math.log(32.0))


def _radial_log_density(
    radii: tuple[float, ...], std: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    def log_density(x: torch.Tensor) -> torch.Tensor:
        x = _check_points(x)
        # Clamp so the (integrable, measure-zero) 1/|x| singularity at 0 stays finite.
        r = torch.linalg.vector_norm(x, dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        centers = torch.tensor(radii, dtype=x.dtype, device=x.device)
        # Folded normal: reflections at -r_k carry the mass that |.| moved from r < 0.
        z = torch.cat([r.unsqueeze(1) - centers, r.unsqueeze(1) + centers], dim=1) / std
        log_phi = -0.5 * z**2 - 0.5 * _LOG_2PI - math.log(std)
        log_pr = torch.logsumexp(log_phi, dim=1) - math.log(len(radii))
        return log_pr - math.log(2.0 * math.pi) - torch.log(r)

    return log_density


_LOG_DENSITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "8gaussians": _log_density_8gaussians,
    "checkerboard": _log_density_checkerboard,
    "rings": _radial_log_density(_RINGS_RADII, _RINGS_STD),
    "circles": _radial_log_density(_CIRCLES_RADII, _CIRCLES_STD),
}


def toy_log_density(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exact log-density ``log p(x)`` of toy set ``name``, or ``None`` without a closed form.

    The returned function maps points of shape ``(m, 2)`` to ``(m,)`` in the input's floating
    dtype and device (use float64 for accurate values). Outside the support (checkerboard) it
    returns ``-inf``. Closed forms exist for ``8gaussians``, ``checkerboard``, ``rings`` and
    ``circles``; the others return ``None``.

    Raises:
        DataError: ``name`` is not in [`TOY_DATASETS`][iresnet.datasets.toy.TOY_DATASETS].

    Examples:
        >>> log_p = toy_log_density("8gaussians")
        >>> x = torch.tensor([[2.0, 2.0]], dtype=torch.float64)  # a centre: log(1 / (2 pi))
        >>> round(float(log_p(x)), 4)
        -1.8379
        >>> toy_log_density("moons") is None
        True
    """
    _check_name(name)
    return _LOG_DENSITIES.get(name)


def true_entropy(name: str, n: int = 200_000, seed: int = 0) -> tuple[float, float] | None:
    """Monte Carlo estimate of the differential entropy ``H = -E_p[log p(x)]`` (nats).

    Draws ``n`` float64 samples with a generator seeded by ``seed`` and returns
    ``(mean(-log p), std(-log p) / sqrt(n))``, i.e. the estimate and its standard error, or
    ``None`` when ``name`` has no closed-form density.

    Raises:
        DataError: unknown ``name`` or ``n < 2``.

    Examples:
        >>> h, se = true_entropy("checkerboard", n=1000)
        >>> round(h, 4), round(se, 6)  # log 32: a uniform density
        (3.4657, 0.0)
    """
    log_p = toy_log_density(name)
    if log_p is None:
        return None
    if n < 2:
        raise DataError(f"true_entropy needs n >= 2 samples, got {n}")
    g = torch.Generator().manual_seed(seed)
    nll = -log_p(sample_toy(name, n, generator=g, dtype=_F64))
    return float(nll.mean()), float(nll.std() / math.sqrt(n))


def toy_split(
    name: str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed train and test sets of shapes ``(n_train, 2)`` and ``(n_test, 2)``.

    The two sets come from two generators whose seeds are drawn from one generator seeded by
    ``seed`` before any data is drawn, so the test set depends only on ``(name, n_test, seed)``
    (changing ``n_train`` leaves it unchanged) and the sets are independent draws.

    Raises:
        DataError: unknown ``name`` or a negative size.

    Examples:
        >>> train, test = toy_split("moons", 100, 20, seed=3)
        >>> _, test_again = toy_split("moons", 500, 20, seed=3)
        >>> train.shape, bool(torch.equal(test, test_again))
        (torch.Size([100, 2]), True)
    """
    _check_name(name)
    seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(seed))
    g_train = torch.Generator().manual_seed(int(seeds[0]))
    g_test = torch.Generator().manual_seed(int(seeds[1]))
    train = sample_toy(name, n_train, generator=g_train, dtype=dtype)
    test = sample_toy(name, n_test, generator=g_test, dtype=dtype)
    return train, test
