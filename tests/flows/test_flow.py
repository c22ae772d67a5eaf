"""Flow: log_prob against the whole flow's explicit Jacobian, the distribution view, sampling,
bad input, certificate."""

import math

import pytest
import torch
from torch import nn

import iresnet
from tests.helpers import explicit_jacobian, mlp_flow


def test_log_prob_equals_base_plus_exact_logdet_of_whole_flow():
    inner = mlp_flow(dim=3, n_blocks=3)
    flow = iresnet.Flow([iresnet.ActNorm(3).double(), *inner.transform], event_shape=(3,)).eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    z, logdet = flow.transform(x)
    jac = explicit_jacobian(lambda v: flow.transform(v)[0], x)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jac).logabsdet, rtol=0, atol=1e-8)
    base = -0.5 * (z.pow(2).sum(1) + 3 * math.log(2 * math.pi))
    torch.testing.assert_close(flow.log_prob(x), base + logdet, rtol=0, atol=1e-12)


def test_calling_the_flow_gives_a_torch_distribution():
    flow = mlp_flow(dim=2, n_blocks=2).eval()
    assert flow.sample(7).shape == (7, 2)
    dist = flow()
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.event_shape == (2,) and dist.has_rsample
    s = dist.sample((3, 4))
    assert s.shape == (3, 4, 2)
    torch.testing.assert_close(dist.log_prob(s), flow.log_prob(s.reshape(-1, 2)).reshape(3, 4))
    x, logp = dist.rsample_and_log_prob((5,))
    assert x.shape == (5, 2) and logp.shape == (5,)
    torch.testing.assert_close(logp, flow.log_prob(x))


def test_rsample_is_differentiable_through_the_inverse():
    flow = mlp_flow(dim=2, n_blocks=2).eval()
    x = flow().rsample((6,))
    x.pow(2).sum().backward()
    grads = [p.grad for p in flow.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_base_distribution_is_a_saved_module_that_follows_the_dtype():
    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,))
    assert {"base.loc", "base.scale"} <= set(flow.state_dict())
    assert flow.double().base().mean.dtype == torch.float64


def test_sample_needs_no_forward_first():
    flow = iresnet.Flow([iresnet.Squeeze(2)], event_shape=(1, 4, 4))
    assert flow.latent_shape == (4, 2, 2)
    assert flow.sample(2).shape == (2, 1, 4, 4)


def test_temperature_scales_the_base_and_is_refused_for_other_bases():
    flow = iresnet.Flow([iresnet.Squeeze(2)], event_shape=(1, 4, 4))
    torch.manual_seed(0)
    cold = flow.sample_latent(20_000, temperature=0.1)
    assert abs(float(cold.std()) - 0.1) < 0.005  # SE of a std from 320k draws: ~1e-4

    class UniformBase(nn.Module):
        def forward(self):
            return torch.distributions.Independent(
                torch.distributions.Uniform(torch.zeros(2), torch.ones(2)), 1
            )

    uniform = iresnet.Flow([iresnet.ActNorm(2)], event_shape=(2,), base=UniformBase())
    with pytest.raises(ValueError, match="Gaussian base"):
        uniform.sample(3, temperature=0.5)


def test_a_sample_shape_given_to_the_module_points_to_the_distribution():
    flow = iresnet.Flow([iresnet.ActNorm(2)], event_shape=(2,))
    with pytest.raises(ValueError, match=r"flow\.sample\(3\).*use flow\(\)\.sample\(\(3,\)\)"):
        flow.sample((3,))
    assert flow().sample((3,)).shape == (3, 2)  # the zuko way
    with pytest.raises(ValueError, match="positive integer, got 0$"):
        flow.sample(0)


