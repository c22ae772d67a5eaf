"""Provable operator-norm bounds (``iresnet.nn.bounds``) against the exact norm: the largest
singular value of the explicit matrix of the map (autograd Jacobian, float64 SVD).

What holds, and is asserted (``circ`` = exact norm of the circular embedding, ``fft-svd``):

    exact <= circ <= gram-bound <= Frobenius bound ``||W||_F sqrt(k_h k_w)``
    exact <= circ <= tap bound ``sum_taps ||W_tap||_2`` <= Frobenius bound

The Gram bound is *not* always below the tap bound: for a 1x1 kernel the tap bound is the exact
``||W||_2`` and a finite Gram iteration sits (slightly) above it; only its limit ``circ`` does.
Each test prints the looseness it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import iresnet
from iresnet.nn import (
    Bound,
    conv2d_operator_bound,
    conv_tap_bound,
    gram_iteration_bound,
    linear_operator_bound,
)
from tests.helpers import operator_matrix

REL = 1e-9  # a bound may sit below the exact norm by float64 rounding only


def _exact_conv_norm(w: torch.Tensor, hw: tuple[int, int], stride, padding) -> float:
    a = operator_matrix(lambda x: F.conv2d(x, w, None, stride, padding), (w.shape[1], *hw))
    return float(torch.linalg.matrix_norm(a, ord=2))


def _frobenius_bound(w: torch.Tensor) -> float:
    return float(w.norm()) * math.sqrt(w.shape[-2] * w.shape[-1])


def _random_cases(n: int, seed: int = 0):
    """Channels 1-5, kernels 1-5 (even and non-square), strides 1-3, paddings 0-2, input sizes
    3-9 (non-square); cases with an empty output are redrawn."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    out = []
    while len(out) < n:
        c_out, c_in = draw(1, 5), draw(1, 5)
        k = (draw(1, 5), draw(1, 5))
        stride = (draw(1, 3), draw(1, 3))
        pad = (draw(0, 2), draw(0, 2))
        hw = (draw(3, 9), draw(3, 9))
        if hw[0] + 2 * pad[0] < k[0] or hw[1] + 2 * pad[1] < k[1]:
            continue
        w = torch.randn(c_out, c_in, *k, generator=gen, dtype=torch.float64)
        out.append((w, hw, stride, pad))
    return out


# ------------------------------------------------------------------------ gram_iteration_bound
def test_gram_bound_holds_at_every_iteration_and_decreases_to_sigma1():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(6, 7, 4, generator=gen, dtype=torch.float64)
    cplx = torch.randn(6, 3, 5, generator=gen, dtype=torch.complex128)
    for mats in (real, cplx, real.mT):
        sigma1 = torch.linalg.matrix_norm(mats, ord=2)
        previous = None
        for n_iter in range(0, 13):
            b = gram_iteration_bound(mats, n_iter=n_iter).value
            assert b.dtype == torch.float64 and b.shape == (6,)
            assert bool((b >= sigma1 * (1 - 1e-12)).all()), n_iter
            if previous is not None:  # the 2^(t+1)-norm of the singular values: non-increasing
                assert bool((b <= previous * (1 + 1e-12)).all())
            previous = b
        assert torch.allclose(previous, sigma1, rtol=1e-12, atol=0)
    assert gram_iteration_bound(real, n_iter=0).value == pytest.approx(
        torch.linalg.matrix_norm(real).tolist(), rel=1e-12
    )


def test_gram_bound_with_tied_singular_values_is_the_worst_case_formula():
    """All singular values equal: the bound after t steps is exactly ``r^(1/2^(t+1))``."""
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    for t in (0, 1, 4, 10):
        b = float(gram_iteration_bound(2.0 * q, n_iter=t))
        assert b == pytest.approx(2.0 * 5 ** (1 / 2 ** (t + 1)), rel=1e-12)


def test_gram_bound_zero_tiny_huge_and_dtypes():
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    w[1] = 0.0
    b = gram_iteration_bound(w).value
    assert b[1] == 0.0 and bool((b[[0, 2]] > 0).all())
    for scale in (1e-300, 1e-150, 1e150, 1e300):  # squares would under- or overflow float64
        scaled = gram_iteration_bound(w * scale).value
        assert torch.allclose(scaled / scale, b, rtol=1e-12, atol=0)
    b32 = gram_iteration_bound(w.float())
    assert b32.value.dtype == torch.float64 and b32.method == "gram" and b32.n_iter == 10


