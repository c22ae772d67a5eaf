"""Spectral normalisation: power iteration against SVDs of explicit operators, eval-mode
caching, the Frobenius and penalty modes, and the bounds by composition."""

import copy

import pytest
import torch
from torch import nn

import iresnet
from iresnet.nn import power_iteration, spectral
from tests.helpers import operator_matrix, scale_weights


def _train_steps(layer: nn.Module, x: torch.Tensor, steps: int = 30, lr: float = 1e-2) -> None:
    opt = torch.optim.SGD(layer.parameters(), lr=lr)
    layer.train()
    for _ in range(steps):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()


def test_spectral_linear_norm_after_training_and_eval():
    layer = iresnet.SpectralLinear(48, 48, coeff=0.9).double()
    scale_weights(layer, 100.0)
    _train_steps(layer, torch.randn(64, 48, dtype=torch.float64))
    layer.eval()
    w_hat = layer.normalized_weight().detach()
    sigma = torch.linalg.matrix_norm(w_hat, ord=2).item()
    assert 0.9 * (1 - 1e-2) <= sigma <= 0.9 * (1 + 1e-3)


def test_spectral_conv_uses_operator_norm_on_input_shape():
    conv = iresnet.SpectralConv2d(3, 3, 3, padding=1, coeff=0.9).double()
    scale_weights(conv, 100.0)
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    _train_steps(conv, x)
    conv.eval()
    conv(x)
    w_hat = conv.normalized_weight().detach()
    jac = operator_matrix(lambda v: torch.nn.functional.conv2d(v, w_hat, None, 1, 1), (3, 8, 8))
    sigma = torch.linalg.matrix_norm(jac, ord=2).item()
    assert 0.9 * (1 - 1e-2) <= sigma <= 0.9 * (1 + 1e-3)
    # The reshaped kernel's norm is a different number: normalising by it would be wrong.
    kernel_norm = torch.linalg.matrix_norm(w_hat.reshape(3, -1), ord=2).item()
    assert abs(kernel_norm - sigma) > 1e-2


def test_strided_conv_operator_norm():
    conv = iresnet.SpectralConv2d(2, 4, 3, stride=2, padding=1, coeff=0.8).double().eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    conv(x)
    w_hat = conv.normalized_weight().detach()
    jac = operator_matrix(lambda v: torch.nn.functional.conv2d(v, w_hat, None, 2, 1), (2, 8, 8))
    sigma = torch.linalg.matrix_norm(jac, ord=2).item()
    assert sigma <= 0.8 * (1 + 1e-3)
    assert conv.operator_norm() == pytest.approx(sigma, rel=1e-6)


def test_bound_holds_between_steps_without_user_calls():
    """After every optimiser step the layer, put in eval mode, is back under its coefficient."""
    layer = iresnet.SpectralLinear(8, 8, coeff=0.7).double()
    opt = torch.optim.Adam(layer.parameters(), lr=0.5)  # large steps move the weight a lot
    x = torch.randn(32, 8, dtype=torch.float64)
    for _ in range(10):
        layer.train()
        opt.zero_grad()
        (-layer(x).pow(2).mean()).backward()  # pushes the norm up
        opt.step()
        layer.eval()
        sigma = torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2).item()
        assert sigma <= 0.7 * (1 + 1e-3)
        assert layer.operator_norm() == pytest.approx(sigma, rel=1e-6)


def test_no_overflow_float32_huge_weights():
    layer = iresnet.SpectralLinear(32, 32, coeff=0.9)
    conv = iresnet.SpectralConv2d(3, 3, 3, padding=1, coeff=0.9)
    scale_weights(layer, 1e18)  # squares overflow float32 (max ~3.4e38) without normalisation
    scale_weights(conv, 1e18)
    out = layer(torch.randn(4, 32))
    out_c = conv(torch.randn(2, 3, 8, 8))
    assert torch.isfinite(out).all() and torch.isfinite(out_c).all()
    layer.eval()
    sigma = torch.linalg.matrix_norm(layer.normalized_weight().detach().double(), ord=2).item()
    assert sigma == pytest.approx(0.9, rel=1e-3)


@pytest.mark.parametrize("coeff", [0.0, -0.5, 1.01, float("nan")])
def test_bad_coeff_refused(coeff):
    with pytest.raises(ValueError, match="coeff"):
        iresnet.SpectralLinear(3, 3, coeff=coeff)
    with pytest.raises(ValueError, match="coeff"):
        iresnet.SpectralConv2d(3, 3, 3, coeff=coeff)


@pytest.mark.parametrize("n", [0, -1])
def test_bad_iteration_count_refused(n):
    with pytest.raises(ValueError, match="n_power_iterations"):
        iresnet.SpectralLinear(3, 3, n_power_iterations=n)


def test_untrained_settings_are_buffers():
    layer = iresnet.SpectralLinear(4, 5)
    conv = iresnet.SpectralConv2d(2, 2, 3, padding=1)
    conv(torch.randn(1, 2, 6, 6))
    for m in (layer, conv):
        names = {n for n, _ in m.named_parameters()}
        assert names == {"weight", "bias"}
        buffers = {n for n, _ in m.named_buffers()}
        assert {"u", "v", "coeff", "sigma"} <= buffers


