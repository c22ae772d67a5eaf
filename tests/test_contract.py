"""The contract, for every transform and every model family, in float64.

A transform maps ``x (B, *event)`` to ``(y, logdet (B,))`` and back; a family is built from
keyword arguments. Each is checked for: output shapes (and ``forward_shape``),
``inverse(forward(x)) == x``, the log-det against ``slogdet`` of the autograd Jacobian, gradients
reaching every parameter, a ``state_dict`` round trip into a freshly built module, and train
mode agreeing with eval mode once the power-iteration vectors have converged. Conditional
transforms and families run the same checks at random contexts (one per sample): the inverse in
``x`` at the given context, the log-det against the Jacobian in ``x`` only.
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


def _conditional_mlp_block() -> Transform:
    g = iresnet.nn.conditional_mlp_branch(3, 2, (12, 12), context_features=(8,), coeff=0.9)
    scale_weights(g.x_path, 3.0)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _conditional_conv_block() -> Transform:
    g = iresnet.nn.conditional_conv_branch(2, 3, (4, 4), context_features=(8,), coeff=0.9)
    return iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _monotone_mlp_block() -> Transform:
    g = mlp_g(3, 12, 0.9)
    scale_weights(g, 3.0)
    return iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _monotone_conv_block() -> Transform:
    g = iresnet.nn.conv_branch(2, (4, 4), activation="elu", coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _monotone_dense_conv_block() -> Transform:
    g = iresnet.nn.dense_branch(2, growth=4, depth=2, conv=True, coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _monotone_cpila_block() -> Transform:
    g = iresnet.nn.conv_branch(2, (4,), activation="cpila", preact=True, coeff=0.9)
    scale_weights(g, 3.0)
    return iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


def _conditional_monotone_block() -> Transform:
    g = iresnet.nn.conditional_mlp_branch(3, 2, (12, 12), context_features=(8,), coeff=0.9)
    scale_weights(g.x_path, 3.0)
    return iresnet.MonotoneBlock(g, logdet=iresnet.ExactLogDet(), inverse=_solver())


#: name -> context size of the conditional transforms (the others take no context)
CONTEXTS = {
    "conditional_block_mlp": 2,
    "conditional_monotone_block": 2,
    "conditional_block_conv": 3,
    "conditional_affine": 2,
    "conditional_affine_image": 3,
    "ResidualFlow-conditional": 2,
    "MultiscaleResidualFlow-conditional": 3,
    "ResidualFlow-monotone-conditional": 2,
}


def _call(module: nn.Module, x: Tensor, c: Tensor | None):
    return module(x) if c is None else module(x, c=c)


def _jacobian(f: Callable[..., Tensor], x: Tensor, c: Tensor | None) -> Tensor:
    """The Jacobian in ``x`` per sample, each sample at its own context."""
    if c is None:
        return explicit_jacobian(f, x)
    return torch.cat(
        [explicit_jacobian(lambda v, i=i: f(v, c[i : i + 1]), x[i : i + 1]) for i in range(len(x))]
    )


#: name -> (builder, event shape, how to draw inputs)
TRANSFORMS: dict[str, tuple[Callable[[], Transform], tuple[int, ...]]] = {
    "residual_block_mlp": (_mlp_block, (3,)),
    "residual_block_conv": (_conv_block, (2, 4, 4)),
    "residual_block_dense_mlp": (_dense_mlp_block, (3,)),
    "residual_block_dense_conv": (_dense_conv_block, (2, 4, 4)),
    "residual_block_clipswish": (_clipswish_conv_block, (2, 4, 4)),
    "monotone_block_mlp": (_monotone_mlp_block, (3,)),
    "monotone_block_conv": (_monotone_conv_block, (2, 4, 4)),
    "monotone_block_dense_conv": (_monotone_dense_conv_block, (2, 4, 4)),
    "monotone_block_cpila": (_monotone_cpila_block, (2, 4, 4)),
    "conditional_monotone_block": (_conditional_monotone_block, (3,)),
    "actnorm_vector": (lambda: iresnet.ActNorm(3), (3,)),
    "actnorm_image": (lambda: iresnet.ActNorm(2), (2, 4, 4)),
    "squeeze": (lambda: iresnet.Squeeze(2), (2, 4, 4)),
    "flatten": (lambda: Flatten((2, 2, 2)), (2, 2, 2)),
    "on_active": (_on_active, (12,)),
    "logit": (lambda: iresnet.Logit(0.05), (3,)),
    "standardize": (lambda: iresnet.Standardize([1.0, -2.0, 0.5], [2.0, 0.5, 3.0]), (3,)),
    "composed": (_composed, (2, 4, 4)),
    "injective_pad": (lambda: InjectivePad(2, 3), (2, 2, 2)),
    "conditional_block_mlp": (_conditional_mlp_block, (3,)),
    "conditional_block_conv": (_conditional_conv_block, (2, 4, 4)),
    "conditional_affine": (lambda: iresnet.transforms.ConditionalAffine(3, 2, (8,)), (3,)),
    "conditional_affine_image": (
        lambda: iresnet.transforms.ConditionalAffine(2, 3, (8,)),
        (2, 4, 4),
    ),
}


def _inputs(name: str, shape: tuple[int, ...], n: int = 4) -> Tensor:
    x = torch.randn(n, *shape, dtype=torch.float64)
    return torch.sigmoid(x) if name == "logit" else x  # the logit map takes [0, 1)


def _perturb(module: nn.Module) -> None:
    """Move ActNorm away from its data-dependent start, so its checks are not trivial; and the
    context networks away from their zero-initialised last layers, so the contexts matter."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "log_scale" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
            elif "context_net" in name or name.startswith("net.") or ".net." in name:
                p.add_(0.5 * torch.randn_like(p))