@pytest.mark.parametrize("method", ["log_prob", "inverse"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(method, bad):
    flow = mlp_flow(dim=2, n_blocks=1).eval()
    x = torch.randn(5, 2, dtype=torch.float64)
    x[3, 1] = bad
    with pytest.raises(ValueError, match=rf"{method}.*(NaN|Inf).*index 3"):
        getattr(flow, method)(x)


def test_wrong_shape_names_expected_shape():
    flow = mlp_flow(dim=2, n_blocks=1).eval()
    with pytest.raises(
        ValueError, match=r"expected a tensor of shape \(\*batch, 2\), got \(4, 3\)"
    ):
        flow.log_prob(torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"latent of shape \(batch, 2\)"):
        flow.inverse(torch.randn(4, 3, dtype=torch.float64))


def test_certificate_reports_each_block():
    flow = mlp_flow(dim=2, n_blocks=3, coeff=0.7).eval()
    cert = iresnet.certify(flow)
    assert len(cert.blocks) == 3 and cert.invertible
    assert all(0 < b.bound <= 0.7**3 * (1 + 1e-6) for b in cert.blocks)
    assert "guaranteed invertible" in str(cert)
    # Exact: the product of each layer's SVD norm.
    g = flow.transform[0].g
    prod = 1.0
    for m in g:
        if isinstance(m, iresnet.SpectralLinear):
            prod *= torch.linalg.matrix_norm(m.normalized_weight().detach(), ord=2).item()
    assert cert.blocks[0].bound == pytest.approx(prod, rel=1e-6)
    # one maximum under the Python name and the JSON name
    largest = max(b.bound for b in cert.blocks)
    assert cert.max_bound == cert.max_lipschitz == cert.to_dict()["max_lipschitz"] == largest


def test_certificate_refuses_unconstrained_blocks():
    g = nn.Sequential(nn.Linear(2, 8), nn.ELU(), nn.Linear(8, 2))
    with torch.no_grad():
        g[0].weight.mul_(10)
    cert = iresnet.certify(iresnet.Flow([iresnet.InvertibleResidualBlock(g)], event_shape=(2,)))
    assert not cert.invertible and cert.max_bound > 1
    assert "NOT guaranteed" in str(cert)


def test_mistakes_are_named_in_one_line_with_the_fix():
    """The issue's cases: float64 data into a float32 flow failed 12 frames down in torch
    ("mat1 and mat2 must have the same dtype"); 3 features into a 2-D flow failed with "mat1
    and mat2 shapes cannot be multiplied"; integers, bad sample sizes and temperatures."""
    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,)).eval()
    with pytest.raises(
        iresnet.DataError,
        match=r"got float64, the module is float32: call x\.float\(\) or module\.double\(\)",
    ):
        flow.log_prob(torch.zeros(4, 2, dtype=torch.float64))
    # a dtype without a short method is named once, without a stray "()" (try-out 17)
    with pytest.raises(iresnet.DataError) as refused:
        flow.log_prob(torch.zeros(4, 2, dtype=torch.bfloat16))
    assert str(refused.value).endswith("call x.float() or module.to(torch.bfloat16)")
    with pytest.raises(iresnet.DataError, match=r"shape \(\*batch, 2\), got \(4, 3\)"):
        flow.log_prob(torch.zeros(4, 3))
    with pytest.raises(iresnet.DataError, match="integer tensor"):
        flow.log_prob(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(iresnet.DataError, match="got float64"):
        flow.inverse(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(iresnet.DataError, match="got float64"):
        flow.transform[1](torch.zeros(4, 2, dtype=torch.float64))  # a block on its own
    with pytest.raises(
        TypeError, match="expected a torch.Tensor, got list; convert it with torch.as_tensor"
    ):
        flow.log_prob([[0.0, 0.0]])
    with pytest.raises(
        TypeError, match="expected a torch.Tensor, got list; convert it with torch.as_tensor"
    ):
        flow.inverse([[0.0, 0.0]])  # was an AttributeError from the shape check
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            flow.sample(bad)
    for bad in (float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            flow.sample(3, temperature=bad)
    # what is fine stays fine: image levels into a dequantising flow, float64 into Standardize
    images = iresnet.MultiscaleResidualFlow((1, 4, 4), blocks=1, hidden_channels=(4,), levels=4)
    assert images.log_prob(torch.randint(0, 4, (2, 1, 4, 4), dtype=torch.uint8)).shape == (2,)
    data = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,), standardize=([0, 0], [1, 1]))
    assert data.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float32


def test_an_empty_batch_is_refused_and_leaves_the_model_intact():
    """An empty first batch used to initialise ActNorm to NaN before failing, and every later
    log-density was NaN."""
    flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(16,))
    with pytest.raises(iresnet.DataError, match="empty batch"):
        flow.log_prob(torch.zeros(0, 2))
    assert torch.isfinite(flow.log_prob(torch.randn(4, 2))).all()
    assert flow().sample((0,)).shape == (0, 2)
    with pytest.raises(iresnet.DataError, match="empty batch"):
        iresnet.ActNorm(2).initialize(torch.zeros(0, 2))


def test_a_float64_state_dict_loads_into_a_float32_convolutional_model():
    torch.manual_seed(0)
    a = iresnet.MultiscaleResidualFlow((1, 4, 4), blocks=1, hidden_channels=(4,)).double()
    a.log_prob(torch.rand(2, 1, 4, 4, dtype=torch.float64))  # the convolutions learn their shape
    b = iresnet.MultiscaleResidualFlow((1, 4, 4), blocks=1, hidden_channels=(4,))
    b.load_state_dict(a.state_dict())
    assert b.eval().log_prob(torch.rand(2, 1, 4, 4)).dtype == torch.float32


