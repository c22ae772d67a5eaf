"""The multi-scale image family: shapes, exact inverses, log-dets against the whole flow's
Jacobian, preprocessing, sampling and certificates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import iresnet
from iresnet import swap_logdets
from iresnet.ops import NoLogDet
from iresnet.transforms import InvertibleResidualBlock, OnActive
from tests.helpers import explicit_jacobian, scale_weights

SHAPES = ((1, 8, 8), (3, 4, 4))
VARIANTS = ((False, 0), (True, 0), (False, 2), (True, 2))  # (factor_out, fc_blocks)


def tiny(shape, seed: int = 0, **kw) -> iresnet.MultiscaleResidualFlow:
    """A float64 flow whose ActNorms were initialised on a batch, in eval mode."""
    torch.manual_seed(seed)
    options = dict(
        scales=2,
        blocks=1,
        hidden_channels=(4, 4),
        logdet="exact",
        fc_hidden_features=(8, 8),
        inverse=iresnet.FixedPointInverse(atol=1e-13, rtol=0.0, max_iter=500),
    )
    flow = iresnet.MultiscaleResidualFlow(shape, **{**options, **kw}).double()
    flow.train()
    levels = kw.get("levels")
    init = torch.randint(0, levels, (16, *shape)) if levels else torch.randn(16, *shape)
    with torch.no_grad():
        flow.transform(init.double())
    return flow.eval()


def whole_flow_logdet(flow: iresnet.Flow, x: Tensor) -> Tensor:
    """``log|det dz/dx|`` per sample from the autograd Jacobian of the whole map ``x -> z``."""
    with swap_logdets(flow, NoLogDet()):
        return torch.linalg.slogdet(explicit_jacobian(lambda v: flow.transform(v)[0], x)).logabsdet


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor_out,fc_blocks", VARIANTS)
@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_shapes_inverse_and_exact_logdet(activation, factor_out, fc_blocks, shape):
    flow = tiny(shape, activation=activation, factor_out=factor_out, fc_blocks=fc_blocks)
    x = torch.randn(2, *shape, dtype=torch.float64)
    z, logdet = flow.transform(x)
    d = math.prod(shape)
    if factor_out or fc_blocks:
        assert z.shape == (2, d)
    else:
        c, h, w = shape
        assert z.shape == (2, c * 4, h // 2, w // 2)  # one squeeze between the 2 scales
    assert flow.latent_shape == z.shape[1:]
    assert logdet.shape == (2,)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet, whole_flow_logdet(flow, x), rtol=0, atol=1e-8)


def test_structure_follows_the_papers():
    flow = iresnet.MultiscaleResidualFlow(
        (3, 32, 32),
        scales=3,
        blocks=2,
        hidden_channels=(8, 8),
        factor_out=True,
        activation="elu",
        squeeze_first=True,
    )
    assert isinstance(flow.transform[0], iresnet.Squeeze)
    wrapped = [t for t in flow.transform if isinstance(t, OnActive)]
    # 12x16x16 -> squeeze 48x8x8 -> factor-out 24x8x8 -> squeeze 96x4x4 -> factor-out 48x4x4.
    assert {t.in_shape for t in wrapped} >= {(24, 8, 8), (48, 4, 4)}
    blocks = [m for m in flow.modules() if isinstance(m, InvertibleResidualBlock)]
    assert len(blocks) == 6
    assert not isinstance(blocks[0].g[0], nn.ELU) and isinstance(blocks[1].g[0], nn.ELU)  # preact
    with pytest.raises(ValueError, match="divisible by 8"):
        iresnet.MultiscaleResidualFlow((1, 28, 28), scales=4)


def test_squeeze_first():
    """``squeeze_first``: exactly invertible with the whole-Jacobian log-det; an input too small
    for all the squeezes is refused."""
    flow = tiny((1, 8, 8), squeeze_first=True)
    assert isinstance(flow.transform[0], iresnet.Squeeze)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    z, logdet = flow.transform(x)
    assert z.shape == (2, 16, 2, 2)  # 1x8x8 -> 4x4x4 -> 16x2x2
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet, whole_flow_logdet(flow, x), rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny((1, 6, 6), squeeze_first=True)


def test_preprocessing_log_dets_belong_to_the_model():
    """With ``levels`` and ``logit_alpha`` the flow's log-density is that of ``x + v`` in level
    units: the logit's log-det (autograd Jacobian) and ``-D log K`` are part of ``log_prob``."""
    k, alpha = 17, 0.05
    flow = tiny((1, 4, 4), levels=k, logit_alpha=alpha)
    x = torch.randint(0, k, (3, 1, 4, 4))
    assert isinstance(flow.transform[0], iresnet.Dequantize)
    assert isinstance(flow.transform[1], iresnet.Logit)
    torch.manual_seed(5)
    logp = flow.log_prob(x)
    torch.manual_seed(5)  # the same dequantisation noise
    u, ld_deq = flow.transform[0](x)
    body = flow.transform[1:]
    z, _ = body(u)
    logdet = whole_flow_logdet(iresnet.Flow(body, event_shape=(1, 4, 4)), u)
    expected = flow.base().log_prob(z) + logdet - 16 * math.log(k)
    torch.testing.assert_close(ld_deq, torch.full((3,), -16 * math.log(k), dtype=torch.float64))
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-8)
    # samples are levels again
    s = flow.sample(4)
    assert s.shape == (4, 1, 4, 4) and torch.equal(s, s.round()) and 0 <= s.min() <= s.max() < k


