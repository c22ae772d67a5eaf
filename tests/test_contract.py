"""The contract, for every transform and every model family, in float64.

A transform maps ``x (B, *event)`` to ``(y, logdet (B,))`` and back; a family is built from
keyword arguments. Each is checked for: output shapes (and ``forward_shape``),
``inverse(forward(x)) == x``, the log-det against ``slogdet`` of the autograd Jacobian, gradients
reaching every parameter, a ``state_dict`` round trip into a freshly built module, and train
mode agreeing with eval mode once the power-iteration vectors have converged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import iresnet
from iresnet import swap_logdets
from iresnet.transforms import Flatten, InjectivePad, OnActive, Transform
from tests.helpers import explicit_jacobian, mlp_g, scale_weights


def _solver() -> iresnet.FixedPointInverse:
    return iresnet.FixedPointInverse(atol=1e-12, rtol=0.0, max_iter=500, on_failure="raise")


def _mlp_block() -> Transform:
    g = mlp_g(3, 12, 0.9)
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _conv_block() -> Transform:
    g = iresnet.nn.conv_branch(2, (4, 4), activation="elu", coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _dense_mlp_block() -> Transform:
    g = iresnet.nn.dense_branch(3, growth=4, depth=2, coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _dense_conv_block() -> Transform:
    g = iresnet.nn.dense_branch(2, growth=4, depth=2, conv=True, coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _clipswish_conv_block() -> Transform:
    g = iresnet.nn.conv_branch(2, (4,), activation="clipswish", preact=True, coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _composed() -> Transform:
    return iresnet.ComposedTransform(iresnet.ActNorm(2), iresnet.Squeeze(2), _conv_block_8())


def _conv_block_8() -> Transform:
    g = iresnet.nn.conv_branch(8, (4,), coeff=0.9)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _on_active() -> Transform:
    return OnActive(_conv_block(), (2, 2, 2), (2, 2, 2))


#: name -> (builder, event shape, how to draw inputs)
TRANSFORMS: dict[str, tuple[Callable[[], Transform], tuple[int, ...]]] = {
    "residual_block_mlp": (_mlp_block, (3,)),
    "residual_block_conv": (_conv_block, (2, 4, 4)),
    "residual_block_dense_mlp": (_dense_mlp_block, (3,)),
    "residual_block_dense_conv": (_dense_conv_block, (2, 4, 4)),
    "residual_block_clipswish": (_clipswish_conv_block, (2, 4, 4)),
    "actnorm_vector": (lambda: iresnet.ActNorm(3), (3,)),
    "actnorm_image": (lambda: iresnet.ActNorm(2), (2, 4, 4)),
    "squeeze": (lambda: iresnet.Squeeze(2), (2, 4, 4)),
    "flatten": (lambda: Flatten((2, 2, 2)), (2, 2, 2)),
    "on_active": (_on_active, (12,)),
    "logit": (lambda: iresnet.Logit(0.05), (3,)),
    "standardize": (lambda: iresnet.Standardize([1.0, -2.0, 0.5], [2.0, 0.5, 3.0]), (3,)),
    "composed": (_composed, (2, 4, 4)),
    "injective_pad": (lambda: InjectivePad(2, 3), (2, 2, 2)),
}


def _inputs(name: str, shape: tuple[int, ...], n: int = 4) -> Tensor:
    x = torch.randn(n, *shape, dtype=torch.float64)
    return torch.sigmoid(x) if name == "logit" else x  # the logit map takes [0, 1)


def _perturb(module: nn.Module) -> None:
    """Move ActNorm away from its data-dependent start, so its checks are not trivial."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "log_scale" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))


def _converge(module: nn.Module) -> None:
    """Bring the persistent power-iteration vectors to convergence (what many training steps
    do), so one more training step leaves sigma where eval mode computes it."""
    for m in module.modules():
        if isinstance(m, (iresnet.SpectralLinear, iresnet.SpectralConv2d)):
            m.eval_tol = 1e-15
            m._update_vectors(20_000, 1e-15)


@pytest.fixture(params=list(TRANSFORMS))
def transform(request) -> tuple[str, Transform, Tensor]:
    name = request.param
    build, shape = TRANSFORMS[name]
    torch.manual_seed(0)
    module = build().double()
    x = _inputs(name, shape)
    module.train()
    with torch.no_grad():
        module(x)  # data-dependent init, conv shapes learned
    _perturb(module)
    return name, module.eval(), x


