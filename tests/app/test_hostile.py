"""Hostile inputs are refused with a clear message, never execute code, and change nothing."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from iresnet.app.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from iresnet.app.config import Config
from iresnet.app.runs import Run, load_run
from iresnet.app.training import train
from iresnet.errors import CheckpointError, ConfigError, DataError
from iresnet.transforms import set_branch_precision
from tests.app.test_trainer import TINY, snapshot
from tests.helpers import mlp_flow

MARKER = "/tmp/iresnet-hostile-marker"


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture
def run_dir(tmp_path):
    cfg = Config().override([*TINY, "train.steps=4"])
    train(cfg, tmp_path / "run", progress=False)
    return tmp_path / "run"


def _rehash(ckpt):
    """Update the manifest so only the contents, not the hashes, betray the tampering."""
    import hashlib

    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


def _attempt(run_dir):
    with pytest.raises(CheckpointError) as exc:
        train(Config().override([*TINY, "train.steps=8"]), run_dir, resume=True, progress=False)
    return str(exc.value)


def test_pickle_payload_never_executes(run_dir):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    _rehash(ckpt)
    before = snapshot(run_dir)
    message = _attempt(run_dir)
    assert "not a readable safetensors file" in message
    assert not os.path.exists(MARKER)
    assert snapshot(run_dir) == before


def test_wrong_shapes_are_named(run_dir, tmp_path):
    other = tmp_path / "other"
    train(Config().override([*TINY, "train.steps=4", "model.hidden=24"]), other, progress=False)
    src, dst = latest_checkpoint(other / "checkpoints"), latest_checkpoint(run_dir / "checkpoints")
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    _rehash(dst)
    before = snapshot(run_dir)
    message = _attempt(run_dir)
    assert "has shape" in message and "expects" in message
    assert snapshot(run_dir) == before


def test_foreign_model_kind_is_refused(run_dir):
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    state = json.loads((ckpt / "state.json").read_text())
    state["model_kind"] = "classifier"
    (ckpt / "state.json").write_text(json.dumps(state))
    _rehash(ckpt)
    before = snapshot(run_dir)
    assert "not 'toy'" in _attempt(run_dir)
    assert snapshot(run_dir) == before


def test_truncated_weights_refused_on_load(run_dir):
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_run(run_dir)
    assert snapshot(run_dir) == before


def test_damaged_final_weights_are_refused_and_the_checkpoint_still_serves(run_dir):
    """Bytes flipped inside the values (the header still parses) were loaded silently."""
    weights = run_dir / "model.safetensors"
    good = load_run(run_dir)
    blob = bytearray(weights.read_bytes())
    blob[-40:-32] = b"\x7f" * 8  # inside the last tensor's values
    weights.write_bytes(bytes(blob))
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="damaged.*removing this file"):
        load_run(run_dir)
    assert snapshot(run_dir) == before
    weights.unlink()  # as the message says: the newest checkpoint's EMA weights serve
    again = load_run(run_dir)
    ours, theirs = good.model.state_dict(), again.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d["model"].update(coeff=1.5), r"coeff must lie in \(0, 1\]"),
        (lambda d: d["model"].update(n_terms=-2), "n_terms must be a positive"),
        (lambda d: d["train"].update(surprise=1), "unknown key"),
        (lambda d: d["train"].update(lr="fast"), "train.lr must be float"),
    ],
)
def test_bad_config_in_run_folder_is_refused_before_work(run_dir, edit, match):
    raw = json.loads((run_dir / "config.json").read_text())
    edit(raw)
    (run_dir / "config.json").write_text(json.dumps(raw))
    before = snapshot(run_dir)
    n_ckpts = len(list_checkpoints(run_dir / "checkpoints"))
    with pytest.raises(ConfigError, match=match):
        load_run(run_dir)
    assert snapshot(run_dir) == before and len(list_checkpoints(run_dir / "checkpoints")) == n_ckpts


@pytest.mark.parametrize(
    "content,match",
    [
        ("a,b\n1,2\n3,inf\n", "Inf"),
        ("1,2\n3\n", "ragged"),
        ("1,2\n", "1-row|at least 2"),
        ("1,x\n2,3\n", "line 1, column 2|non-numeric"),
    ],
)
def test_bad_data_files_name_the_place(tmp_path, content, match):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as exc:
        train(
            Config().override([*TINY, "data.name=array", f"data.path={path}"]),
            tmp_path / "run",
            progress=False,
        )
    assert "data.csv" in str(exc.value)


def test_npy_with_wrong_dtype_or_shape(tmp_path):
    import numpy as np

    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "v.npy", np.arange(10.0))
    for name in ("s.npy", "v.npy"):
        with pytest.raises(DataError, match=name):
            train(
                Config().override([*TINY, "data.name=array", f"data.path={tmp_path / name}"]),
                tmp_path / f"run-{name}",
                progress=False,
            )


def test_bf16_branches_keep_logdet_within_tolerance():
    flow = mlp_flow(dim=2, n_blocks=3, dtype=torch.float32, atol=1e-6).eval()
    x = torch.randn(64, 2)
    with torch.no_grad():
        _, ld32 = flow.transform(x)
        set_branch_precision(flow, "bf16")
        z, ld16 = flow.transform(x)
        x_rec = flow.inverse(z)
    assert ld16.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: the Jacobian entries carry ~0.4% relative error.
    assert (ld16 - ld32).abs().max() < 2e-2
    assert (x_rec - x).abs().max() < 5e-2


def test_pruning_never_deletes_the_new_checkpoint_for_torn_or_foreign_folders(tmp_path):
    """A resumed run pruned by name: with a torn ``step-99999999`` and a stray ``step-abc`` in
    its folder, the valid checkpoint and the one just written were deleted, and the run could
    not be resumed (try-out 8, F2)."""
    cfg = Config().override(
        [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.keep_last=2"]
    )
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    folder = run / "checkpoints"
    (folder / "step-99999999").mkdir()  # torn: no manifest
    (folder / "step-abc").mkdir()
    (folder / "junk.txt").write_text("x")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        train(cfg.override(["train.steps=8"]), run, resume=True, progress=False)
    names = sorted(p.name for p in list_checkpoints(folder))
    assert names == ["step-00000006", "step-00000008", "step-99999999", "step-abc"]
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        assert latest_checkpoint(folder).name == "step-00000008"
    assert (folder / "junk.txt").read_text() == "x"
    # a stray folder is named as such, not "torn by a crash" (try-out 10, F10)
    with pytest.raises(CheckpointError, match="step-abc: not a checkpoint folder"):
        verify_checkpoint(folder / "step-abc")
    with pytest.raises(CheckpointError, match="torn by a crash"):
        verify_checkpoint(folder / "step-99999999")


def test_a_damaged_or_renamed_checkpoint_takes_no_place_of_a_valid_one(tmp_path):
    """A damaged copy with a manifest counted as complete, so pruning removed a valid
    checkpoint for it (try-out 9, M1); a renamed copy verified, and a resume took its step from
    the name, with another step's weights (M2)."""

    cfg = Config().override(
        [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.keep_last=2"]
    )
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    folder = run / "checkpoints"
    renamed = folder / "step-00000009"
    shutil.copytree(folder / "step-00000002", renamed)
    with pytest.raises(CheckpointError, match="manifest is of step 2, not the step its name"):
        verify_checkpoint(renamed)
    shutil.rmtree(renamed)
    damaged = folder / "step-00000005"
    shutil.copytree(folder / "step-00000004", damaged)
    with (damaged / "model.safetensors").open("r+b") as fh:
        fh.truncate(100)
    _rehash_manifest_step(damaged, 5)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        train(cfg.override(["train.steps=6"]), run, resume=True, progress=False)
    names = sorted(p.name for p in list_checkpoints(folder))
    assert names == ["step-00000004", "step-00000005", "step-00000006"]
    verify_checkpoint(folder / "step-00000004")


def _rehash_manifest_step(ckpt, step):
    """Give a copied checkpoint the manifest step of its new name (its hashes stay old)."""
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["step"] = step
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


class Killed(BaseException):
    """A ``kill -9``, as far as the code under test can tell: nothing after it runs."""


def _killed_midway(path, ignore_errors=False):
    """``shutil.rmtree`` killed midway: the manifest gone, the rest of the folder left."""
    path = Path(path)
    if path.exists():
        (path / "MANIFEST.json").unlink(missing_ok=True)
        raise Killed


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Pruning removed an old checkpoint in place: a ``kill -9`` in the middle left a
    ``step-*`` folder without its manifest, which no later prune removes and every resume warns
    about (CI, ``test_kill_9_then_resume_gives_same_weights``). It is renamed away first."""
    cfg = Config().override(
        [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.keep_last=2"]
    )
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    folder = run / "checkpoints"
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", _killed_midway)
        with pytest.raises(Killed):
            train(cfg.override(["train.steps=6"]), run, resume=True, progress=False)
    for ckpt in list_checkpoints(folder):
        verify_checkpoint(ckpt)  # none half-deleted
    train(cfg.override(["train.steps=8"]), run, resume=True, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000006", "step-00000008"]


def test_a_kill_while_replacing_a_checkpoint_of_the_same_step_leaves_it_whole(
    tmp_path, monkeypatch
):
    """A re-save of the same step (after a signal) removed the old folder in place first; a
    kill in the middle left it without its manifest. The old one is set aside, the new one
    takes its name, then the old one goes."""
    from iresnet.app.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, 3, model, None, opt, {})
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", _killed_midway)
        with pytest.raises(Killed):
            save_checkpoint(tmp_path, 3, model, None, opt, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003"]
    verify_checkpoint(tmp_path / "step-00000003")


def test_a_checkpoint_of_another_model_is_skipped_not_loaded(tmp_path):
    """A valid checkpoint copied in from a run with other model settings verified, was taken
    as the newest, and failed to load ("has shape (8,) but the model expects (16,)"): resume and
    evaluate were blocked and the run's own older checkpoints never tried (try-out 10, F1)."""
    from safetensors.torch import load_file

    cfg = Config().override(
        [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.keep_last=2"]
    )
    run, other = tmp_path / "run", tmp_path / "other"
    train(cfg, run, progress=False)
    reference = load_file(run / "model.safetensors")
    # as a run interrupted after step 2's checkpoint, with another run's step 4 copied in
    (run / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    train(cfg.override(["model.hidden=8"]), other, progress=False)
    shutil.copytree(other / "checkpoints" / "step-00000004", run / "checkpoints" / "step-00000004")
    with pytest.warns(RuntimeWarning, match=r"other settings \(model.hidden=8, this run's 16"):
        assert load_run(run).step == 2  # evaluate reads the run's own checkpoint
    with pytest.warns(RuntimeWarning, match="other settings"):
        result = train(cfg, run, resume=True, progress=False)
    assert result.step == 4
    resumed = load_file(run / "model.safetensors")
    for key in reference:  # the run's own step 2, continued: the uninterrupted weights
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_of_other_data_is_skipped_and_never_kept_in_a_valid_ones_place(tmp_path):
    """Same model, other data (moons into an 8gaussians run) was taken silently (try-out 11,
    F6); and pruning counted a foreign checkpoint among the kept ones, deleting the run's own
    older one early (try-out 11, F1)."""
    cfg = Config().override(
        [*TINY, "train.steps=6", "train.checkpoint_every=2", "train.keep_last=2"]
    )
    run, other = tmp_path / "run", tmp_path / "other"
    train(cfg.override(["train.steps=4"]), run, progress=False)  # step-2, step-4
    train(cfg.override(["data.name=moons"]), other, progress=False)
    foreign = run / "checkpoints" / "step-00000005"
    shutil.copytree(other / "checkpoints" / "step-00000004", foreign)
    _rehash_manifest_step(foreign, 5)
    _rehash(foreign)
    verify_checkpoint(foreign)  # a valid checkpoint, of another run
    with pytest.warns(RuntimeWarning, match=r"other settings \(data.name='moons'"):
        assert load_run(run).step == 4
    with pytest.warns(RuntimeWarning, match="other settings"):
        train(cfg, run, resume=True, progress=False)  # saves step 6; keeps 2 of its own
    names = sorted(p.name for p in list_checkpoints(run / "checkpoints"))
    # the run's own step 4 is kept (the foreign one took its place before); the foreign one,
    # between the kept ones, is left alone as torn and damaged ones are
    assert names == ["step-00000004", "step-00000005", "step-00000006"], names


def test_a_folder_that_holds_one_run_one_level_down_is_named_in_the_refusal(tmp_path):
    """``iresnet evaluate W/digits/ours`` (``images.py``'s folder; the run is ``ours/ours``)
    said only "not an iresnet run folder"."""

    (tmp_path / "ours" / "ours").mkdir(parents=True)
    (tmp_path / "ours" / "ours" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"the run folder inside it: .*ours/ours\?"):
        Run(tmp_path / "ours").load_config()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not an iresnet run folder$"):
        Run(tmp_path / "empty").load_config()
