"""One contract test for every invertible piece (float64), plus piece-specific checks."""

import io

import pytest
import torch
from torch import nn

import iresnet

from .conftest import mlp_g, scale_weights


def conv_block():
    g = nn.Sequential(
        iresnet.SpectralConv2d(2, 4, 3, padding=1, coeff=0.9), iresnet.LipELU(),
        iresnet.SpectralConv2d(4, 4, 1, coeff=0.9), iresnet.LipELU(),
        iresnet.SpectralConv2d(4, 2, 3, padding=1, coeff=0.9),
    )
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=iresnet.FixedPointInverse(atol=1e-12, max_iter=500))


def mlp_block():
    g = mlp_g(3, 12, 0.9)
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=iresnet.FixedPointInverse(atol=1e-12, max_iter=500))


PIECES = {
    "mlp_block": (mlp_block, (3,)),
    "conv_block": (conv_block, (2, 4, 4)),
    "actnorm_vec": (lambda: iresnet.ActNorm(3), (3,)),
    "actnorm_img": (lambda: iresnet.ActNorm(2), (2, 4, 4)),
    "squeeze": (lambda: iresnet.Squeeze(2), (2, 4, 4)),
}


def full_jacobian_logdet(fn, x):
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], xi)
        d = xi.numel()
        out.append(torch.linalg.slogdet(jac.reshape(d, d)).logabsdet)
    return torch.stack(out)


@pytest.fixture(params=list(PIECES))
def piece(request):
    build, shape = PIECES[request.param]
    module = build().double()
    x = torch.randn(5, *shape, dtype=torch.float64)
    module.train()
    module(x)  # first training call: data-dependent init, conv shapes learned
    # Move parameters away from their initial values so the checks are not trivial.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "log_scale" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    module.build_name = request.param  # for the save/load test
    return module.eval(), x


def test_shapes_and_inverse(piece):
    module, x = piece
    y, logdet = module(x)
    assert logdet.shape == (x.shape[0],)
    torch.testing.assert_close(module.inverse(y), x, rtol=0, atol=1e-9)


def test_logdet_matches_autograd_jacobian(piece):
    module, x = piece
    _, logdet = module(x)
    expected = full_jacobian_logdet(lambda v: module(v)[0], x)
    torch.testing.assert_close(logdet, expected, rtol=0, atol=1e-8)


def test_gradients_reach_every_parameter(piece):
    module, x = piece
    module.train()
    y, logdet = module(x.requires_grad_())
    (y.pow(2).sum() - logdet.sum()).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None


def test_save_and_load(piece):
    module, x = piece
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh = PIECES[module.build_name][0]().double()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    y1, l1 = module(x)
    y2, l2 = fresh(x)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(l1, l2)


def test_train_and_eval_agree_after_convergence(piece):
    module, x = piece
    for m in module.modules():
        if hasattr(m, "eval_tol"):
            m.eval_tol = 1e-14  # converge sigma fully, so only a real mismatch could remain
            m._cache = None
    module.eval()
    y_eval, l_eval = module(x)
    module.train()
    y_train, l_train = module(x)  # one power step from converged vectors changes nothing
    torch.testing.assert_close(y_train, y_eval, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(l_train, l_eval, rtol=1e-9, atol=1e-11)


def test_actnorm_constant_channel_is_safe():
    act = iresnet.ActNorm(3)
    x = torch.randn(16, 3, 4, 4)
    x[:, 1] = 2.5  # a constant channel (std 0)
    y, logdet = act(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert act.log_scale[1].item() == 0.0
    torch.testing.assert_close(y[:, 0].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[:, 0].std(unbiased=False), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_actnorm_initialises_once_and_not_after_loading():
    act = iresnet.ActNorm(2)
    act(torch.randn(8, 2) * 5 + 3)
    bias = act.bias.clone()
    act(torch.randn(8, 2))
    torch.testing.assert_close(act.bias, bias)
    fresh = iresnet.ActNorm(2)
    fresh.load_state_dict(act.state_dict())
    fresh(torch.randn(8, 2) * 100)
    torch.testing.assert_close(fresh.bias, bias)


def test_squeeze_refuses_odd_sizes():
    with pytest.raises(ValueError, match="divisible"):
        iresnet.Squeeze(2)(torch.randn(1, 1, 5, 4))
