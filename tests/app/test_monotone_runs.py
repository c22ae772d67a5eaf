"""``model.block=monotone``: validated by the config, built by the one builder, trained and
evaluated end to end (tiny)."""

import json

import pytest

import iresnet
from iresnet.app.builder import build_model, load_data
from iresnet.app.cli import _config_keys_help, main
from iresnet.app.config import Config
from iresnet.errors import ConfigError
from tests.helpers import TINY_RUN


def test_block_key_is_validated_and_documented():
    assert Config().model.block == "residual"
    with pytest.raises(ConfigError, match=r"model.block must be one of \['residual', 'monotone'\]"):
        Config().override(["model.block=cayley"])
    with pytest.raises(ConfigError, match="model.block=monotone is for the flows"):
        Config().override(["model.kind=classifier", "model.block=monotone"])
    assert "model.block=residual  " in _config_keys_help()
    # a run saved before the key existed rebuilds with today's block
    assert Config.from_dict({"model": {"n_blocks": 2}}).model.block == "residual"


@pytest.mark.parametrize("block", ["residual", "monotone"])
def test_builder_builds_the_block_named(block):
    cfg = Config().override(["model.n_blocks=2", "model.hidden=8", f"model.block={block}"])
    data = load_data(Config().override(["data.n_train=64", "data.n_test=32"]).data)
    model = build_model(cfg, data)
    kinds = {type(m) for m in model.modules() if isinstance(m, iresnet.InvertibleResidualBlock)}
    want = iresnet.MonotoneBlock if block == "monotone" else iresnet.InvertibleResidualBlock
    assert kinds == {want}


def test_monotone_toy_run_trains_evaluates_and_certifies(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["train", *TINY_RUN, "model.block=monotone", "--steps", "10", "--out", str(out_dir)]
    assert main([*argv, "--no-progress"]) == 0
    assert "finished at step 10" in capsys.readouterr().out
    assert main(["evaluate", str(out_dir), "--json", "--n-inverse", "64"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["invertible"] is True and result["inverse_max_error"] < 1e-4


def test_cpila_activation_key():
    cfg = Config().override(["model.n_blocks=1", "model.hidden=8", "model.activation=cpila"])
    data = load_data(Config().override(["data.n_train=64", "data.n_test=32"]).data)
    model = build_model(cfg, data)
    assert any(isinstance(m, iresnet.CPila) for m in model.modules())
    with pytest.raises(ConfigError, match="dense_growth must be even with cpila"):
        Config().override(["model.branch=dense", "model.activation=cpila", "model.dense_growth=3"])
