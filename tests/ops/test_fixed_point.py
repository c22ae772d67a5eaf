"""Fixed-point inverse: accuracy, the Banach bound, Anderson, failures, implicit gradients."""

import math
import warnings

import pytest
import torch

import iresnet
from iresnet.ops import banach_iterations, fixed_point_solve
from tests.helpers import explicit_jacobian, make_strong_g, mlp_flow, mlp_g, scale_weights


@pytest.mark.parametrize(
    "dtype,atol,tol", [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-13, 1e-10)]
)
def test_eight_block_flow_inverts(dtype, atol, tol):
    flow = mlp_flow(dim=2, n_blocks=8, coeff=0.9, dtype=dtype, atol=atol).eval()
    x = 2 * torch.randn(256, 2, dtype=dtype)
    with torch.no_grad():
        z, _ = flow.transform(x)
        x_rec, diagnostics = flow.inverse_with_diagnostics(z)
    assert (x_rec - x).abs().max().item() <= tol
    assert len(diagnostics) == 8 and all(d.all_converged for d in diagnostics)


def test_iterations_respect_the_banach_bound():
    g = mlp_g(2, 16, 0.9).double()
    scale_weights(g, 3.0)
    block = iresnet.InvertibleResidualBlock(
        g, inverse=iresnet.FixedPointInverse(atol=1e-10, rtol=0.0)
    ).eval()
    y = 3 * torch.randn(64, 2, dtype=torch.float64)
    x, (diag,) = block.inverse_with_diagnostics(y)
    lip = block.lipschitz_bound()
    assert diag.lipschitz == pytest.approx(lip)
    # Stopping on max|x_{k+1}-x_k| <= atol happens no later than the step eq. (15) guarantees:
    # ||x_{k+1}-x_k||_2 <= L^k ||x_1-x_0||_2.
    for it, first in zip(diag.iterations.tolist(), diag.first_step.tolist(), strict=True):
        guaranteed = math.ceil(math.log(1e-10 / first) / math.log(lip)) + 1 if first > 1e-10 else 1
        assert it <= guaranteed
    # The a-priori bound (eq. 36) is never below the true error of the iterate it bounds.
    x_true = fixed_point_solve(g, y, atol=1e-15, rtol=0.0, max_iter=2000)[0]
    for n in (1, 2, 3, 5):
        x_n, d_n = fixed_point_solve(g, y, atol=1e-300, rtol=0.0, max_iter=n, lipschitz=lip)
        # x_n as returned is the n-th iterate; the bound is stated for that iterate
        err = (x_n - x_true).norm(dim=1)
        assert (err <= d_n.a_priori_bound * (1 + 1e-9) + 1e-15).all()
    assert banach_iterations(0.5, 1.0, 1e-3) == math.ceil(math.log(0.5e-3) / math.log(0.5))


def test_anderson_needs_fewer_iterations_and_agrees():
    g = make_strong_g(8, low=0.5, high=0.97)  # a contraction close to 1: slow plain iteration
    y = 0.3 * torch.randn(32, 8, dtype=torch.float64)
    x_plain, d_plain = fixed_point_solve(g, y, atol=1e-10, rtol=0.0, max_iter=2000)
    x_and, d_and = fixed_point_solve(g, y, atol=1e-10, rtol=0.0, max_iter=2000, anderson=5)
    assert d_plain.all_converged and d_and.all_converged
    torch.testing.assert_close(x_and, x_plain, rtol=0, atol=1e-8)
    assert d_and.iterations.float().mean() < 0.5 * d_plain.iterations.float().mean()


def test_non_convergence_warns_or_raises():
    g = mlp_g(2, 8, 0.95).double()
    scale_weights(g, 5.0)
    g.eval()
    y = 5 * torch.randn(8, 2, dtype=torch.float64)
    with pytest.warns(
        iresnet.InverseNotConvergedWarning, match="did not reach the requested tolerance"
    ):
        iresnet.FixedPointInverse(atol=1e-14, rtol=0.0, max_iter=2)(g, y)
    with pytest.raises(iresnet.InverseNotConvergedError, match="max_iter"):
        iresnet.FixedPointInverse(atol=1e-14, rtol=0.0, max_iter=2, on_failure="raise")(g, y)
    solver = iresnet.FixedPointInverse(atol=1e-14, rtol=0.0, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, diag = solver.solve(g, y)
    assert not diag.converged.all()


@pytest.mark.parametrize(
    "kwargs",
    [{"atol": 0.0, "rtol": 0.0}, {"max_iter": 0}, {"anderson": -1}, {"on_failure": "ignore"}],
)
def test_bad_solver_settings(kwargs):
    with pytest.raises(ValueError):
        iresnet.FixedPointInverse(**kwargs)


def test_implicit_gradient_matches_explicit_inverse_jacobian():
    g = mlp_g(3, 8, 0.9).double()
    scale_weights(g, 3.0)
    g.eval()
    solver = iresnet.FixedPointInverse(atol=1e-14, rtol=0.0, max_iter=1000)
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, 3, dtype=torch.float64)
    x = solver(g, y)
    (grad_y,) = torch.autograd.grad((x * a).sum(), y)
    # dx/dy = (I + J(x))^{-1}, so grad_y = (I + J)^{-T} a per sample.
    jac = explicit_jacobian(g, x.detach())
    eye = torch.eye(3, dtype=torch.float64)
    expected = torch.linalg.solve((eye + jac).transpose(1, 2), a[..., None])[..., 0]
    torch.testing.assert_close(grad_y, expected, rtol=1e-8, atol=1e-10)


