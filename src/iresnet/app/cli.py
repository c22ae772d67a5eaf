"""The ``iresnet`` command: ``train``, ``evaluate``, ``sample``, ``score``, ``certify``,
``presets``.

Errors a user can cause (bad config, data, checkpoint, arguments) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from ..certificate import Certificate, certify
from ..datasets import (
    CONDITIONAL_TOYS,
    IMAGE_DATASETS,
    TOY_DATASETS,
    check_dataset_options,
    check_train_subset,
)
from ..datasets.arrays import check_array_file
from ..datasets.images import check_image_files, train_size
from ..errors import CheckpointError, ConfigError, IResNetError
from . import plots, scoring
from .allocator import retain_freed_memory
from .checkpoint import checkpoint_step
from .config import SECTIONS, Config, check_seed, repeated_keys
from .distributed import check_precision, parse_device, resolve_device
from .files import atomic_write, json_safe, out_path
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .runs import Run, load_run
from .sweep import add_sweep_parser, cmd_sweep
from .tasks.base import inverse_summary
from .trainer import check_batch_size, learning_rate, warmup_outlasts_run
from .training import missing_figures, redraw_figures, train
from .words import count

__all__ = ["main", "build_parser"]

#: Samples drawn per inverse call by ``iresnet sample`` (with a progress bar beyond one call).
_SAMPLE_CHUNK = 1024

#: The most values (samples x their size, over every context) one ``iresnet sample`` call
#: draws: 80 MB as float64, held in memory before it is written (minutes of inverses at most).
SAMPLE_MAX_VALUES = 10_000_000


def _attribute_docs(cls: type) -> dict[str, str]:
    """Each field's meaning from the ``Attributes:`` section of ``cls``'s docstring (entries
    like ``name: text``, ``a, b: text`` or ``a: text; b: text``), whitespace collapsed."""
    doc = inspect.getdoc(cls) or ""
    if "Attributes:" not in doc:
        return {}
    entries: list[tuple[list[str], str]] = []
    for line in doc.split("Attributes:", 1)[1].splitlines():
        head = re.match(r"^    ([a-z_][\w, ]*):\s(.*)$", line)
        if head:
            entries.append(([n.strip() for n in head.group(1).split(",")], head.group(2)))
        elif line.startswith("        ") and entries:
            names, text = entries[-1]
            entries[-1] = (names, f"{text} {line.strip()}")
    known = {f.name for f in fields(cls)}
    docs: dict[str, str] = {}
    for names, text in entries:
        # "n_terms: series terms; n_exact: ...; roulette_p: ..." holds several fields.
        parts = re.split(r";\s+([a-z_][\w, ]*):\s", text)
        groups, i = [(names, parts[0])], 1
        while i < len(parts) - 1:
            more = [n.strip() for n in parts[i].split(",")]
            if set(more) <= known:
                groups.append((more, parts[i + 1]))
            else:  # "(toy: in total; images: per scale)": words, not fields
                groups[-1] = (groups[-1][0], f"{groups[-1][1]}; {parts[i]}: {parts[i + 1]}")
            i += 2
        for group, meaning in groups:
            meaning = meaning.replace("``", "").strip()
            if meaning.endswith(".") and not meaning.endswith("..."):
                meaning = meaning[:-1]
            for name in group:
                docs.setdefault(name, meaning)
    return docs


def _config_keys_help() -> str:
    lines = ["config keys (override as KEY=VALUE, e.g. model.coeff=0.8 or coeff=0.8):"]
    for section, cls in SECTIONS.items():
        docs = _attribute_docs(cls)
        lines.append(f"  {section}:")
        for f in fields(cls):
            default = f.default if f.default is not MISSING else "-"
            meaning = docs.get(f.name, "")
            lines.append(f"    {section}.{f.name}={default}  {meaning}".rstrip())
    return "\n".join(lines)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, as the command's own errors are: the usage
    block printed above them buried the message (try-out 8, F10). The benchmark scripts'
    parsers are of this kind too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``iresnet`` argument parser with its sub-commands."""
    parser = OneLineParser(
        prog="iresnet",
        description="Invertible Residual Networks and Residual Flows: "
        "train, evaluate, sample, certify.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of its one-line message",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "train",
        help="train a model (default: the 2-D toy model on 8gaussians)",
        formatter_class=fmt,
        epilog=_config_keys_help(),
        description="Train a preset, with any config field overridden as KEY=VALUE. "
        "The resolved config is printed and saved in the run folder.",
    )
    p.add_argument(
        "preset",
        nargs="?",
        default=None,
        help="preset name (see `iresnet presets`; default toy-8gaussians)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-3"
    )
    p.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="run folder to create (default runs/PRESET, or runs/PRESET-2, ... if taken)",
    )
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (train.steps)")
    p.add_argument("--seed", type=int, default=None, help="training seed (train.seed)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (train.device)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="your own (N, d) data as .npy or .csv (sets data.name=array, data.path)",
    )
    p.add_argument(
        "--context",
        type=Path,
        default=None,
        help="contexts (N, k) as .npy or .csv, row i the context of data row i: trains the "
        "conditional density p(x | c) (sets data.context_path; needs --data)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding an image set's files (data.data_dir)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its newest valid checkpoint (with --steps to extend it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="data-parallel processes on this machine: re-launches itself under "
        "`torchrun --standalone --nproc_per_node=N` (DDP; gloo on CPU, nccl on GPU)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and print it whole (JSON), then stop: the config's own checks "
        "run (data options, data files not there, a batch or data.train_subset above a "
        "training set whose size is known, an --out that holds a run), the machine's do not "
        "(a --device this machine lacks: a GPU config prints on a CPU machine); the data is "
        "not read, so a model that does not fit the data's shape is refused only by train",
    )
    p.add_argument(
        "--verbose", action="store_true", help="print the whole resolved config, not a summary"
    )

    p = sub.add_parser(
        "evaluate",
        help="evaluate a run: test likelihood, gap to truth, inverse, certificate",
        description="Evaluate a trained run: the test likelihood (exact log-dets up to 64 "
        "dimensions, above an unbiased Russian roulette whose law comes from the certified "
        "Lipschitz bound, its name in 'estimator'), the inverse's reconstruction error and "
        "the Lipschitz certificate.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar over the test batches (on stderr, from 8 batches on)",
    )
    p.add_argument("--device", default=None, help="evaluate on this device instead of the run's")
    p.add_argument(
        "--n-inverse",
        type=int,
        default=None,
        help="test points reconstructed through the inverse (default: 512, at most --n-test)",
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="evaluate on the first N test points only (default: all; the standard error is "
        "over the points evaluated; N >= 2); saved as eval-nN.json, leaving a full eval.json as "
        "it is (N at or above the test size: the whole set, saved as eval.json)",
    )
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="evaluate even if the data's fingerprint differs from the training data's",
    )
    _add_scoring_seed(p)

    p = sub.add_parser(
        "sample",
        help="draw samples from a trained flow (by inverting it)",
        description="Draw samples x = f^{-1}(z), z from the base with its spread scaled by T "
        "(N(0, T^2 I); mu + T sigma eps for model.base=diagonal), and save them.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument(
        "-n",
        "--num",
        type=int,
        default=1000,
        help=f"number of samples (per context); one call draws at most {SAMPLE_MAX_VALUES:,} "
        "values (samples x their size: 5,000,000 2-D points, 12,755 28x28 images): draw more "
        "in several calls with different --seed",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="scale T of the base normal")
    p.add_argument("--device", default=None, help="sample on this device instead of the run's")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (drawn beyond one batch of samples, as train's)",
    )
    p.add_argument(
        "--out",
        type=out_path,
        default=None,
        help="output file: .npy (array), .csv or .png (picture); default RUN_DIR/samples.npy, "
        "the run's scratch sample, replaced by each call without --out. "
        "A .csv has a header row x1..xd; conditional runs keep each sample's context: a .csv "
        "gets the columns x1..xd, c1..ck (or label, for class-conditional runs); a .npy is "
        "paired with "
        "NAME.contexts.npy, row i the context of sample i (a file --context reads back)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (never the data); an --out that exists is "
        "refused without it",
    )
    p.add_argument(
        "--context",
        default=None,
        help="conditional runs: the context(s) to sample at: numbers 'a,b' (one context), "
        "'a,b;c,d' (several), a class label for class-conditional images, or a .npy/.csv file "
        "of rows; NUM samples per context (default: every class, the run's reporting "
        "contexts, or else the training contexts' mean, which a note on stderr names)",
    )

    p = sub.add_parser(
        "score",
        help="the log-density of new data under a trained flow or hybrid",
        description="Score new points: log p(x) (log p(x | c) with --context) in the data's own "
        "units (nats; images also bits/dim), with the estimator named and, where it is "
        "stochastic, the standard error of every point.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the points: (N, d) .npy/.csv for vector runs; for image runs (flows and "
        "hybrids) a .npy of images (N, C, H, W) or flattened rows (N, C*H*W), or a .csv of "
        "flattened rows (N, C*H*W) as `iresnet sample --out x.csv` writes them (a header row "
        "x1..xD allowed), holding integer levels 0..K-1 (an integer dtype; in a .csv whole "
        "numbers such as 3, not 3.0) or floats in [0, 1] as `iresnet sample` writes them (each "
        "read as the level it falls in)",
    )
    p.add_argument(
        "--context",
        default=None,
        help="conditional runs: a .npy/.csv file of (N, k) contexts, row i the context of "
        "point i; or numbers 'a,b' (one context for every point), as `iresnet sample` takes "
        "them. Not needed for a .csv that `iresnet sample` wrote (header x1..xd,c1..ck, or "
        "x1..xd,label): its context columns are read",
    )
    p.add_argument(
        "--out",
        type=out_path,
        required=True,
        help="output .csv (a header row, one row per point) or .npy ((N, columns) float64)",
    )
    p.add_argument("--device", default=None, help="score on this device instead of the run's")
    p.add_argument(
        "--repeats",
        type=int,
        default=8,
        help="evaluations per point with a stochastic estimator, >= 2 (their spread gives the "
        "SE); an exact log-det is evaluated once",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_scoring_seed(p)

    p = sub.add_parser(
        "certify",
        help="print every residual block's Lipschitz bound",
        description="Certify invertibility: every block's Lip(g) bound must be < 1.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    sub.add_parser("presets", help="list the presets", description="List the named presets.")
    add_sweep_parser(sub)
    return parser


def _add_scoring_seed(p: argparse.ArgumentParser) -> None:
    """``--seed`` of ``evaluate`` and ``score``."""
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random parts (roulette draws, probes, dequantisation noise): the "
        "same seed gives the same numbers",
    )


def _resolve_train_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    preset = args.preset
    if preset is not None and "=" in preset:  # `iresnet train lr=1e-3` without a preset name
        overrides.insert(0, preset)
        preset = None
    cfg = get_preset(preset or DEFAULT_PRESET)
    extra = []
    if args.steps is not None:
        extra.append(f"train.steps={args.steps}")
    if args.seed is not None:
        extra.append(f"train.seed={args.seed}")
    if args.device is not None:
        extra.append(f"train.device={args.device}")
    if args.data is not None:
        extra += ["data.name=array", f"data.path={args.data}"]
    if args.context is not None:
        if args.data is None:
            raise ConfigError("--context pairs contexts with your data: pass --data FILE too")
        extra.append(f"data.context_path={args.context}")
    if args.data_dir is not None:
        extra.append(f"data.data_dir={args.data_dir}")
    for note in repeated_keys(overrides):
        print(f"iresnet: note: {note}", file=sys.stderr)
    cfg = cfg.override(extra + overrides)
    if args.data is not None and (cfg.data.name, cfg.data.path) != ("array", str(args.data)):
        # an override (data.path=, path=, name=, ...) that says otherwise would win silently
        raise ConfigError(
            f"--data {args.data} trains on that file, but the overrides give data.name="
            f"{cfg.data.name} data.path={cfg.data.path}: give one of them"
        )
    # The other flags that set a key: an override of the same key would win silently too.
    for flag, given, key, got in (
        ("--steps", args.steps, "train.steps", cfg.train.steps),
        ("--seed", args.seed, "train.seed", cfg.train.seed),
        ("--device", args.device, "train.device", cfg.train.device),
        ("--context", args.context, "data.context_path", cfg.data.context_path),
        ("--data-dir", args.data_dir, "data.data_dir", cfg.data.data_dir),
    ):
        same = _same_path(got, given) if key.startswith("data.") else str(got) == str(given)
        if given is not None and not same:
            raise ConfigError(f"{flag} {given} and the override {key}={got} disagree: give one")
    return cfg


def _same_path(a: object, b: object) -> bool:
    """One file or folder written two ways (``/tmp/a`` and ``/tmp/a/``, relative and absolute)."""
    return a is not None and os.path.abspath(str(a)) == os.path.abspath(str(b))


def _run_name(cfg: Config) -> str:
    """A new run's default folder name: the data file's stem for ``--data``, else the preset."""
    if cfg.data.name == "array" and cfg.data.path:
        return Path(cfg.data.path).stem or cfg.preset
    return cfg.preset


def _free_run_dir(name: str) -> Path:
    base = Path("runs") / name
    path, i = base, 2
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    rest, skip = [], False
    for a in argv:  # drop --nproc N / --nproc=N, torchrun provides the processes
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "iresnet",
        *rest,
    ]
    return subprocess.call(cmd, env=os.environ.copy())


_NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def _join_negative_contexts(argv: list[str]) -> list[str]:
    """``--context -0.5,1`` as ``--context=-0.5,1``: argparse takes a value that starts with
    ``-`` for an option unless it reads as one plain negative number."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--context" and i + 1 < len(argv) and _NEGATIVE_NUMBER.match(argv[i + 1]):
            out.append(f"--context={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _use_run_threads(cfg: Config) -> None:
    """Evaluate, sample, score and certify with the run's ``train.threads`` (0: torch's
    default), as it trained: small models lose much when more threads share busy cores."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)


def _config_summary(cfg: Config) -> str:
    """The resolved config in a few lines: what is trained, on what, for how long."""
    m, d, t = cfg.model, cfg.data, cfg.train
    data = f"{d.name} ({d.path})" if d.name == "array" else d.name
    if d.context_path:
        data += f", contexts {d.context_path}"
    if d.train_subset:
        data += f" ({count(d.train_subset, 'training image')}, data.train_subset)"
    size = m.size()
    norm = m.lipschitz_norm if m.constrained else "unconstrained"
    budget = "".join(
        f", {label} {v:g} s"
        for label, v in (("wall budget", t.max_seconds), ("CPU budget", t.max_cpu_seconds))
        if v > 0
    )
    return "\n".join(
        [
            f"preset {cfg.preset}"
            + (" (its model and training, on your data)" if d.name == "array" else "")
            + f": {m.kind} model, {size}, "
            + ("monotone blocks, " if m.block == "monotone" else "")
            + f"{m.activation}, coeff {m.coeff:g} ({norm}), log-det {m.logdet}",
            f"data {data}; train {count(t.steps, 'step')}{budget}, batch {t.batch_size}, "
            f"{t.optimizer} lr {t.lr:g} ({t.lr_schedule}), seed {t.seed}, device {t.device}",
        ]
        + (
            [
                f"note: train.warmup_steps={t.warmup_steps} is not below the run's "
                f"{count(t.steps, 'step')}, so the learning rate stays below {t.lr:g} "
                "(lower train.warmup_steps for a short run)"
            ]
            if warmup_outlasts_run(cfg)
            else []
        )
    )