def _converge(module: nn.Module) -> None:
    """Bring the persistent power-iteration vectors to convergence (what many training steps
    do), so one more training step leaves sigma where eval mode computes it."""
    for m in module.modules():
        if isinstance(m, (iresnet.SpectralLinear, iresnet.SpectralConv2d)):
            m.eval_tol = 1e-15
            m._update_vectors(20_000, 1e-15)


def _contexts(name: str, n: int) -> Tensor | None:
    k = CONTEXTS.get(name)
    return None if k is None else 2.0 * torch.randn(n, k, dtype=torch.float64)


@pytest.fixture(params=list(TRANSFORMS))
def transform(request) -> tuple[str, Transform, Tensor, Tensor | None]:
    name = request.param
    build, shape = TRANSFORMS[name]
    torch.manual_seed(0)
    module = build().double()
    x = _inputs(name, shape)
    c = _contexts(name, x.shape[0])
    module.train()
    with torch.no_grad():
        _call(module, x, c)  # data-dependent init, conv shapes learned
    _perturb(module)
    return name, module.eval(), x, c


def test_transform_shapes_and_inverse(transform):
    name, module, x, c = transform
    assert module.conditional == (c is not None)
    y, logdet = _call(module, x, c)
    assert logdet.shape == (x.shape[0],) and logdet.dtype == torch.float64
    assert tuple(y.shape[1:]) == module.forward_shape(tuple(x.shape[1:]))
    assert module.inverse_shape(tuple(y.shape[1:])) == tuple(x.shape[1:])
    kw = {} if c is None else {"c": c}
    torch.testing.assert_close(module.inverse(y, **kw), x, rtol=0, atol=1e-9)
    rec, diagnostics = module.inverse_with_diagnostics(y, **kw)
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-9)
    assert all(d.all_converged for d in diagnostics)


def test_transform_logdet_matches_slogdet_of_the_jacobian(transform):
    name, module, x, c = transform
    jac = _jacobian(lambda v, ci=None: _call(module, v, ci)[0], x, c)
    if not module.bijective:  # an embedding: the volume term is log sqrt det(J^T J)
        expected = 0.5 * torch.linalg.slogdet(jac.transpose(1, 2) @ jac).logabsdet
    else:
        expected = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(_call(module, x, c)[1], expected, rtol=0, atol=1e-8)


def test_transform_gradients_reach_every_parameter(transform):
    name, module, x, c = transform
    module.train()
    x = x.clone().requires_grad_()
    y, logdet = _call(module, x, c)
    (y.pow(2).sum() - logdet.sum()).backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert x.grad is not None


def test_transform_state_dict_round_trip(transform):
    name, module, x, c = transform
    fresh = TRANSFORMS[name][0]().double()
    fresh.load_state_dict(module.state_dict())
    fresh.eval()
    for a, b in zip(_call(module, x, c), _call(fresh, x, c), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_transform_train_and_eval_agree(transform):
    name, module, x, c = transform
    _converge(module)
    y_eval, l_eval = _call(module.eval(), x, c)
    y_train, l_train = _call(module.train(), x, c)
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
        base="diagonal",
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


def _residual_flow_monotone() -> nn.Module:
    return iresnet.ResidualFlow(
        3,
        transforms=2,
        hidden_features=(8,),
        inverse=_solver(),
        block="monotone",
        standardize=([0.5, 0.0, -1.0], [2.0, 1.0, 0.5]),
    )


def _residual_flow_monotone_conditional() -> nn.Module:
    return iresnet.ResidualFlow(
        3,
        context=2,
        transforms=2,
        hidden_features=(8,),
        context_features=(8,),
        inverse=_solver(),
        block="monotone",
    )


def _multiscale_monotone() -> nn.Module:
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
        block="monotone",
    )


def _classifier() -> nn.Module:
    return iresnet.InvertibleClassifier((1, 4, 4), 3, hidden_channels=4, inverse=_solver())


def _hybrid() -> nn.Module:
    return iresnet.HybridClassifier(
        (1, 4, 4), 3, hidden_channels=4, logdet="exact", logit_alpha=0.05, inverse=_solver()
    )


def _residual_flow_conditional() -> nn.Module:
    return iresnet.ResidualFlow(
        3,
        context=2,
        transforms=2,
        hidden_features=(8,),
        context_features=(8,),
        inverse=_solver(),
        standardize=([0.5, 0.0, -1.0], [2.0, 1.0, 0.5]),
        context_standardize=([1.0, -1.0], [2.0, 0.5]),
    )


