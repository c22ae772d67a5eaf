"""Checkpoints that load without pickle, are written atomically, and are checked on load.

A checkpoint is a folder ``checkpoints/step-00001000/`` holding

- ``model.safetensors`` and ``ema.safetensors``: weights and buffers (safetensors: no code runs
  on load);
- ``state.safetensors``: optimiser moments and RNG states (tensors only);
- ``state.json``: everything else (step, data position, optimiser hyper-parameters, config);
- ``MANIFEST.json``, written last: the SHA-256 of every file above.

The folder is written under a temporary name and renamed into place, so a reader sees either a
whole checkpoint or none; a folder whose manifest is missing or whose hashes do not match (torn
by a crash, or tampered with) is refused, and ``latest_checkpoint`` skips it with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn

from ..errors import CheckpointError
from .files import atomic_write

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "load_weights",
    "weights_digest",
    "safetensors_bytes",
    "flatten_optimizer",
    "unflatten_optimizer",
]

FORMAT = "iresnet-checkpoint-1"
_FILES = ("model.safetensors", "ema.safetensors", "state.safetensors", "state.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors wants contiguous, unshared CPU tensors.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with the metadata in sorted key order, so
    that equal contents give equal bytes.

    safetensors keeps the metadata in a Rust ``HashMap``, whose order is drawn afresh for each
    map: the same weights and metadata saved twice (by a resumed run and an uninterrupted one,
    or by two processes) came out in different bytes. The header is written again with the
    ``__metadata__`` entries sorted (the tensors' entries and data as safetensors wrote them),
    padded with spaces to a multiple of 8 bytes as safetensors pads it.
    """
    raw = save(tensors, metadata=metadata)
    if not metadata:
        return raw
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The optimiser state dict back from ``flatten_optimizer``'s two halves."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, st in meta.get("plain_state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra_tensors: dict[str, Tensor] | None = None,
    keep_last: int = 2,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``folder/step-XXXXXXXX`` atomically and prune (``_prune``): this one and
    the ``keep_last - 1`` newest before it that verify (and pass ``check``, the run's test that
    a checkpoint is its own: see ``latest_checkpoint``) are kept, complete checkpoints older
    than those are removed, and torn, damaged, foreign or later folders in between are left
    alone (a resume skips them with a warning)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
    save_file(_tensors((ema or model).state_dict()), str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    save_file(_tensors({**opt_tensors, **(extra_tensors or {})}), str(tmp / "state.safetensors"))
    meta = {"format": FORMAT, "step": step, "optimizer": opt_meta, **state}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    manifest = {"format": FORMAT, "step": step, "files": {f: _sha256(tmp / f) for f in _FILES}}
    atomic_write(tmp / "MANIFEST.json", json.dumps(manifest, indent=1))
    # A re-save of the same step (e.g. after a signal) replaces it: the old folder is set
    # aside before the new one takes its name and removed after, so a kill at any point leaves
    # one whole ``step-XXXXXXXX`` (and ``.tmp-`` leftovers that a resume clears).
    old = _set_aside(final) if final.exists() else None
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _prune(folder, final, keep_last, check)
    return final


def _prune(
    folder: Path, newest: Path, keep_last: int, check: Callable[[Path], None] | None = None
) -> None:
    """Keep ``newest`` and the newest checkpoints before it that verify, ``keep_last`` in all;
    remove the complete checkpoints older than the last one kept. A damaged checkpoint (its
    hashes do not match) takes no place among the kept ones: counted as complete, it made a
    valid one go (try-out 9, M1). Verifying costs reading the kept checkpoints' files."""
    kept = 0
    for path in reversed(_prunable(folder, checkpoint_step(newest) or 0)):
        if kept >= keep_last:
            _remove(path)
        elif path == newest or _verifies(path, check):
            kept += 1


def _set_aside(path: Path) -> Path:
    """Rename a checkpoint folder to a ``.tmp-`` name (atomic) and return that name. Removed
    in place, a ``kill -9`` in the middle left a ``step-*`` folder without its manifest, which
    pruning leaves alone and every resume warns about (CI, the kill-9 test); a ``.tmp-``
    leftover is cleared when the run resumes (``Run.remove_stale_temporaries``)."""
    doomed = path.with_name(f".tmp-removing-{path.name}-{os.getpid()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    return doomed


def _remove(path: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted ``step-*`` folder can remain."""
    try:
        doomed = _set_aside(path)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _verifies(path: Path, check: Callable[[Path], None] | None = None) -> bool:
    try:
        verify_checkpoint(path)
        if check is not None:
            check(path)
    except CheckpointError:
        return False
    return True


def _prunable(folder: Path, newest: int) -> list[Path]:
    """The checkpoints pruning considers, oldest first: named ``step-XXXXXXXX`` for a step up
    to ``newest`` (the one just written), with a manifest. Pruning by name alone kept the two
    highest-named folders, torn ones and junk included, and deleted every valid checkpoint,
    the new one too (try-out 8, F2)."""
    return [
        path
        for path in list_checkpoints(folder)
        if (step := checkpoint_step(path)) is not None
        and step <= newest
        and (path / "MANIFEST.json").is_file()
    ]


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint folder's name ``step-XXXXXXXX`` gives; None for another name."""
    digits = path.name.removeprefix("step-")
    return int(digits) if len(digits) == 8 and digits.isdigit() else None


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders in ``folder``, oldest first (complete or not)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check a checkpoint folder's manifest and hashes; return the manifest or raise."""
    manifest_path = path / "MANIFEST.json"
    if checkpoint_step(path) is None:  # `step-abc` was called torn (try-out 10, F10)
        raise CheckpointError(
            f"{path}: not a checkpoint folder (a checkpoint is named step-XXXXXXXX, 8 digits); "
            "move it out of the checkpoints folder"
        )
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path}: no MANIFEST.json: the checkpoint is incomplete (torn by a crash?)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an iresnet checkpoint (format {manifest.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    named = checkpoint_step(path)
    if named is not None and named != manifest.get("step"):
        # A resume takes its step from the name: a renamed copy would restart the schedule at
        # the name's step with the weights of another (try-out 9, M2).
        raise CheckpointError(
            f"{path}: its manifest is of step {manifest.get('step')}, not the step its name "
            "says (a renamed or copied checkpoint)"
        )
    for name in _FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != manifest.get("files", {}).get(name):
            raise CheckpointError(
                f"{f}: contents do not match the manifest (truncated or modified)"
            )
    return manifest


def latest_checkpoint(folder: Path, check: Callable[[Path], None] | None = None) -> Path | None:
    """The newest checkpoint that verifies; torn or tampered ones are skipped with a warning,
    and so are those that ``check`` refuses (it raises ``CheckpointError``: the run's own
    test, e.g. that the checkpoint was saved with the run's model settings)."""
    for path in reversed(list_checkpoints(folder)):
        try:
            verify_checkpoint(path)
            if check is not None:
                check(path)
            return path
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint: {exc}", RuntimeWarning, stacklevel=2)
    return None


def _safe_load(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def weights_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of a state dict's names, dtypes, shapes and values, in name order: what a
    weights file records in its metadata (``"sha256"``) so a damaged file is refused on load."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key};{t.dtype};{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _recorded_digest(path: Path) -> str | None:
    try:
        with safe_open(str(path), "pt") as fh:
            return (fh.metadata() or {}).get("sha256")
    except (SafetensorError, OSError):
        return None  # the loader says what is wrong with the file


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``module``, refusing missing, extra or misshaped keys
    and, where the file records its digest (``weights_digest``), damaged values."""
    state = _safe_load(path)
    recorded = _recorded_digest(path)
    if recorded is not None and recorded != weights_digest(state):
        raise CheckpointError(
            f"{path}: damaged (its values do not match the digest it was saved with); restore "
            "it from a copy, or evaluate the run's newest checkpoint by removing this file"
        )
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit this model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it saved by a model with another config, or by iresnet "
            "0.1 (whose module layout differs: retrain with this version)?"
        )
    for key, value in state.items():
        ref = own[key]
        # Conv power-iteration vectors take their shape from the input size: they may differ.
        resizable = key.endswith((".u", ".v")) and ref.numel() == 0
        if value.shape != ref.shape and not resizable:
            raise CheckpointError(
                f"{path}: '{key}' has shape {tuple(value.shape)} but the model expects "
                f"{tuple(ref.shape)}"
            )
    module.load_state_dict(state)


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Verify a checkpoint and return ``(state.json contents, state tensors)``."""
    verify_checkpoint(path)
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / 'state.json'}: unreadable ({exc})") from None
    return meta, _safe_load(path / "state.safetensors")
