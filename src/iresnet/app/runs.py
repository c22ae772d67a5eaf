"""A run is a folder: ``config.json``, ``data.json``, ``metrics.jsonl``, ``checkpoints/``,
``model.safetensors`` (the final EMA weights) and the plots. Every write is atomic (but the
appends to ``metrics.jsonl``, whose torn last line is skipped on reading), and one process at
a time writes: the trainer holds the folder's lock (``.lock``, an OS advisory lock through
``filelock``, released by the OS when the process dies; ``.owner`` names its PID).

``data.json`` makes a run self-contained: the data's shapes, levels and standardisation (all
that ``sample`` and ``certify`` need, so neither reads the data) and its fingerprint (SHA-256
of the training and test tensors, and of a user file with its absolute path), which
evaluation and resumption check. ``load_run`` rebuilds a finished or interrupted run for
evaluation, sampling and certification."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from torch import nn

from ..datasets import DataBundle, Standardizer
from ..datasets.conditional import CONDITIONAL_TOYS, kl_contexts
from ..errors import CheckpointError, ConfigError, DataError, RouletteVarianceWarning
from .builder import build_model, load_data
from .checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_weights,
    safetensors_bytes,
    weights_digest,
)
from .config import Config, DataConfig, differing_settings
from .distributed import resolve_device
from .files import atomic_write
from .tasks import Task, make_task

__all__ = ["Run", "TrainedRun", "data_fingerprint", "file_fingerprint", "load_run"]


def data_fingerprint(data: DataBundle) -> str:
    """SHA-256 (hex) of a data set's training and test tensors, labels and contexts, in that
    order.

    Two loads of the same data (a file, a toy density's seeded draw, an image set) give the
    same digest; any changed value, shape or dtype gives another.
    """
    h = hashlib.sha256()
    contexts = (data.train_c, data.test_c) if data.train_c is not None else ()
    for t in (data.train_x, data.test_x, data.train_y, data.test_y, *contexts):
        if t is None:
            h.update(b"none;")
            continue
        a = t.detach().cpu().contiguous()
        h.update(f"{tuple(a.shape)}{a.dtype};".encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A user data file as a run records it: path as given, absolute path, SHA-256 of its bytes."""
    p = Path(path)
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "absolute": str(p.resolve()), "sha256": h.hexdigest()}