def _check_before_start(cfg: Config, out: Path | None = None, *, fresh: bool = True) -> None:
    """Refuse, before the summary is printed, what the config's own checks leave to the start:
    the config's mistakes (``_check_config``) and a device this machine lacks."""
    _check_config(cfg, out, fresh=fresh)
    resolve_device(cfg.train.device)


def _check_config(cfg: Config, out: Path | None = None, *, fresh: bool = True) -> None:
    """The checks of the config itself, which ``train --dry-run`` runs too: data options that
    the data set does not take (after the flags that set them were compared with the
    overrides), data files that are not there (an image set's, found by name; of a ``fresh``
    run, your data and contexts files: a resumed run reads them from the absolute paths it
    recorded), fp16 on a CPU named in the config, a batch or a training subset larger than a
    training set whose size is known before it is read (the config's ``data.n_train`` or
    ``data.train_subset``, digits' constant, an IDX file's header), and an ``--out``
    (``out``) that holds a run. Not whether this machine has the device: a GPU config
    checked on a laptop is a config, not a mistake."""
    d = cfg.data
    check_dataset_options(
        d.name,
        class_context=d.class_context,
        data_dir=d.data_dir,
        train_subset=d.train_subset,
    )
    check_precision(cfg.train.precision, parse_device(cfg.train.device))
    # A user array's size is known once it is read, as training starts: the trainer checks it;
    # a file not there (or empty) is found now, as an image set's (try-out 15).
    if fresh and d.name == "array":
        for path in (d.path, d.context_path):
            if path:
                check_array_file(path)
    if d.name in TOY_DATASETS or d.name in CONDITIONAL_TOYS:
        check_batch_size(cfg.train.batch_size, d.n_train, " (data.n_train)")
    elif d.name in IMAGE_DATASETS:
        # Files not there were found only after the summary, as training read them; a dry run
        # passed (try-out 15). Found by name alone: the loader checks what they hold.
        check_image_files(d.name, d.data_dir)
        # digits' size is a constant, an IDX file's is in its header; others are counted.
        full = train_size(d.name, d.data_dir)
        if full is not None and d.train_subset:
            check_train_subset(d.name, d.train_subset, full)
        if d.train_subset:
            check_batch_size(cfg.train.batch_size, d.train_subset, " (data.train_subset)", "images")
        elif full is not None:
            check_batch_size(cfg.train.batch_size, full, f" of {d.name}", "images")
    if out is not None and os.environ.get("RANK", "0") == "0":
        Run(out).check_new()  # the trainer looks again (every rank) before it writes


def _print_config(cfg: Config, verbose: bool = False, resumed_from: int | None = None) -> None:
    """The resolved config on stderr, once (under torchrun only rank 0 prints): a summary, or
    the whole JSON with ``verbose`` (the run folder's ``config.json`` always holds it all);
    then, for a resumed run, the step it continues from (``resumed_from``), with or without a
    progress bar, so that its start is not read as a fresh run's."""
    if os.environ.get("RANK", "0") == "0":
        print(cfg.to_json() if verbose else _config_summary(cfg), file=sys.stderr)
        if resumed_from is not None:
            print(f"resumed from step {resumed_from} of {cfg.train.steps}", file=sys.stderr)


def _resume_budgets(args: argparse.Namespace) -> list[str]:
    """The new time budgets ``--resume`` was given; refuse whatever else would change the saved
    config (a preset, other overrides, flags that set data, seed or device)."""
    overrides = list(args.overrides)
    preset = args.preset
    if preset is not None and "=" in preset:  # an override in the preset's place
        overrides.insert(0, preset)
        preset = None
    # The time budget is not part of the model: a run that spent it may be given more.
    budgets = [o for o in overrides if o.split("=", 1)[0].split(".")[-1] in _BUDGET_KEYS]
    overrides = [o for o in overrides if o not in budgets]
    ignored = [
        flag
        for flag, value in (
            ("a preset", preset),
            ("KEY=VALUE overrides", overrides),
            ("--seed", args.seed),
            ("--out", args.out),
            ("--data", args.data),
            ("--context", args.context),
            ("--data-dir", args.data_dir),
            ("--device", args.device),
        )
        if value
    ]
    if ignored:
        raise ConfigError(
            f"--resume continues a run with its saved config; it takes --steps (to extend "
            f"it) and a new time budget (train.max_seconds=, train.max_cpu_seconds=), not "
            f"{', '.join(ignored)}"
        )
    return budgets


