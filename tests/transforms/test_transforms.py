"""Transform-specific checks (the shared contract is in ``tests/test_contract.py``)."""

import copy
import warnings

import pytest
import torch

import iresnet
from iresnet.ops import fixed_point_solve
from iresnet.transforms import InjectivePad, InverseReport


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


def test_injective_pad_is_left_invertible():
    pad = InjectivePad(3, 7)
    x = torch.randn(2, 3, 4, 4)
    y, logdet = pad(x)
    assert y.shape == (2, 7, 4, 4) and torch.equal(y[:, 3:], torch.zeros(2, 4, 4, 4))
    assert torch.equal(pad.inverse(y), x) and torch.equal(logdet, torch.zeros(2))
    assert not pad.bijective
    with pytest.raises(ValueError):
        InjectivePad(3, 2)


def test_composed_transform_refuses_modules_outside_the_contract():
    with pytest.raises(TypeError, match="Transform"):
        iresnet.ComposedTransform(iresnet.ActNorm(2), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("method", ["forward", "inverse", "inverse_with_diagnostics"])
def test_composed_transform_names_a_list_input_in_one_line(method):
    """``flow.transform([[0.0, 1.0]])`` was an AttributeError on ``list.shape``."""
    f = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,)).transform
    with pytest.raises(
        TypeError,
        match=rf"ComposedTransform.{method}: expected a torch.Tensor, got list.*as_tensor",
    ):
        getattr(f, method)([[0.0, 1.0]])


def test_composed_transform_diagnostics_come_from_the_call():
    """Each inverse returns the diagnostics of its own solves, in data-to-latent order; nothing
    is left on the modules for a later call to overwrite."""
    g = iresnet.nn.mlp_branch(2, (8,), coeff=0.5)
    blocks = [
        iresnet.InvertibleResidualBlock(g, inverse=iresnet.FixedPointInverse(atol=t, rtol=0.0))
        for t in (1e-3, 1e-9)
    ]
    f = iresnet.ComposedTransform(iresnet.ActNorm(2), *blocks).eval()
    y = torch.randn(8, 2)
    _, diagnostics = f.inverse_with_diagnostics(y)
    assert len(diagnostics) == 2
    assert diagnostics[0].iterations.max() < diagnostics[1].iterations.max()  # atol 1e-3 first
    assert not any("diagnostics" in name for name in vars(blocks[0]))


def test_eval_mode_inverse_of_a_fresh_convolutional_block():
    """A block whose convolutions have not seen an input yet still inverts in eval mode, with
    the certified a-priori bound in its diagnostics."""
    g = iresnet.nn.conv_branch(2, (4,), coeff=0.5)
    block = iresnet.InvertibleResidualBlock(g).eval()
    x, (diag,) = block.inverse_with_diagnostics(torch.randn(3, 2, 4, 4))
    assert x.shape == (3, 2, 4, 4) and diag.all_converged
    assert diag.lipschitz is not None and diag.lipschitz <= 0.25 * (1 + 1e-5)


@pytest.mark.parametrize("anderson", [0, 5])
def test_float32_certified_error_is_never_below_the_true_error(anderson):
    """With atol below float32's resolution the solver's exact-arithmetic bound was 0 for half
    the samples while their true error was 2e-7; the block's bound evaluates the residual in
    float64, so it holds for the computed iterate."""
    torch.manual_seed(0)
    solver = iresnet.FixedPointInverse(atol=1e-8, rtol=0.0, max_iter=200, anderson=anderson)
    flow = iresnet.ResidualFlow(
        8, transforms=1, hidden_features=(16,), coeff=0.9, inverse=solver
    ).eval()
    z = torch.randn(500, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rounding floor is reached, and said
        x, report = flow.inverse_with_diagnostics(z)
    exact = copy.deepcopy(flow).double()
    exact.transform[1].inverse_solver = iresnet.FixedPointInverse(
        atol=1e-15, rtol=0.0, max_iter=5000
    )
    x_star, _ = exact.inverse_with_diagnostics(z.double())
    err = (x.double() - x_star).norm(dim=1)
    assert (err <= report.error_bound).all()
    assert report.error_bound.max() < 1e-5  # and useful


def test_a_loaded_actnorm_compiles_without_a_break_once_its_flag_is_read():
    """Loading a state dict re-arms ActNorm's one read of its ``initialized`` buffer, which in
    a compiled forward is a graph break (a resumed ``train.compile=true`` run printed ~30
    lines of dynamo's log): ``is_initialized()`` reads it eagerly, as the trainer now does."""
    layer = iresnet.ActNorm(2).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    layer(x)  # initialises
    copy_ = iresnet.ActNorm(2).double()
    copy_.load_state_dict(layer.state_dict())
    with pytest.raises(Exception, match="(?i)graph break|item|data-dependent"):
        torch.compile(copy_, backend="aot_eager", fullgraph=True)(x)
    torch._dynamo.reset()
    copy_.load_state_dict(layer.state_dict())
    assert copy_.is_initialized()
    y, logdet = torch.compile(copy_, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(y, layer(x)[0])
    fresh = iresnet.ActNorm(2)
    assert not fresh.is_initialized()  # not initialised: read, and it stays to be initialised


def test_an_inverse_report_counts_its_solves_and_iterations_in_words():
    """One solve of one iteration read "1 solves, at most 1 iterations"."""
    y = torch.ones(2, 3, dtype=torch.float64)
    _, once = fixed_point_solve(lambda x: torch.zeros_like(x), y, max_iter=1)
    _, more = fixed_point_solve(lambda x: 0.5 * x, y, lipschitz=0.5)
    assert InverseReport([once]).summary().startswith("1 solve, at most 1 iteration, ")
    assert InverseReport([once, more]).summary().startswith("2 solves, at most ")
    assert InverseReport([]).summary().startswith("0 solves, at most 0 iterations, ")