def test_eval_cache_refreshes_when_weight_changes():
    layer = iresnet.SpectralLinear(6, 6, coeff=0.5).double().eval()
    layer.normalized_weight()
    new = 10 * torch.randn(6, 6, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(new)  # in-place, as an optimiser step or load_state_dict would
    w2 = layer.normalized_weight().detach()
    expected = new * 0.5 / torch.linalg.matrix_norm(new, ord=2)
    torch.testing.assert_close(w2, expected, rtol=1e-6, atol=1e-9)


def test_conv_state_dict_round_trip_into_fresh_layer():
    conv = iresnet.SpectralConv2d(2, 3, 3, padding=1, coeff=0.9)
    x = torch.randn(2, 2, 5, 7)
    conv.eval()
    y = conv(x)
    fresh = iresnet.SpectralConv2d(2, 3, 3, padding=1, coeff=0.9).eval()
    fresh.load_state_dict(conv.state_dict())
    assert fresh.v.shape == (1, 2, 5, 7)
    torch.testing.assert_close(fresh(x), y)


@pytest.mark.parametrize("shape", [(7, 5), (20, 3), (3, 30)])
def test_power_iteration_matches_svd(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    _, _, sigma, _ = power_iteration(
        lambda v: w @ v,
        lambda u: w.t() @ u,
        torch.randn(shape[1], dtype=torch.float64),
        5000,
        tol=1e-14,
    )
    assert sigma.item() == pytest.approx(torch.linalg.matrix_norm(w, ord=2).item(), rel=1e-8)


def test_lipschitz_bound_of_plain_layers_is_an_upper_bound():
    lin = nn.Linear(5, 5).double()
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    assert iresnet.lipschitz_bound_of(lin) == pytest.approx(
        torch.linalg.matrix_norm(lin.weight, ord=2).item()
    )
    jac = operator_matrix(
        lambda v: torch.nn.functional.conv2d(v, conv.weight, None, 1, 1), (2, 6, 6)
    )
    assert iresnet.lipschitz_bound_of(conv) >= torch.linalg.matrix_norm(jac, ord=2).item() - 1e-12
    assert iresnet.lipschitz_bound_of(nn.Sequential(nn.ReLU(), nn.ELU())) == 1.0
    assert iresnet.lipschitz_bound_of(nn.Sigmoid()) == float(
        "inf"
    )  # unknown module: no certificate


@pytest.mark.parametrize("form", ["uv", "gram"])
@pytest.mark.parametrize("start", ["random", "ones"])
def test_both_appendix_b_forms_match_svd(form, start):
    """Seed appendix B: the W^T W form (eq. 32-33) and the u, v form (eq. 34), from random or
    all-ones starting vectors (the report's suggestion), converge to the SVD value."""
    w = torch.randn(12, 9, dtype=torch.float64)
    v0 = (
        torch.randn(9, dtype=torch.float64)
        if start == "random"
        else torch.ones(9, dtype=torch.float64)
    )
    _, _, sigma, _ = power_iteration(
        lambda v: w @ v, lambda u: w.t() @ u, v0, 10_000, tol=1e-15, form=form
    )
    assert sigma.item() == pytest.approx(torch.linalg.matrix_norm(w, ord=2).item(), rel=1e-8)


def test_frobenius_bound_is_an_upper_bound_and_certified():
    lin = iresnet.SpectralLinear(10, 7, coeff=0.9, norm="frobenius").double().eval()
    conv = iresnet.SpectralConv2d(2, 3, 3, padding=1, coeff=0.9, norm="frobenius").double().eval()
    scale_weights(lin, 10.0)
    scale_weights(conv, 10.0)
    conv(torch.randn(1, 2, 6, 6, dtype=torch.float64))
    svd = torch.linalg.matrix_norm(lin.normalized_weight().detach(), ord=2).item()
    assert svd <= lin.lipschitz_bound() <= 0.9 + 1e-12
    w_hat = conv.normalized_weight().detach()
    jac = operator_matrix(lambda v: torch.nn.functional.conv2d(v, w_hat, None, 1, 1), (2, 6, 6))
    assert torch.linalg.matrix_norm(jac, ord=2).item() <= conv.lipschitz_bound() <= 0.9 + 1e-12


def test_penalty_mode_does_not_rescale_and_reports_honestly():
    lin = iresnet.SpectralLinear(6, 6, coeff=0.9, norm="penalty").double()
    scale_weights(lin, 10.0)
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    true = torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()
    assert lin.spectral_penalty().item() <= true**2 * (1 + 1e-9)  # power iteration: from below
    for _ in range(200):  # one power step per training call: the estimate converges over steps
        lin(x)
    assert lin.spectral_penalty().item() == pytest.approx(true**2, rel=1e-4)
    lin.eval()
    assert lin.lipschitz_bound() == pytest.approx(true, rel=1e-6) and true > 1


def test_two_training_forwards_before_one_backward():
    layer = iresnet.SpectralLinear(4, 4, coeff=0.9).train()
    (layer(torch.randn(8, 4)).pow(2).sum() + layer(torch.randn(8, 4)).pow(2).sum()).backward()
    assert layer.weight.grad is not None


@pytest.mark.parametrize("scale", [0.3, 1.0, 10.0])
@pytest.mark.parametrize("stride", [1, 2])
def test_frobenius_certificate_bounds_the_exact_norm_of_every_block(scale, stride):
    """Seed note on eq. (10): with ``norm="frobenius"`` the certificate reports the Frobenius
    bound in force, which must never be below the exact SVD value of the block's layers, whether
    the bound clamps (large weights) or not (small weights), for linear and strided convolutions."""
    lin_g = nn.Sequential(
        iresnet.SpectralLinear(5, 11, coeff=0.9, norm="frobenius"),
        iresnet.LipSwish(),
        iresnet.SpectralLinear(11, 5, coeff=0.9, norm="frobenius"),
    ).double()
    conv_g = nn.Sequential(
        iresnet.SpectralConv2d(2, 4, 3, stride=stride, padding=1, coeff=0.9, norm="frobenius"),
        iresnet.LipSwish(),
    ).double()
    for g in (lin_g, conv_g):
        scale_weights(g, scale)
    conv_g(torch.randn(1, 2, 6, 6, dtype=torch.float64))  # the convolution learns its input shape
    exact_lin = 1.0
    for layer in (lin_g[0], lin_g[2]):
        exact_lin *= torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2).item()
    conv = conv_g[0]
    w_hat = conv.normalized_weight().detach()
    conv_map = lambda v: torch.nn.functional.conv2d(v, w_hat, None, stride, 1)  # noqa: E731
    jac = operator_matrix(conv_map, (2, 6, 6))
    exact_conv = torch.linalg.matrix_norm(jac, ord=2).item()
    cert = iresnet.certify(iresnet.Flow([iresnet.InvertibleResidualBlock(lin_g)], event_shape=(5,)))
    assert exact_lin <= cert.blocks[0].bound * (1 + 1e-12)
    conv_cert = iresnet.certify(iresnet.InvertibleResidualBlock(conv_g))
    assert exact_conv <= conv_cert.blocks[0].bound * (1 + 1e-12)
    assert cert.blocks[0].bound <= 0.9**2 + 1e-12  # the bound in force: below coeff per layer


@pytest.mark.parametrize("form", ["uv", "gram"])
def test_both_appendix_b_forms_match_the_svd_of_a_convolution(form):
    """Appendix B on an operator that is not an explicit matrix: a strided convolution (forward
    ``conv2d``, adjoint ``conv_transpose2d``) against the SVD of its explicit Jacobian."""
    conv = iresnet.SpectralConv2d(3, 2, 3, stride=2, padding=1).double()
    conv(torch.randn(1, 3, 7, 7, dtype=torch.float64))  # fixes u, v shapes, the adjoint's padding
    fwd, adj = conv._operator(conv.weight.detach())
    jac = operator_matrix(fwd, (3, 7, 7))
    v0 = torch.ones(1, 3, 7, 7, dtype=torch.float64)
    _, _, sigma, _ = power_iteration(fwd, adj, v0, 20_000, tol=1e-15, form=form)
    assert sigma.item() == pytest.approx(torch.linalg.matrix_norm(jac, ord=2).item(), rel=1e-7)


def _layer_tracking_the_second_of_two_close_singular_values() -> tuple[
    iresnet.SpectralLinear, float
]:
    """A 64x2 layer with singular values 3.191 and 3.181 (as one in a trained toy-8gaussians
    model) whose persistent ``v`` sits on the second singular vector, as it does when the two
    swap order during training (one power step per call keeps tracking the old one)."""
    gen = torch.Generator().manual_seed(0)
    u_mat, _ = torch.linalg.qr(torch.randn(64, 2, generator=gen, dtype=torch.float64))
    v_mat, _ = torch.linalg.qr(torch.randn(2, 2, generator=gen, dtype=torch.float64))
    w = u_mat @ torch.diag(torch.tensor([3.191, 3.181], dtype=torch.float64)) @ v_mat.T
    layer = iresnet.SpectralLinear(2, 64, coeff=0.98).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        v = v_mat[:, 1] + 1e-3 * v_mat[:, 0]
        layer.v.copy_(v / v.norm())
        layer.u.copy_(u_mat[:, 1])
    layer.eval()
    true = torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2).item()
    return layer, true


