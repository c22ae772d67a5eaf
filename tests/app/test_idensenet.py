"""The i-DenseNet presets and config keys: dense branches with CLipSwish, certified."""

from __future__ import annotations

import pytest
import torch

import iresnet
from iresnet.app.builder import build_model, load_data
from iresnet.app.config import Config
from iresnet.app.presets import get_preset
from iresnet.datasets import DataBundle
from iresnet.errors import ConfigError, DataError
from iresnet.nn import CLipSwish, DenseLayer


def _bundle(shape: tuple[int, ...]) -> DataBundle:
    x = torch.zeros(1, *shape, dtype=torch.uint8)
    return DataBundle("fashion-mnist", "image", x, x, n_levels=256)


def test_fashion_mnist_idensenet_builds_dense_clipswish_blocks_that_certify():
    # The preset's architecture on an 8x8 image: certifying the 28x28 convolutions (exact
    # norms of 52-channel dense layers) costs minutes; the layers and bounds are the same kind.
    cfg = get_preset("fashion-mnist-idensenet")
    flow = build_model(cfg, _bundle((1, 8, 8)))
    dense = [m for m in flow.modules() if isinstance(m, DenseLayer)]
    assert len(dense) == 2 * 3 * 3  # 2 scales x 3 blocks x depth 3
    assert all(isinstance(d.network[1], CLipSwish) for d in dense)
    flow.train()
    with torch.no_grad():
        flow.log_prob(torch.randint(0, 256, (2, 1, 8, 8)))
    cert = iresnet.certify(flow.eval())
    assert cert.invertible and cert.max_bound <= 0.98 * 0.98**3 + 1e-9
    assert all(b.methods.startswith("dense[") for b in cert.blocks)


def test_cifar10_idensenet_paper_has_the_paper_sizes_and_needs_its_files(tmp_path):
    cfg = get_preset("cifar10-idensenet-paper")
    m = cfg.model
    assert (m.branch, m.activation, m.dense_depth, m.dense_growth, m.n_blocks, m.n_scales) == (
        "dense",
        "clipswish",
        3,
        172,
        16,
        3,
    )
    cfg = cfg.override([f"data.data_dir={tmp_path}"])
    with pytest.raises(DataError, match="data_batch_1.*cifar.html") as err:
        load_data(cfg.data)
    assert "\n" not in str(err.value)


def test_dense_config_keys_are_checked():
    base = {"model": {"branch": "dense", "activation": "clipswish", "dense_growth": 5}}
    with pytest.raises(ConfigError, match="dense_growth must be even"):
        Config.from_dict(base)
    with pytest.raises(ConfigError, match="model.branch must be one of"):
        Config.from_dict({"model": {"branch": "densenet"}})
    with pytest.raises(ConfigError, match="dense_coeff"):
        Config.from_dict({"model": {"dense_coeff": 1.5}})


def test_toy_kind_takes_the_dense_branch():
    cfg = get_preset("toy-moons").override(
        ["branch=dense", "activation=clipswish", "dense_growth=8", "dense_depth=2"]
    )
    data = load_data(cfg.data.__class__(name="moons", n_train=64, n_test=64))
    flow = build_model(cfg, data)
    assert sum(isinstance(m, DenseLayer) for m in flow.modules()) == 2 * cfg.model.n_blocks
    assert flow.log_prob(data.test_x[:4].float()).shape == (4,)


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ("digits-classifier", "model.branch=dense is for the flows"),
        ("digits-hybrid", "model.branch=dense is for the flows"),
        ("digits-conditional", "no conditional form yet"),
        ("toy-moving-gaussian", "no conditional form yet"),
    ],
)
def test_a_dense_branch_where_the_builder_has_none_is_refused_by_the_config(preset, message):
    """Found by a try-out: a classifier took model.branch=dense, recorded it and built plain
    blocks; a conditional preset passed --dry-run and failed only when building."""
    cfg = get_preset(preset)
    cfg.model.branch = "dense"
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