@pytest.mark.parametrize(
    ("bad", "match"),
    [(math.nan, "1 NaN entry"), (math.inf, "1 infinite entry"), (-math.inf, "infinite")],
)
def test_non_finite_input_is_named(bad, match):
    w = torch.ones(3, 3, 3, 3)
    w[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=match):
        gram_iteration_bound(w)
    with pytest.raises(ValueError, match=match):
        linear_operator_bound(w[0, 0])
    with pytest.raises(ValueError, match=match):
        conv2d_operator_bound(w, (4, 4), padding=1)


def test_gram_bound_argument_checks():
    with pytest.raises(ValueError, match="n_iter"):
        gram_iteration_bound(torch.ones(2, 2), n_iter=-1)
    with pytest.raises(ValueError, match="n_iter"):
        gram_iteration_bound(torch.ones(2, 2), n_iter=True)
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        gram_iteration_bound(torch.ones(3))
    with pytest.raises(ValueError, match="floating-point"):
        gram_iteration_bound(torch.ones(2, 2, dtype=torch.int64))


def test_gram_bound_has_the_gradient_of_sigma1_when_converged():
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    gram_iteration_bound(w, n_iter=12).value.backward()
    u, _, vh = torch.linalg.svd(w.detach())
    # d sigma_1 / dW = u_1 v_1^T for a simple top singular value.
    assert torch.allclose(w.grad, torch.outer(u[:, 0], vh[0]), atol=1e-9)


