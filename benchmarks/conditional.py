"""Conditional 2-D toys at an equal CPU budget: our conditional residual flow against zuko's
conditional neural spline flow, with the gap to the truth measured context by context.

Models (each trained for the same budget of CPU seconds, one after another, on the same data):

- ``ours``: the preset ``toy-<dataset>`` (a conditional MLP i-ResNet: a conditional affine map,
  then blocks whose hidden pre-activations the context shifts and gates with gains in (0, 1),
  exact log-dets), trained by the real loop (:func:`iresnet.app.training.train`, warm-up,
  cosine schedule, EMA, evaluation and checkpoints on the clock) with ``train.steps`` fitted to
  the budget by a short timing run (:func:`bench.ours.train_under_budget`).
- ``zuko NSF``: ``zuko.flows.NSF(2, context=1, transforms=6, hidden_features=(192, 192),
  bins=8)`` (monotonic rational-quadratic coupling splines whose parameters are functions of
  the context), Adam lr 1e-3, on data and contexts standardised with the training statistics
  (the data's log-det added back, so densities are in the data's units).

Data: ``rotated-8gaussians`` (the 8gaussians mixture rotated by the context angle in
``[0, pi/4)``) and ``moving-gaussian`` (a Gaussian whose mean and per-axis scales move with the
context in ``[-2, 2]``), 50 000 training pairs, batches of 256 (see
:mod:`iresnet.datasets.conditional`). Both have a closed-form ``log p(x | c)``.

Reported per (data set, model): ``KL(p(.|c) || q(.|c)) = E_{x ~ p(.|c)}[log p - log q]`` at each
of eight evenly spaced contexts, from 4096 fresh draws of the truth per context (the same draws
for both models), +- its standard error; their mean over the contexts (+- the SE from the
per-context SEs); the paired difference ours - NSF per context; steps and CPU seconds trained.
A figure per data set shows, at three contexts, the truth beside both learned densities.

Run: ``.venv/bin/python benchmarks/conditional.py`` (about 6 minutes on 2 cores with the
default budget); ``--quick`` for a smoke run (writes ``conditional-quick.*``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iresnet.app.batches import EpochBatches
from iresnet.app.presets import get_preset
from iresnet.datasets import Standardizer
from iresnet.datasets.conditional import (
    conditional_log_density,
    conditional_toy_split,
    kl_contexts,
    sample_conditional,
)
from iresnet.ops import ExactLogDet
from iresnet.transforms import swap_logdets
from iresnet.words import count

from bench import REPO_ROOT, RESULTS_DIR
from bench.env import environment, loadavg, positive_float, script_parser, seed_all, set_threads
from bench.metrics import logged_max
from bench.ours import train_under_budget
from bench.peers import train_for_budget, trainable_parameters, zuko_flow
from bench.report import markdown_table, pm, write_results
from bench.stats import verdict

DATASETS = ("rotated-8gaussians", "moving-gaussian")
DEFAULT_BUDGET = 60.0
BATCH = 256
PEER_LR = 1e-3
NSF_KW = {"context": 1, "transforms": 6, "hidden_features": (192, 192), "bins": 8}
N_PER_CONTEXT = 4096
LABELS = {"ours": "ours (conditional i-ResNet, preset)", "nsf": "zuko NSF (conditional)"}

CondLogDensity = Any  # (x (m, 2) float64, c (m, 1) float64) -> (m,) float64


def train_ours(dataset: str, args: argparse.Namespace, run_dir: Path) -> tuple[Any, dict]:
    cfg = get_preset(f"toy-{dataset}").override([f"train.seed={args.seed}"])
    run = train_under_budget(
        cfg, args.budget, run_dir, run_dir.parent / f"{run_dir.name}-timing", figures=False
    )
    model = run.trained.model
    exact = ExactLogDet()

    def log_q(x: Tensor, c: Tensor) -> Tensor:
        with torch.no_grad(), swap_logdets(model, exact):
            return model.log_prob(x.float(), c.float()).double()

    info = {
        "steps": run.result.step,
        "train_seconds": logged_max(run.records, "cpu_seconds"),
        "params": trainable_parameters(model),
        "config": run.cfg.to_dict(),
    }
    return log_q, info


def train_nsf(
    train_x: Tensor, train_c: Tensor, args: argparse.Namespace
) -> tuple[CondLogDensity, dict]:
    torch.manual_seed(args.seed)
    sx, sc = Standardizer.fit(train_x), Standardizer.fit(train_c)
    zx, zc = sx.transform(train_x).float(), sc.transform(train_c).float()
    flow = zuko_flow("NSF", 2, **NSF_KW)
    optimizer = torch.optim.Adam(flow.parameters(), lr=PEER_LR)
    batches = EpochBatches(zx.shape[0], BATCH, args.seed)
    state = {}

    def next_batch() -> Tensor:
        idx = batches.next()
        state["c"] = zc[idx]
        return zx[idx]

    run = train_for_budget(
        flow,
        optimizer,
        lambda x: -flow(state["c"]).log_prob(x).mean(),
        next_batch,
        args.budget,
        max_steps=args.max_steps,
    )
    flow.eval()

    def log_q(x: Tensor, c: Tensor) -> Tensor:
        with torch.no_grad():
            z, cz = sx.transform(x).float(), sc.transform(c).float()
            return flow(cz).log_prob(z).double() + sx.log_abs_det

    return log_q, {
        "steps": run.steps,
        "train_seconds": run.cpu_seconds,
        "params": trainable_parameters(flow),
    }


def per_context_kl(
    dataset: str, log_qs: dict[str, CondLogDensity], seed: int
) -> dict[str, list[dict[str, Any]]]:
    """KL at each reporting context from the same fresh draws of the truth for every model."""
    truth = conditional_log_density(dataset)
    g = torch.Generator().manual_seed(seed + 1000)
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in log_qs}
    out["paired"] = []
    for c in kl_contexts(dataset):
        cs = c.expand(N_PER_CONTEXT, 1).double()
        x = sample_conditional(dataset, cs, g)
        log_p = truth(x, cs)
        diffs = {}
        for name, log_q in log_qs.items():
            d = log_p - log_q(x, cs)
            diffs[name] = d
            out[name].append(
                {
                    "context": float(c[0]),
                    "kl": float(d.mean()),
                    "kl_se": float(d.std() / math.sqrt(d.numel())),
                }
            )
        if {"ours", "nsf"} <= diffs.keys():
            e = diffs["ours"] - diffs["nsf"]
            out["paired"].append(
                {
                    "context": float(c[0]),
                    "d": float(e.mean()),
                    "se": float(e.std() / math.sqrt(e.numel())),
                }
            )
    return out


def figure(dataset: str, log_qs: dict[str, CondLogDensity], path: Path, grid: int) -> Path:
    """Rows: three contexts; columns: the truth, then each model's learned density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = conditional_log_density(dataset)
    contexts = kl_contexts(dataset)[[0, 3, 7]]
    lim = 4.5
    xs = torch.linspace(-lim, lim, grid, dtype=torch.float64)
    xx, yy = torch.meshgrid(xs, xs, indexing="xy")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    columns = {"truth": truth, **{LABELS[k].split(" (")[0]: f for k, f in log_qs.items()}}
    fig, axes = plt.subplots(
        len(contexts), len(columns), figsize=(3 * len(columns), 3 * len(contexts))
    )
    for i, c in enumerate(contexts):
        cs = c.expand(pts.shape[0], 1).double()
        for j, (name, fn) in enumerate(columns.items()):
            dens = torch.cat(
                [fn(p, q).exp() for p, q in zip(pts.split(8192), cs.split(8192), strict=True)]
            )
            ax = axes[i, j]
            ax.imshow(
                dens.reshape(grid, grid).numpy(),
                origin="lower",
                extent=(-lim, lim, -lim, lim),
                cmap="inferno",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, c = {float(c[0]):.3g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_dataset(dataset: str, args: argparse.Namespace, runs_root: Path) -> dict[str, Any]:
    cfg = get_preset(f"toy-{dataset}")
    train_x, train_c, _, _ = conditional_toy_split(
        dataset, cfg.data.n_train, cfg.data.n_test, seed=cfg.data.seed
    )
    log_qs: dict[str, CondLogDensity] = {}
    models: dict[str, Any] = {}
    for name in args.models:
        print(f"[{dataset}] {LABELS[name]}: training for {args.budget:g} CPU s ...", flush=True)
        before = (loadavg() or [math.nan])[0]
        if name == "ours":
            log_qs[name], info = train_ours(dataset, args, runs_root / f"{dataset}-ours")
        else:
            log_qs[name], info = train_nsf(train_x.double(), train_c.double(), args)
        info["load_avg_before"] = before
        models[name] = info
    kl = per_context_kl(dataset, log_qs, args.seed)
    for name in args.models:
        rows = kl[name]
        models[name]["kl_per_context"] = rows
        models[name]["kl_mean"] = float(np.mean([r["kl"] for r in rows]))
        models[name]["kl_mean_se"] = math.sqrt(sum(r["kl_se"] ** 2 for r in rows)) / len(rows)
        print(
            f"[{dataset}] {LABELS[name]}: {count(models[name]['steps'], 'step')}, KL averaged over "
            f"contexts {models[name]['kl_mean']:.4f} ± {models[name]['kl_mean_se']:.4f}",
            flush=True,
        )
    fig_path = None
    if not args.no_figure:
        path = figure(dataset, log_qs, args.out_dir / f"{args.name}-{dataset}.png", args.grid)
        fig_path = str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
    return {"models": models, "paired": kl["paired"], "figure": fig_path}


def tables(all_results: dict[str, Any]) -> tuple[str, str]:
    cols = ["data set", "model", "KL averaged over 8 contexts ± SE", "steps", "CPU s", "params"]
    rows = []
    for dataset, res in all_results.items():
        for name, r in res["models"].items():
            rows.append(
                [
                    dataset,
                    LABELS[name],
                    pm(r["kl_mean"], r["kl_mean_se"], 4),
                    str(r["steps"]),
                    f"{r['train_seconds']:.1f}",
                    f"{r['params']:,}",
                ]
            )
    summary = markdown_table(cols, rows)
    cols = ["data set", "context c", *[f"KL {LABELS[m]}" for m in ("ours", "nsf")], "ours - NSF"]
    rows = []
    for dataset, res in all_results.items():
        m = res["models"]
        if not {"ours", "nsf"} <= m.keys():
            continue
        for i, p in enumerate(res["paired"]):
            o, n = m["ours"]["kl_per_context"][i], m["nsf"]["kl_per_context"][i]
            rows.append(
                [
                    dataset,
                    f"{p['context']:.4g}",
                    pm(o["kl"], o["kl_se"], 4),
                    pm(n["kl"], n["kl_se"], 4),
                    f"{pm(p['d'], p['se'], 4)} ({verdict(p['d'], p['se'])})",
                ]
            )
    return summary, markdown_table(cols, rows)


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        help=f"CPU seconds per model (default {DEFAULT_BUDGET:g}; --quick: 5)",
    )
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--models", nargs="+", default=["ours", "nsf"], choices=("ours", "nsf"))
    ap.add_argument("--max-steps", type=int, default=None, help="also stop NSF after N steps")
    ap.add_argument("--no-figure", action="store_true")
    ap.add_argument("--grid", type=int, default=120, help="figure resolution")
    ap.add_argument("--name", default=None, help="output name (default conditional)")
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 5.0 if args.quick else DEFAULT_BUDGET
    if args.quick:
        args.datasets = args.datasets[:1]
        args.grid = min(args.grid, 50)
    args.name = args.name or ("conditional-quick" if args.quick else "conditional")
    args.out_dir = args.out_dir or RESULTS_DIR
    args.out_dir.mkdir(parents=True, exist_ok=True)
    threads = set_threads(args.threads)
    torch.set_flush_denormal(True)
    seed_all(args.seed)
    env = environment()
    t0 = time.perf_counter()
    runs_root = Path(tempfile.mkdtemp(prefix="iresnet-conditional-bench-"))
    try:
        results = {d: run_dataset(d, args, runs_root) for d in args.datasets}
    finally:
        shutil.rmtree(runs_root, ignore_errors=True)
    env["total_seconds"] = time.perf_counter() - t0
    settings = {
        "budget_s": args.budget,
        "datasets": " ".join(args.datasets),
        "batch": BATCH,
        "threads": threads,
        "seed": args.seed,
        "peer_lr": PEER_LR,
        "nsf": NSF_KW,
        "draws_per_context": N_PER_CONTEXT,
    }
    summary, per_context = tables(results)
    notes = (
        f"Each model trains for {args.budget:g} CPU seconds (one torch thread, one after the "
        "other). Both densities are exact (ours: exact 2x2 log-dets in evaluation; NSF: coupling "
        "splines). KL at each context from the same 4096 draws of the truth for both models; "
        "the difference ours - NSF is paired on those draws."
    )
    figures = "\n".join(
        f"- {d}: `{r['figure']}` (rows: three contexts; columns: truth | ours | NSF)"
        for d, r in results.items()
        if r.get("figure")
    )
    write_results(
        args.name,
        "Conditional toys at an equal CPU budget: ours vs zuko's conditional NSF",
        env,
        settings,
        [
            ("Results", summary),
            ("Per context", per_context),
            ("How it was measured", notes + "\n\n" + (__doc__ or "").split("\n\n", 1)[1]),
            ("Figures", figures),
        ],
        results,
        {d: {m: r["kl_mean"] for m, r in res["models"].items()} for d, res in results.items()},
        out_dir=args.out_dir,
    )
    print(summary)
    print(per_context)
    print(f"{env['total_seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