# Both regressions were found by benchmarks/frobenius.py (a trained toy-8gaussians block at
# 0.9442 > c^3 = 0.9412): power iteration stops once sigma changes by less than its tolerance
# per step, which happens at once from a v on the second of two close singular vectors. Linear
# layers now take their eval-mode norm and certificate from an exact SVD.


def test_certificate_is_an_upper_bound_with_close_singular_values():
    layer, true = _layer_tracking_the_second_of_two_close_singular_values()
    assert layer.lipschitz_bound() >= true * (1 - 1e-9)


def test_eval_mode_normalisation_stays_below_coeff_with_close_singular_values():
    _, true = _layer_tracking_the_second_of_two_close_singular_values()
    assert true <= 0.98 * (1 + 1e-6)


def test_operator_norm_is_cached_until_the_weight_changes(monkeypatch):
    import iresnet.nn.spectral as lip

    torch.manual_seed(0)
    conv = lip.SpectralConv2d(2, 3, 3, padding=1, coeff=0.9).double()
    conv(torch.randn(1, 2, 5, 5, dtype=torch.float64))  # learns its input shape
    conv.eval()
    calls = []
    real = lip.linear_operator_norm
    monkeypatch.setattr(
        lip, "linear_operator_norm", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    first = conv.operator_norm()
    assert conv.operator_norm() == first and len(calls) == 1
    with torch.no_grad():
        conv.weight.mul_(0.01)  # in place, as an optimiser step or load_state_dict does
    small = conv.operator_norm()
    assert len(calls) == 2
    w_hat = conv.normalized_weight().detach()
    jac = operator_matrix(lambda v: torch.nn.functional.conv2d(v, w_hat, None, 1, 1), (2, 5, 5))
    exact = float(torch.linalg.matrix_norm(jac, ord=2))
    assert small == pytest.approx(exact, rel=1e-6) and small < first


# ------------------------------------------------- eval mode is a function of the weight's values
def _applied_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    """The exact norm of the map the layer applies now (bias removed), from its explicit matrix."""
    with torch.no_grad():
        zero = layer(torch.zeros(1, *shape, dtype=torch.float64))
        mat = operator_matrix(lambda v: layer(v) - zero, shape)
    return torch.linalg.matrix_norm(mat, ord=2).item()


@pytest.mark.parametrize(
    "change",
    ["data_write", "copy_no_grad", "load_state_dict", "to_float32_and_back", "coeff"],
)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_eval_mode_follows_every_change_of_the_weight(kind, change):
    """The issue's case: an eval-mode layer whose weight is scaled through ``.data`` (what an
    EMA swap does) applied norm 2.70 while ``operator_norm()`` said 0.90. Every way of changing
    the values must be seen."""
    torch.manual_seed(0)
    if kind == "linear":
        layer, shape = iresnet.SpectralLinear(4, 4, coeff=0.9).double(), (4,)
    else:
        layer, shape = iresnet.SpectralConv2d(2, 2, 3, padding=1, coeff=0.9).double(), (2, 5, 5)
    scale_weights(layer, 5.0)
    layer.eval()
    assert _applied_norm(layer, shape) == pytest.approx(0.9, rel=1e-6)
    coeff = 0.9
    if change == "data_write":
        layer.weight.data *= 3
    elif change == "copy_no_grad":
        with torch.no_grad():
            layer.weight.copy_(3 * layer.weight)
    elif change == "load_state_dict":
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        state["weight"] = 3 * state["weight"]
        layer.load_state_dict(state)
    elif change == "to_float32_and_back":
        layer.float()
        layer.weight.data *= 3
        layer.double()
    else:
        layer.coeff.fill_(0.5)
        coeff = 0.5
    assert _applied_norm(layer, shape) == pytest.approx(coeff, rel=1e-6)
    assert layer.operator_norm() == pytest.approx(coeff, rel=1e-6)


def test_a_scaled_block_stays_certified_and_invertible():
    """The issue's block: certified at 0.81, weights scaled by 3 through ``.data``; the
    normalisation follows, so the certificate and the inverse stay right."""
    g = nn.Sequential(
        iresnet.SpectralLinear(3, 3, coeff=0.9), nn.Tanh(), iresnet.SpectralLinear(3, 3, coeff=0.9)
    ).double()
    scale_weights(g, 5.0)
    solver = iresnet.FixedPointInverse(atol=1e-12, rtol=0.0, on_failure="raise")
    block = iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=solver)
    block.eval()
    assert iresnet.certify(block).max_bound <= 0.81 * (1 + 1e-9)
    for m in g:
        if isinstance(m, iresnet.SpectralLinear):
            m.weight.data *= 3
    assert iresnet.certify(block).max_bound <= 0.81 * (1 + 1e-9)
    x = torch.randn(16, 3, dtype=torch.float64)
    y, _ = block(x)
    torch.testing.assert_close(block.inverse(y), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_eval_mode_parameter_gradients_match_finite_differences(kind):
    """The issue's case: float64 ``SpectralLinear(3, 3, coeff=0.9)`` with weight ``2 * randn``
    in eval mode had a relative gradient error of 5.85 (the dependence of sigma on W was
    missing). Central differences of the eval-mode output must match autograd."""
    torch.manual_seed(3)
    if kind == "linear":
        layer, x = iresnet.SpectralLinear(3, 3, coeff=0.9).double(), torch.randn(4, 3)
    else:
        layer = iresnet.SpectralConv2d(2, 2, 3, padding=1, coeff=0.9).double()
        x = torch.randn(2, 2, 4, 4)
        layer.eval_tol = 1e-15  # converge the eval-mode vectors fully
    x = x.double()
    with torch.no_grad():
        layer.weight.copy_(2 * torch.randn_like(layer.weight))
    layer.eval()
    out = layer(x)
    a = torch.randn(out.shape, dtype=out.dtype)  # the same draws whatever the output's layout

    def loss() -> torch.Tensor:
        return (layer(x) * a).sum()

    (grad,) = torch.autograd.grad(loss(), layer.weight)
    # (a convolution's kernel gradient comes back channels-last, as its convolutions ran)
    numeric = torch.zeros(grad.numel(), dtype=grad.dtype)
    eps = 1e-6
    with torch.no_grad():
        for i in range(grad.numel()):
            w = layer.weight.view(-1)
            w[i] += eps
            up = loss()
            w[i] -= 2 * eps
            down = loss()
            w[i] += eps
            numeric[i] = (up - down) / (2 * eps)
    numeric = numeric.reshape(grad.shape)
    rel = ((grad - numeric).norm() / numeric.norm()).item()
    assert rel < 1e-6, rel


# ------------------------------------------------------------------ certified bounds of layers
def _swapped_conv() -> iresnet.SpectralConv2d:
    """The issue's case: persistent vectors converged on one singular direction, then the weight
    changed so that another direction is the top one; power iteration meets its tolerance on
    the old one."""
    layer = iresnet.SpectralConv2d(2, 2, 3, padding=1, coeff=1.0).double()
    with torch.no_grad():
        w = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
        w[0, 0, 1, 1], w[1, 1, 1, 1] = 0.0, 0.85  # channel 1 alone first
        layer.weight.copy_(w)
    layer(torch.randn(1, 2, 6, 6, dtype=torch.float64))
    with torch.no_grad():
        layer._update_vectors(500, None)  # converged on channel 1
        layer.weight[0, 0, 1, 1] = 1.0  # now channel 0 is the top direction, orthogonal to v
    return layer.eval()


def test_certified_bound_never_under_reports_where_power_iteration_does():
    layer = _swapped_conv()
    w = layer.weight.detach()
    conv = lambda v: torch.nn.functional.conv2d(v, w, None, 1, 1)  # noqa: E731
    exact = torch.linalg.matrix_norm(operator_matrix(conv, (2, 6, 6)), ord=2).item()
    assert exact == pytest.approx(1.0)
    assert layer.operator_norm() < 0.9  # the estimate misses the top direction
    bound = layer.bound()
    assert bound.method == "svd" and float(bound.value) >= exact * (1 - 1e-12)
    cert = iresnet.certify(iresnet.InvertibleResidualBlock(nn.Sequential(layer)))
    assert cert.blocks[0].bound >= exact * (1 - 1e-12) and cert.blocks[0].methods == "svd"


@pytest.mark.parametrize("size,method", [(6, "svd"), (40, "fft-svd")])
def test_certificates_name_their_methods(size, method):
    first = iresnet.SpectralConv2d(3, 8, 3, padding=1, coeff=0.9).double()
    g = nn.Sequential(first, iresnet.LipSwish(), iresnet.SpectralConv2d(8, 3, 1, coeff=0.9))
    g = g.double()
    g(torch.randn(1, 3, size, size, dtype=torch.float64))
    cert = iresnet.certify(iresnet.InvertibleResidualBlock(g).eval())
    layers = cert.to_dict()["blocks"][0]["layers"]
    assert [x["name"] for x in layers] == ["0", "1", "2"]
    assert [x["method"] for x in layers][:2] == [method, "slope"]
    assert method in str(cert)


@pytest.mark.parametrize("kind", ["linear", "conv8", "conv20"])
def test_certified_norm_bounds_the_applied_map_by_construction(kind):
    """``norm="certified"``: the weight is divided by a provable bound of its norm, so the
    applied map's norm is within ``coeff`` in training and in eval mode, and the normalisation
    has a gradient."""
    torch.manual_seed(1)
    if kind == "linear":
        layer, shape = iresnet.SpectralLinear(5, 7, coeff=0.9, norm="certified").double(), (5,)
    else:
        n = int(kind[4:])
        layer = iresnet.SpectralConv2d(3, 4, 3, padding=1, coeff=0.9, norm="certified").double()
        shape = (3, n, n)
    scale_weights(layer, 10.0)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        layer(torch.randn(2, *shape, dtype=torch.float64))
        # the exact norm from the explicit matrix (20x20: the certified bound, exact below it)
        norm = _applied_norm(layer, shape) if kind != "conv20" else float(layer.bound().value)
        assert 0.5 <= norm <= 0.9 * (1 + 1e-9), (mode, norm)
    layer.train()
    layer(torch.randn(2, *shape, dtype=torch.float64)).sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_layer_bounds_are_never_below_the_exact_norm_on_random_layers():
    """The certificate's per-layer bound against the SVD of the explicit matrix of the map the
    layer applies, over random kernels, strides, paddings and sizes (train and eval mode)."""
    gen = torch.Generator().manual_seed(7)
    worst = 0.0
    for trial in range(24):
        c_in, c_out, k = (int(torch.randint(1, 4, (1,), generator=gen)) for _ in range(3))
        stride, pad = 1 + trial % 2, trial % 3
        size = int(torch.randint(max(3, k), 9, (1,), generator=gen))
        layer = iresnet.SpectralConv2d(c_in, c_out, k, stride=stride, padding=pad, coeff=0.9)
        layer = layer.double()
        with torch.no_grad():
            layer.weight.copy_(3 * torch.randn(layer.weight.shape, generator=gen).double())
        layer.train(trial % 2 == 0)
        layer(torch.randn(1, c_in, size, size, dtype=torch.float64))
        w_hat = layer.normalized_weight().detach()
        conv = lambda v, w=w_hat, s=stride, p=pad: torch.nn.functional.conv2d(v, w, None, s, p)  # noqa: E731
        exact = torch.linalg.matrix_norm(operator_matrix(conv, (c_in, size, size)), ord=2).item()
        bound = layer.lipschitz_bound()
        assert bound >= exact * (1 - 1e-9), (trial, bound, exact)
        worst = max(worst, bound / exact - 1)
    assert worst < 1e-9  # small maps: the explicit matrix's exact norm


def test_tiny_weights_are_certified_at_their_norm_not_zero():
    """The issue's case: weights of ~1e-14 got a power-iteration estimate of exactly 0."""
    layer = iresnet.SpectralConv2d(2, 2, 3, padding=1).double().eval()
    with torch.no_grad():
        layer.weight.mul_(0).add_(1e-14 * torch.randn_like(layer.weight))
    layer(torch.randn(1, 2, 5, 5, dtype=torch.float64))
    w = layer.weight.detach()
    conv = lambda v: torch.nn.functional.conv2d(v, w, None, 1, 1)  # noqa: E731
    exact = torch.linalg.matrix_norm(operator_matrix(conv, (2, 5, 5)), ord=2).item()
    assert exact > 0 and layer.lipschitz_bound() == pytest.approx(exact, rel=1e-9)


def test_certified_layers_apply_one_map_with_and_without_autograd():
    """A certified convolution divided by the explicit norm without autograd and by the circular
    bound with it: the inverse (no autograd) then solved another map than the forward pass, and
    F^-1(F(x)) missed x by 5.6e-2 on digits."""
    torch.manual_seed(0)
    flow = iresnet.MultiscaleResidualFlow(
        (1, 8, 8), blocks=1, hidden_channels=(8,), logdet="exact", norm="certified"
    ).double()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        (-flow.log_prob(torch.rand(16, 1, 8, 8, dtype=torch.float64)).mean()).backward()
        opt.step()
    flow.eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    z_grad, _ = flow.transform(x)
    with torch.no_grad():
        z_nograd, _ = flow.transform(x)
        rec = flow.inverse(z_nograd)
    torch.testing.assert_close(z_grad.detach(), z_nograd, rtol=0, atol=1e-12)
    assert (rec - x).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_plain_convolutions_with_copying_padding_are_not_certified(mode):
    """A reflect-padded 3x3 convolution with corner taps 0.24 was certified at 0.96 while its
    exact norm on 4x4 inputs is 1.26: the tap bound assumes zero padding."""
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode=mode, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, ::2, ::2] = 0.24
    cert = iresnet.certify(iresnet.InvertibleResidualBlock(nn.Sequential(conv)).eval())
    assert not cert.invertible and cert.blocks[0].methods == "unknown"


