"""Invertible classifiers and hybrid models: shapes, inverse, certificate, exact log-density."""

from __future__ import annotations

import math

import pytest
import torch

from iresnet.certificate import certify
from iresnet.classifiers import (
    HybridClassifier,
    InjectivePad,
    IResNetClassifier,
    build_classifier,
    classifier_config,
    classifier_presets,
)
from iresnet.config import Config, ModelConfig
from iresnet.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = {"kind": "classifier", "n_scales": 2, "n_blocks": 2, "hidden": 8, "activation": "elu",
            "inverse_atol": 1e-12, "inverse_rtol": 0.0, "inverse_max_iter": 500, "logdet": "exact"}
    return Config().override([f"model.{k}={v}" for k, v in {**base, **kw}.items()]).model


def ready(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """One training-mode pass (ActNorm's data-dependent init, conv shapes), then eval mode."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4)])
def test_forward_shapes_and_feature_inverse_float64(shape):
    model = build_classifier(tiny(), shape).double()
    assert isinstance(model, IResNetClassifier)
    x = torch.rand(5, *shape, dtype=torch.float64)
    ready(model, x)
    c = max(shape[0], 4)  # injective padding to hidden // 2 channels
    assert model(x).shape == (5, 10)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (5, 4 * c, shape[1] // 2, shape[2] // 2)
        x_rec = model.invert_features(f)
    assert x_rec.shape == x.shape
    assert (x_rec - x).abs().max() < 1e-8
    assert all(d.all_converged for d in model.inverse_diagnostics)
    assert len(model.inverse_diagnostics) == 4


def test_init_squeeze_features_invert_and_28x28_presets_build():
    """``model.init_squeeze``: squeeze ``(1, 8, 8) -> (4, 4, 4)`` before padding to ``hidden // 2``
    channels; the features still invert to the input, and odd sizes are refused."""
    model = build_classifier(tiny(init_squeeze=True, hidden=16), (1, 8, 8)).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    ready(model, x)
    assert model.pad.in_channels == 4 and model.pad.out_channels == 8
    assert model.feature_shape == (32, 2, 2)
    with torch.no_grad():
        x_rec = model.invert_features(model.features(x))
    assert x_rec.shape == x.shape and (x_rec - x).abs().max() < 1e-8
    with pytest.raises(ConfigError, match="even"):
        build_classifier(tiny(init_squeeze=True), (1, 7, 7))
    for name in ("mnist-classifier", "fashion-mnist-classifier"):
        net = build_classifier(classifier_config(name).model, (1, 28, 28))
        assert net.pad.out_channels == 16 and net.feature_shape == (64, 7, 7)
        assert net.head.linear.in_features == 64 * 7 * 7  # head_pool=7 reads the whole grid


def test_injective_pad_is_left_invertible():
    pad = InjectivePad(3, 7)
    x = torch.randn(2, 3, 4, 4)
    y = pad(x)
    assert y.shape == (2, 7, 4, 4) and torch.equal(y[:, 3:], torch.zeros(2, 4, 4, 4))
    assert torch.equal(pad.inverse(y), x)
    with pytest.raises(ValueError):
        InjectivePad(3, 2)


def test_certificate_invertible_for_c_below_one_not_for_vanilla():
    x = torch.rand(4, 1, 4, 4)
    for c in (0.9, 0.5):
        cert = certify(ready(build_classifier(tiny(coeff=c, n_blocks=1), (1, 4, 4)), x))
        assert cert.invertible
        assert len(cert.blocks) == 2
        assert cert.max_bound <= c**3 * 1.01  # three convolutions per branch (float32 sigma)
    vanilla = certify(ready(build_classifier(tiny(constrained=False, n_blocks=1), (1, 4, 4)), x))
    assert not vanilla.invertible and vanilla.max_bound > 1


def test_hybrid_log_prob_is_base_plus_exact_logdet():
    torch.manual_seed(1)
    model = build_classifier(tiny(kind="hybrid", n_blocks=1, hidden=4), (1, 4, 4)).double()
    assert isinstance(model, HybridClassifier)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    ready(model, x * 2 + 1)  # ActNorm gets a non-trivial scale and shift
    logp = model.log_prob(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: model.features(v[None])[0], x[i])
        jac = jac.reshape(16, 16)
        z = model.features(x[i : i + 1]).flatten()
        expected = -0.5 * (z @ z + 16 * math.log(2 * math.pi)) + torch.linalg.slogdet(jac).logabsdet
        assert abs(float((logp[i] - expected).detach())) < 1e-8
    logits, logp2 = model(x, return_log_prob=True)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logp2, logp)
    with torch.no_grad():
        x_rec = model.invert_features(model.features(x))
    assert (x_rec - x).abs().max() < 1e-8


def test_head_pool_grid_reads_pooled_windows_and_is_refused_beyond_the_features():
    """``model.head_pool=k``: the linear head reads ``C k^2`` window averages; ``k = 1`` is the
    global average of the paper's head, and a grid larger than the features is refused."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model = ready(build_classifier(tiny(head_pool=2), (1, 8, 8)).double(), x)
    c, h, w = model.feature_shape
    assert (h, w) == (4, 4) and model.head.linear.in_features == 4 * c
    with torch.no_grad():
        r = torch.relu(model.head.norm(model.features(x))[0])
        windows = r.reshape(4, c, 2, 2, 2, 2).mean(dim=(3, 5)).flatten(1)
        assert torch.allclose(model(x), model.head.linear(windows))
    assert build_classifier(tiny(), (1, 8, 8)).head.linear.in_features == c
    with pytest.raises(ConfigError, match="head_pool"):
        build_classifier(tiny(head_pool=5), (1, 8, 8))
    with pytest.raises(ConfigError):
        tiny(head_pool=0)


def test_build_classifier_refuses_bad_shapes():
    with pytest.raises(ConfigError):
        build_classifier(tiny(), (64,))
    with pytest.raises(ConfigError, match="divisible"):
        build_classifier(tiny(n_scales=3), (1, 6, 6))


def test_presets_are_valid_configs():
    presets = classifier_presets()
    for name in ("digits-classifier", "mnist-classifier", "fashion-mnist-classifier",
                 "cifar10-classifier", "mnist-classifier-paper", "cifar10-classifier-paper"):
        assert name in presets
    for name, (description, _) in presets.items():
        cfg = classifier_config(name)
        assert description and cfg.preset == name
        assert cfg.model.kind in ("classifier", "hybrid")
        if name.endswith("-classifier"):
            assert cfg.model.coeff == 0.9 and cfg.model.constrained
    paper = classifier_config("cifar10-classifier-paper").model
    assert (paper.n_scales, paper.n_blocks, paper.hidden) == (3, 7, 32)
    with pytest.raises(ConfigError):
        classifier_config("nope")