def test_implicit_gradient_gradcheck_parameters_and_input():
    # Plain layers with small weights (Lip < 1): the parameter gradient is then pure implicit
    # differentiation, with no normalisation factor in between.
    g = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    scale_weights(g, 0.5)
    assert iresnet.lipschitz_bound_of(g) < 1
    solver = iresnet.FixedPointInverse(atol=1e-14, rtol=0.0, max_iter=1000)
    y = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: solver(g, v), (y,), atol=1e-7, check_undefined_grad=False
    )
    w = g[0].weight
    # Parameter gradient against finite differences of the solve itself.
    x = solver(g, y.detach())
    loss = x.pow(2).sum()
    (gw,) = torch.autograd.grad(loss, w)
    eps = 1e-6
    idx = (0, 1)
    with torch.no_grad():
        w[idx] += eps
        lp = solver(g, y.detach()).pow(2).sum()
        w[idx] -= 2 * eps
        lm = solver(g, y.detach()).pow(2).sum()
        w[idx] += eps
    assert gw[idx].item() == pytest.approx(((lp - lm) / (2 * eps)).item(), rel=1e-5, abs=1e-8)


def test_inverse_does_not_move_power_iteration_vectors_in_training_mode():
    g = mlp_g(2, 8, 0.9).double()
    block = iresnet.InvertibleResidualBlock(
        g, inverse=iresnet.FixedPointInverse(atol=1e-12, rtol=0.0, max_iter=500)
    )
    x = torch.randn(16, 2, dtype=torch.float64)
    y, _ = block(x)  # training mode: one power-iteration step, then the map is fixed
    u_before = [m.u.clone() for m in g.modules() if isinstance(m, iresnet.SpectralLinear)]
    x_rec = block.inverse(y.detach())
    u_after = [m.u for m in g.modules() if isinstance(m, iresnet.SpectralLinear)]
    assert all(torch.equal(a, b) for a, b in zip(u_before, u_after, strict=True))
    torch.testing.assert_close(x_rec, x, rtol=0, atol=1e-10)


