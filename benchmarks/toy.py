"""2-D toy densities at an equal CPU budget: our default i-ResNet against three peers.

Models (each trained for the same budget of CPU seconds, one after another, on the same data;
with one torch thread that is the wall-clock of one dedicated core, and unlike wall-clock it does
not depend on what else the machine runs):

- ``ours``: the preset ``toy-<dataset>`` (the ``make demo`` model family) with
  ``train.max_cpu_seconds`` set to the budget, trained by the real loop
  (:func:`iresnet.app.training.train`: warm-up, cosine schedule, EMA, clipping, periodic
  evaluation and checkpoints all count against the clock), evaluated by ``load_run`` +
  ``full_evaluation`` (exact 2x2 log-det). Its cosine schedule follows the CPU clock
  (``train.lr_schedule=cosine-budget``: the decay ends when the budget does), so ours trains
  for the whole budget like the peers; ``--ours-fit-steps`` instead fits ``train.steps`` to the
  budget by a 15-step timing run (not counted), which left up to a quarter of the budget unused
  when the timing run was slower than the steps after it.
- ``normflows ResFlow``: normflows' residual-flow toy example (``examples/residual.ipynb``): 16
  x [``Residual(LipschitzMLP([2,128,128,2], init_zeros=True, lipschitz_const=0.9),
  reduce_memory=True)``, ``ActNorm(2)``], fixed standard-normal base, ActNorm initialised on a
  first batch, Adam (weight decay 1e-5) and NaN/Inf losses skipped, as in the example; lr 1e-3
  (the example's 3e-4 is meant for 20 000 iterations). Its layers divide the weight by a stored
  spectral-norm estimate that only ``nf.utils.update_lipschitz`` refreshes, so it runs after every
  optimiser step: 5 warm-started power iterations by default (``--nf-lipschitz-iters``; the
  notebook uses 50, which costs about as much as the step itself, so 5 gives this peer more
  steps), and 50 before evaluation; the exact spectral norm of every effective layer weight is
  checked after training (``max_layer_spectral_norm``: about 0.9, a little above where the
  power-iteration estimate of sigma lags; still far below 1). Training uses its
  unbiased Russian-roulette estimator (Neumann gradient, memory-saving backward). Its test
  log-density uses its most accurate path: in ``eval()`` mode on 2-D inputs ``iResBlock``
  computes the exact log-det from the brute-force 2x2 Jacobian (no estimator, no randomness).
- ``zuko RealNVP`` and ``zuko NSF``: coupling flows (affine; monotonic rational-quadratic
  splines, 8 bins) with exact log-densities, Adam lr 1e-3, constant.

Peers see the training set standardised per coordinate (``iresnet.datasets.Standardizer``:
train mean and population std; the affine map's log-det is added back, so every NLL is in the
data's units). Ours sees the raw data (its ActNorm layers standardise). Batches: 256 points
for the peers, the preset's batch for ours (1024 on checkerboard and 2spirals), epochs of
seeded random permutations of the same 50 000-point training set
(``iresnet.app.batches.EpochBatches``). Test set: the same 20 000 points for every model
(``toy_split(name, 50000, 20000, seed=0)``, what the preset loads).

Reported per (data set, model): test NLL (nats) +- its standard error; where the true density is
known (8gaussians, checkerboard) the paired estimate of ``KL(p || q) = E_p[log p - log q]`` on
the test points +- its standard error (= test NLL - entropy of the test sample, without the
noise of a separate entropy estimate); median CPU seconds per step; steps done; CPU seconds
trained; trainable parameters. Per-step seconds include each model's own per-step
bookkeeping (ours: logging, periodic evaluation, checkpoints; normflows: ``update_lipschitz``).
The machine's load average is recorded before each model.

Run: ``.venv/bin/python benchmarks/toy.py`` (about 25 minutes on 2 cores with the default
budget); ``--quick`` for a smoke run (writes ``toy-quick.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from iresnet.app.batches import EpochBatches
from iresnet.app.plots import plot_density_comparison
from iresnet.app.presets import get_preset
from iresnet.app.runs import TrainedRun
from iresnet.app.words import count
from iresnet.datasets import Standardizer
from iresnet.datasets.toy import toy_log_density, toy_split, true_entropy

from bench import REPO_ROOT, RESULTS_DIR
from bench.density import LogDensity, chunked, exact_log_density, scores
from bench.env import (
    command_line,
    environment,
    loadavg,
    script_parser,
    seed_all,
    set_threads,
)
from bench.metrics import logged_max, seconds_per_step, train_rows
from bench.ours import train_under_budget
from bench.peers import (
    normflows_log_prob,
    normflows_max_spectral_norm,
    normflows_resflow,
    normflows_update_lipschitz,
    train_for_budget,
    trainable_parameters,
    zuko_flow,
)
from bench.report import known, markdown_table, pm, untimed_note, write_results
from bench.stats import summarize, verdict

DATASETS = ("8gaussians", "checkerboard", "2spirals")
MODELS = ("ours", "normflows", "realnvp", "nsf")
LABELS = {
    "ours": "ours (i-ResNet, preset)",
    "normflows": "normflows ResFlow",
    "realnvp": "zuko RealNVP",
    "nsf": "zuko NSF",
}
PANEL = {"ours": "ours", "normflows": "normflows ResFlow", "realnvp": "RealNVP", "nsf": "NSF"}
DEFAULT_BUDGET = 90.0
BATCH = 256
PEER_LR = 1e-3
NF_WEIGHT_DECAY = 1e-5
NF_LIPSCHITZ_ITERS = 5  # per training step (--nf-lipschitz-iters); 50 before evaluation
NF_EVAL_LIPSCHITZ_ITERS = 50
# zuko widths: ~270k parameters each, as normflows' toy model (ours: see the table).
REALNVP_KW = {"transforms": 8, "hidden_features": (128, 128, 128)}
NSF_KW = {"transforms": 6, "hidden_features": (192, 192), "bins": 8}
ZUKO = {"realnvp": ("RealNVP", REALNVP_KW), "nsf": ("NSF", NSF_KW)}


def load_avg() -> float:
    """The 1-minute load average (NaN where unknown)."""
    return (loadavg() or [math.nan])[0]


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------


@dataclass
class ToyPeer:
    """A peer flow on standardised data: its module and optimiser, the log-density it trains,
    and what its recipe adds (normflows: an initialisation batch, a Lipschitz update per step)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    log_prob: LogDensity
    init: LogDensity | None = None
    after_step: Callable[[], Any] | None = None


