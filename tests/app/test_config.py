import json

import pytest

from iresnet.app.config import Config
from iresnet.app.presets import PRESETS, get_preset
from iresnet.errors import ConfigError


def test_round_trip_through_json():
    cfg = get_preset("toy-checkerboard")
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates(name):
    assert get_preset(name).validate().preset == name


def test_overrides_qualified_and_unique_keys():
    cfg = Config().override(
        ["model.coeff=0.8", "lr=0.01", "actnorm=false", "data.path=x.npy", "data.path=none"]
    )
    assert cfg.model.coeff == 0.8 and cfg.train.lr == 0.01 and cfg.model.actnorm is False
    assert cfg.data.path is None


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.nope=1", "unknown config key"),
        ("model.nblocks=3", "unknown config key 'model.nblocks'; did you mean 'model.n_blocks'"),
        ("n_block=3", "unknown config key 'n_block'; did you mean 'n_blocks'"),
        # the name in another section, a misspelt section (try-out 9, M3)
        ("train.hidden=3", "unknown config key 'train.hidden'; did you mean 'model.hidden'"),
        ("data.base=diagonal", "did you mean 'model.base'"),
        (
            "trian.steps=3",
            "unknown config section 'trian' in 'trian.steps'; did you mean 'train.steps'",
        ),
        ("nope=1", "unknown config key"),
        ("seed=1", "ambiguous"),
        ("model.coeff=high", "must be float"),
        ("model.n_blocks=2.5", "must be int"),
        ("model.coeff=1.5", r"coeff must lie in \(0, 1\]"),
        ("model.coeff=0", r"coeff must lie in \(0, 1\]"),
        ("model.n_terms=-1", "n_terms must be a positive"),
        ("model.logdet=magic", "model.logdet must be one of"),
        ("model.base=gaussian", "model.base must be one of"),
        ("model.base=diagonal", "model.base=diagonal is for the image flows"),
        # --help says "0: all of them": the message names the 0 too (try-out 14, F13)
        ("data.train_subset=1", r"data.train_subset must be 0 \(all\) or >= 2, got 1"),
        ("data.train_subset=-5", r"data.train_subset must be 0 \(all\) or >= 2, got -5"),
        ("noequals", "key=value"),
        ("train.grad_clip=-1", r"train.grad_clip must be >= 0, got -1"),
        ("train.density_weight=-0.5", r"train.density_weight must be >= 0, got -0.5"),
        # config-only mistakes found when the data or the device was loaded, after the summary
        ("data.name=foo", "unknown data set 'foo'; known: .*'moons'"),
        ("train.device=tpu", "unknown device 'tpu'; use cpu, cuda, cuda:N or mps"),
        ("train.device=cuda:x", "unknown device 'cuda:x'"),
    ],
)
def test_bad_overrides_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        Config().override([override])