def test_a_convolution_that_saw_no_input_is_certified_unknown_not_a_crash():
    """Found by the conditional-flows session: certify on a fresh conv flow raised IndexError."""
    import iresnet

    flow = iresnet.MultiscaleResidualFlow((1, 8, 8), scales=1, blocks=1, hidden_channels=(4,))
    cert = iresnet.certify(flow.eval())
    assert not cert.invertible and cert.max_bound == float("inf")
    flow.log_prob(torch.zeros(2, 1, 8, 8))  # the convolutions learn their input size
    assert iresnet.certify(flow).invertible


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("kernel", "bias"), [(1, True), (1, False), (3, True), (3, False)])
def test_the_layers_convolutions_are_atens_in_either_layout(
    kernel, bias, channels_last, monkeypatch
):
    """A 1x1 convolution runs as matrix products over the channels (in place in the
    channels-last layout, else one per sample), the others as ATen's convolution in
    channels-last on a CPU (``conv_layout``): for inputs in either layout, the output, the
    transposed map and the kernel's and bias's gradients equal ATen's convolution in the
    default layout (float64), and on a CPU the results are channels-last (``_CHANNELS_LAST``
    off: every layout as given)."""
    monkeypatch.setattr(spectral, "_CHANNELS_LAST", channels_last)
    torch.manual_seed(0)
    pad = kernel // 2
    layer = iresnet.SpectralConv2d(5, 3, kernel_size=kernel, padding=pad, bias=bias).double()
    assert layer._pointwise == (kernel == 1)
    w = torch.randn(3, 5, kernel, kernel, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64) if bias else None
    x0 = torch.randn(4, 5, 6, 7, dtype=torch.float64)
    reference = torch.nn.functional.conv2d(x0, w, b, padding=pad)
    cot0 = torch.randn_like(reference)
    mask = [True, True, bias]
    expected = torch.ops.aten.convolution_backward(
        cot0, x0, w, [3] if bias else None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask
    )
    cl = torch.channels_last
    for x, cot in [
        (x0, cot0),
        (x0.contiguous(memory_format=cl), cot0.contiguous(memory_format=cl)),
    ]:
        out = layer._conv_forward(x, w, b)
        torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
        if channels_last:  # else the layout is ATen's choice (its convolution follows x's)
            assert out.is_contiguous(memory_format=cl)
        got = layer._conv_grads(cot, x, w, mask)
        for g, want in zip(got, expected, strict=True):
            if want is None:
                assert g is None
            else:
                torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-12)
        if channels_last:
            assert got[0].is_contiguous(memory_format=cl)
    assert not iresnet.SpectralConv2d(5, 3, kernel_size=1, stride=2)._pointwise
    assert not iresnet.SpectralConv2d(5, 3, kernel_size=3, padding=1)._pointwise