# ------------------------------------------------------------------------ linear_operator_bound
def test_linear_bound_svd_then_gram():
    w = torch.randn(40, 30, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(w, ord=2)
    b = linear_operator_bound(w)
    assert (b.method, b.n_iter) == ("svd", None) and float(b) == float(exact)
    g = linear_operator_bound(w, max_svd_dim=29)
    assert (g.method, g.n_iter) == ("gram", 10)
    assert float(exact) * (1 - 1e-12) <= float(g) <= float(exact) * (1 + 1e-9)
    assert linear_operator_bound(w, max_svd_dim=30).method == "svd"
    assert float(linear_operator_bound(torch.zeros(3, 2))) == 0.0


# ------------------------------------------------------------------------ conv2d_operator_bound
def test_conv_bound_never_below_the_exact_norm_random_kernels():
    """160 random layers: the bound vs the SVD of the explicit convolution matrix."""
    worst = {"gram": 0.0, "svd": 0.0}
    looseness = []
    for w, hw, stride, pad in _random_cases(160):
        exact = _exact_conv_norm(w, hw, stride, pad)
        gram = float(conv2d_operator_bound(w, hw, stride, pad))
        circ = float(conv2d_operator_bound(w, hw, stride, pad, method="svd"))
        tap, frob = conv_tap_bound(w), _frobenius_bound(w)
        case = f"{tuple(w.shape)} on {hw}, stride {stride}, padding {pad}"
        assert gram >= exact * (1 - REL), f"{case}: bound {gram} < exact {exact}"
        assert circ >= exact * (1 - REL), f"{case}: circular {circ} < exact {exact}"
        assert circ * (1 - 1e-12) <= gram <= frob * (1 + 1e-12), case
        assert circ <= tap * (1 + 1e-12) and tap <= frob * (1 + 1e-12), case
        worst["gram"] = max(worst["gram"], gram / exact - 1)
        worst["svd"] = max(worst["svd"], gram / circ - 1)
        looseness.append((gram / exact, stride == (1, 1)))
    stride1 = sorted(r for r, s1 in looseness if s1)
    print(
        f"\n[conv bound, 160 random layers] worst bound/exact - 1: {worst['gram']:.3g} "
        f"(stride 1 only: median {stride1[len(stride1) // 2] - 1:.3g}, max {stride1[-1] - 1:.3g}"
        f", {len(stride1)} layers); Gram vs circular: worst {worst['svd']:.2g}"
    )
    assert worst["svd"] < 1e-9  # 10 Gram steps: the circular value to ~machine precision here


def test_conv_bound_equals_the_exact_norm_for_1x1_and_large_inputs():
    w = torch.randn(4, 3, 1, 1, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(w[:, :, 0, 0], ord=2))
    assert float(conv2d_operator_bound(w, (5, 6), method="svd")) == pytest.approx(exact, rel=1e-13)
    assert float(conv2d_operator_bound(w, (5, 6))) == pytest.approx(exact, rel=1e-12)
    assert conv_tap_bound(w) == pytest.approx(exact, rel=1e-13)
    # 3x3, padding 1: the gap to the zero-padded norm shrinks as the input grows.
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    gaps = [
        float(conv2d_operator_bound(w, n, 1, 1)) / _exact_conv_norm(w, (n, n), 1, 1) - 1
        for n in (4, 8, 16)
    ]
    print(f"\n[3x3 pad 1, sizes 4/8/16] bound/exact - 1: {[f'{g:.3g}' for g in gaps]}")
    assert gaps[0] > gaps[1] > gaps[2] >= -REL


def test_conv_gram_bound_converges_to_the_circular_value():
    gen = torch.Generator().manual_seed(3)
    random_w = torch.randn(5, 4, 3, 2, generator=gen, dtype=torch.float64)
    # Adversarial for Gram: the same kernel on both channels, so every DFT matrix is
    # khat(u) * I_2 with a tied pair of singular values (the worst case 2^(1/2^(t+1))).
    tied_w = torch.randn(3, 3, generator=gen, dtype=torch.float64) * torch.eye(2)[:, :, None, None]
    for w, tied in ((random_w, False), (tied_w, True)):
        circ = float(conv2d_operator_bound(w, (6, 7), 1, 1, method="svd"))
        gaps = [
            float(conv2d_operator_bound(w, (6, 7), 1, 1, n_iter=t)) / circ - 1
            for t in (0, 2, 4, 8, 16)
        ]
        assert all(g >= -1e-13 for g in gaps)
        assert all(a >= b - 1e-13 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
        if tied:
            assert gaps[3] == pytest.approx(2 ** (1 / 2**9) - 1, rel=1e-6)
        assert gaps[-1] < 2e-5
        print(
            f"\n[Gram vs circular, {'tied' if tied else 'random'}] gaps at 0/2/4/8/16: "
            + " ".join(f"{g:.2g}" for g in gaps)
        )


def test_tap_bound_is_not_always_above_a_finite_gram_bound():
    """The inequality that holds is ``circ <= tap``; ``gram <= tap`` can fail."""
    w = torch.eye(3, dtype=torch.float64)[:, :, None, None]  # x -> x: norm 1, three tied
    tap = conv_tap_bound(w)
    assert tap == 1.0 == float(conv2d_operator_bound(w, 4, method="svd"))
    assert float(conv2d_operator_bound(w, 4, n_iter=2)) > tap  # 3^(1/8) = 1.147


def _block_diagonal_kernel(k_a: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(2, 2, *k_a.shape, dtype=torch.float64)
    w[0, 0], w[1, 1] = k_a, k_b
    return w


@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-9, 0.0])
def test_conv_bound_with_nearly_tied_top_singular_values(delta):
    """Two independent channels whose operators differ by ``1 - delta``: the top two singular
    values of the convolution tie to ``delta``."""
    k = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for k_b, name in ((k, "same kernel"), (k.flip(0, 1), "flipped kernel")):
        w = _block_diagonal_kernel(k, (1 - delta) * k_b)
        a = operator_matrix(lambda x, w=w: F.conv2d(x, w, None, 1, 1), (2, 7, 7))
        s = torch.linalg.svdvals(a)
        assert float(s[1] / s[0]) == pytest.approx(1 - delta, abs=1e-12)
        b = float(conv2d_operator_bound(w, 7, 1, 1))
        assert b >= float(s[0]) * (1 - REL)
        print(f"\n[near tie {delta:g}, {name}] bound/exact - 1 = {b / float(s[0]) - 1:.3g}")


def test_power_iteration_under_reports_where_the_bound_does_not_random_layers():
    """The layers' converged power iteration is an estimate from below; the bound is above."""
    worst_under, worst_over = 0.0, 0.0
    for w, hw, _, pad in _random_cases(30, seed=7):
        layer = iresnet.SpectralConv2d(
            w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=pad, bias=False, coeff=1.0
        ).double()
        with torch.no_grad():
            layer.weight.copy_(w)
        layer(torch.zeros(1, w.shape[1], *hw, dtype=torch.float64))
        layer.eval()
        w_hat = layer.normalized_weight().detach()
        exact = _exact_conv_norm(w_hat, hw, 1, pad)
        estimate = layer.operator_norm()
        bound = float(conv2d_operator_bound(w_hat, hw, 1, pad))
        assert estimate <= exact * (1 + REL)
        assert bound >= exact * (1 - REL)
        worst_under = min(worst_under, estimate / exact - 1)
        worst_over = max(worst_over, bound / exact - 1)
    print(
        f"\n[30 SpectralConv2d layers] power iteration vs exact: worst {worst_under:.3g}; "
        f"bound vs exact: worst +{worst_over:.3g}"
    )


def test_swapped_singular_directions_power_iteration_under_reports_bound_does_not():
    """The issue's case: the persistent vectors converge on one order of the top two singular
    values, then training swaps the order. Power iteration from those vectors meets its
    tolerance at once and reports the old top value; the bound does not depend on them."""
    gen = torch.Generator().manual_seed(11)
    k_a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    k_b = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    hw = (8, 8)
    norm_a = _exact_conv_norm(k_a[None, None], hw, 1, 1)
    norm_b = _exact_conv_norm(k_b[None, None], hw, 1, 1)
    k_a, k_b = k_a / norm_a, 0.85 * k_b / norm_b  # channel a: norm 1.00, channel b: 0.85
    layer = iresnet.SpectralConv2d(
        2, 2, 3, padding=1, bias=False, coeff=1.0, n_power_iterations=500
    ).double()
    with torch.no_grad():
        layer.weight.copy_(_block_diagonal_kernel(k_a, k_b))
    x = torch.randn(4, 2, *hw, dtype=torch.float64)
    for _ in range(3):  # training forwards: the persistent u, v converge on channel a
        layer(x)
    assert float(layer.v[0, 1].norm()) < 1e-30
    with torch.no_grad():  # a training step swaps the order: channel b now leads
        layer.weight.copy_(_block_diagonal_kernel(0.85 * k_a, k_b / 0.85))
    layer.eval()
    w_hat = layer.normalized_weight().detach()
    exact = _exact_conv_norm(w_hat, hw, 1, 1)
    estimate = layer.operator_norm()
    bound = conv2d_operator_bound(w_hat, hw, 1, 1)
    print(
        f"\n[swapped order] exact {exact:.6f}, power iteration {estimate:.6f} "
        f"({estimate / exact - 1:+.3f}), bound {float(bound):.6f} ({float(bound) / exact - 1:+.3g})"
    )
    assert exact == pytest.approx(1.0, rel=1e-9)
    assert estimate == pytest.approx(0.85, rel=1e-6)  # channel a's value: 15% under
    assert float(bound) >= exact * (1 - REL)
    assert isinstance(bound, Bound) and bound.method == "fft-gram"


def test_conv_bound_dtype_gradient_and_zero():
    w = torch.randn(3, 2, 3, 3, requires_grad=True)  # float32 in, float64 out
    b = conv2d_operator_bound(w, (5, 4), padding=1)
    assert b.value.dtype == torch.float64 and b.value.shape == ()
    b.value.backward()
    assert w.grad is not None and bool(torch.isfinite(w.grad).all())
    zero = conv2d_operator_bound(torch.zeros(2, 2, 3, 3), 4, method="svd")
    assert float(zero) == 0.0 and zero.method == "fft-svd" and zero.n_iter is None
    # A kernel summing to zero has a zero DFT matrix at frequency 0: no NaN from it.
    w0 = torch.tensor([[[[1.0, -1.0]]]])
    assert float(conv2d_operator_bound(w0, (1, 4))) >= _exact_conv_norm(
        w0.double(), (1, 4), 1, 0
    ) * (1 - REL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"padding": "same"}, "string"),
        ({"padding": -1}, "padding"),
        ({"padding": (1, 1, 1)}, "padding"),
        ({"stride": 0}, "stride"),
        ({"input_size": (0, 4)}, "input_size"),
        ({"input_size": (1, 4)}, r"output is empty: input height 1 \+ 2 \* padding 0 = 1 < "),
        ({"method": "power"}, "method"),
        ({"n_iter": 65}, "n_iter"),
    ],
)
def test_conv_bound_argument_checks(kwargs, match):
    args = {"input_size": (4, 4), "stride": 1, "padding": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        conv2d_operator_bound(torch.ones(2, 2, 3, 3), **args)


def test_conv_bound_rejects_non_4d_weight():
    with pytest.raises(ValueError, match=r"\(C_out, C_in, k_h, k_w\)"):
        conv2d_operator_bound(torch.ones(2, 3, 3), (4, 4))