@pytest.mark.parametrize(
    "build",
    [
        lambda: iresnet.ResidualFlow(2, hidden_features=(-4,)),
        lambda: iresnet.ResidualFlow(2, hidden_features=(0,)),
        lambda: iresnet.ResidualFlow(2, standardize=([0] * 3, [1] * 3)),
        lambda: iresnet.MultiscaleResidualFlow((1, 4, 4), logit_alpha=-0.1),
        lambda: iresnet.MultiscaleResidualFlow((1, 4, 4), hidden_channels=(0,)),
        lambda: iresnet.InvertibleClassifier((1, 8, 8), 0),
        lambda: iresnet.InvertibleClassifier((1, 8, 8), -2),
        lambda: iresnet.InvertibleClassifier((1, 8, 8), 10, hidden_channels=0),
        lambda: iresnet.HybridClassifier((1, 8, 8), 10, blocks=0),
    ],
)
def test_bad_family_arguments_are_refused_when_built(build):
    with pytest.raises(ValueError):
        build()


def test_classifiers_name_a_wrong_image_shape():
    model = iresnet.InvertibleClassifier((1, 8, 8), 10, hidden_channels=4)
    for bad in (torch.rand(2, 2, 8, 8), torch.rand(2, 1, 16, 16)):
        with pytest.raises(iresnet.DataError, match=r"shape \(\*batch, 1, 8, 8\)"):
            model(bad)


def test_swap_logdets_takes_a_name_and_the_contract_checks_log_det_shapes():
    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,), logdet="roulette")
    with iresnet.swap_logdets(flow, "exact"):
        assert isinstance(flow.transform[1].logdet_estimator, iresnet.ExactLogDet)

    class Wrong(iresnet.Transform):
        def forward(self, x):
            return x, x.new_zeros(x.shape[0], 1)

        def inverse(self, y):
            return y

    with pytest.raises(ValueError, match=r"Wrong broke the transform contract.*\(3, 1\)"):
        iresnet.ComposedTransform(Wrong())(torch.zeros(3, 2))


def test_the_name_exact_above_256_dimensions_says_which_estimator_to_pass():
    """``swap_logdets(model, "exact")`` on a 300-dimensional block refused with "raise
    max_dim", which a name cannot do; the message now gives the call that works, and it does."""
    flow = iresnet.ResidualFlow(300, transforms=1, hidden_features=(4,), logdet="series")
    x = torch.randn(2, 300)
    with iresnet.swap_logdets(flow, "exact"), pytest.raises(ValueError) as refused:
        flow().log_prob(x)
    assert r"ExactLogDet(max_dim=300)" in str(refused.value)
    with iresnet.swap_logdets(flow, iresnet.ExactLogDet(max_dim=300)), torch.no_grad():
        assert torch.isfinite(flow().log_prob(x)).all()


def test_a_flow_without_event_shape_learns_it_from_its_first_layer_and_checks_every_call():
    """The issue's case: 3 features into a 2-D flow built without ``event_shape`` failed deep
    in torch ("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x32)")."""
    g = iresnet.nn.mlp_branch(2, (32,), coeff=0.9)
    flow = iresnet.Flow([iresnet.ActNorm(2), iresnet.InvertibleResidualBlock(g)])
    assert flow.event_shape == (2,)
    with pytest.raises(iresnet.DataError, match=r"shape \(\*batch, 2\), got \(4, 3\)"):
        flow.log_prob(torch.randn(4, 3))
    conv = iresnet.InvertibleResidualBlock(iresnet.nn.conv_branch(2, (4,)))
    with pytest.raises(ValueError, match="pass event_shape"):
        iresnet.Flow([conv])


def test_the_pieces_name_mistakes_too():
    """Blocks, layers, ActNorm, Standardize, the estimators and the solver on their own."""
    block = iresnet.InvertibleResidualBlock(iresnet.nn.mlp_branch(2, (8,)))
    with pytest.raises(iresnet.DataError, match="SpectralLinear: expected 2 input features"):
        block(torch.zeros(4, 3))
    with pytest.raises(iresnet.DataError, match="integer tensor"):
        iresnet.RussianRouletteLogDet()(block.g, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(iresnet.DataError, match="got float64"):
        iresnet.fixed_point_solve(block.g, torch.zeros(4, 2, dtype=torch.float64))
    act = iresnet.ActNorm(3)
    act(torch.randn(4, 3))
    with pytest.raises(iresnet.DataError, match="ActNorm: expected 3 channels"):
        act(torch.randn(4, 2))
    with pytest.raises(iresnet.DataError, match="empty batch"):
        act(torch.zeros(0, 3))
    with pytest.raises(iresnet.DataError, match="Standardize: expected 2 features"):
        iresnet.Standardize([0.0, 0.0], [1.0, 1.0])(torch.zeros(4, 3))
    model = iresnet.InvertibleClassifier((1, 8, 8), 10, hidden_channels=4)
    with pytest.raises(iresnet.DataError, match="invert_features"):
        model.invert_features(torch.zeros(2, 3, 4, 4))


def test_a_negative_sample_shape_is_one_value_error():
    """``flow().sample((-1,))`` was torch's "negative dimension" RuntimeError."""
    flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,))
    for bad in ((-1,), (2, -3), (1.5,)):
        with pytest.raises(ValueError, match="sample_shape must hold non-negative integers"):
            flow().sample(bad)
    assert flow().sample((0,)).shape == (0, 2)