@pytest.mark.filterwarnings("ignore::iresnet.RouletteVarianceWarning")
@pytest.mark.parametrize("estimator", ["exact", "roulette", "roulette-plain-backward"])
def test_a_convolutional_block_gives_the_same_numbers_in_either_layout(estimator, monkeypatch):
    """A block with spectral convolutions keeps its input channels-last on a CPU (its output
    takes that layout); its output, log-det and every gradient (input and parameters) are
    the default layout's, float64, training mode, the same draws."""
    torch.manual_seed(0)
    logdet = {
        "exact": lambda: iresnet.ExactLogDet(),
        "roulette": lambda: iresnet.RussianRouletteLogDet(),
        "roulette-plain-backward": lambda: iresnet.RussianRouletteLogDet(memory_efficient=False),
    }[estimator]()
    g = iresnet.nn.conv_branch(2, (6, 6), preact=True)
    block = iresnet.InvertibleResidualBlock(g, logdet=logdet).double().train()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        block(x)  # the convolutions learn their input size
    state = copy.deepcopy(block.state_dict())
    results = []
    for channels_last in (True, False):
        monkeypatch.setattr(spectral, "_CHANNELS_LAST", channels_last)
        block.load_state_dict(state)
        block.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        torch.manual_seed(1)
        y, ld = block(xi)
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
        (y.pow(2).sum() - ld.sum()).backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        results.append((y.detach(), ld.detach(), xi.grad, grads))
    (y1, ld1, gx1, gp1), (y0, ld0, gx0, gp0) = results
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld1, ld0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=1e-10, atol=1e-12)
    assert gp1.keys() == gp0.keys() and len(gp0) >= 4
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-10, atol=1e-12, msg=name)