def _cmd_train(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():  # the filters that keep skipped checkpoints named once
        return _train_command(args)


def _resume_checkpoint(run: Run) -> Path | None:
    """``run``'s newest valid checkpoint, the skipped ones named now (on the main process),
    before anything else a resume prints: a torn checkpoint's warning came after "resumed from
    step N", and after the summary of a resume that then failed (a user try-out). The trainer,
    which looks again, names none of them twice (filters in ``_cmd_train``'s scope)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        checkpoint = run.latest_checkpoint()
    for w in caught:
        if os.environ.get("RANK", "0") == "0":
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        if issubclass(w.category, RuntimeWarning):
            warnings.filterwarnings(
                "ignore", message=re.escape(str(w.message)) + r"\Z", category=w.category
            )
    return checkpoint


def _train_command(args: argparse.Namespace) -> int:
    if args.resume is not None:
        run = Run(args.resume)
        cfg = run.load_config()
        budgets = _resume_budgets(args)
        if budgets:
            cfg = cfg.override(budgets)
        if not args.dry_run and os.environ.get("RANK", "0") == "0":
            # A run still training may have no checkpoint yet: its writer is named, not a run
            # that "stopped before its first one" (a user try-out).
            run.check_no_writer()
        checkpoint = _resume_checkpoint(run)
        if checkpoint is None:  # before any --steps arithmetic, the summary and "resumed from"
            raise CheckpointError(run.nothing_to_resume())
        done = checkpoint_step(checkpoint) or 0
        if args.steps is None and done >= cfg.train.steps and run.weights_path.is_file():
            # Finished comes before a spent budget: a final evaluation may have gone past the
            # budget, and more budget alone would only lead here (try-out 14, F5).
            finished = f"{run.path} already finished ({done} of {count(cfg.train.steps, 'step')})"
            try:
                missing = _quietly(missing_figures, run.path)
            except IResNetError:  # e.g. no data.json, a device not here: cannot tell, as before
                missing = []
            if not missing:
                spent = _spent_budgets(run, cfg)
                if spent:
                    raise ConfigError(
                        f"{finished} and has spent its {_budget_words(spent)}: extend it with "
                        f"--resume {run.path} --steps N (N > {done}) "
                        f"{_more_budget(spent, 'TW')}, or evaluate it"
                    )
                raise ConfigError(
                    f"{finished}: extend it with --resume {run.path} --steps N (N > {done}), "
                    "or evaluate it"
                )
            if args.dry_run:
                print(cfg.to_json())
                return 0
            # Killed while it drew its final pictures: draw those it lacks, as training does.
            _use_run_threads(cfg)
            try:
                redraw_figures(run.path, missing)
            except (ValueError, FloatingPointError) as exc:
                raise ConfigError(
                    f"{finished}, but {', '.join(missing)} could not be drawn ({exc}); extend "
                    f"it with --resume {run.path} --steps N (N > {done}), or evaluate it"
                ) from None
            print(f"{finished}; redrew its missing pictures: {', '.join(missing)}")
            return 0
        if args.steps is not None:
            if args.steps <= done:
                raise ConfigError(
                    f"{run.path} is at step {done}: --steps {args.steps} would not extend it"
                )
            final = run.final_step() if run.weights_path.is_file() else -1
            interrupted = final is not None and final < done
            if interrupted and args.steps <= cfg.train.steps:
                # It would shrink the plan and restart the cosine a few steps from its end.
                raise ConfigError(
                    f"{run.path} stopped at step {done} of its planned {cfg.train.steps}: "
                    f"--resume {run.path} continues the plan; --steps N extends it (N > "
                    f"{cfg.train.steps})"
                )
            extend = [f"train.steps={args.steps}"]
            if cfg.train.lr_schedule == "cosine":  # a warm restart from where the run is
                extend.append(f"train.cycle_start={done}")
            cfg = cfg.override(extend)
        spent = _spent_budgets(run, cfg)
        if spent:  # it would train one step and stop
            steps = f" --steps {args.steps}" if args.steps is not None else ""
            raise ConfigError(
                f"{run.path} has spent its {_budget_words(spent)}: give it more with "
                f"--resume {run.path}{steps} {_more_budget(spent, 'NM')}"
            )
        if args.dry_run:
            _check_config(cfg, fresh=False)
            print(cfg.to_json())
            return 0
        _check_before_start(cfg, fresh=False)
        _print_config(cfg, args.verbose, resumed_from=done)
        result = train(cfg, run.path, resume=True, progress=not args.no_progress)
    else:
        cfg = _resolve_train_config(args)
        if args.dry_run:
            _check_config(cfg, args.out)
            print(cfg.to_json())
            return 0
        _check_before_start(cfg, args.out)
        _print_config(cfg, args.verbose)
        out = args.out or _free_run_dir(_run_name(cfg))
        result = train(cfg, out, progress=not args.no_progress)
    verb = "finished" if result.stopped == "finished" else "stopped by a signal (checkpoint saved)"
    if result.is_main:
        rows = Run(result.run_dir).records()
        last = dict(result.last_metrics or _last_logged(rows))
        test_step = None
        if not any(k.startswith("test_") for k in last):  # stopped between evaluations
            test_step, test = _latest_test(rows)
            last.update(test)
        n_eval = result.task.n_evaluated(cfg.train.eval_batches) if result.task else None
        n_test = result.task.n_evaluated(None) if result.task else None
        metrics = _describe_metrics(last, n_eval, test_step, cfg.train.ema_decay > 0, n_test)
        if result.budget is not None:
            cap = f"train.{result.budget}={getattr(cfg.train, result.budget):g}"
            verb = f"stopped by its {_BUDGET_NAMES[result.budget]} budget ({cap})"
            print(
                f"{verb} at step {result.step} of the planned {cfg.train.steps}: {metrics}; "
                f"run folder: {result.run_dir}"
            )
            _note_cosine_cut_short(cfg, result.step)
        else:
            print(f"{verb} at step {result.step}: {metrics}; run folder: {result.run_dir}")
    if result.stopped == "finished":
        return 0
    # Stopped by a signal: the shell's convention 128 + signal, so `train ... && next` stops.
    return 128 + (result.signal or signal.SIGINT)


_UNITS = {"nll": "nats", "bpd": "bits/dim", "acc": "", "accuracy": "", "error": ""}


_BUDGET_KEYS = ("max_seconds", "max_cpu_seconds")
_BUDGET_NAMES = {"max_seconds": "wall-clock", "max_cpu_seconds": "CPU"}


def _note_cosine_cut_short(cfg: Config, step: int) -> None:
    """After a time budget stopped a run at ``step``, before ``train.steps``: where its
    schedule is the step-based cosine, one note that the learning rate had not decayed (the
    cosine runs to ``train.steps``) and that ``cosine-budget`` decays it over the budget."""
    if cfg.train.lr_schedule != "cosine" or step >= cfg.train.steps:
        return
    # The cosine's own factor: a warm-up the budget cut short is not the cosine's doing.
    share = learning_rate(cfg.override(["train.warmup_steps=0"]), step) / cfg.train.lr
    print(
        f"iresnet: note: the cosine learning rate was still at {share:.0%} of its peak at "
        f"step {step} (it decays over train.steps={cfg.train.steps}); set "
        "train.lr_schedule=cosine-budget to decay it over the time budget",
        file=sys.stderr,
    )


_T = TypeVar("_T")


def _quietly(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` without its skipped-checkpoint warnings: the trainer, which reads the
    same checkpoints next, names each torn one once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args)


def _spent_budgets(run: Run, cfg: Config) -> list[tuple[str, str, float, float]]:
    """The time budgets of ``cfg`` that ``run``'s newest checkpoint has spent, as
    ``(key, what, spent, cap)``: a run resumed with one would train one step and stop."""
    checkpoint = _quietly(run.latest_checkpoint)
    if checkpoint is None:
        return []  # the trainer says there is nothing to resume
    try:
        clocks = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # a torn checkpoint: the trainer's own check names it
    spent = []
    for key, saved, what in (
        ("max_cpu_seconds", "cpu_elapsed", "CPU"),
        ("max_seconds", "elapsed", "wall-clock"),
    ):
        cap = getattr(cfg.train, key)
        used = float(clocks.get(saved, 0.0))
        if cap > 0 and used >= cap:
            spent.append((key, what, used, cap))
    return spent


def _budget_words(spent: list[tuple[str, str, float, float]]) -> str:
    """``CPU budget (4 s of train.max_cpu_seconds=3)``, or both budgets in one phrase."""
    whats = " and ".join(what for _, what, _, _ in spent)
    amounts = ", ".join(f"{used:.1f} s of train.{key}={cap:g}" for key, _, used, cap in spent)
    return f"{whats} budget{'s' if len(spent) > 1 else ''} ({amounts})"


def _more_budget(spent: list[tuple[str, str, float, float]], letters: str) -> str:
    """The overrides that give each spent budget more: ``train.max_cpu_seconds=N (N > 4; 0:
    none)``; a second budget takes the second of ``letters``."""
    return " ".join(
        f"train.{key}={n} ({n} > {used:.1f}; 0: none)"
        for n, (key, _, used, _) in zip(letters, spent, strict=False)
    )


def _last_logged(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The newest value of every metric in ``metrics.jsonl`` rows (for a resumed run that
    logged nothing new before it stopped)."""
    skip = {"step", "loss", "lr", "grad_norm", "seconds", "cpu_seconds", "bad_in_row"}
    last: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)):
                last[key] = float(value)
    return last