def test_a_wrong_single_event_is_reported_with_its_own_shape():
    """``log_prob(torch.zeros(5))`` on a 2-D flow said it got ``(1, 5)``: the shape of what the
    flow made of the input, not of the input."""
    dist = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,))()
    with pytest.raises(iresnet.DataError, match=r"shape \(\*batch, 2\), got \(5,\)"):
        dist.log_prob(torch.zeros(5))
    assert dist.log_prob(torch.zeros(2)).shape == ()  # one event of the right shape still works


def test_a_0d_tensor_temperature_is_a_number_and_the_context_hint_is_for_conditional_flows():
    """``temperature=torch.tensor(0.7)`` samples as ``0.7`` does (it was refused with "pass the
    context by name" even on an unconditional flow); a tensor of another shape is refused, with
    the context hint only where the flow takes a context."""
    plain = iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,)).eval()
    torch.manual_seed(0)
    a = plain.sample(3, temperature=torch.tensor(0.7))
    torch.manual_seed(0)
    assert torch.equal(a, plain.sample(3, temperature=0.7))
    torch.manual_seed(0)
    b = plain.sample_latent(3, torch.tensor(0.7))
    torch.manual_seed(0)
    assert torch.equal(b, plain.sample_latent(3, 0.7))
    with pytest.raises(TypeError, match=r"temperature must be a number.*shape \(3, 1\)") as info:
        plain.sample(3, torch.randn(3, 1))
    assert "context" not in str(info.value)
    with pytest.raises(ValueError, match="temperature"):
        plain.sample(3, temperature=torch.tensor(-1.0))
    conditional = iresnet.ResidualFlow(2, transforms=1, hidden_features=(8,), context=1).eval()
    torch.manual_seed(0)
    assert conditional.sample(3, torch.tensor(0.7), c=torch.zeros(1)).shape == (3, 2)
    with pytest.raises(TypeError, match=r"pass the context by name, flow.sample\(n, c=c\)"):
        conditional.sample(3, torch.randn(3, 1))


def test_validate_false_still_checks_the_levels_of_a_dequantisation():
    """``validate=False`` drops the flow's NaN/Inf check only: a ``Dequantize`` checks its
    levels on every eager call (skipped only where ``torch.compile`` traces the step), so a
    [0, 1] image or out-of-range levels are refused, not scored."""
    flow = iresnet.Flow([iresnet.Dequantize(4), iresnet.ActNorm(2)], event_shape=(2,))
    flow.validate = False
    for bad, says in [([[0.0, 7.0]], "levels must lie in 0..3"), ([[0.5, 0.25]], "non-integer")]:
        with pytest.raises(iresnet.DataError, match=says):
            flow.log_prob(torch.tensor(bad))


def test_a_convolutional_flows_latents_and_inverses_come_back_contiguous():
    """The blocks work channels-last (``conv_layout``); the chain hands back the default
    layout: latents and inverses ``.view`` and save as before."""
    torch.manual_seed(0)
    flow = iresnet.MultiscaleResidualFlow(
        (1, 8, 8), scales=2, blocks=1, hidden_channels=(8,), logdet="exact", factor_out=False
    ).eval()
    x = torch.rand(3, 1, 8, 8)
    z, _ = flow.transform(x)
    assert z.is_contiguous() and z.view(3, -1).shape == (3, 64)
    back = flow.transform.inverse(z)
    assert back.is_contiguous()
    torch.testing.assert_close(back, x, rtol=0, atol=1e-4)


@pytest.mark.parametrize("base", [iresnet.StandardNormal, iresnet.DiagonalNormal])
@pytest.mark.parametrize("shape", [3, (-2,), (0,), (), (True,), "ab"])
def test_a_base_refuses_a_shape_that_is_not_positive_ints(base, shape):
    """``DiagonalNormal(3)`` raised a bare TypeError and ``(-2,)`` torch's own message
    (try-out 8, F7); both bases say what they need."""
    with pytest.raises(ValueError, match="event shape of positive ints"):
        base(shape)
    assert base(torch.Size([2, 3])).shape == base((2, 3)).shape == (2, 3)