def build_peer(name: str, seed: int, nf_lipschitz_iters: int) -> ToyPeer:
    torch.manual_seed(seed)
    if name == "normflows":
        model = normflows_resflow(2, blocks=16, width=128, lipschitz_const=0.9)
        optimizer = torch.optim.Adam(model.parameters(), lr=PEER_LR, weight_decay=NF_WEIGHT_DECAY)
        return ToyPeer(
            model,
            optimizer,
            model.log_prob,
            init=model.log_prob,  # initialises the ActNorm layers, as in the example
            after_step=lambda: normflows_update_lipschitz(model, nf_lipschitz_iters),
        )
    kind, kwargs = ZUKO[name]
    flow = zuko_flow(kind, 2, **kwargs)
    return ToyPeer(
        flow, torch.optim.Adam(flow.parameters(), lr=PEER_LR), lambda z: flow().log_prob(z)
    )


def train_peer(
    name: str, train_x: Tensor, args: argparse.Namespace
) -> tuple[ToyPeer, Standardizer, dict[str, Any]]:
    """Train a peer on the standardised training set for the budget."""
    std = Standardizer.fit(train_x)
    z_train = std.transform(train_x)
    peer = build_peer(name, args.seed, args.nf_lipschitz_iters)
    n = z_train.shape[0]
    batches = EpochBatches(n, BATCH, args.seed)
    first = z_train[EpochBatches(n, BATCH, args.seed).next()]
    run = train_for_budget(
        peer.model,
        peer.optimizer,
        lambda z: -peer.log_prob(z).mean(),
        lambda: z_train[batches.next()],
        args.budget,
        max_steps=args.max_steps,
        init=(lambda: peer.init(first)) if peer.init is not None else None,
        after_step=peer.after_step,
    )
    return (
        peer,
        std,
        {
            "steps": run.steps,
            "train_seconds": run.cpu_seconds,
            "cpu_share": run.cpu_share,
            "step_seconds": summarize(run.step_seconds),
            "skipped_nonfinite_steps": run.skipped,
            "loss_curve": [(step, loss) for step, loss, _ in run.curve],
            "params": trainable_parameters(peer.model),
        },
    )