def _multiscale_conditional() -> nn.Module:
    return iresnet.MultiscaleResidualFlow(
        (1, 4, 4),
        context=3,
        scales=2,
        blocks=1,
        hidden_channels=(4,),
        logdet="exact",
        factor_out=True,
        fc_blocks=1,
        fc_hidden_features=(8,),
        logit_alpha=0.05,
        inverse=_solver(),
        context_features=(8,),
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
    "ResidualFlow-conditional": (_residual_flow_conditional, (3,)),
    "MultiscaleResidualFlow-conditional": (_multiscale_conditional, (1, 4, 4)),
    "ResidualFlow-monotone": (_residual_flow_monotone, (3,)),
    "ResidualFlow-monotone-conditional": (_residual_flow_monotone_conditional, (3,)),
    "MultiscaleResidualFlow-monotone": (_multiscale_monotone, (1, 4, 4)),
}


def _invertible(model: nn.Module) -> Transform:
    return model.transform if isinstance(model, iresnet.Flow) else model.trunk


def _outputs(model: nn.Module, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
    if isinstance(model, iresnet.Flow):
        return (model.log_prob(x, c),)
    if isinstance(model, iresnet.HybridClassifier):
        return model(x, return_log_prob=True)
    return (model(x),)


@pytest.fixture(params=list(FAMILIES))
def family(request) -> tuple[str, nn.Module, Tensor, Tensor | None]:
    name = request.param
    build, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = build().double()
    x = torch.sigmoid(torch.randn(5, *shape, dtype=torch.float64))  # [0, 1): images and logits
    c = _contexts(name, 5)
    model.train()
    with torch.no_grad():
        _outputs(model, x, c)  # data-dependent init (the classifiers' heads too)
    _perturb(model)
    return name, model.eval(), x, c


def _kw(model: nn.Module, c: Tensor | None) -> dict:
    """The context keyword of the invertible part (the flow's standardised contexts)."""
    if c is None:
        return {}
    return {"c": model.check_context(c, "test")}


def test_family_shapes_and_distribution(family):
    name, model, x, c = family
    outputs = _outputs(model, x, c)
    if isinstance(model, iresnet.Flow):
        dist = model(c)
        assert isinstance(dist, torch.distributions.Distribution)
        assert dist.log_prob(x).shape == (5,) and dist.event_shape == x.shape[1:]
        ctx = None if c is None else c[0]
        assert model.sample(2, c=ctx).shape == (2, *x.shape[1:])
    else:
        assert outputs[0].shape == (5, 3)
        assert model.features(x).shape == (5, *model.feature_shape)
    if isinstance(model, iresnet.HybridClassifier):
        assert outputs[1].shape == (5,)


def test_family_inverse(family):
    name, model, x, c = family
    f = _invertible(model)
    kw = _kw(model, c)
    rec, diagnostics = f.inverse_with_diagnostics(f(x, **kw)[0], **kw)
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-9)
    assert diagnostics and all(d.all_converged for d in diagnostics)


def test_family_logdet_matches_slogdet(family):
    name, model, x, c = family
    f = _invertible(model)
    if not f.bijective:
        pytest.skip("the classifier pads its input: no density, no log-det")
    kw = _kw(model, c)
    cs = kw.get("c")
    with swap_logdets(model, iresnet.ExactLogDet()):
        jac = _jacobian(lambda v, ci=None: _call(f, v, ci)[0].flatten(1), x, cs)
        logdet = f(x, **kw)[1]
        torch.testing.assert_close(logdet, torch.linalg.slogdet(jac).logabsdet, rtol=0, atol=1e-8)
        if isinstance(model, iresnet.Flow):  # and the density on top of it
            prior = model.base()  # N(0, I), or a learned diagonal Gaussian: written out
            u = ((f(x, **kw)[0] - prior.mean) / prior.stddev).flatten(1)
            log_s = prior.stddev.log().sum()
            base = -0.5 * (u.pow(2).sum(1) + u.shape[1] * math.log(2 * math.pi)) - log_s
            torch.testing.assert_close(model.log_prob(x, c), base + logdet, rtol=0, atol=1e-10)


def test_family_gradients_reach_every_parameter(family):
    name, model, x, c = family
    model.train()
    loss = sum(o.sum() for o in _outputs(model, x, c))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_family_state_dict_round_trip(family):
    name, model, x, c = family
    torch.manual_seed(1)  # another initialisation: everything must come from the state dict
    fresh = FAMILIES[name][0]().double()
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    torch.manual_seed(2)
    a = _outputs(model, x, c)
    torch.manual_seed(2)  # the same probes for the estimators
    b = _outputs(fresh, x, c)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_family_train_and_eval_agree(family):
    name, model, x, c = family
    _converge(model)
    torch.manual_seed(3)
    a = _outputs(model.eval(), x, c)
    torch.manual_seed(3)
    b = _outputs(model.train(), x, c)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "name",
    [
        "ResidualFlow",
        "MultiscaleResidualFlow",
        "HybridClassifier",
        "MultiscaleResidualFlow-dense",
        "MultiscaleResidualFlow-monotone",
    ],
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
