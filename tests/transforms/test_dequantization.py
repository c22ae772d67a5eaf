"""Variational dequantisation: q(v | x) is a density on the cell (change of variables against
the autograd Jacobian, float64), it starts as uniform, training it tightens the ELBO, and the
app reports the uniform bound of the same model beside the variational one."""

from __future__ import annotations

import math

import pytest
import torch

import iresnet
from iresnet.transforms import VariationalDequantize, uniform_dequantization


def _perturbed(shape=(2, 2, 2), levels=5, steps=3) -> VariationalDequantize:
    torch.manual_seed(0)
    t = VariationalDequantize(levels, shape, hidden=6, steps=steps).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.1 * torch.randn_like(p))  # leave the identity start
    return t


def test_log_q_is_the_change_of_variables_of_the_noise_map():
    t = _perturbed()
    x = torch.randint(0, 5, (3, 2, 2, 2)).double()
    w = torch.rand(3, 2, 2, 2, dtype=torch.float64).clamp(0.01, 0.99)
    v, log_q = t.noise_from_uniform(x, w)
    assert bool(((v > 0) & (v < 1)).all())
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda wi, i=i: t.noise_from_uniform(x[i : i + 1], wi[None])[0][0], w[i]
        ).reshape(8, 8)
        expected = -torch.linalg.slogdet(jac).logabsdet  # w ~ U(0,1): log q = -log|det|
        torch.testing.assert_close(log_q[i], expected, rtol=0, atol=1e-10)


def test_it_starts_as_uniform_dequantisation_and_inverts_by_rounding():
    t = VariationalDequantize(4, (1, 3, 3), hidden=4).double()
    x = torch.randint(0, 4, (6, 1, 3, 3))
    u, logdet = t(x)
    torch.testing.assert_close(logdet, torch.full((6,), -9 * math.log(4), dtype=torch.float64))
    assert torch.equal(t.inverse(u), x.double())
    assert bool(((u * 4 >= x) & (u * 4 < x + 1)).all())  # u stays in its cell
    with uniform_dequantization(t):
        assert t(x)[1].allclose(logdet)
    with pytest.raises(iresnet.DataError, match="levels must lie"):
        t(torch.full((1, 1, 3, 3), 4))
    with pytest.raises(ValueError, match="image shape"):
        VariationalDequantize(4, (9,))


def test_training_q_tightens_the_elbo_of_a_fixed_flow():
    """With the flow fixed, the best q is p restricted to the cell; a few Adam steps on q alone
    must raise the mean ELBO above the uniform bound (many samples; 4 standard errors)."""
    torch.manual_seed(1)
    flow = iresnet.MultiscaleResidualFlow(
        (1, 2, 2),
        scales=1,
        blocks=1,
        hidden_channels=(4,),
        levels=4,
        logit_alpha=0.05,
        logdet="exact",
        dequantization="variational",
        dequant_hidden=8,
        dequant_steps=2,
    ).double()
    x = torch.zeros(256, 1, 2, 2, dtype=torch.long)  # the corner cell: p varies most there
    q = flow.transform[0]
    for p in flow.parameters():
        p.requires_grad_(False)
    for p in q.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(q.parameters(), lr=3e-2)
    for _ in range(60):
        opt.zero_grad()
        (-flow.log_prob(x).mean()).backward()
        opt.step()
    with torch.no_grad():
        elbo = torch.cat([flow.log_prob(x) for _ in range(8)])
        with uniform_dequantization(flow):
            uniform = torch.cat([flow.log_prob(x) for _ in range(8)])
    diff = elbo.mean() - uniform.mean()
    se = math.sqrt(elbo.var() / elbo.numel() + uniform.var() / uniform.numel())
    assert diff > 4 * se, (float(diff), se)


def test_variational_flow_reports_both_bounds(tmp_path):
    pytest.importorskip("sklearn")
    from iresnet.app.config import Config
    from iresnet.app.runs import load_run
    from iresnet.app.training import train
    from tests.app.test_image_runs import TRAIN

    cfg = Config().override(
        [
            *TRAIN,
            "train.steps=4",
            "train.eval_every=4",
            "train.checkpoint_every=4",
            "model.dequantization=variational",
            "model.dequant_hidden=4",
            "model.dequant_steps=2",
        ]
    )
    train(cfg, tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run")
    out = trained.task.full_evaluation(trained.model, n_inverse=8, n_test=32)
    assert out["dequantization"] == "variational"
    assert math.isfinite(out["test_bpd"]) and math.isfinite(out["test_bpd_uniform"])
    assert out["test_bpd_uniform_se"] > 0
