"""The coefficient sweep of i-ResNet's classification experiments (arXiv:1811.00995,
sec. 5.1): test error against the Lipschitz coefficient.

For each coefficient ``c`` in ``vanilla, 0.9, 0.8, 0.7, 0.6, 0.5`` (``vanilla``: the same network
without spectral normalisation) one classifier is trained through the one loop, evaluated
(``full_evaluation``) and tabulated:

| coefficient | test error (%) | guaranteed inverse | feature reconstruction error | Lip bound |

"guaranteed inverse" is the certificate's verdict (every block's ``Lip(g)`` bound below 1);
the reconstruction error is ``max |x - F^{-1}(F(x))|`` on test images, measured, not assumed.
Writes ``sweep.md``, ``sweep.json`` and ``sweep.png`` to the output folder, one run folder per
coefficient beside them (a finished run with the same config is reused, not retrained).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from . import plots
from .config import Config
from .files import atomic_write, json_safe, out_path
from .presets import get_preset
from .runs import Run, load_run
from .training import train
from .words import count

__all__ = ["DEFAULT_COEFFS", "run_sweep", "sweep_table", "add_sweep_parser", "cmd_sweep"]

DEFAULT_COEFFS: tuple[str | float, ...] = ("vanilla", 0.9, 0.8, 0.7, 0.6, 0.5)


def parse_coeff(value: str | float) -> str | float:
    """``"vanilla"`` or a coefficient in ``(0, 1]``."""
    if isinstance(value, str) and value.strip().lower() == "vanilla":
        return "vanilla"
    try:
        c = float(value)
    except ValueError:
        raise ConfigError(
            f"a sweep coefficient must be 'vanilla' or a number, got '{value}'"
        ) from None
    if not 0.0 < c <= 1.0:
        raise ConfigError(f"a sweep coefficient must lie in (0, 1], got {c}")
    return c


def _run_name(coeff: str | float) -> str:
    return "vanilla" if coeff == "vanilla" else f"c{coeff:g}"


def coeff_config(base: Config, coeff: str | float, extra: Sequence[str] = ()) -> Config:
    """``base`` with ``model.constrained=false`` (vanilla) or ``model.coeff=c``, then ``extra``."""
    if base.model.kind not in ("classifier", "hybrid"):
        raise ConfigError(
            f"the sweep trains classifiers; preset '{base.preset}' is a '{base.model.kind}' model"
        )
    ov = (
        ["model.constrained=false"]
        if coeff == "vanilla"
        else ["model.constrained=true", f"model.coeff={coeff}"]
    )
    return base.override([*ov, *extra])


def run_sweep(
    base_preset: str,
    coeffs: Sequence[str | float] = DEFAULT_COEFFS,
    out_dir: str | Path = "runs/sweep",
    *,
    steps: int | None = None,
    max_seconds: float | None = None,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    n_inverse: int = 512,
    progress: bool = False,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Train and evaluate one classifier per coefficient; write the table, JSON and plot.

    Args:
        base_preset: a classifier preset (e.g. ``digits-classifier``).
        coeffs: ``"vanilla"`` and/or numbers in ``(0, 1]``, each once.
        out_dir: the sweep folder (run folders ``vanilla``, ``c0.9``, ... inside).
        steps, max_seconds: ``train.steps`` / ``train.max_seconds`` for every model (the same
            budget for each); data_dir: ``data.data_dir``; overrides: more ``KEY=VALUE``.
        n_inverse: test images reconstructed from their features.
        command: the command line to record in ``sweep.md``.

    Returns:
        One row per coefficient: ``coeff``, ``test_error`` (fraction), ``test_error_pct`` (and
        its standard error over the test images, ``test_error_pct_se``),
        ``invertible``, ``feature_inverse_max_error``, ``max_lipschitz``, ``steps``,
        ``train_seconds``, ``run_dir`` and the full evaluation under ``evaluation``.

    Raises:
        ConfigError: a bad coefficient, one given twice (or two that share a run folder), a
            preset that is not a classifier's, or ``out_dir`` a file; nothing is trained.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a sweep folder: choose another --out")
    base = get_preset(base_preset)
    extra = list(overrides)
    if steps is not None:
        extra.append(f"train.steps={steps}")
    if max_seconds is not None:
        extra.append(f"train.max_seconds={max_seconds}")
    if data_dir is not None:
        extra.append(f"data.data_dir={data_dir}")
    parsed = [parse_coeff(c) for c in coeffs]
    seen: dict[str, str | float] = {}
    for c in parsed:  # one run folder per coefficient: a repeat would train it twice
        name = _run_name(c)
        if name in seen:
            first = seen[name]
            raise ConfigError(
                f"--coeffs {c} twice; give each coefficient once"
                if first == c
                else f"--coeffs {first} and {c} share the run folder {name}; give "
                "coefficients that differ in their first 6 significant digits"
            )
        seen[name] = c
    configs = [(c, coeff_config(base, c, extra)) for c in parsed]  # validate all before training
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused sweep leaves no folder
    rows: list[dict[str, Any]] = []
    for coeff, cfg in configs:
        run_dir = out / _run_name(coeff)
        run = Run(run_dir)
        if run.weights_path.is_file() and run.config_path.is_file():
            if run.load_config() != cfg:
                raise ConfigError(
                    f"{run_dir} holds a finished run with another config; "
                    "remove it or choose another output folder"
                )
            trained_now = False
        else:
            train(cfg, run_dir, resume=run.checkpoints.is_dir(), progress=progress)
            trained_now = True
        trained = load_run(run_dir)
        torch.manual_seed(0)  # as `iresnet evaluate` (--seed 0): the same numbers for the same run
        ev = trained.task.full_evaluation(trained.model, n_inverse=n_inverse)
        atomic_write(run_dir / "eval.json", json.dumps(json_safe(ev), indent=2) + "\n")
        records = trained.run.records()
        last = max((r for r in records if "seconds" in r), key=lambda r: r["step"], default={})
        if trained_now:  # the training loop's own clock, the table's "train s"
            print(
                f"sweep {_run_name(coeff)}: trained {count(last.get('step', 0), 'step')} in "
                f"{last.get('seconds', math.nan):.1f} s",
                file=sys.stderr,
            )
        rows.append(
            {
                "coeff": coeff,
                "test_error": ev["test_error"],
                "test_error_pct": 100.0 * ev["test_error"],
                "test_error_pct_se": 100.0 * ev["test_error_se"],
                "invertible": ev["invertible"],
                "feature_inverse_max_error": ev["feature_inverse_max_error"],
                "inverse_converged": ev["inverse_converged"],
                "max_lipschitz": ev["max_lipschitz"],
                "test_bpd": ev.get("test_bpd"),
                "test_bpd_se": ev.get("test_bpd_se"),
                "steps": int(last.get("step", 0)),
                "train_seconds": float(last.get("seconds", math.nan)),
                "run_dir": str(run_dir),
                "evaluation": {k: v for k, v in ev.items() if k != "certificate"},
            }
        )
    _write(out, base_preset, rows, command)
    return rows


def _fmt_err(v: float | None) -> str:
    return "diverged (not finite)" if v is None else f"{v:.2e}"


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """The coefficient sweep as a Markdown table (i-ResNet, arXiv:1811.00995, sec. 5.1); a
    hybrid sweep's rows carry their density too (test bits/dim)."""
    density = any(r.get("test_bpd") is not None for r in rows)
    head = (
        "| coefficient | test error (%) ± SE |"
        + (" test bits/dim ± SE |" if density else "")
        + " guaranteed inverse | feature reconstruction error "
        "(max abs) | largest block Lip bound | steps | train s |"
    )
    lines = [head, "|---|---:|" + ("---:|" if density else "") + ":---:|---:|---:|---:|---:|"]
    for r in rows:
        coeff = r["coeff"] if r["coeff"] == "vanilla" else f"{r['coeff']:g}"
        recon = _fmt_err(r["feature_inverse_max_error"])
        if not r["inverse_converged"]:
            recon += " (iteration did not converge)"
        bpd = r.get("test_bpd")
        if bpd is not None:
            bpd_se = r.get("test_bpd_se")
            bpd_text = f"{bpd:.3f}" + (f" ± {bpd_se:.3f}" if bpd_se is not None else "")
            if not r["invertible"]:  # the change of variables of a map not known invertible
                bpd_text += " (not a density)"
        se = r.get("test_error_pct_se")  # rows written before it was recorded have none
        error = f"{r['test_error_pct']:.2f}" + (f" ± {se:.2f}" if se is not None else "")
        lines.append(
            f"| {coeff} | {error} |"
            + ((" - |" if bpd is None else f" {bpd_text} |") if density else "")
            + f" {'yes' if r['invertible'] else 'no'}"
            f" | {recon} | {r['max_lipschitz']:.3g} | {r['steps']} | "
            f"{r['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _write(out: Path, preset: str, rows: list[dict[str, Any]], command: str | None) -> None:
    text = [f"# Coefficient sweep: {preset}", ""]
    if command:
        text += [f"- command: `{command}`", ""]
    text += [
        sweep_table(rows),
        "Test error over the whole test set; reconstruction error "
        "`max |x - F^-1(F(x))|` over test images in [0, 1] pixel units (padding removed); "
        "Lip bound: the largest certified `Lip(g)` over the residual blocks (< 1: "
        "invertible by Banach's fixed point theorem).",
    ]
    atomic_write(out / "sweep.md", "\n".join(text) + "\n")
    atomic_write(
        out / "sweep.json",
        json.dumps(json_safe({"preset": preset, "command": command, "rows": rows}), indent=2)
        + "\n",
    )
    plots.plot_sweep(rows, out / "sweep.png", x="coeff", y="test_error_pct")


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``iresnet sweep PRESET [KEY=VALUE ...] [--coeffs ...] ...`` to ``subparsers``."""
    p = subparsers.add_parser(
        "sweep",
        help="train the Lipschitz-coefficient sweep of a classifier (i-ResNet sec. 5.1)",
        description="Train one classifier per coefficient (vanilla = unconstrained) at the same "
        "budget, evaluate each, and write sweep.md (the table), sweep.json, sweep.png.",
    )
    p.add_argument("preset", help="classifier preset, e.g. digits-classifier")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],  # argparse listed an empty nargs="*" as required (try-out 10, F12)
        metavar="KEY=VALUE",
        help="config overrides for every run",
    )
    p.add_argument(
        "--coeffs",
        nargs="+",
        default=[str(c) for c in DEFAULT_COEFFS],
        help="coefficients ('vanilla' or numbers in (0, 1]); default: vanilla 0.9 0.8 0.7 0.6 0.5",
    )
    p.add_argument("--steps", type=int, default=None, help="train.steps of every run")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="train.max_seconds: wall-clock budget of every run",
    )
    p.add_argument(
        "--out", type=out_path, default=None, help="sweep folder (default runs/sweep-PRESET)"
    )
    p.add_argument("--data-dir", type=Path, default=None, help="folder of the image set's files")
    p.add_argument("--n-inverse", type=int, default=512, help="test images reconstructed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep from parsed arguments; print the table."""
    out = args.out or Path("runs") / f"sweep-{args.preset}"
    command = "iresnet " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["sweep"] else None
    rows = run_sweep(
        args.preset,
        args.coeffs,
        out,
        steps=args.steps,
        max_seconds=args.max_seconds,
        data_dir=args.data_dir,
        overrides=args.overrides,
        n_inverse=args.n_inverse,
        progress=not args.no_progress,
        command=command,
    )
    print(sweep_table(rows), end="")
    print(f"wrote {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")
    return 0