def test_a_fresh_models_certificate_above_one_says_why_and_eval_certifies_it():
    """A fresh flow in training mode certified at 1.16-1.25 with coeff 0.9 and no word why
    (its layers divide by an unrefined norm estimate until forward passes refine it)."""
    torch.manual_seed(0)
    flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(16,), coeff=0.9)
    cert = iresnet.certify(flow)
    assert not cert.invertible  # (with this seed's draw)
    assert "power iteration's norm estimate" in str(cert) and "model.eval()" in str(cert)
    flow.eval()
    assert iresnet.certify(flow).max_bound <= 0.9 * (1 + 1e-6)
    assert "power iteration's norm estimate" not in str(iresnet.certify(flow))


def test_an_eval_forward_of_unchanged_weights_writes_no_buffer_so_torch_func_can_differentiate():
    """Every eval forward wrote ``sigma`` into its buffer, so ``torch.func.jacrev``/``vmap``
    refused any spectral layer ("attempted to call in-place operation ... captured Tensor");
    the buffer is now written when the singular pair is recomputed."""
    torch.manual_seed(0)
    g = iresnet.nn.mlp_branch(3, (8,), coeff=0.9).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    g(x)  # the pair is computed once, and sigma written
    sigmas = [m.sigma.clone() for m in g.modules() if hasattr(m, "sigma")]
    per_sample = torch.func.vmap(torch.func.jacrev(lambda xi: g(xi[None])[0]))(x)
    want = torch.stack(
        [torch.autograd.functional.jacobian(lambda xi: g(xi[None])[0], xi) for xi in x]
    )
    torch.testing.assert_close(per_sample, want, rtol=1e-12, atol=1e-12)
    after = [m.sigma for m in g.modules() if hasattr(m, "sigma")]
    assert all(torch.equal(a, b) for a, b in zip(sigmas, after, strict=True)) and sigmas


