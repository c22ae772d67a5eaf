"""Multi-scale image flows: shapes, exact inverses, log-dets against the whole flow's Jacobian,
sampling, certificates, a trained digits model's inverse and its estimated log-dets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import iresnet
from iresnet.config import Config, ModelConfig
from iresnet.errors import ConfigError
from iresnet.image_models import build_image_flow, image_presets, squeezes_first
from iresnet.layers import InvertibleResidualBlock, OnActive
from iresnet.logdet import LogDetEstimator, PowerSeriesLogDet, RussianRouletteLogDet
from iresnet.preprocess import dequantize_mid, logit_transform
from iresnet.train.tasks import swap_logdets

from .conftest import scale_weights

KINDS = ("iresnet-image", "resflow-image")
SHAPES = ((1, 8, 8), (3, 4, 4))
VARIANTS = ((False, 0), (True, 0), (False, 2), (True, 2))  # (factor_out, fc_blocks)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(kind: str, factor_out: bool = False, fc_blocks: int = 0, **extra) -> ModelConfig:
    act = "elu" if kind == "iresnet-image" else "lipswish"
    fields = dict(kind=kind, n_scales=2, n_blocks=1, hidden=4, activation=act, logdet="exact",
                  factor_out=factor_out, fc_blocks=fc_blocks, fc_hidden=8, inverse_atol=1e-13,
                  inverse_rtol=0.0, inverse_max_iter=500)
    fields.update(extra)
    return ModelConfig(**fields)


def built(cfg: ModelConfig, shape, seed: int = 0) -> iresnet.Flow:
    """A float64 flow whose ActNorms were initialised on a batch, in eval mode."""
    torch.manual_seed(seed)
    flow = build_image_flow(cfg, shape).double()
    flow.train()
    with torch.no_grad():
        flow(torch.randn(16, *shape, dtype=torch.float64))
    return flow.eval()


class _NoLogDet(LogDetEstimator):
    """``g(x)`` and a zero log-det: for differentiating the map alone."""

    def __call__(self, g, x: Tensor) -> tuple[Tensor, Tensor]:
        return g(x), x.new_zeros(x.shape[0])


estimators = swap_logdets  # every residual block gets the same estimator for a while


def whole_flow_logdet(flow: iresnet.Flow, x: Tensor) -> Tensor:
    """``log|det dz/dx|`` per sample from the autograd Jacobian of the whole map ``x -> z``."""
    out = []
    with estimators(flow, _NoLogDet()):
        for xi in x:
            jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0].flatten(), xi)
            out.append(torch.linalg.slogdet(jac.reshape(jac.shape[0], -1)).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factor_out,fc_blocks", VARIANTS)
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_inverse_and_exact_logdet(kind, factor_out, fc_blocks, shape):
    flow = built(tiny_cfg(kind, factor_out, fc_blocks), shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    z, logdet = flow(x)
    d = math.prod(shape)
    if factor_out or fc_blocks:
        assert z.shape == (2, d)
    else:
        c, h, w = shape
        k = 2 if squeezes_first(kind, shape, 2) else 1  # squeezes: one between the 2 scales
        assert z.shape == (2, c * 4**k, h // 2**k, w // 2**k)
    assert logdet.shape == (2,)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet, whole_flow_logdet(flow, x), rtol=0, atol=1e-8)


def test_structure_follows_the_papers():
    cfg = ModelConfig(kind="iresnet-image", n_scales=3, n_blocks=2, hidden=8, factor_out=True,
                      activation="elu")
    # CIFAR-sized input: i-ResNet squeezes first (room for 4x4 at the last scale); MNIST: no.
    assert squeezes_first("iresnet-image", (3, 32, 32), 3)
    assert not squeezes_first("iresnet-image", (1, 28, 28), 3)
    assert not squeezes_first("resflow-image", (3, 32, 32), 3)
    flow = build_image_flow(cfg, (3, 32, 32))
    assert isinstance(flow.transforms[0], iresnet.Squeeze)
    wrapped = [t for t in flow.transforms if isinstance(t, OnActive)]
    # 12x16x16 -> squeeze 48x8x8 -> factor-out 24x8x8 -> squeeze 96x4x4 -> factor-out 48x4x4.
    assert {t.in_shape for t in wrapped} >= {(24, 8, 8), (48, 4, 4)}
    blocks = [m for m in flow.modules() if isinstance(m, InvertibleResidualBlock)]
    assert len(blocks) == 6
    assert not isinstance(blocks[0].g[0], nn.ELU) and isinstance(blocks[1].g[0], nn.ELU)  # preact
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_image_flow(ModelConfig(kind="resflow-image", n_scales=4), (1, 28, 28))


def test_init_squeeze_for_either_kind():
    """``model.init_squeeze`` squeezes first even for the Residual Flow kind (which never does by
    default); the flow stays exactly invertible with the whole-Jacobian log-det, and an input
    too small for all the squeezes is refused."""
    cfg = tiny_cfg("resflow-image", init_squeeze=True)
    assert squeezes_first("resflow-image", (1, 8, 8), 2, init_squeeze=True)
    flow = built(cfg, (1, 8, 8))
    assert isinstance(flow.transforms[0], iresnet.Squeeze)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    z, logdet = flow(x)
    assert z.shape == (2, 16, 2, 2)  # 1x8x8 -> 4x4x4 -> 16x2x2
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet, whole_flow_logdet(flow, x), rtol=0, atol=1e-8)
    with pytest.raises(ConfigError, match="one of them model.init_squeeze"):
        build_image_flow(tiny_cfg("resflow-image", init_squeeze=True), (1, 6, 6))


@pytest.mark.parametrize("kind,factor_out,fc_blocks,shape,latent", [
    ("resflow-image", True, 1, (1, 8, 8), (64,)),
    ("iresnet-image", False, 0, (3, 4, 4), (12, 2, 2)),
])
def test_sample_on_a_fresh_model(kind, factor_out, fc_blocks, shape, latent):
    cfg = tiny_cfg(kind, factor_out, fc_blocks, logdet="roulette", inverse_atol=1e-5)
    flow = build_image_flow(cfg, shape)  # float32, never called: ActNorms are the identity
    assert flow.sample(3).shape == (3, *shape)  # the latent shape comes from one probe forward
    assert flow.latent_shape == latent
    assert torch.isfinite(flow.sample(2, temperature=0.5)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_certificate(kind):
    flow = built(tiny_cfg(kind, True, 1), (1, 8, 8))
    cert = iresnet.certify(flow)
    assert cert.invertible and len(cert.blocks) == 3 and cert.max_bound <= 0.9 + 1e-6
    loose = built(tiny_cfg(kind, True, 1, constrained=False), (1, 8, 8))
    scale_weights(loose, 20.0)
    assert not iresnet.certify(loose).invertible


# ---------------------------------------------------------------- a trained tiny digits model
TRAIN = [
    "model.kind=resflow-image", "model.n_scales=2", "model.n_blocks=1", "model.hidden=8",
    "model.factor_out=true", "model.fc_blocks=1", "model.fc_hidden=16", "model.logdet=series",
    "model.n_terms=3", "data.name=digits", "train.steps=30", "train.batch_size=64",
    "train.eval_every=30", "train.checkpoint_every=30", "train.log_every=10",
    "train.warmup_steps=5", "train.eval_batches=1", "train.lr=3e-3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("sklearn")
    from iresnet.train.evaluate import load_run
    from iresnet.train.loop import train

    run_dir = tmp_path_factory.mktemp("digits") / "run"
    result = train(Config().override(TRAIN), run_dir, progress=False)
    assert result.stopped == "finished"
    return load_run(run_dir)


def test_run_folder_has_the_pictures(trained):
    for name in ("samples.png", "samples_t0.7.png", "reconstructions.png", "learning_curve.png"):
        path = trained.run.path / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_trained_model_inverts_test_images(trained):
    model, task = trained.model, trained.task
    assert next(model.parameters()).dtype == torch.float32
    out = task.inverse_check(model, 256)
    assert out["inverse_converged"] and out["inverse_iterations_max"] > 0
    assert out["inverse_max_error"] < 1e-4
    assert iresnet.certify(model).invertible


def test_exact_and_estimated_logdet_agree_within_standard_error(trained):
    model = trained.model.double()
    task = trained.task
    x = task.batch("test", torch.arange(8))
    u = dequantize_mid(x, trained.data.n_levels).double()
    z = logit_transform(u, trained.cfg.data.logit_alpha)[0]
    with torch.no_grad(), estimators(model, iresnet.ExactLogDet(max_dim=64)):
        exact = model(z)[1].sum()
    torch.manual_seed(1)
    for est in (RussianRouletteLogDet(n_exact=2, neumann_gradient=False, memory_efficient=False),
                PowerSeriesLogDet(n_terms=10)):
        with torch.no_grad(), estimators(model, est):  # independent draws: probes (and N)
            draws = torch.stack([model(z)[1].sum() for _ in range(200)])
        se = draws.std() / math.sqrt(draws.numel())
        assert abs(float(draws.mean() - exact)) < 4 * float(se) + 1e-9, (type(est).__name__, se)


def test_presets_are_valid_configs():
    presets = image_presets()
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "mnist-paper", "cifar10-paper",
                 "mnist-resflow-paper", "cifar10-resflow-paper"):
        description, overrides = presets[name]
        assert description and "\n" not in description
        d = Config().to_dict()
        for section, values in overrides.items():
            d[section].update(values)
        cfg = Config.from_dict(d)
        assert cfg.model.kind in KINDS
        assert cfg.data.name in ("digits", "mnist", "fashion-mnist", "cifar10")