def test_monotone_blocks_need_a_coefficient_below_one():
    # (1 + c)/(1 - c) bounds a monotone block and its inverse: infinite at c = 1.
    with pytest.raises(ConfigError, match="model.block=monotone needs model.coeff < 1"):
        Config().override(["model.block=monotone", "model.coeff=1.0"])
    assert Config().override(["model.block=monotone", "model.coeff=0.99"]).model.coeff == 0.99
    assert Config().override(["model.coeff=1.0"]).model.coeff == 1.0  # residual blocks: allowed


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"model": {"coeff": "0.9"}}, "model.coeff must be float"),
        ({"model": {"n_blocks": True}}, "model.n_blocks must be int"),
        ({"train": {"lr": -1.0}}, "train.lr must be positive"),
        ({"extra": {}}, "unknown config section"),
        ({"model": {"unknown_key": 1}}, "unknown key"),
        ({"model": []}, "must be an object"),
        ({"train": {"lr": float("nan")}}, "finite"),
    ],
)
def test_bad_dicts_refused(raw, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(raw)


def test_augment_is_refused_for_density_models():
    with pytest.raises(ConfigError, match="train.augment"):
        Config().override(["train.augment=true"])
    assert Config().override(["model.kind=classifier", "train.augment=true"]).train.augment


def test_compiling_a_series_log_det_needs_the_neumann_gradient():
    # AOTAutograd has no double backward: the series' own gradient cannot be compiled.
    with pytest.raises(ConfigError, match="needs model.neumann_gradient=true"):
        Config().override(["train.compile=true", "model.logdet=roulette"])
    ok = ["train.compile=true", "model.logdet=roulette", "model.neumann_gradient=true"]
    assert Config().override(ok).train.compile
    assert Config().override(["train.compile=true", "model.logdet=exact"]).train.compile


def test_compiling_a_monotone_block_is_refused_up_front():
    """Its implicit gradient calls autograd inside the backward pass: compiled, the first step
    ended in a 92-line traceback (exit 1) after the run had started."""
    with pytest.raises(ConfigError, match="cannot compile model.block=monotone"):
        Config().override(
            ["train.compile=true", "model.block=monotone", "model.neumann_gradient=true"]
        )
    assert Config().override(["model.block=monotone"]).model.block == "monotone"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.name=rotated-8gaussians"], "cannot compile a conditional flow"),
        (["model.activation=clipswish"], "model.activation=clipswish lacks"),
        (["model.activation=cpila"], "model.activation=cpila lacks"),
        (["model.branch=dense"], "model.branch=dense lacks"),
    ],
)
def test_compiling_what_torch_compile_cannot_differentiate_is_refused(overrides, needle):
    """These passed the config and crashed at the first compiled step (a double backward:
    their Jacobian products go through autograd); the same with the exact log-det compiles,
    except the conditional flows."""
    roulette = ["model.logdet=roulette", "model.neumann_gradient=true"]
    with pytest.raises(ConfigError, match=needle):
        Config().override(["train.compile=true", *roulette, *overrides])
    if "data.name" not in overrides[0]:
        exact = Config().override(["train.compile=true", "model.logdet=exact", *overrides])
        assert exact.train.compile
    assert Config().override(["train.compile=true", *roulette]).train.compile  # lipswish, plain


def test_toy_presets_name_their_size_in_the_listing():
    """``iresnet presets`` listed the toys without their size (the image presets had theirs),
    and checkerboard's and 2spirals' differ from the rest."""
    for name in ("toy-8gaussians", "toy-checkerboard", "toy-2spirals"):
        cfg = get_preset(name)
        size = f"{cfg.model.n_blocks} blocks x {cfg.model.hidden} units"
        assert size in PRESETS[name].description
    assert get_preset("toy-checkerboard").model.n_blocks == 32


@pytest.mark.parametrize("logdet", ["roulette-auto", "stratified-auto"])
@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.roulette_p=0.3"], "model.roulette_p=0.3"),
        (["model.n_exact=5"], "model.n_exact=5"),
        (["model.roulette_p=0.3", "model.n_exact=5"], "model.roulette_p=0.3 and model.n_exact=5"),
    ],
)
def test_an_automatic_law_refuses_a_roulette_law_set_beside_it(logdet, overrides, named):
    """``roulette-auto`` and ``stratified-auto`` choose ``p`` and ``n_exact`` from each block's
    bound: a ``roulette_p`` or ``n_exact`` the user set was silently dropped (the run trained
    with another law than the one asked for). Now one ConfigError line names the keys set and
    both ways out; the fields' defaults (what every preset and saved run holds) still pass."""
    fixed = logdet.removesuffix("-auto")
    with pytest.raises(ConfigError) as info:
        get_preset("digits").override([f"model.logdet={logdet}", *overrides])
    message = str(info.value)
    assert "\n" not in message
    assert f"model.logdet={logdet} chooses model.roulette_p and model.n_exact" in message
    assert f"got {named}" in message
    assert f"model.logdet={fixed}" in message
    # the law set beside a fixed roulette is taken as it is
    cfg = get_preset("digits").override([f"model.logdet={fixed}", *overrides])
    assert cfg.model.logdet == fixed
    for name in ("digits", "toy-8gaussians", "digits-hybrid"):
        assert get_preset(name).override([f"model.logdet={logdet}"]).model.logdet == logdet


@pytest.mark.parametrize("logdet", ["exact", "roulette"])
def test_compiling_a_mixed_precision_flow_is_refused(logdet):
    """train.precision=bf16 with train.compile=true crashed at the first compiled step (the
    autocast branch's Jacobian goes through autograd: a double backward); one line now, also
    for the toy presets that turn compilation on. A classifier computes no log-det and
    compiles."""
    flags = ["train.precision=bf16", f"model.logdet={logdet}", "model.neumann_gradient=true"]
    with pytest.raises(ConfigError, match="train.precision=bf16"):
        Config().override(["train.compile=true", *flags])
    with pytest.raises(ConfigError, match="train.precision=fp32 or train.compile=false"):
        get_preset("toy-checkerboard").override(["train.precision=bf16"])
    classifier = get_preset("digits-classifier").override(["train.compile=true", flags[0]])
    assert classifier.train.compile