class Run:
    """File layout and bookkeeping of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.data_path = self.path / "data.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.weights_path = self.path / "model.safetensors"
        self.lock_path = self.path / ".lock"
        self.owner_path = self.path / ".owner"
        self._lock: FileLock | None = None

    def acquire(self) -> None:
        """Become the folder's one writer until ``release`` (or the process ends).

        Raises:
            ConfigError: another live process holds the lock (its PID is named).
        """
        if self._lock is not None:
            return
        lock = FileLock(self.lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            owner = "another process"
            try:
                owner = f"process {self.owner_path.read_text(encoding='utf-8').strip()}"
            except OSError:
                pass
            raise ConfigError(
                f"{self.path} is being written by {owner}; wait for it to finish (or stop it), "
                "or choose another --out"
            ) from None
        self._lock = lock
        try:
            self.owner_path.write_text(f"{os.getpid()} on {socket.gethostname()}\n", "utf-8")
        except OSError:
            pass  # the lock holds without the note

    def check_no_writer(self) -> None:
        """Refuse while another live process writes to the folder (``acquire``'s refusal),
        taking and giving back the lock: a resume checks it before it looks for checkpoints,
        which a run still training may not have written yet.

        Raises:
            ConfigError: another live process holds the lock (its PID is named).
        """
        if self._lock is None:
            self.acquire()
            self.release()

    def release(self) -> None:
        """Give up the writer's lock (a no-op when not held)."""
        if self._lock is None:
            return
        try:
            self.owner_path.unlink(missing_ok=True)
        except OSError:
            pass
        self._lock.release()
        self._lock = None

    def is_run(self) -> bool:
        """Whether the folder holds a run (its config and data record, which a run writes as it
        starts), not just some project's ``config.json``."""
        return self.config_path.is_file() and self.data_path.is_file()

    def check_new(self) -> None:
        """Refuse, before anything is written, a path that is a file or already holds a run.

        A folder left by a run that was killed before its first checkpoint (a config, no
        checkpoint, no weights, no live writer; at most a half-written ``.tmp-`` checkpoint)
        holds nothing to keep: it is cleared and reused.

        Raises:
            ConfigError: the path exists as a file, is a link to nothing, lies under a file or
                inside another run's folder, or holds a run's checkpoints or weights.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path} is a file, not a run folder: choose another --out")
        if self.path.is_symlink() and not self.path.exists():
            raise ConfigError(
                f"{self.path} is a link to {os.readlink(self.path)}, which does not exist: "
                "remove the link or choose another --out"
            )
        for parent in self.path.absolute().parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(
                    f"cannot create {self.path}: {parent} is a file; choose another --out"
                )
            if Run(parent).is_run():
                raise ConfigError(
                    f"{self.path} lies inside the run folder {parent}: choose an --out outside it"
                )
        unstarted = self.config_path.exists() and self.never_checkpointed()
        if unstarted:
            self.acquire()  # refuses while its writer is alive
            self.discard()
        if self.config_path.exists() or self.checkpoints.exists():
            raise ConfigError(
                f"{self.path} already holds a run; continue it with --resume {self.path}, "
                "or choose another --out"
            )

    def create(self, cfg: Config) -> None:
        """Start a new run; a folder that already holds one is refused (nothing is overwritten).

        Raises:
            ConfigError: see ``check_new``, or the folder cannot be created.
        """
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run folder {self.path}: {exc.strerror}") from None
        self.acquire()
        try:
            self.check_new()  # another process may have created the run since the first look
        except ConfigError:
            self.release()
            raise
        atomic_write(self.config_path, cfg.to_json() + "\n")

    def discard(self) -> None:
        """Remove what a new run wrote before its first checkpoint (its config, data record,
        metrics, lock), and the folder if nothing else is left in it."""
        self.release()
        for p in (
            self.config_path,
            self.data_path,
            self.metrics_path,
            self.owner_path,
            self.lock_path,
        ):
            p.unlink(missing_ok=True)
        self.remove_stale_temporaries()
        for folder in (self.checkpoints, self.path):
            try:
                folder.rmdir()  # only if empty: a checkpoint or anything of the user's stays
            except OSError:
                pass

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that verifies and is this run's (``is_own_checkpoint``); None
        without one. A checkpoint copied in from a run with another model verified, and its
        weights then failed to load, blocking the run's own older ones (try-out 10, F1): it is
        skipped with a warning, as torn ones are."""
        if not self.checkpoints.is_dir():
            return None
        return latest_checkpoint(self.checkpoints, self.is_own_checkpoint)

    def is_own_checkpoint(self, path: Path) -> None:
        """Refuse a checkpoint saved with other model or data settings than this run's
        ``config.json`` (paths aside: a moved data folder is the same data); one that records
        no readable config passes (the weights' own checks decide).

        Raises:
            CheckpointError: the first setting that differs, and what to do.
        """
        try:
            mine = self.load_config()
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
            saved = Config.from_dict(state["config"])
        except (OSError, ValueError, KeyError, TypeError, CheckpointError, ConfigError):
            return
        diff = differing_settings(saved, mine)
        if diff:
            key, theirs, ours = diff[0]
            raise CheckpointError(
                f"{path}: saved by a run with other settings ({key}={theirs!r}, this run's "
                f"{ours!r}): copied from another run? Move it out of the run folder"
            )

    def never_checkpointed(self) -> bool:
        """No checkpoint folder (a half-written ``.tmp-`` one aside) and no final weights: a
        run killed before its first checkpoint, with nothing to keep."""
        return not list_checkpoints(self.checkpoints) and not self.weights_path.exists()

    def nothing_to_resume(self) -> str:
        """Why a resume of this run has nothing to start from, and what to do instead."""
        if self.never_checkpointed():  # `check_new` clears and reuses such a folder
            return (
                f"{self.path}: no checkpoint to resume from (stopped before its first one); "
                f"start it again with the command that started it (--out {self.path} reuses "
                "the folder)"
            )
        return (
            f"{self.path}: no valid checkpoint to resume from (torn or modified ones are "
            "skipped); start a new run with another --out"
        )

    def last_step(self) -> int:
        """The step of the newest valid checkpoint (0 without one)."""
        ckpt = self.latest_checkpoint()
        return 0 if ckpt is None else checkpoint_step(ckpt) or 0

    def process_count(self) -> int | None:
        """How many processes (``--nproc``) wrote the newest valid checkpoint: its data order
        is saved per process. None without a checkpoint, or one that does not say."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return None
        try:
            batches = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))["batches"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return len(batches) if isinstance(batches, dict) and batches else None

    def set_aside_evaluations(self) -> list[Path]:
        """Rename ``eval.json`` / ``eval-nN.json`` to carry the step of the weights they scored
        (``eval-step80.json``, ``eval-n50-step80.json``), so that a resumed run holds no
        evaluation under the plain name of weights it no longer has (try-out 10, F6); nothing is
        deleted. Returns the new paths."""
        moved = []
        for old in sorted(self.path.glob("eval*.json")):
            stem = old.stem
            if stem != "eval" and not (stem.startswith("eval-n") and stem[6:].isdigit()):
                continue  # already set aside, or not ours
            try:
                step = json.loads(old.read_text(encoding="utf-8")).get("weights_step")
            except (OSError, ValueError, AttributeError):
                step = None
            base = f"{stem}-step{step if step is not None else 'unknown'}"
            new, n = old.with_name(f"{base}.json"), 1
            while new.exists():  # an earlier resume set one aside under that name
                n += 1
                new = old.with_name(f"{base}-{n}.json")
            os.replace(old, new)
            moved.append(new)
        return moved

    def remove_stale_temporaries(self) -> None:
        """Delete half-written checkpoint folders (``.tmp-*``) of a process that was killed."""
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)

    def load_config(self) -> Config:
        """The run's validated ``config.json``.

        Raises:
            CheckpointError: no ``config.json`` (not a run folder).
            ConfigError: the file is not valid JSON or not a valid config.
        """
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such run folder")
        if not self.config_path.is_file():
            inner = [p.parent for p in sorted(self.path.glob("*/config.json"))]
            hint = f" (the run folder inside it: {inner[0]}?)" if len(inner) == 1 else ""
            raise CheckpointError(f"{self.path}: no config.json: not an iresnet run folder{hint}")
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.config_path}: not valid JSON ({exc})") from None
        return Config.from_dict(raw)

    def save_config(self, cfg: Config) -> None:
        """Replace ``config.json`` atomically."""
        atomic_write(self.config_path, cfg.to_json() + "\n")

    def save_data_info(self, data: DataBundle, cfg: DataConfig | None = None) -> None:
        """``data.json``: name, kind, shapes, sizes, dtype, levels, the standardiser's statistics,
        the data's fingerprint and (a user file) its path as given, absolute, and SHA-256."""
        info: dict[str, Any] = {
            "name": data.name,
            "kind": data.kind,
            "event_shape": list(data.event_shape),
            "n_train": int(data.train_x.shape[0]),
            "n_test": int(data.test_x.shape[0]),
            "dtype": str(data.train_x.dtype).removeprefix("torch."),
            "sha256": data_fingerprint(data),
        }
        if data.standardizer is not None:
            info["standardizer"] = data.standardizer.to_dict()
        if data.context_dim:
            info["context_dim"] = data.context_dim
            info["class_context"] = data.class_context
        if data.context_standardizer is not None:
            info["context_standardizer"] = data.context_standardizer.to_dict()
        if data.n_levels is not None:
            info["n_levels"] = data.n_levels
        if data.dequantize_width is not None:
            info["dequantize_width"] = data.dequantize_width
        if cfg is not None and cfg.name == "array" and cfg.path:
            info["file"] = file_fingerprint(cfg.path)
        if cfg is not None and cfg.context_path:
            info["context_file"] = file_fingerprint(cfg.context_path)
        atomic_write(self.data_path, json.dumps(info, indent=2) + "\n")

    def data_info(self) -> dict[str, Any]:
        """``data.json`` as a dict (empty when missing).

        Raises:
            CheckpointError: the file is not valid JSON.
        """
        if not self.data_path.is_file():
            return {}
        try:
            info = json.loads(self.data_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.data_path}: not valid JSON ({exc})") from None
        if not isinstance(info, dict):
            raise CheckpointError(f"{self.data_path}: expected a JSON object")
        return info

    def load_standardizer(self, key: str = "standardizer") -> Standardizer | None:
        """Statistics saved when the run started (so evaluation uses the training units);
        ``key="context_standardizer"`` for those of the contexts."""
        info = self.data_info()
        return Standardizer.from_dict(info[key]) if key in info else None

    def data_config(self, cfg: DataConfig) -> DataConfig:
        """``cfg`` with a user file's path replaced by the absolute one recorded at the start,
        so the run loads the same file from any working directory."""
        info = self.data_info()
        file, context = info.get("file"), info.get("context_file")
        if cfg.name == "array" and isinstance(file, dict) and file.get("absolute"):
            cfg = replace(cfg, path=str(file["absolute"]))
        if cfg.context_path and isinstance(context, dict) and context.get("absolute"):
            cfg = replace(cfg, context_path=str(context["absolute"]))
        return cfg

    def input_files(self) -> list[Path]:
        """The user files the run was trained on (data and contexts), as recorded."""
        info = self.data_info()
        return [
            Path(str(f["absolute"]))
            for f in (info.get("file"), info.get("context_file"))
            if isinstance(f, dict) and f.get("absolute")
        ]

    def data_spec(self) -> DataBundle:
        """What the model needs to know of the data, from ``data.json`` alone: the event shape,
        levels and standardisation (empty tensors stand for the data, which is not read).

        Raises:
            CheckpointError: ``data.json`` is missing or lacks the shape.
        """
        info = self.data_info()
        try:
            shape = tuple(int(s) for s in info["event_shape"])
            kind = str(info["kind"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{self.path}: data.json is missing or lacks the data's shape; "
                "not a complete iresnet run folder"
            ) from None
        # The recorded dtype (a toy's float32, a user file's float64): what the model was fed
        # at evaluation, so that scoring new points feeds them alike.
        recorded = getattr(torch, str(info.get("dtype", "")), None)
        vector_dtype = recorded if isinstance(recorded, torch.dtype) else torch.float64
        dtype = torch.uint8 if kind == "image" else vector_dtype
        empty = torch.empty((0, *shape), dtype=dtype)
        k = int(info.get("context_dim", 0))
        name = str(info.get("name", ""))
        classes = bool(info.get("class_context", False))
        contexts = torch.empty((0, k), dtype=vector_dtype) if k and not classes else None
        labels = torch.tensor([k - 1]) if classes else None  # n_classes = k
        return DataBundle(
            str(info.get("name", "")),
            kind,
            empty,
            empty,
            train_y=labels,
            n_levels=info.get("n_levels"),
            standardizer=self.load_standardizer(),
            dequantize_width=info.get("dequantize_width"),
            train_c=contexts,
            test_c=contexts,
            context_standardizer=self.load_standardizer("context_standardizer"),
            class_context=classes,
            report_contexts=kl_contexts(name) if name in CONDITIONAL_TOYS else None,
        )

    def load_data(self, cfg: DataConfig) -> DataBundle:
        """The run's data, from the absolute path recorded at the start (see ``data_config``)
        and with the training standardisation.

        Raises:
            DataError: the data cannot be loaded; a user file that is gone is named by the
                path it was trained from, with what still works without it.
        """
        try:
            return load_data(
                self.data_config(cfg),
                standardizer=self.load_standardizer(),
                context_standardizer=self.load_standardizer("context_standardizer"),
            )
        except DataError as exc:
            gone = [p for p in self.input_files() if not p.is_file()]
            if gone:
                raise DataError(
                    f"{self.path}: the data it was trained on is gone from {gone[0]}; put the "
                    "file back there to evaluate or resume the run (sample, score and certify "
                    "need no data; in Python, iresnet.load_run(path, data=False))"
                ) from None
            raise exc from None

    def check_data(
        self, data: DataBundle, allow_changed: bool = False, resuming: bool = False
    ) -> None:
        """Refuse data whose fingerprint differs from the one recorded when the run started.

        Runs from before fingerprints were recorded pass. ``allow_changed``: accept it anyway.
        ``resuming``: the message says how to resume (with the original data) instead.

        Raises:
            DataError: the data changed (the message says how, and how to accept it).
        """
        info = self.data_info()
        want = info.get("sha256")
        if want is None or allow_changed:
            return
        got = data_fingerprint(data)
        if got == want:
            return
        shape = [int(data.train_x.shape[0]), int(data.test_x.shape[0])]
        was = [info.get("n_train"), info.get("n_test")]
        how = f" ({was[0]}+{was[1]} rows then, {shape[0]}+{shape[1]} now)" if shape != was else ""
        fix = (
            "restore the original data to resume, or train a new run on the new data"
            if resuming
            else "restore the original data, or pass --allow-changed-data (in Python, "
            "allow_changed_data=True) to score the new data with this model"
        )
        changed = self._changed_files(info)
        which = f" ({', '.join(changed)} changed)" if changed else ""
        raise DataError(
            f"the data changed since this run was trained{how}{which}: fingerprint of the "
            f"loaded data {got[:12]} now, {want[:12]} then; {fix}"
        )

    @staticmethod
    def _changed_files(info: dict[str, Any]) -> list[str]:
        """The recorded data files (data, contexts) whose bytes differ from their record."""
        changed = []
        for key in ("file", "context_file"):
            rec = info.get(key)
            if not isinstance(rec, dict) or not rec.get("absolute") or not rec.get("sha256"):
                continue
            try:
                now = file_fingerprint(rec["absolute"])["sha256"]
            except OSError:
                continue  # a moved file: the loader found the data elsewhere
            if now != rec["sha256"]:
                changed.append(str(rec["absolute"]))
        return changed

    def log(self, row: dict[str, Any]) -> None:
        """Append one JSON row to ``metrics.jsonl``."""
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl`` (a line torn by a crash is skipped)."""
        return self._read_metrics()[0]

    def _read_metrics(self) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        """The rows of ``metrics.jsonl``, and its lines that are not a row (a line torn by a
        crash: cut short, or not a JSON object) as ``(line number, text)``."""
        if not self.metrics_path.is_file():
            return [], []
        rows, torn = [], []
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            elif line.strip():
                torn.append((number, line))
        return rows, torn

    def truncate_metrics(self, step: int) -> str | None:
        """Drop rows logged after ``step`` (by an interrupted run that is now resumed from it),
        and lines that are not a row (torn by the crash that stopped it). Returns the line that
        says what was torn and dropped, or None where nothing was."""
        rows, torn = self._read_metrics()
        kept = [r for r in rows if int(r.get("step", 0)) <= step]
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        if not torn:
            return None
        number, line = torn[-1]
        shown = line if len(line) <= 40 else line[:37] + "..."
        what = (
            f"its torn last line (line {number}: {shown!r})"
            if len(torn) == 1
            else f"{len(torn)} torn lines (the last, line {number}: {shown!r})"
        )
        return (
            f"dropped {what} from {self.metrics_path}: a row cut short when the run was "
            f"stopped; the steps after {step} are logged again as it resumes"
        )

    def save_final_weights(self, model: nn.Module, step: int | None = None) -> None:
        """``model.safetensors``: the final (EMA) weights and buffers, written atomically, with
        the step they belong to and their digest (``weights_digest``) in the file's metadata."""
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        meta = {"sha256": weights_digest(state)}  # checked on load: damage is refused
        if step is not None:
            meta["step"] = str(step)
        atomic_write(self.weights_path, safetensors_bytes(state, metadata=meta))

    def final_step(self) -> int | None:
        """The step recorded in ``model.safetensors`` (None: no file, or written before steps
        were recorded)."""
        if not self.weights_path.is_file():
            return None
        try:
            with safe_open(str(self.weights_path), "pt") as fh:
                step = (fh.metadata() or {}).get("step")
        except (OSError, SafetensorError):
            return None
        return int(step) if step is not None and step.isdigit() else None


def _note_skipped_final_weights(
    run: Run, model: nn.Module, ckpt: Path, ckpt_step: int | None, step: int | None
) -> None:
    """Warn that ``run``'s ``model.safetensors`` is skipped for the newer checkpoint ``ckpt``,
    why, and what to do: weights that do not fit the model (copied in from another run), or
    older ones (an extension not finished). It was skipped silently: only the ``weights:``
    line of ``evaluate`` showed it (a user try-out)."""
    final = run.weights_path
    try:
        load_weights(model, final)  # refuses before it loads anything; the checkpoint follows
    except CheckpointError as exc:
        why = str(exc).removeprefix(f"{final}: ")
        what = "copied from another run? Move it out of the run folder"
    else:
        why = (
            f"its step {step} is older than the newest checkpoint's {ckpt_step}"
            if step is not None and ckpt_step is not None
            else "it is older than the newest checkpoint"
        )
        what = f"an extension not finished? iresnet train --resume {run.path} finishes it"
    warnings.warn(
        f"skipping {final}: {why} ({what}); loaded {ckpt / 'ema.safetensors'}"
        + (f" (step {ckpt_step}) instead" if ckpt_step is not None else " instead"),
        RuntimeWarning,
        stacklevel=3,
    )


@dataclass
class TrainedRun:
    """A run's config, data, task and evaluation model (EMA weights, eval mode), the weights'
    file and the training step they belong to (None where it was not recorded)."""

    run: Run
    cfg: Config
    data: DataBundle
    task: Task
    model: nn.Module
    weights: Path
    step: int | None = None


def load_run(
    run_dir: str | Path,
    device: str | None = None,
    *,
    data: bool = True,
    allow_changed_data: bool = False,
) -> TrainedRun:
    """Rebuild a run's model from its config and load its final (or newest checkpoint) weights.

    Weights come from ``model.safetensors`` (written at the end of training) or, for a run that
    has not finished, the EMA weights of its newest valid checkpoint. Nothing is unpickled.

    Args:
        run_dir: the run folder.
        device: build on this device instead of the run's ``train.device``.
        data: load the data (for evaluation). Without it (sampling, certifying) only
            ``data.json`` is read: the data file may be gone, and the task has no data.
        allow_changed_data: evaluate data whose fingerprint differs from the training data's.

    Raises:
        CheckpointError: not a run folder, or no weights that fit the model.
        DataError: the data cannot be loaded, or changed since training (see
            ``allow_changed_data``).

    Examples:
        >>> import iresnet
        >>> trained = iresnet.load_run("runs/demo")  # doctest: +SKIP
        >>> trained.model(), trained.cfg.preset  # doctest: +SKIP
    """
    run = Run(run_dir)
    cfg = run.load_config()
    if device is not None:
        cfg.train.device = device
    dev = resolve_device(cfg.train.device)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    spec = run.data_spec() if run.data_path.is_file() or not data else None
    if data:
        if spec is None and not allow_changed_data:
            raise CheckpointError(
                f"{run.path}: data.json is missing, so the data cannot be checked against "
                "what the run was trained on; restore the file, or pass --allow-changed-data "
                "(in Python, allow_changed_data=True) to evaluate anyway"
            )
        bundle = run.load_data(cfg.data)
        run.check_data(bundle, allow_changed=allow_changed_data)
    else:
        assert spec is not None
        bundle = spec
        if cfg.model.kind in ("classifier", "hybrid") and bundle.train_y is None:
            # Labelled data without the data: empty labels stand for them, as the empty
            # tensors do for the images (certify, sample and score read no labels).
            no_labels = torch.empty(0, dtype=torch.long)
            bundle = spec = replace(bundle, train_y=no_labels, test_y=no_labels)
    with warnings.catch_warnings():
        # About training with the run's estimator: said when it trained, not on every load.
        warnings.simplefilter("ignore", RouletteVarianceWarning)
        model = build_model(cfg, spec if spec is not None else bundle).to(dev)
    weights, step = run.weights_path, run.final_step()
    ckpt = run.latest_checkpoint()
    ckpt_step = checkpoint_step(ckpt) if ckpt is not None else None
    newer = ckpt is not None and (
        not weights.is_file()
        or (step is not None and ckpt_step is not None and ckpt_step > step)
        or (step is None and ckpt.stat().st_mtime > weights.stat().st_mtime)
    )
    if newer:
        # A run that is not finished (or an extension that was interrupted): the EMA weights of
        # its newest checkpoint, not the final weights of an earlier, shorter plan.
        assert ckpt is not None
        if weights.is_file():
            _note_skipped_final_weights(run, model, ckpt, ckpt_step, step)
        weights, step = ckpt / "ema.safetensors", ckpt_step
    elif not weights.is_file():
        raise CheckpointError(
            f"{run.path}: no model.safetensors and no valid checkpoint to load the model from"
        )
    load_weights(model, weights)
    model.eval()
    return TrainedRun(run, cfg, bundle, make_task(cfg, bundle, dev), model, weights, step)