def test_transform_shapes_and_inverse(transform):
    name, module, x = transform
    y, logdet = module(x)
    assert logdet.shape == (x.shape[0],) and logdet.dtype == torch.float64
    assert tuple(y.shape[1:]) == module.forward_shape(tuple(x.shape[1:]))
    assert module.inverse_shape(tuple(y.shape[1:])) == tuple(x.shape[1:])
    torch.testing.assert_close(module.inverse(y), x, rtol=0, atol=1e-9)
    rec, diagnostics = module.inverse_with_diagnostics(y)
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-9)
    assert all(d.all_converged for d in diagnostics)


def test_transform_logdet_matches_slogdet_of_the_jacobian(transform):
    name, module, x = transform
    jac = explicit_jacobian(lambda v: module(v)[0], x)
    if not module.bijective:  # an embedding: the volume term is log sqrt det(J^T J)
        expected = 0.5 * torch.linalg.slogdet(jac.transpose(1, 2) @ jac).logabsdet
    else:
        expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(module(x)[1], expected, rtol=0, atol=1e-8)


def test_transform_gradients_reach_every_parameter(transform):
    name, module, x = transform
    module.train()
    x = x.clone().requires_grad_()
    y, logdet = module(x)
    (y.pow(2).sum() - logdet.sum()).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert x.grad is not None


def test_transform_state_dict_round_trip(transform):
    name, module, x = transform
    fresh = TRANSFORMS[name][0]().double()
    fresh.load_state_dict(module.state_dict())
    fresh.eval()
    for a, b in zip(module(x), fresh(x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_transform_train_and_eval_agree(transform):
    name, module, x = transform
    _converge(module)
    y_eval, l_eval = module.eval()(x)
    y_train, l_train = module.train()(x)
    torch.testing.assert_close(y_train, y_eval, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(l_train, l_eval, rtol=1e-9, atol=1e-11)


def test_every_transform_is_covered():
    """A new transform in :mod:`iresnet.transforms` must join the table above (the two
    dequantisations are stochastic and have their own tests in ``tests/transforms``)."""
    exported = {getattr(iresnet.transforms, n) for n in iresnet.transforms.__all__}
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, Transform)}
    covered = {type(TRANSFORMS[n][0]()) for n in TRANSFORMS}
    stochastic = {iresnet.Dequantize, iresnet.transforms.VariationalDequantize}
    assert classes - covered - {Transform} - stochastic == set()


# ----------------------------------------------------------------------------------- families
def _residual_flow() -> nn.Module:
    return iresnet.ResidualFlow(
        3,
        transforms=2,
        hidden_features=(8,),
        inverse=_solver(),
        standardize=([0.5, 0.0, -1.0], [2.0, 1.0, 0.5]),
    )


def _residual_flow_roulette() -> nn.Module:
    return iresnet.ResidualFlow(
        3,
        transforms=2,
        hidden_features=(8, 8),
        logdet="roulette",
        activation="elu",
        inverse=_solver(),
    )


def _multiscale() -> nn.Module:
    return iresnet.MultiscaleResidualFlow(
        (1, 4, 4),
        scales=2,
        blocks=1,
        hidden_channels=(4,),
        logdet="exact",
        factor_out=True,
        fc_blocks=1,
        fc_hidden_features=(8,),
        logit_alpha=0.05,
        inverse=_solver(),
    )


def _residual_flow_dense() -> nn.Module:
    return iresnet.ResidualFlow(
        3, transforms=2, branch="dense", dense_growth=4, dense_depth=2, inverse=_solver()
    )


def _multiscale_dense() -> nn.Module:
    return iresnet.MultiscaleResidualFlow(
        (1, 4, 4),
        scales=2,
        blocks=1,
        branch="dense",
        dense_growth=4,
        dense_depth=2,
        activation="clipswish",
        logdet="exact",
        fc_blocks=1,
        fc_hidden_features=(8,),
        logit_alpha=0.05,
        inverse=_solver(),
    )


def _classifier() -> nn.Module:
    return iresnet.InvertibleClassifier((1, 4, 4), 3, hidden_channels=4, inverse=_solver())


def _hybrid() -> nn.Module:
    return iresnet.HybridClassifier(
        (1, 4, 4), 3, hidden_channels=4, logdet="exact", logit_alpha=0.05, inverse=_solver()
    )


#: name -> (builder, input shape); every family built from keyword arguments
FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "ResidualFlow": (_residual_flow, (3,)),
    "ResidualFlow-roulette": (_residual_flow_roulette, (3,)),
    "MultiscaleResidualFlow": (_multiscale, (1, 4, 4)),
    "ResidualFlow-dense": (_residual_flow_dense, (3,)),
    "MultiscaleResidualFlow-dense": (_multiscale_dense, (1, 4, 4)),
    "InvertibleClassifier": (_classifier, (1, 4, 4)),
    "HybridClassifier": (_hybrid, (1, 4, 4)),
}