def test_a_penalty_runs_certificate_names_the_penalty_not_power_iteration():
    """A layer trained with ``norm="penalty"`` is never rescaled: a bound of 1 or more there
    was explained by a training-mode power iteration that such a layer does not divide by."""
    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,))
    for m in flow.modules():
        if isinstance(getattr(m, "norm", None), str):
            m.norm = "penalty"
    with torch.no_grad():
        for m in flow.modules():
            if getattr(m, "norm", None) == "penalty":
                m.weight.mul_(5)
    cert = iresnet.certify(flow)
    text = str(cert)
    assert not cert.invertible and "svd (penalty)" in text
    assert "spectral penalty" in text and "power iteration's norm estimate" not in text
    # the exact norms of the raw weights, named: the bound is still the product of SVDs
    raw = [torch.linalg.matrix_norm(m.weight.detach().double(), 2) for m in flow.modules()
           if getattr(m, "norm", None) == "penalty"]  # fmt: skip
    assert cert.max_bound == pytest.approx(float(raw[0] * raw[1]), rel=1e-9)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_the_spectral_norm_runs_in_full_precision_under_autocast(kind):
    """Under bfloat16 autocast (``train.precision=bf16``) the power iteration and ``sigma``
    run in the weight's precision: a fresh convolution's singular vectors stay float32 (a
    later float32 call refused bfloat16 ones: a bf16 image run crashed drawing its samples),
    and ``sigma`` equals the float32 computation's."""
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = iresnet.SpectralLinear(6, 5, coeff=0.9), torch.randn(4, 6)
    else:
        layer, x = iresnet.SpectralConv2d(3, 4, 3, padding=1, coeff=0.9), torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # sigma above coeff: the normalisation divides
    reference = copy.deepcopy(layer)
    torch.manual_seed(1)  # a fresh convolution draws its starting vectors: the same for both
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    torch.manual_seed(1)
    reference(x)
    assert layer.u.dtype == layer.v.dtype == torch.float32
    torch.testing.assert_close(layer.sigma, reference.sigma, rtol=1e-6, atol=0)
    layer.eval()(x)  # float32 afterwards


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kernel", [1, 3])
def test_one_unbatched_map_goes_through_every_kernel_size_as_in_torch_conv2d(
    kernel, mode, channels_last, monkeypatch
):
    """``torch.nn.Conv2d`` takes one ``(C, H, W)`` map and gives one back; a 3x3 layer did,
    a 1x1 one (its channels-last matrix-product path) failed on unpacking four sizes. Every
    kernel size now gives the batched layer's numbers for a batch of one, through forward,
    ``linearize`` (tangents ``(d, C, H, W)``, the transposed map), ``jvp`` and
    ``linearize_adjoint`` (float64, no power-iteration step between the calls)."""
    monkeypatch.setattr(spectral, "_CHANNELS_LAST", channels_last)
    layer = iresnet.SpectralConv2d(5, 3, kernel_size=kernel, padding=kernel // 2).double()
    x = torch.randn(5, 6, 7, dtype=torch.float64)
    t = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    layer(x)  # learns the input size from one map
    assert tuple(layer.v.shape) == (1, 5, 6, 7)
    layer.train(mode == "train")
    with iresnet.nn.frozen_normalisation(layer):
        w_hat = layer.normalized_weight().detach()
        want = torch.nn.functional.conv2d(x, w_hat, layer.bias, padding=kernel // 2)
        y = layer(x)
        assert y.shape == (3, 6, 7)
        torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(y, layer(x[None])[0], rtol=1e-12, atol=1e-12)

        cot = torch.randn(3, 6, 7, dtype=torch.float64)
        y1, jt1, vjp1 = layer.linearize(x, t)
        yb, jtb, vjpb = layer.linearize(x[None], t[:, None])
        torch.testing.assert_close(y1, yb[0], rtol=1e-12, atol=1e-12)
        assert jt1.shape == (2, 3, 6, 7)
        torch.testing.assert_close(jt1, jtb[:, 0], rtol=1e-12, atol=1e-12)
        assert vjp1(cot).shape == (5, 6, 7)
        torch.testing.assert_close(vjp1(cot), vjpb(cot[None])[0], rtol=1e-12, atol=1e-12)
        y2, jt2 = layer.jvp(x, t)
        torch.testing.assert_close(y2, yb[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(jt2, jtb[:, 0], rtol=1e-12, atol=1e-12)

        c = torch.randn(2, 3, 6, 7, dtype=torch.float64)
        y3, t3, back3, adj3 = layer.linearize_adjoint(x, t)
        yb, tb, backb, adjb = layer.linearize_adjoint(x[None], t[:, None])
        torch.testing.assert_close(y3, yb[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(t3, tb[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(back3(cot), backb(cot[None])[0], rtol=1e-12, atol=1e-12)
        c3, r3, pairs3 = adj3(c, cot, True)
        cb, rb, pairsb = adjb(c[:, None], cot[None], True)
        assert c3.shape == (2, 5, 6, 7) and r3.shape == (5, 6, 7)
        torch.testing.assert_close(c3, cb[:, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r3, rb[0], rtol=1e-12, atol=1e-12)
        assert len(pairs3) == len(pairsb) == 2
        for (p3, g3), (pb, gb) in zip(pairs3, pairsb, strict=True):
            assert type(p3) is type(pb)
            torch.testing.assert_close(g3, gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("shape", [(5, 6), (2, 2, 5, 6, 7)])
def test_a_convolution_refuses_inputs_that_are_not_maps_in_one_line(kernel, shape):
    """Neither one map nor a batch of them: one DataError naming both shapes it takes, from
    every entry point and kernel size (not torch's or a Python unpacking error)."""
    layer = iresnet.SpectralConv2d(5, 3, kernel_size=kernel, padding=kernel // 2)
    x = torch.randn(shape)
    match = r"expected a \(B, C, H, W\) batch or one \(C, H, W\) map, got a tensor of shape"
    for call in (layer, layer.linearize, lambda x: layer.linearize_adjoint(x, x[None])):
        with pytest.raises(iresnet.DataError, match=match):
            call(x)