def _random_block_g(kind: str, coeff: float, seed: int) -> torch.nn.Module:
    """A random residual branch whose layers sit at their bound (weights scaled far up)."""
    torch.manual_seed(seed)
    if kind == "mlp":
        g = mlp_g(3, 16, coeff).double()
    else:
        g = torch.nn.Sequential(
            iresnet.SpectralConv2d(2, 8, 3, padding=1, coeff=coeff),
            iresnet.LipSwish(),
            iresnet.SpectralConv2d(8, 2, 3, padding=1, coeff=coeff),
        ).double()
        g(torch.zeros(1, 2, 5, 5, dtype=torch.float64))  # the convolutions learn their input shape
    scale_weights(g, 10.0)
    return g.eval()


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("coeff", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_eq36_bound_is_never_below_the_measured_error_on_random_blocks(kind, coeff, seed):
    """Seed eq. (36), as the block reports it: ``a_priori_bound`` from the *certified* ``L``
    bounds the true distance of the returned iterate to the fixed point, per sample, at every
    iteration count, for dense and convolutional blocks from easy (0.5) to hard (0.99)."""
    g = _random_block_g(kind, coeff, seed)
    block = iresnet.InvertibleResidualBlock(g).eval()
    lip = block.lipschitz_bound()
    assert lip < 1
    shape = (32, 3) if kind == "mlp" else (8, 2, 5, 5)
    y = 3 * torch.randn(*shape, dtype=torch.float64)
    x_true = fixed_point_solve(g, y, atol=1e-15, rtol=0.0, max_iter=20_000)[0]
    for n in (1, 2, 4, 8, 16):
        x_n, diag = fixed_point_solve(g, y, atol=1e-300, rtol=0.0, max_iter=n, lipschitz=lip)
        # A sample whose step reaches exactly 0.0 in float64 stops early; its bound is stated
        # for the iterate it returns (diag.iterations), which is what we check.
        assert (diag.iterations <= n).all()
        err = (x_n - x_true).reshape(shape[0], -1).norm(dim=1)
        # 1e-12 absorbs the float64 rounding of x_true itself once the bound reaches it.
        assert (err <= diag.a_priori_bound * (1 + 1e-9) + 1e-12).all(), (
            n,
            (err / diag.a_priori_bound).max(),
        )
    # The block's own inverse attaches the same bound with the same certified L.
    block.inverse_solver = iresnet.FixedPointInverse(
        atol=1e-300, rtol=0.0, max_iter=4, on_failure="warn"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_4, (diag,) = block.inverse_with_diagnostics(y)
    assert diag.lipschitz == pytest.approx(lip)
    err = (x_4 - x_true).reshape(shape[0], -1).norm(dim=1)
    assert (err <= diag.a_priori_bound * (1 + 1e-9) + 1e-12).all()


def _block_with_lipschitz(target: float) -> iresnet.InvertibleResidualBlock:
    g = torch.nn.Sequential(
        iresnet.SpectralLinear(4, 16, coeff=target**0.5),
        iresnet.LipSwish(),
        iresnet.SpectralLinear(16, 4, coeff=target**0.5),
    )
    scale_weights(g, 5.0)
    return iresnet.InvertibleResidualBlock(g).eval()


def test_default_inverse_scales_with_the_data():
    """The issue's case: ``|x| ~ 100``, ``Lip(g) = 0.81``, float32: the default inverse ran its
    100 iterations and warned at a relative error of 4e-8. With the relative tolerance it
    converges quietly, its error within what the tolerance promises."""
    block = _block_with_lipschitz(0.81)
    x = 100 * torch.randn(64, 4)
    with torch.no_grad():
        y, _ = block(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any non-convergence warning fails the test
        rec, (diag,) = block.inverse_with_diagnostics(y)
    assert diag.all_converged and int(diag.iterations.max()) < 100
    # the step tolerance 1e-6 + 1e-6 |x| bounds the error by L/(1-L) times it
    assert ((rec - x).abs().amax(1) <= 0.81 / 0.19 * (1e-6 + 1e-6 * 500) + 1e-4).all()


def test_unreachable_tolerance_stops_at_the_rounding_floor_and_says_so():
    block = _block_with_lipschitz(0.81)
    block.inverse_solver = iresnet.FixedPointInverse(atol=1e-9, rtol=0.0)
    x = 100 * torch.randn(64, 4)
    with torch.no_grad():
        y, _ = block(x)
    with pytest.warns(iresnet.InverseNotConvergedWarning, match="rounding floor"):
        rec, (diag,) = block.inverse_with_diagnostics(y)
    assert diag.at_floor.any() and int(diag.iterations.max()) < 100  # no useless iterations
    assert ((rec - x).abs() / x.abs().amax(1, keepdim=True)).max() < 1e-5


def test_certified_error_bounds_the_true_error_plain_and_anderson():
    """The a-posteriori bound ``L/(1-L) ||G(x) - x||`` holds for the returned iterate, also
    with Anderson acceleration (where the a-priori bound is not reported)."""
    g = make_strong_g(6, low=0.3, high=0.9)
    lip = iresnet.lipschitz_bound_of(g)
    y = torch.randn(32, 6, dtype=torch.float64)
    x_true = fixed_point_solve(g, y, atol=1e-15, rtol=0.0, max_iter=5000)[0]
    for anderson in (0, 3):
        for n in (1, 3, 8):
            x_n, d = fixed_point_solve(
                g, y, atol=1e-300, rtol=0.0, max_iter=n, anderson=anderson, lipschitz=lip
            )
            err = (x_n - x_true).norm(dim=1)
            assert (err <= d.a_posteriori_bound * (1 + 1e-9) + 1e-13).all(), (anderson, n)
            assert (d.a_priori_bound is None) == (anderson > 0)


@pytest.mark.parametrize(("max_iter", "words"), [(1, "in 1 iteration ("), (3, "in 3 iterations (")])
def test_a_solve_that_missed_its_tolerance_counts_the_iterations_in_words(max_iter, words):
    """``max_iter=1`` said "in 1 iterations"."""
    g = mlp_g(2, 8, 0.95).double()
    scale_weights(g, 5.0)
    g.eval()
    y = 5 * torch.randn(8, 2, dtype=torch.float64)
    solver = iresnet.FixedPointInverse(atol=1e-14, rtol=0.0, max_iter=max_iter, on_failure="raise")
    with pytest.raises(iresnet.InverseNotConvergedError) as refused:
        solver(g, y)
    assert words in str(refused.value)