def _invertible(model: nn.Module) -> Transform:
    return model.transform if isinstance(model, iresnet.Flow) else model.trunk


def _outputs(model: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    if isinstance(model, iresnet.Flow):
        return (model.log_prob(x),)
    if isinstance(model, iresnet.HybridClassifier):
        return model(x, return_log_prob=True)
    return (model(x),)


@pytest.fixture(params=list(FAMILIES))
def family(request) -> tuple[str, nn.Module, Tensor]:
    name = request.param
    build, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = build().double()
    x = torch.sigmoid(torch.randn(5, *shape, dtype=torch.float64))  # [0, 1): images and logits
    model.train()
    with torch.no_grad():
        _outputs(model, x)  # data-dependent init (the classifiers' heads too)
    _perturb(model)
    return name, model.eval(), x


def test_family_shapes_and_distribution(family):
    name, model, x = family
    outputs = _outputs(model, x)
    if isinstance(model, iresnet.Flow):
        dist = model()
        assert isinstance(dist, torch.distributions.Distribution)
        assert dist.log_prob(x).shape == (5,) and dist.event_shape == x.shape[1:]
        assert model.sample(2).shape == (2, *x.shape[1:])
    else:
        assert outputs[0].shape == (5, 3)
        assert model.features(x).shape == (5, *model.feature_shape)
    if isinstance(model, iresnet.HybridClassifier):
        assert outputs[1].shape == (5,)


def test_family_inverse(family):
    name, model, x = family
    f = _invertible(model)
    rec, diagnostics = f.inverse_with_diagnostics(f(x)[0])
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-9)
    assert diagnostics and all(d.all_converged for d in diagnostics)


def test_family_logdet_matches_slogdet(family):
    name, model, x = family
    f = _invertible(model)
    if not f.bijective:
        pytest.skip("the classifier pads its input: no density, no log-det")
    with swap_logdets(model, iresnet.ExactLogDet()):
        jac = explicit_jacobian(lambda v: f(v)[0].flatten(1), x)
        torch.testing.assert_close(f(x)[1], torch.linalg.slogdet(jac).logabsdet, rtol=0, atol=1e-8)
        if isinstance(model, iresnet.Flow):  # and the density on top of it
            z = f(x)[0].flatten(1)
            base = -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))
            torch.testing.assert_close(model.log_prob(x), base + f(x)[1], rtol=0, atol=1e-10)


def test_family_gradients_reach_every_parameter(family):
    name, model, x = family
    model.train()
    loss = sum(o.sum() for o in _outputs(model, x))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_family_state_dict_round_trip(family):
    name, model, x = family
    torch.manual_seed(1)  # another initialisation: everything must come from the state dict
    fresh = FAMILIES[name][0]().double()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.manual_seed(2)
    a = _outputs(model, x)
    torch.manual_seed(2)  # the same probes for the estimators
    b = _outputs(fresh, x)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_family_train_and_eval_agree(family):
    name, model, x = family
    _converge(model)
    torch.manual_seed(3)
    a = _outputs(model.eval(), x)
    torch.manual_seed(3)
    b = _outputs(model.train(), x)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "name",
    ["ResidualFlow", "MultiscaleResidualFlow", "HybridClassifier", "MultiscaleResidualFlow-dense"],
)
def test_certified_reconstruction_error_bounds_the_true_error(name):
    """A loose solver (``atol = 1e-3``) leaves visible errors; the certified bound composed
    through the whole inverse (blocks, ActNorms, squeezes, factor-out, the logit map) must
    still lie above the true error of every sample, and not absurdly far."""
    build, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = build().double()
    loose = iresnet.FixedPointInverse(atol=1e-3, rtol=0.0, max_iter=500)
    for m in model.modules():
        if isinstance(m, iresnet.InvertibleResidualBlock):
            m.inverse_solver = loose
    x = torch.sigmoid(torch.randn(16, *shape, dtype=torch.float64))
    model.train()
    with torch.no_grad():
        _outputs(model, x)
    _perturb(model)
    model.eval()
    f = _invertible(model)
    with torch.no_grad():
        y = f(x)[0]
        rec, report = f.inverse_with_diagnostics(y)
    err = (rec - x).flatten(1).norm(dim=1)
    bound = report.error_bound
    assert bound is not None and bound.shape == (16,)
    assert (err <= bound * (1 + 1e-9) + 1e-12).all(), (err / bound).max()
    assert err.max() > 1e-6 and bound.max() < 1.0  # the errors are real, the bound is useful