def _latest_test(rows: list[dict[str, Any]]) -> tuple[int | None, dict[str, float]]:
    """The step and values of the newest periodic test estimate in ``metrics.jsonl`` rows."""
    for row in reversed(rows):
        test = {k: float(v) for k, v in row.items() if k.startswith("test_")}
        if test:
            return int(row.get("step", 0)), test
    return None, {}


def _describe_metrics(
    last: dict[str, float],
    n_eval: int | None,
    test_step: int | None = None,
    ema: bool = True,
    n_test: int | None = None,
) -> str:
    """The final line's numbers with their units and what they are: the last training batch's
    loss terms, and the periodic test estimate on ``n_eval`` of the ``n_test`` test samples
    (EMA weights, or the trained weights without an EMA; at ``test_step`` when that is earlier
    than the line's step). Only an estimate on part of the test set points to
    ``iresnet evaluate`` for the whole."""
    parts = []
    for key, value in last.items():
        if key.endswith("_se"):
            continue
        test = key.startswith("test_")
        name = key.removeprefix("test_")
        unit = _UNITS.get(name, "")
        se = last.get(f"{key}_se")
        number = f"{value:.4f}" + (f" +- {se:.4f}" if se is not None and math.isfinite(se) else "")
        parts.append(f"{'test' if test else 'train'} {name} {number}{' ' + unit if unit else ''}")
    whole = n_eval is not None and n_eval == n_test
    on = f"{n_eval} test samples" if n_eval is not None else "a test subset"
    if whole:
        on = f"all {on}"
    said = {p.split(" ", 1)[0] for p in parts}  # describe only what the line shows
    what = []
    if "train" in said:
        what.append("train: last logged batch")
    if "test" in said:
        at = f" at step {test_step}" if test_step is not None else ""
        weights = "EMA weights" if ema else "the trained weights (no EMA)"
        pointer = "" if whole else "; `iresnet evaluate` scores the whole test set"
        what.append(f"test: {on}{at}, {weights}{pointer}")
    tail = f" ({'; '.join(what)})" if parts else ""
    return ", ".join(parts) + tail if parts else "no metrics logged"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _evaluation_bar(batches: Iterable[Any], total: int) -> Iterable[Any]:
    """A progress bar on stderr over an evaluation's test batches (none below 8 batches)."""
    return tqdm(
        batches, total=total, desc="evaluate", unit="batch", disable=total < 8, file=sys.stderr
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.n_inverse is not None and args.n_inverse < 1:
        raise ConfigError(f"--n-inverse must be >= 1, got {args.n_inverse}")
    if args.n_test is not None and args.n_test < 2:
        raise ConfigError(f"--n-test must be >= 2 (a standard error needs two), got {args.n_test}")
    check_seed("--seed", args.seed)
    trained = load_run(args.run_dir, device=args.device, allow_changed_data=args.allow_changed_data)
    _use_run_threads(trained.cfg)
    torch.manual_seed(args.seed)
    if not args.no_progress:  # a full Fashion-MNIST evaluation is minutes of silence otherwise
        trained.task.progress = _evaluation_bar
    result = trained.task.full_evaluation(
        trained.model, n_inverse=args.n_inverse, n_test=args.n_test
    )
    result["run_dir"] = str(trained.run.path)
    result["seed"] = args.seed
    result["weights"] = str(trained.weights)
    result["weights_step"] = trained.step
    result = json_safe(result)
    # Print first: a read-only run folder still answers.
    if args.json:
        print(json.dumps(result, allow_nan=False), flush=True)
    else:
        shown = dict(result)
        cert = shown.pop("certificate")
        per_context = shown.pop("kl_per_context", None)
        # None: a quantity this data set has not (--json keeps it as null)
        shown = {k: v for k, v in shown.items() if v is not None}
        width = max(map(len, [*shown, "KL to the truth at"]))  # long keys kept the colons apart
        for key, value in shown.items():
            print(f"{key:>{width}}: {_fmt(value)}")
        if per_context:
            print(f"{'KL to the truth at':>{width}}: context -> KL (nats) +- SE")
            for row in per_context:
                ctx = ", ".join(f"{v:.4g}" for v in row["context"])
                print(f"{'':>{width}}  ({ctx}) -> {_fmt(row['kl'])} +- {_fmt(row['kl_se'])}")
        print(Certificate.from_dict(cert), flush=True)
    # A partial evaluation has a file of its own: it never replaces the whole test set's.
    partial = args.n_test is not None and args.n_test < trained.data.test_x.shape[0]
    name = f"eval-n{args.n_test}.json" if partial else "eval.json"
    try:
        atomic_write(trained.run.path / name, json.dumps(result, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        print(
            f"iresnet evaluate: note: {name} not saved in {trained.run.path} ({exc.strerror})",
            file=sys.stderr,
        )
    return 0


def _check_sample_size(num: int, dim: int, n_contexts: int) -> None:
    """Refuse, before any inverse, more than ``SAMPLE_MAX_VALUES`` values in one call (a typo of
    ``-n`` ran for hours and filled the disk)."""
    values = num * dim * n_contexts
    if values > SAMPLE_MAX_VALUES:
        most = SAMPLE_MAX_VALUES // (dim * n_contexts)
        per = f" at each of {n_contexts} contexts" if n_contexts > 1 else ""
        raise ConfigError(
            f"--num {num}{per} asks for {values:,} values ({dim} per sample); one call draws "
            f"at most {SAMPLE_MAX_VALUES:,} (--num {most} here): draw more in several calls "
            "with different --seed (and --out)"
        )


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a finite positive number, got {args.temperature}")
    if args.out is not None and args.out.suffix not in (".npy", ".csv", ".png"):
        raise ConfigError(f"--out must end in .npy, .csv or .png, got '{args.out.suffix}'")
    check_seed("--seed", args.seed)
    # data.json holds all sampling needs
    trained = load_run(args.run_dir, device=args.device, data=False)
    _use_run_threads(trained.cfg)
    task = trained.task
    contexts = None
    if args.context is not None:
        contexts = scoring.parse_contexts(task, args.context)
    elif getattr(task, "context_dim", 0):
        contexts = task.default_contexts()  # type: ignore[attr-defined]
        _note_default_context(task, contexts)
    _check_sample_size(args.num, task.dim, 1 if contexts is None else len(contexts))
    out = args.out or trained.run.path / "samples.npy"
    inputs = [*trained.run.input_files(), *_context_file(args.context)]
    overwrite = args.overwrite and args.out is not None
    _check_out(out, inputs, overwrite, default=args.out is None)
    contexts_out = None
    if contexts is not None and out.suffix == ".npy":
        contexts_out = out.with_name(f"{out.stem}.contexts.npy")
        _check_out(contexts_out, inputs, overwrite, default=args.out is None)
    _warn(args.command, scoring.extrapolation_warning(task, contexts))
    torch.manual_seed(args.seed)
    chunks, converged, worst, bound, solve_bound = [], True, 0.0, None, None
    if contexts is not None:
        x, diags = task.sample(  # type: ignore[call-arg]
            trained.model, args.num, temperature=args.temperature, contexts=contexts
        )
        reports = [(x, diags)]
    else:
        reports = []
        chunk = _SAMPLE_CHUNK
        with tqdm(
            total=args.num,
            desc="sample",
            unit="sample",
            disable=args.no_progress or args.num <= chunk,
            file=sys.stderr,
        ) as bar:
            for start in range(0, args.num, chunk):
                m = min(chunk, args.num - start)
                reports.append(task.sample(trained.model, m, temperature=args.temperature))
                bar.update(m)
    for x, diags in reports:
        chunks.append(x.cpu())
        converged &= diags.all_converged
        worst = _worst(worst, *(float(d.residual.max()) for d in diags))
        if diags.error_bound is not None and diags.error_bound.numel():
            bound = _worst(bound, float(diags.error_bound.max()))
        per_solve = inverse_summary(diags)["inverse_solve_error_bound"]
        if per_solve is not None:
            solve_bound = _worst(solve_bound, per_solve)
    x = torch.cat(chunks)
    bad = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum())
    if bad:
        hint = (
            f"sample at a lower --temperature than {args.temperature:g} (1 is the model's own "
            "spread)"
            if args.temperature > 1
            else f"check the model: iresnet certify {args.run_dir}"
        )
        raise IResNetError(
            f"{bad} of {len(x)} samples are not finite (the inverse diverged; largest final "
            f"step {worst:.3g}): nothing written; {hint}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        if contexts is not None and (x.dim() == 4 or x.shape[1] == 2):
            _plot_per_context(task, x, contexts, args.num, args.temperature, out)
        elif x.dim() == 4:
            plots.plot_image_grid(x[:256], out, title=f"samples (T={args.temperature})")
        elif x.shape[1] == 2:
            title = f"{args.num} samples, T={args.temperature:g} (histogram)"
            plots.plot_density_comparison(x, {}, out, data_title=title)
        else:
            raise ConfigError("a .png needs 2-D points or images; save .npy or .csv instead")
    elif out.suffix == ".csv" and contexts is not None:  # samples and contexts side by side
        flat = x.reshape(x.shape[0], -1).numpy()
        c, names = scoring.context_columns(task, contexts.repeat_interleave(args.num, 0))
        header = ",".join([*(f"x{j + 1}" for j in range(flat.shape[1])), *names])
        fmt = ["%.18e"] * flat.shape[1] + ["%d" if c.dtype.kind == "i" else "%.18e"] * len(names)
        table = np.concatenate([flat, c.astype(np.float64)], axis=1)
        atomic_write(
            out,
            lambda fh: np.savetxt(fh, table, delimiter=",", fmt=fmt, header=header, comments=""),
        )
    elif out.suffix == ".csv":  # atomic: a full disk leaves no torn file
        flat = x.reshape(x.shape[0], -1).numpy()
        header = ",".join(f"x{j + 1}" for j in range(flat.shape[1]))  # as conditional files
        atomic_write(
            out,
            lambda fh: np.savetxt(fh, flat, delimiter=",", header=header, comments=""),
        )
    elif out.suffix == ".npy":
        if contexts is not None and contexts_out is not None:  # the pair: contexts first
            c, _ = scoring.context_columns(task, contexts.repeat_interleave(args.num, 0))
            atomic_write(contexts_out, lambda fh: np.save(fh, c))
        atomic_write(out, lambda fh: np.save(fh, x.numpy()))
    else:
        raise ConfigError(f"--out must end in .npy, .csv or .png, got '{out.suffix}'")
    certified = f", certified error <= {bound:.2e}" if bound is not None else ""
    if certified and solve_bound is not None and len(reports[0][1]) > 1:
        # The composed bound grows like prod 1/(1 - L_k) with depth (1e4 on the 2-D default
        # for errors of 1e-5): one solve's comes first, the composed one as the worst case.
        n = len(reports[0][1])
        certified = (
            f", certified error <= {solve_bound:.2e} each solve; composed over {n} solves, "
            f"a worst case that grows with depth: <= {bound:.2e}"
        )
    per = ""
    if contexts is not None:
        # as the user writes them: class labels, not their one-hot vectors
        head, names = scoring.context_columns(task, contexts[:8])
        if names == ["label"]:
            shown = ", ".join(str(int(v)) for v in head[:, 0])
            kind = "label", "labels"
        else:
            shown = "; ".join(_context_text(row) for row in head.tolist())
            kind = "context", "contexts"
        more = ", ..." if contexts.shape[0] > 8 else ""
        n = contexts.shape[0]
        where = f"the {kind[0]}" if n == 1 else f"each of {n} {kind[1]}, in order:"
        per = f" ({args.num} at {where} {shown}{more})"
    paired = ""
    if contexts_out is not None:
        paired = f", their contexts to {contexts_out}"
    elif contexts is not None and out.suffix == ".csv":
        paired = " (with their contexts as columns)"
    print(
        f"wrote {count(x.shape[0], 'sample')}{per} to {out}{paired} "
        f"(inverse converged: {converged}, "
        f"largest final step {worst:.2e}{certified})"
    )
    return 0


_SHOWN_CONTEXTS = 8  # panels (points) or rows (images) of a conditional sample picture
_SHOWN_VALUES = 4  # values of one context written out; a wider one is cut with its width


def _note_default_context(task: Any, contexts: torch.Tensor) -> None:
    """Say on stderr which one context a conditional run without ``--context`` is sampled at,
    when it is a stand-in (the training contexts' mean, or the first test context) and how to
    choose one (a user try-out: it was silent). Every class and a toy's reporting contexts are the
    run's own set, which the ``wrote ...`` line lists."""
    source = task.default_contexts_source()
    if source not in ("mean", "test"):
        return
    what = "the training contexts' mean" if source == "mean" else "the run's first test context"
    row = scoring.context_columns(task, contexts[:1])[0][0].tolist()
    k = len(row)
    example = ",".join(f"{v:.4g}" for v in row) if k <= _SHOWN_VALUES else f"v1,...,v{k}"
    print(
        f"iresnet sample: note: no --context given, so the samples are at {what} "
        f"({_context_text(row)}); choose one with --context {example} ({count(k, 'value')}; "
        "';' between several contexts) or --context FILE.npy/.csv of rows",
        file=sys.stderr,
    )


def _context_text(row: list[float]) -> str:
    """One context as the user wrote it, its first values only when it is wide: a 70-wide
    context put 350 numbers on the ``wrote ...`` line (try-out 9, N3)."""
    text = ", ".join(f"{v:.4g}" for v in row[:_SHOWN_VALUES])
    return text if len(row) <= _SHOWN_VALUES else f"{text}, ... ({len(row)} values)"


def _plot_per_context(
    task: Any, x: torch.Tensor, contexts: torch.Tensor, num: int, temperature: float, out: Path
) -> None:
    """A conditional run's samples drawn per context (``num`` rows of ``x`` each, in order):
    one histogram panel (2-D points) or one image row (images, at most 32 per row) for each of
    the first contexts, titled with the context as the user writes it (a label, or values)."""
    n = min(contexts.shape[0], _SHOWN_CONTEXTS)
    shown, names = scoring.context_columns(task, contexts[:n])
    if names == ["label"]:
        labels = [f"label {int(v)}" for v in shown[:, 0]]
    else:
        labels = ["c = " + _context_text(row) for row in shown.tolist()]
    more = f" (first {n} of {contexts.shape[0]} contexts)" if contexts.shape[0] > n else ""
    if x.dim() == 4:
        per_row = min(num, 32)
        rows = x[: n * num].reshape(n, num, *x.shape[1:])[:, :per_row]
        plots.plot_image_grid(
            rows.reshape(-1, *x.shape[1:]),
            out,
            nrow=per_row,
            title=f"{num} samples per row, T={temperature:g}; rows: {', '.join(labels)}{more}",
        )
    else:
        groups = x[: n * num].reshape(n, num, 2)
        plots.plot_histograms(
            [
                (g, f"{label}: {num} samples, T={temperature:g}")
                for g, label in zip(groups, labels, strict=True)
            ],
            out,
        )


def _context_file(spec: str | None) -> list[Path]:
    """``--context`` as an input file (a ``.npy`` / ``.csv`` path), else nothing."""
    return (
        [Path(spec)] if spec is not None and Path(spec).suffix.lower() in (".npy", ".csv") else []
    )


def _warn(command: str, message: str | None) -> None:
    """A warning the user should see, as one line on stderr (even when Python's warnings are
    silenced)."""
    if message:
        print(f"iresnet {command}: warning: {message}", file=sys.stderr)


def _worst(*values: float | None) -> float | None:
    """The largest of the values that are known, NaN if one is NaN (Python's ``max`` keeps
    the first operand when a comparison with NaN is false, so ``max(0.0, nan)`` is 0.0)."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    return math.nan if any(math.isnan(v) for v in known) else max(known)


def _check_out(out: Path, inputs: list[Path], overwrite: bool, default: bool = False) -> None:
    """Refuse an output file that is one of the inputs (the run's training data and contexts,
    the data being scored), even with ``--overwrite``, and an existing one without it."""
    target = out.resolve()
    for path in inputs:
        if Path(path).resolve() == target:
            raise ConfigError(f"--out {out} is an input ({path}); choose another file")
    if out.exists() and not (overwrite or default):
        raise ConfigError(f"--out {out} exists; choose another file, or pass --overwrite")
    # a file where a folder of the path should be ("File exists" from mkdir, after the work)
    for folder in out.parents:
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(
                    f"--out {out}: {folder} is a file, not a folder; choose a path whose "
                    "folders are folders"
                )
            break


def _cmd_score(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".npy", ".csv"):
        raise ConfigError(f"--out must end in .npy or .csv, got '{args.out.suffix}'")
    check_seed("--seed", args.seed)
    run = Run(args.run_dir)
    inputs = [args.data, *_context_file(args.context), *run.input_files()]
    _check_out(args.out, inputs, args.overwrite)
    trained = load_run(args.run_dir, device=args.device, data=False)
    _use_run_threads(trained.cfg)
    torch.manual_seed(args.seed)
    result = scoring.score_file(
        trained.task, trained.model, args.data, args.context, repeats=args.repeats
    )
    _warn(args.command, scoring.extrapolation_warning(trained.task, result.contexts))
    cells = [w for w in trained.task.data.dequantize_width or [] if w > 0]
    if cells:
        _warn(
            args.command,
            f"this run dequantised {count(len(cells), 'discrete column')} "
            "(data.dequantize=uniform): log_prob is the continuous density at the given points, "
            "not the log-probability of the discrete values; `iresnet evaluate` reports a bound "
            "on that (discrete_nll_bound)",
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = np.stack([result.columns[c] for c in result.columns], axis=1)
    if args.out.suffix == ".csv":
        header = ",".join(result.columns)
        body = "".join(",".join(f"{v:.17g}" for v in row) + "\n" for row in table)
        atomic_write(args.out, header + "\n" + body)
    else:
        atomic_write(args.out, lambda fh: np.save(fh, table))
    mean = float(np.mean(result.columns["log_prob"]))
    points = count(table.shape[0], "point")
    print(
        f"scored {points}: mean log p {mean:.6g} nats with the {result.logdet} log-det"
        + (f" and {result.dequantisation}" if result.dequantisation else "")
        + f"; columns {', '.join(result.columns)}; wrote {args.out}"
    )
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    trained = load_run(args.run_dir, data=False)
    _use_run_threads(trained.cfg)
    cert = certify(trained.model)
    print(json.dumps(json_safe(cert.to_dict()), allow_nan=False) if args.json else cert)
    return 0


def _cmd_presets(_: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name, preset in PRESETS.items():
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {preset.description}{mark}")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "sample": _cmd_sample,
    "score": _cmd_score,
    "certify": _cmd_certify,
    "presets": _cmd_presets,
    "sweep": cmd_sweep,
}


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    """Warnings as the command prints them: one line, without the source line."""
    return f"iresnet: warning ({category.__name__}): {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``iresnet ARGV``; returns the exit status (2 for a user error, printed in one line)."""
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = _join_negative_contexts(list(sys.argv[1:] if argv is None else argv))
    # Overrides may come after options (`train --out d lr=1e-3`): collect KEY=VALUE leftovers.
    args, unknown = parser.parse_known_args(argv)
    extra = [u for u in unknown if "=" in u and not u.startswith("-")]
    if len(extra) != len(unknown) or (extra and not hasattr(args, "overrides")):
        _usage_error(args.command, f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        # Before any tensor: freed memory stays with the process (no page fault per new
        # tensor); IRESNET_ALLOCATOR=system opts out (see iresnet.app.allocator).
        allocator = retain_freed_memory()
        if getattr(args, "verbose", False):
            print(f"allocator: {allocator}", file=sys.stderr)
        if args.command == "train" and "RANK" not in os.environ:
            _check_nproc(args)
            if args.nproc > 1:
                if args.out is None and args.resume is None:
                    _usage_error(
                        "train",
                        "--nproc needs --out (every process must write to the same run folder)",
                    )
                # Once here, not once per process after the launch with torchrun's traceback
                # after it.
                if args.resume is not None:
                    _resume_budgets(args)
                elif not args.dry_run:
                    Run(args.out).check_new()
                return _launch_torchrun(args.nproc, argv)
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `iresnet presets | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is silent
        return 141  # the shell's 128 + SIGPIPE
    except (IResNetError, FloatingPointError, OSError) as exc:
        if args.debug:
            raise
        print(f"iresnet {args.command}: error: {_one_line(exc, args.command)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        line = _out_of_memory(exc)
        if args.debug or not line:
            raise
        print(f"iresnet {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"iresnet {args.command}: interrupted", file=sys.stderr)
        return 130


def _out_of_memory(exc: BaseException) -> str:
    """One line for an allocation that failed (a width or batch too large for this machine's
    memory: torch's CPU allocator raises a RuntimeError, CUDA's an OutOfMemoryError), or ""
    for any other error, which keeps its traceback."""
    text = str(exc)
    if not (
        isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
    ):
        return ""
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" ({int(asked.group(1)) / 2**30:.3g} GiB asked)" if asked else ""
    return (
        f"out of memory{size}: lower the model's widths (model.hidden, model.fc_hidden), "
        "its depth or train.batch_size"
    )


def _usage_error(command: str, message: str) -> NoReturn:
    """Exit 2 with a usage error of ``iresnet COMMAND`` on one line, as argparse's own."""
    OneLineParser(prog=f"iresnet {command}").error(message)


def _check_nproc(args: argparse.Namespace) -> None:
    """Refuse, before any process starts, a process count the machine or the batch cannot
    take."""
    n = args.nproc
    if n < 1:
        raise ConfigError(f"--nproc must be >= 1, got {n}")
    if args.resume is not None:
        saved = _quietly(Run(args.resume).process_count)
        if saved is not None and saved != n:
            raise ConfigError(
                f"{args.resume} was trained with --nproc {saved}; resume it with --nproc "
                f"{saved}: each process keeps its own place in the data, so another count "
                "cannot continue the run exactly"
            )
    if n == 1:
        return
    cfg = Run(args.resume).load_config() if args.resume is not None else None
    cfg = cfg or _resolve_train_config(args)
    device = cfg.train.device
    if device.startswith("cuda"):
        have, what = (torch.cuda.device_count() if torch.cuda.is_available() else 0), "GPUs"
    else:
        have, what = os.cpu_count() or 1, "CPU cores"
    if n > have:
        raise ConfigError(f"--nproc {n} exceeds the {have} {what} here; use --nproc {have} or less")
    if cfg.train.batch_size % n:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} does not split evenly over --nproc {n}; "
            f"use a multiple of {n}"
        )


def _one_line(exc: BaseException, command: str = "train") -> str:
    """An error's message; for the operating system's errors (a full disk, a read-only or
    missing folder) the file and the reason, and that nothing already written was lost."""
    if not isinstance(exc, OSError) or isinstance(exc, IResNetError):
        return str(exc)
    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    full = (
        "free some space and rerun (with --resume for a run that had started); files already "
        "written, the last checkpoint included, are intact"
        if command == "train"
        else "free some space and rerun; files already written are intact"
    )
    hint = {
        errno.ENOSPC: full,
        errno.EACCES: "choose a folder you can write to",
        errno.EROFS: "choose a folder you can write to",
    }.get(exc.errno or 0, "files already written are intact")
    return f"{where}{reason}; {hint}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