def peer_log_density(
    name: str, peer: ToyPeer, std: Standardizer
) -> tuple[LogDensity, dict[str, Any]]:
    """A trained peer's log-density in data units (its most accurate path) and its notes."""
    if name == "normflows":
        normflows_update_lipschitz(peer.model, NF_EVAL_LIPSCHITZ_ITERS)
        peer.model.eval()
        log_q_std = normflows_log_prob(peer.model)
        info: dict[str, Any] = {
            "estimator": "exact (normflows eval mode: brute-force 2x2 Jacobian per block)",
            "max_layer_spectral_norm": normflows_max_spectral_norm(peer.model),
        }
    else:
        peer.model.eval()
        log_q_std, info = chunked(peer.log_prob), {"estimator": "exact"}

    def log_q(x: Tensor) -> Tensor:
        return log_q_std(std.transform(x.float())) + std.log_abs_det

    return log_q, info


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------


def train_ours(dataset: str, args: argparse.Namespace, run_dir: Path) -> tuple[TrainedRun, dict]:
    cfg = get_preset(f"toy-{dataset}").override(
        [*args.ours_override, f"train.max_cpu_seconds={args.budget}", f"train.seed={args.seed}"]
    )
    run = train_under_budget(
        cfg,
        args.budget,
        run_dir,
        run_dir.parent / f"{run_dir.name}-timing",
        max_steps=args.max_steps,
        follow_clock=not args.ours_fit_steps,
    )
    records = run.records
    return run.trained, {
        "steps": run.result.step,
        "train_seconds": logged_max(records, "cpu_seconds"),
        "planned_steps": run.planned_steps,
        "timing_cpu_seconds_per_step": run.timing_cpu_seconds_per_step,
        "wall_seconds_incl_final_plots": run.wall_seconds,
        "cpu_share": run.cpu_share,
        # metrics.jsonl logs every log_every steps with the elapsed CPU seconds: per-step
        # times from the differences of consecutive rows (evaluations and checkpoints included).
        "step_seconds": summarize(seconds_per_step(records, "cpu_seconds")),
        "params": trainable_parameters(run.trained.model),
        "config": run.cfg.to_dict(),
        "loss_curve": [(r["step"], r["loss"]) for r in train_rows(records, "cpu_seconds")[::5]],
    }


# --------------------------------------------------------------------------------------------
# Evaluation and output
# --------------------------------------------------------------------------------------------