@pytest.mark.parametrize(
    "factor_out,fc_blocks,shape,latent",
    [
        (True, 1, (1, 8, 8), (64,)),
        (False, 0, (3, 4, 4), (12, 2, 2)),
    ],
)
def test_sample_on_a_fresh_model(factor_out, fc_blocks, shape, latent):
    flow = iresnet.MultiscaleResidualFlow(
        shape, scales=2, blocks=1, hidden_channels=(4,), factor_out=factor_out, fc_blocks=fc_blocks
    )
    assert flow.latent_shape == latent  # known from the transforms' shapes, no probe call
    assert flow.sample(3).shape == (3, *shape)
    assert torch.isfinite(flow.sample(2, temperature=0.5)).all()


@pytest.mark.parametrize("factor_out", [False, True])
def test_diagonal_base_is_a_learned_per_dimension_gaussian(factor_out):
    """``base="diagonal"``: log p(x) = log N(z; mu, diag(s^2)) + log-det, checked against the
    standard-normal flow on the same transforms: ``log N((z - mu)/s; 0, I) - sum(log s)``."""
    flow = tiny((1, 8, 8), factor_out=factor_out, base="diagonal")
    standard = tiny((1, 8, 8), factor_out=factor_out)
    standard.load_state_dict(
        {k: v for k, v in flow.state_dict().items() if not k.startswith("base.")}, strict=False
    )
    assert isinstance(flow.base, iresnet.DiagonalNormal)
    assert flow.base.loc.shape == flow.latent_shape
    torch.manual_seed(1)
    with torch.no_grad():
        flow.base.loc.normal_()
        flow.base.log_scale.normal_(std=0.5)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    z, logdet = flow.transform(x)
    mu, log_s = flow.base.loc, flow.base.log_scale
    u = (z - mu) / log_s.exp()
    by_hand = standard.base().log_prob(u) - log_s.sum() + logdet
    torch.testing.assert_close(flow.log_prob(x), by_hand, rtol=0, atol=1e-10)
    torch.testing.assert_close(standard.log_prob(x), standard.base().log_prob(z) + logdet)
    # Sampling scales the spread about the learned mean.
    torch.manual_seed(2)
    cold = flow.sample_latent(4000, temperature=0.5)
    torch.testing.assert_close(cold.mean(0), mu, atol=0.1, rtol=0)
    ratio = (cold.std(0) / (0.5 * log_s.exp())).mean()
    assert abs(float(ratio) - 1) < 0.02  # ~64 dims x 4000 draws: SE of the mean ratio ~0.002
    with pytest.raises(ValueError, match="base must be 'standard' or 'diagonal'"):
        iresnet.MultiscaleResidualFlow((1, 8, 8), base="glow")


@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_certificate(activation):
    flow = tiny((1, 8, 8), activation=activation, factor_out=True, fc_blocks=1, coeff=0.9)
    cert = iresnet.certify(flow)
    assert cert.invertible and len(cert.blocks) == 3 and cert.max_bound <= 0.9 + 1e-6
    loose = tiny((1, 8, 8), activation=activation, factor_out=True, fc_blocks=1, norm="none")
    scale_weights(loose, 20.0)
    assert not iresnet.certify(loose).invertible


def test_a_negative_context_size_is_refused():
    """(Conditional image flows exist now: ``context=3`` builds one, see
    ``tests/flows/test_conditional.py``; only a bad size is refused.)"""
    with pytest.raises(ValueError, match="context"):
        iresnet.MultiscaleResidualFlow((1, 4, 4), context=-1)


@pytest.mark.parametrize(("n", "words"), [(1, "by 2 for 1 squeeze,"), (3, "by 8 for 3 squeezes,")])
def test_a_size_the_squeezes_cannot_halve_is_counted_in_words(n, words):
    """The message said "1 squeeze(s) need H and W divisible by 2"."""
    from iresnet.flows.multiscale import check_image_shape

    with pytest.raises(ValueError) as refused:
        check_image_shape((1, 6, 6) if n == 3 else (1, 5, 5), n)
    assert words in str(refused.value) and "(s)" not in str(refused.value)
