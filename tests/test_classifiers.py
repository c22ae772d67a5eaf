"""Invertible classifiers and hybrid models: shapes, inverse, certificate, exact log-density."""

from __future__ import annotations

import math

import pytest
import torch

from iresnet import FixedPointInverse, HybridClassifier, InvertibleClassifier, certify
from tests.helpers import explicit_jacobian

TINY = {"scales": 2, "blocks": 2, "hidden_channels": 8, "activation": "elu"}


def solver() -> FixedPointInverse:
    return FixedPointInverse(atol=1e-12, rtol=0.0, max_iter=500)


def classifier(shape, **kw) -> InvertibleClassifier:
    return InvertibleClassifier(shape, 10, **{**TINY, "inverse": solver(), **kw})


def ready(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """One training-mode pass (ActNorm's data-dependent init, conv shapes), then eval mode."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4)])
def test_forward_shapes_and_feature_inverse_float64(shape):
    model = classifier(shape).double()
    x = torch.rand(5, *shape, dtype=torch.float64)
    ready(model, x)
    c = max(shape[0], 4)  # injective padding to hidden // 2 channels
    assert model(x).shape == (5, 10)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (5, 4 * c, shape[1] // 2, shape[2] // 2)
        x_rec, diagnostics = model.invert_features_with_diagnostics(f)
    assert x_rec.shape == x.shape
    assert (x_rec - x).abs().max() < 1e-8
    assert len(diagnostics) == 4 and all(d.all_converged for d in diagnostics)


def test_squeeze_first_features_invert_and_odd_sizes_are_refused():
    """``squeeze_first``: ``(1, 8, 8) -> (4, 4, 4)`` before padding to ``hidden // 2`` channels;
    the features still invert to the input, and odd sizes are refused."""
    model = classifier((1, 8, 8), squeeze_first=True, hidden_channels=16).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    ready(model, x)
    pad = model.trunk[1]
    assert pad.in_channels == 4 and pad.out_channels == 8
    assert model.feature_shape == (32, 2, 2)
    with torch.no_grad():
        x_rec = model.invert_features(model.features(x))
    assert x_rec.shape == x.shape and (x_rec - x).abs().max() < 1e-8
    with pytest.raises(ValueError, match="divisible by 4"):
        classifier((1, 6, 6), squeeze_first=True)


def test_certificate_invertible_for_c_below_one_not_for_vanilla():
    x = torch.rand(4, 1, 4, 4)
    for c in (0.9, 0.5):
        cert = certify(ready(classifier((1, 4, 4), coeff=c, blocks=1), x))
        assert cert.invertible
        assert len(cert.blocks) == 2
        assert cert.max_bound <= c**3 * 1.01  # three convolutions per branch (float32 sigma)
    vanilla = certify(ready(classifier((1, 4, 4), norm="none", blocks=1), x))
    assert not vanilla.invertible and vanilla.max_bound > 1
    # Before any forward pass the convolutions' norms are unknown: the certificate says so
    # and how to get them (its verdict stays the honest "not guaranteed").
    fresh = certify(classifier((1, 4, 4), coeff=0.9, blocks=1))
    assert not fresh.invertible and "run one (e.g. model(x) on a batch)" in str(fresh)
    assert "run one" not in str(certify(ready(classifier((1, 4, 4), blocks=1), x)))


def test_classifier_trunk_has_no_log_det():
    """A classifier never needs ``log|det|``: its blocks report NaN, not a made-up 0."""
    model = ready(classifier((1, 4, 4)), torch.rand(2, 1, 4, 4))
    assert torch.isnan(model.trunk(torch.rand(2, 1, 4, 4))[1]).all()


@pytest.mark.parametrize("levels", [None, 17])
def test_hybrid_log_prob_is_base_plus_exact_logdet(levels):
    torch.manual_seed(1)
    alpha = 0.05 if levels else 0.0
    model = HybridClassifier(
        (1, 4, 4),
        10,
        blocks=1,
        hidden_channels=4,
        logdet="exact",
        inverse=solver(),
        levels=levels,
        logit_alpha=alpha,
    ).double()
    if levels:
        x = torch.randint(0, levels, (3, 1, 4, 4)).double()
        ready(model, x)
        body = model.trunk[1:]  # after the stochastic dequantisation
        u = model.trunk[0].midpoints(x)
        z, logdet = body(u)
        expected_ld = torch.linalg.slogdet(explicit_jacobian(lambda v: body(v)[0], u)).logabsdet
        torch.testing.assert_close(logdet, expected_ld)
        # the dequantisation's own term: u = (x + v) / K has log-det -D log K
        assert torch.allclose(model.trunk[0](x)[1], torch.full((3,), -16 * math.log(17)).double())
        return
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    ready(model, x * 2 + 1)  # ActNorm gets a non-trivial scale and shift
    logp = model.log_prob(x)
    jac = explicit_jacobian(model.features, x)
    z = model.features(x).flatten(1)
    expected = -0.5 * ((z * z).sum(1) + 16 * math.log(2 * math.pi))
    expected = expected + torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-8)
    logits, logp2 = model(x, return_log_prob=True)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logp2, logp)
    with torch.no_grad():
        x_rec = model.invert_features(model.features(x))
    assert (x_rec - x).abs().max() < 1e-8


def test_head_pool_grid_reads_pooled_windows_and_is_refused_beyond_the_features():
    """``head_pool=k``: the linear head reads ``C k^2`` window averages; ``k = 1`` is the
    global average of the paper's head, and a grid larger than the features is refused."""
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model = ready(classifier((1, 8, 8), head_pool=2).double(), x)
    c, h, w = model.feature_shape
    assert (h, w) == (4, 4) and model.head.linear.in_features == 4 * c
    with torch.no_grad():
        r = torch.relu(model.head.norm(model.features(x))[0])
        windows = r.reshape(4, c, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(1)
        assert torch.allclose(model(x), model.head.linear(windows))
    assert classifier((1, 8, 8)).head.linear.in_features == c
    for bad in (5, 0):
        with pytest.raises(ValueError, match="head_pool"):
            classifier((1, 8, 8), head_pool=bad)


def test_classifiers_refuse_bad_counts_and_margins():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="scales must be a positive integer"):
            classifier((1, 8, 8), scales=bad)
        with pytest.raises(ValueError, match="scales must be a positive integer"):
            HybridClassifier((1, 8, 8), 10, **{**TINY, "scales": bad})
    with pytest.raises(ValueError, match=r"logit_alpha must lie in \[0, 0.5\)"):
        HybridClassifier((1, 8, 8), 10, **TINY, logit_alpha=-0.1)


def test_classifiers_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        classifier((64,))
    with pytest.raises(ValueError, match="divisible"):
        classifier((1, 6, 6), scales=3)