def run_dataset(dataset: str, args: argparse.Namespace, runs_root: Path) -> dict[str, Any]:
    cfg = get_preset(f"toy-{dataset}")
    train_x, test_x = toy_split(dataset, cfg.data.n_train, cfg.data.n_test, seed=cfg.data.seed)
    truth = toy_log_density(dataset)
    results: dict[str, Any] = {}
    densities: dict[str, LogDensity] = {}
    for name in args.models:
        print(f"[{dataset}] {LABELS[name]}: training for {args.budget:g} s ...", flush=True)
        before = load_avg()
        if name == "ours":
            trained, info = train_ours(dataset, args, runs_root / f"{dataset}-ours")
            assert torch.equal(trained.data.test_x, test_x), (
                "our run's test set differs from toy_split's"
            )
            t0 = time.perf_counter()
            full = trained.task.full_evaluation(trained.model)
            info["eval_seconds"] = time.perf_counter() - t0
            info["full_evaluation"] = {k: v for k, v in full.items() if k != "certificate"}
            log_q = exact_log_density(trained.model, 2)
            info.update(
                test_nll=full["test_nll"],
                test_nll_se=full["test_nll_se"],
                kl=full.get("entropy_gap"),
                kl_se=full.get("entropy_gap_se"),
                check_nll_same_path=scores(log_q(test_x), test_x, truth)["test_nll"],
                estimator=full["estimator"],
            )
        else:
            peer, std, info = train_peer(name, train_x, args)
            t0 = time.perf_counter()
            log_q, notes = peer_log_density(name, peer, std)
            info.update(notes)
            info.update(scores(log_q(test_x), test_x, truth))
            info["eval_seconds"] = time.perf_counter() - t0
        info["load_avg_before"] = before
        info["load_avg_after"] = load_avg()
        results[name] = info
        densities[name] = log_q
        kl = f", KL {info['kl']:.4f} ± {info['kl_se']:.4f}" if info.get("kl") is not None else ""
        trained = known(info["train_seconds"])  # ours: NaN before its first logged row
        spent = "" if trained is None else f" in {trained:.1f} s"
        print(
            f"[{dataset}] {LABELS[name]}: {count(info['steps'], 'step')}{spent}, "
            f"test NLL {info['test_nll']:.4f} ± {info['test_nll_se']:.4f}{kl} "
            f"(load {before:.2f} -> {info['load_avg_after']:.2f}, "
            f"CPU share {info['cpu_share']:.2f})",
            flush=True,
        )
    shown = args.models if args.figure_all else ("ours", "realnvp", "nsf")
    panels = {PANEL[m]: densities[m] for m in shown if m in densities}
    figure = None
    if panels and not args.no_figure:
        path = args.out_dir / f"{args.figure_name}-{dataset}.png"
        fig = plot_density_comparison(test_x[:20000], panels, path, grid=args.grid)
        figure = str(fig.relative_to(REPO_ROOT)) if fig.is_relative_to(REPO_ROOT) else str(fig)
    return {
        "models": results,
        "true_entropy": true_entropy(dataset),
        "figure": figure,
        "n_train": int(train_x.shape[0]),
        "n_test": int(test_x.shape[0]),
    }


def cost_cells(label: str, r: dict[str, Any], max_steps: int | None) -> tuple[str, str, str | None]:
    """A result's "CPU s/step (median)" and "CPU seconds trained" cells, and, where one is
    "-", the note that says why (None where both are known). A budget that ended before ours
    logged two training rows (its steps are timed by their differences) gave "nan ms", and
    "nan" CPU seconds before the first."""
    per_step = known((r.get("step_seconds") or {}).get("median"))
    trained = known(r.get("train_seconds"))
    cells = (
        "-" if per_step is None else f"{per_step * 1000:.1f} ms",
        "-" if trained is None else f"{trained:.1f}",
    )
    if per_step is not None and trained is not None:
        return *cells, None
    steps = int(r.get("steps") or 0)
    why = (
        "no training step finished"
        if steps <= 0
        else f"it stopped at step {steps} with fewer than two training rows logged (one every "
        "train.log_every steps)"
    )
    fix = "give a larger --budget" + (" or --max-steps" if max_steps is not None else "")
    return *cells, untimed_note(label, why, fix)


