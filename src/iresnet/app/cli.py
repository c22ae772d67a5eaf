"""The ``iresnet`` command: ``train``, ``evaluate``, ``sample``, ``score``, ``certify``,
``presets``.

Errors a user can cause (bad config, data, checkpoint, arguments) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..certificate import Certificate, certify
from ..errors import ConfigError, IResNetError
from . import plots, scoring
from .config import SECTIONS, Config
from .files import atomic_write, json_safe
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .runs import Run, load_run
from .sweep import add_sweep_parser, cmd_sweep
from .training import train

__all__ = ["main", "build_parser"]


def _config_keys_help() -> str:
    lines = ["config keys (override as KEY=VALUE, e.g. model.coeff=0.8 or coeff=0.8):"]
    for section, cls in SECTIONS.items():
        names = ", ".join(f.name for f in fields(cls))
        lines.append(f"  {section}: {names}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``iresnet`` argument parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="iresnet",
        description="Invertible Residual Networks and Residual Flows: "
        "train, evaluate, sample, certify.",
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
        type=Path,
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
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")

    p = sub.add_parser(
        "evaluate",
        help="evaluate a run: test likelihood, gap to truth, inverse, certificate",
        description="Evaluate a trained run with the best estimator the dimension allows "
        "(exact log-det where it fits), the inverse's reconstruction error and "
        "the Lipschitz certificate.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--device", default=None, help="evaluate on this device instead of the run's")
    p.add_argument(
        "--n-inverse", type=int, default=512, help="test points reconstructed through the inverse"
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="evaluate on the first N test points only (default: all; the standard error is "
        "over the points evaluated)",
    )

    p = sub.add_parser(
        "sample",
        help="draw samples from a trained flow (by inverting it)",
        description="Draw samples x = f^{-1}(z), z ~ N(0, T^2 I), and save them.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("-n", "--num", type=int, default=1000, help="number of samples")
    p.add_argument("--temperature", type=float, default=1.0, help="scale T of the base normal")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file: .npy (array), .csv or .png (picture); default RUN_DIR/samples.npy",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--context",
        default=None,
        help="conditional runs: the context(s) to sample at: numbers 'a,b' (one context), "
        "'a,b;c,d' (several), a class label for class-conditional images, or a .npy/.csv file "
        "of rows; NUM samples per context (default: every class, or the run's reporting "
        "contexts)",
    )

    p = sub.add_parser(
        "score",
        help="the log-density of new data under a trained flow",
        description="Score new points: log p(x) (log p(x | c) with --context) in the data's own "
        "units (nats; images also bits/dim), with the estimator named and, where it is "
        "stochastic, the standard error of every point.",
    )
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the points: (N, d) .npy/.csv for vector runs, (N, C, H, W) integer levels .npy "
        "for image runs",
    )
    p.add_argument(
        "--context", type=Path, default=None, help="conditional runs: (N, k) contexts, row by row"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .csv (a header row, one row per point) or .npy ((N, columns) float64)",
    )
    p.add_argument("--device", default=None, help="score on this device instead of the run's")
    p.add_argument(
        "--repeats",
        type=int,
        default=8,
        help="evaluations per point with a stochastic estimator (their spread gives the SE)",
    )

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
    return cfg.override(extra + overrides)


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


def _print_config(cfg: Config) -> None:
    """The resolved config on stderr, once: under torchrun only rank 0 prints it."""
    if os.environ.get("RANK", "0") == "0":
        print(cfg.to_json(), file=sys.stderr)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        run = Run(args.resume)
        cfg = run.load_config()
        ignored = [
            flag
            for flag, value in (
                ("a preset", args.preset),
                ("KEY=VALUE overrides", args.overrides),
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
                f"it), not {', '.join(ignored)}"
            )
        if args.steps is not None:
            done = run.last_step()
            if args.steps <= done:
                raise ConfigError(
                    f"{run.path} is at step {done}: --steps {args.steps} would not extend it"
                )
            cfg = cfg.override([f"train.steps={args.steps}"])
        _print_config(cfg)
        if args.dry_run:
            return 0
        if args.steps is not None:
            run.save_config(cfg)
        result = train(cfg, run.path, resume=True, progress=not args.no_progress)
    else:
        cfg = _resolve_train_config(args)
        _print_config(cfg)
        if args.dry_run:
            return 0
        out = args.out or _free_run_dir(cfg.preset)
        result = train(cfg, out, progress=not args.no_progress)
    verb = "finished" if result.stopped == "finished" else "stopped by a signal (checkpoint saved)"
    metrics = ", ".join(
        f"{k} {v:.4f}" for k, v in result.last_metrics.items() if not k.endswith("_se")
    )
    if result.is_main:
        print(f"{verb} at step {result.step}: {metrics}; run folder: {result.run_dir}")
    if result.stopped == "finished":
        return 0
    # Stopped by a signal: the shell's convention 128 + signal, so `train ... && next` stops.
    return 128 + (result.signal or signal.SIGINT)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.n_inverse < 1:
        raise ConfigError(f"--n-inverse must be >= 1, got {args.n_inverse}")
    if args.n_test is not None and args.n_test < 1:
        raise ConfigError(f"--n-test must be >= 1, got {args.n_test}")
    trained = load_run(args.run_dir, device=args.device)
    result = trained.task.full_evaluation(
        trained.model, n_inverse=args.n_inverse, n_test=args.n_test
    )
    result["run_dir"] = str(trained.run.path)
    result["weights"] = str(trained.weights)
    result = json_safe(result)
    atomic_write(
        trained.run.path / "eval.json", json.dumps(result, indent=2, allow_nan=False) + "\n"
    )
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return 0
    cert = result.pop("certificate")
    per_context = result.pop("kl_per_context", None)
    for key, value in result.items():
        print(f"{key:>24}: {_fmt(value)}")
    if per_context:
        print(f"{'KL to the truth at':>24}: context -> KL (nats) +- SE")
        for row in per_context:
            ctx = ", ".join(f"{v:.4g}" for v in row["context"])
            print(f"{'':>24}  ({ctx}) -> {_fmt(row['kl'])} +- {_fmt(row['kl_se'])}")
    print(Certificate.from_dict(cert))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a finite positive number, got {args.temperature}")
    if args.out is not None and args.out.suffix not in (".npy", ".csv", ".png"):
        raise ConfigError(f"--out must end in .npy, .csv or .png, got '{args.out.suffix}'")
    trained = load_run(args.run_dir)
    task = trained.task
    contexts = None
    if args.context is not None:
        contexts = scoring.parse_sample_contexts(task, args.context)
    elif getattr(task, "context_dim", 0):
        contexts = task.default_contexts()  # type: ignore[attr-defined]
    torch.manual_seed(args.seed)
    if contexts is not None:
        x, diags = task.sample(  # type: ignore[call-arg]
            trained.model, args.num, temperature=args.temperature, contexts=contexts
        )
    else:
        x, diags = task.sample(trained.model, args.num, temperature=args.temperature)
    x = x.cpu()
    out = args.out or trained.run.path / "samples.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        if x.dim() == 4 and contexts is not None:
            per_row = args.num if args.num <= 32 else None  # one row per context
            plots.plot_image_grid(
                x[: 32 * 32],
                out,
                nrow=per_row,
                title=f"samples, {args.num} per context (rows; T={args.temperature})",
            )
        elif x.dim() == 4:
            plots.plot_image_grid(x[:256], out, title=f"samples (T={args.temperature})")
        elif x.shape[1] == 2:
            plots.plot_density_comparison(x, {}, out)
        else:
            raise ConfigError("a .png needs 2-D points or images; save .npy or .csv instead")
    elif out.suffix == ".csv":
        np.savetxt(out, x.reshape(x.shape[0], -1).numpy(), delimiter=",")
    elif out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        raise ConfigError(f"--out must end in .npy, .csv or .png, got '{out.suffix}'")
    worst = max((float(d.residual.max()) for d in diags), default=0.0)
    certified = ""
    if diags.error_bound is not None and diags.error_bound.numel():
        certified = f", certified error <= {float(diags.error_bound.max()):.2e}"
    per = f" ({args.num} at each of {contexts.shape[0]} contexts)" if contexts is not None else ""
    print(
        f"wrote {x.shape[0]} samples{per} to {out} (inverse converged: {diags.all_converged}, "
        f"largest final step {worst:.2e}{certified})"
    )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".npy", ".csv"):
        raise ConfigError(f"--out must end in .npy or .csv, got '{args.out.suffix}'")
    if args.repeats < 2:
        raise ConfigError(f"--repeats must be >= 2 (the SE needs two draws), got {args.repeats}")
    trained = load_run(args.run_dir, device=args.device)
    result = scoring.score_file(
        trained.task, trained.model, args.data, args.context, repeats=args.repeats
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = np.stack([result.columns[c] for c in result.columns], axis=1)
    if args.out.suffix == ".csv":
        header = ",".join(result.columns)
        body = "".join(",".join(f"{v:.17g}" for v in row) + "\n" for row in table)
        atomic_write(args.out, header + "\n" + body)
    else:
        with open(args.out, "wb") as fh:
            np.save(fh, table)
    mean = float(np.mean(result.columns["log_prob"]))
    print(
        f"scored {table.shape[0]} points: mean log p {mean:.6g} nats with the {result.estimator} "
        f"log-det; columns {', '.join(result.columns)}; wrote {args.out}"
    )
    return 0


def _cmd_certify(args: argparse.Namespace) -> int:
    trained = load_run(args.run_dir)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``iresnet ARGV``; returns the exit status (2 for a user error, printed in one line)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Overrides may come after options (`train --out d lr=1e-3`): collect KEY=VALUE leftovers.
    args, unknown = parser.parse_known_args(argv)
    extra = [u for u in unknown if "=" in u and not u.startswith("-")]
    if len(extra) != len(unknown) or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command == "train" and args.nproc > 1 and "RANK" not in os.environ:
        if args.out is None and args.resume is None:
            parser.error("--nproc needs --out (every process must write to the same run folder)")
        return _launch_torchrun(args.nproc, argv)
    try:
        return COMMANDS[args.command](args)
    except (IResNetError, FloatingPointError) as exc:
        print(f"iresnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iresnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