def test_array_data_without_a_path_names_the_flag_that_sets_it():
    """The refusal said "or pass --data FILE", which commands other than train do not take
    (try-out 8, F10: a hand-edited config.json met it in ``iresnet evaluate``)."""
    with pytest.raises(ConfigError, match=r"needs data.path.*`iresnet train --data FILE`"):
        Config().override(["data.name=array"])


def test_a_key_given_twice_with_different_values_is_named():
    """``hidden=16 model.hidden=32`` trained with 32, silently (try-out 10, F12); layering on
    purpose stays allowed, the last value wins, and the CLI says so."""
    from iresnet.app.config import repeated_keys

    assert repeated_keys(["hidden=16", "model.hidden=32", "lr=1e-3"]) == [
        "model.hidden is given 2 times (16, 32): the last, 32, is used"
    ]
    assert repeated_keys(["hidden=16", "model.hidden=16", "lr=1e-3"]) == []  # one wish
    assert Config().override(["hidden=16", "hidden=32"]).model.hidden == 32


def test_an_unknown_key_without_a_near_miss_points_to_the_help():
    with pytest.raises(ConfigError, match=r"'model.bogus' \(see `iresnet train --help`"):
        Config().override(["model.bogus=3"])


def test_differing_settings_name_model_and_data_keys_but_not_paths():
    from iresnet.app.config import differing_settings
    from iresnet.app.presets import get_preset

    a = get_preset("digits")
    b = a.override(["model.coeff=0.9", "data.logit_alpha=0.01", "train.lr=0.1"])
    assert differing_settings(a, b) == [
        ("model.coeff", a.model.coeff, 0.9),
        ("data.logit_alpha", a.data.logit_alpha, 0.01),
    ]  # training settings do not make other weights' settings
    moved = a.override(["data.data_dir=/elsewhere"])
    assert differing_settings(a, moved) == []  # where the files lie is not what they are


def test_model_size_names_every_part_of_the_network():
    assert get_preset("toy-8gaussians").model.size().endswith("units")
    fm = get_preset("fashion-mnist").model
    assert fm.size().startswith(f"{fm.n_scales} scales x {fm.n_blocks} blocks x {fm.hidden}")
    fc = get_preset("fashion-mnist").override(["model.fc_blocks=8", "model.fc_hidden=128"])
    assert fc.model.size().endswith(", 8 fc blocks x 128")
    dense = get_preset("fashion-mnist-idensenet").model
    assert f"dense depth {dense.dense_depth} x growth {dense.dense_growth}" in dense.size()
    assert f"x {dense.hidden} channels" not in dense.size()


def test_model_size_says_one_in_the_singular():
    """Try-out 14, F12: "2 scales x 1 blocks x ..., 1 fc blocks x 64", beside "train 1 step"."""
    one = ["model.n_blocks=1", "model.fc_blocks=1", "model.fc_hidden=64", "model.branch=dense"]
    size = get_preset("digits").override(one).model.size()
    assert " x 1 block x " in size and size.endswith(", 1 fc block x 64"), size
    toy = get_preset("toy-8gaussians").override(["model.n_blocks=1", "model.hidden=1"])
    assert toy.model.size() == "1 block x 1 unit"
    assert get_preset("toy-8gaussians").model.size().endswith(" blocks x 64 units")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"extra": {}}, "unknown config section ['extra'];"),
        ({"extra": {}, "more": {}}, "unknown config sections ['extra', 'more'];"),
        ({"model": {"nope": 1}}, "unknown key ['nope'] in section 'model';"),
        ({"model": {"nope": 1, "nah": 2}}, "unknown keys ['nah', 'nope'] in section 'model';"),
    ],
)
def test_unknown_names_are_counted_in_words(raw, message):
    """The messages said "unknown key(s)" and "unknown config section(s)" whatever the count."""
    with pytest.raises(ConfigError) as refused:
        Config.from_dict(raw)
    assert message in str(refused.value) and "(s)" not in str(refused.value)