def table(all_results: dict[str, Any], max_steps: int | None = None) -> str:
    """The results table, and under it a line per model whose per-step cost is not known
    (``max_steps``: the run's ``--max-steps``, which may have stopped it)."""
    cols = [
        "data set",
        "model",
        "test NLL ± SE (nats)",
        "gap to truth KL(p‖q) ± SE",
        "CPU s/step (median)",
        "steps",
        "CPU seconds trained",
        "CPU share",
        "parameters",
    ]
    rows = []
    unknown: list[str] = []
    for dataset, res in all_results.items():
        for name, r in res["models"].items():
            gap = pm(r["kl"], r["kl_se"], 3) if r.get("kl") is not None else "- (no truth)"
            per_step, trained, why = cost_cells(f"{dataset}, {LABELS[name]}", r, max_steps)
            if why:
                unknown.append(f"- {why}")
            rows.append(
                [
                    dataset,
                    LABELS[name],
                    pm(r["test_nll"], r["test_nll_se"], 4),
                    gap,
                    per_step,
                    str(r["steps"]),
                    trained,
                    f"{r['cpu_share']:.2f}",
                    f"{r['params']:,}",
                ]
            )
    return "\n\n".join([markdown_table(cols, rows), *(["\n".join(unknown)] if unknown else [])])


def verdicts(all_results: dict[str, Any]) -> str:
    lines = []
    for dataset, res in all_results.items():
        m = res["models"]
        if "ours" not in m:
            continue
        key = "kl" if m["ours"].get("kl") is not None else "test_nll"
        what = "gap to truth" if key == "kl" else "test NLL"
        for peer in ("normflows", "realnvp", "nsf"):
            if peer not in m:
                continue
            d = m["ours"][key] - m[peer][key]
            # Paired on the same test points for the KL; the NLL SEs are combined conservatively.
            se = math.hypot(m["ours"][f"{key}_se"], m[peer][f"{key}_se"])
            lines.append(
                f"- {dataset}: ours - {LABELS[peer]} {what} = {d:+.4f} (± {se:.4f}): "
                f"{verdict(d, se)}"
            )
        if res.get("true_entropy"):
            h, hse = res["true_entropy"]
            lines.append(f"- {dataset}: true entropy {h:.4f} ± {hse:.4f} (Monte Carlo, 200k draws)")
    return "\n".join(lines)


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"CPU seconds of training per model (default {DEFAULT_BUDGET:g}; --quick: 5)",
    )
    ap.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        choices=DATASETS + ("moons", "circles", "rings", "pinwheel", "swissroll"),
        help=f"default: {' '.join(DATASETS)} (--quick: 8gaussians)",
    )
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument(
        "--max-steps", type=int, default=None, help="also stop every model after this many steps"
    )
    ap.add_argument(
        "--nf-lipschitz-iters",
        type=int,
        default=NF_LIPSCHITZ_ITERS,
        help="normflows: power iterations of update_lipschitz after each step "
        f"(default {NF_LIPSCHITZ_ITERS}; its notebook uses 50)",
    )
    ap.add_argument(
        "--ours-override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of our preset (e.g. train.steps=600), for what-if runs",
    )
    ap.add_argument(
        "--ours-fit-steps",
        action="store_true",
        help="ours: fit train.steps to the budget by a timing run and keep the step cosine "
        "(default: the cosine follows the CPU clock)",
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite NAME.md (and NAME.json) from an existing NAME.json without training",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="PART",
        help="write NAME.md (and NAME.json) from the PART.json files of runs with the same "
        "settings on different data sets (run in parallel), without training",
    )
    ap.add_argument(
        "--part",
        default=None,
        help="write NAME.part-PART.md/.json (figures still NAME-DATASET.png), for --merge",
    )
    ap.add_argument("--no-figure", action="store_true", help="skip the figure")
    ap.add_argument("--grid", type=int, default=200, help="figure resolution (grid x grid)")
    ap.add_argument(
        "--figure-all", action="store_true", help="add the normflows panel to the figure"
    )
    ap.add_argument(
        "--keep-runs",
        type=Path,
        default=None,
        help="keep our run folders here (default: temporary)",
    )
    ap.add_argument(
        "--name",
        default=None,
        help="output name under benchmarks/results (default toy, --quick: toy-quick)",
    )
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 5.0 if args.quick else DEFAULT_BUDGET
    if not (math.isfinite(args.budget) and args.budget > 0):
        ap.error(f"--budget must be a positive number of CPU seconds, got {args.budget:g}")
    if args.datasets is None:
        args.datasets = ["8gaussians"] if args.quick else list(DATASETS)
    if args.quick:
        args.grid = min(args.grid, 80)
    args.name = args.name or ("toy-quick" if args.quick else "toy")
    args.out_dir = args.out_dir or RESULTS_DIR
    args.figure_name = args.name
    if args.part:
        args.name = f"{args.name}.part-{args.part}"
    if args.render_only:
        payload = json.loads((args.out_dir / f"{args.name}.json").read_text())
        write_report(
            args.name, args.out_dir, payload["environment"], payload["settings"], payload["raw"]
        )
        return
    if args.merge:
        env, settings, raw = merge_parts([args.out_dir / f"{p}.json" for p in args.merge])
        write_report(args.name, args.out_dir, env, settings, raw)
        return
    threads = set_threads(args.threads)
    # Our loop flushes subnormal floats to zero on CPUs (they are orders of magnitude slower);
    # the same for every model here (it is process-wide and would otherwise depend on order).
    torch.set_flush_denormal(True)
    seed_all(args.seed)
    env = environment()
    env["load_avg_start"] = load_avg()
    t_all = time.perf_counter()

    if args.keep_runs is None:
        runs_root = Path(tempfile.mkdtemp(prefix="iresnet-toy-bench-"))
    else:
        runs_root = args.keep_runs
        runs_root.mkdir(parents=True, exist_ok=True)
    try:
        all_results = {d: run_dataset(d, args, runs_root) for d in args.datasets}
    finally:
        if args.keep_runs is None:
            shutil.rmtree(runs_root, ignore_errors=True)
    env["load_avg_end"] = load_avg()
    env["total_seconds"] = time.perf_counter() - t_all

    settings = {
        "budget_s": args.budget,
        "datasets": " ".join(args.datasets),
        "batch": BATCH,
        "threads": threads,
        "seed": args.seed,
        "peer_lr": PEER_LR,
        "normflows_update_lipschitz_per_step": args.nf_lipschitz_iters,
        "normflows_update_lipschitz_before_eval": NF_EVAL_LIPSCHITZ_ITERS,
        "flush_denormal": True,
        "realnvp": REALNVP_KW,
        "nsf": NSF_KW,
        "max_steps": args.max_steps,
        "ours_override": " ".join(args.ours_override) or None,
        "ours_schedule": "fitted steps" if args.ours_fit_steps else "cosine over the CPU clock",
    }
    write_report(args.name, args.out_dir, env, settings, all_results)


def merge_parts(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One report's environment, settings and results from the JSONs of runs that differ only
    in their data sets: the command lists each part's, the load averages span them all."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    raw: dict[str, Any] = {}
    for part in parts:
        if overlap := set(raw) & set(part["raw"]):
            raise ValueError(f"data sets in more than one part: {sorted(overlap)}")
        raw.update(part["raw"])

    def same(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k != "datasets"}

    first = parts[0]
    if any(same(p["settings"]) != same(first["settings"]) for p in parts[1:]):
        raise ValueError("the parts were run with different settings")
    envs = [p["environment"] for p in parts]
    env = {
        **envs[0],
        "command": " + ".join(e["command"] for e in envs) + f" (merged by {command_line()})",
        "load_average_at_end": envs[-1].get("load_average_at_end"),
        "load_avg_start": max(e["load_avg_start"] for e in envs),
        "load_avg_end": max(e["load_avg_end"] for e in envs),
        "total_seconds": max(e["total_seconds"] for e in envs),
    }
    settings = {**first["settings"], "datasets": " ".join(raw)}
    return env, settings, raw


def write_report(
    name: str, out_dir: Path, env: dict[str, Any], settings: dict[str, Any], all_results: dict
) -> None:
    """Write ``NAME.md`` and ``NAME.json`` (also used by ``--render-only``)."""
    ours_lines = []
    for dataset, res in all_results.items():
        if "ours" not in res["models"]:
            continue
        cfg = res["models"]["ours"]["config"]
        m, t = cfg["model"], cfg["train"]
        schedule = (
            "cosine over the CPU budget (`cosine-budget`)"
            if t["lr_schedule"] == "cosine-budget"
            else f"{t['lr_schedule']} over {t['steps']} steps"
        )
        ours_lines.append(
            f"- {dataset}: preset `{cfg['preset']}`: {m['n_blocks']} blocks, hidden {m['hidden']}, "
            f"{m['n_layers']} layers, coeff {m['coeff']}, {m['activation']} (beta "
            f"{m['lipswish_beta']}), log-det `{m['logdet']}`; Adam lr {t['lr']}, warm-up "
            f"{t['warmup_steps']}, {schedule}, EMA {t['ema_decay']}, batch {t['batch_size']}, "
            f"max_cpu_seconds {t['max_cpu_seconds']:g}"
            + (
                f", compiled (`train.compile_scope={t.get('compile_scope', 'step')}`, the "
                "compilation counted in the budget)"
                if t.get("compile")
                else ""
            )
        )
    ours_line = "Ours:\n\n" + "\n".join(ours_lines) + "\n\n" if ours_lines else ""
    threads = settings["threads"]
    notes = (
        f"Every model trains for the same CPU budget ({settings['budget_s']:g} CPU s), one "
        f"after another, with `torch.set_num_threads({threads})` (and one inter-op thread) for "
        "all of them, subnormal floats flushed to zero for all. "
        "Test NLLs are exact for every model (2-D: exact log-dets; normflows in its eval mode "
        "uses the brute-force 2x2 Jacobian). The gap to truth is the paired estimate of "
        "KL(p‖q) = mean over test points of log p_true - log q, with its standard error. "
        "Seconds per step are medians of per-step CPU times including each model's own "
        "bookkeeping (ours: from metrics.jsonl, logging, periodic evaluation and checkpoints "
        "included; normflows: `update_lipschitz(model, "
        f"{settings['normflows_update_lipschitz_per_step']})` after each step). "
        f"Load average (1 min) at start {env['load_avg_start']:.2f}, at end "
        f"{env['load_avg_end']:.2f} on {env['cpu_count']} cores: per-step timings are noisy where "
        "other work shares the machine. "
        "CPU share = this process's CPU seconds / wall seconds while the model trained (1.0: a "
        "full core; ours: over the whole train() call, its final plots included)."
    )
    sections = [
        ("Results", ours_line + table(all_results, settings.get("max_steps"))),
        ("Ours against each peer", verdicts(all_results)),
        ("How it was measured", notes + "\n\n" + (__doc__ or "").split("\n\n", 1)[1]),
        (
            "Figures",
            "\n".join(
                f"- {d}: `{r['figure']}` (data | ours | RealNVP | NSF)"
                for d, r in all_results.items()
                if r.get("figure")
            ),
        ),
    ]
    keys = ("test_nll", "test_nll_se", "kl", "kl_se", "steps", "train_seconds", "params")
    summary = {
        d: {
            m: {k: r[k] for k in keys} | {"seconds_per_step_median": r["step_seconds"]["median"]}
            for m, r in res["models"].items()
        }
        for d, res in all_results.items()
    }
    write_results(
        name,
        "2-D toy densities at an equal CPU budget: ours vs normflows, zuko",
        env,
        settings,
        sections,
        all_results,
        summary,
        out_dir=out_dir,
    )
    print(table(all_results, settings.get("max_steps")))
    print(verdicts(all_results))
    print(f"{env['total_seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
