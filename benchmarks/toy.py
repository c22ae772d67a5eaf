"""2-D toy densities at an equal CPU budget: our default i-ResNet against three peers.

Models (each trained for the same budget of CPU seconds, one after another, on the same data;
with one torch thread that is the wall-clock of one dedicated core, and unlike wall-clock it does
not depend on what else the machine runs):

- ``ours``: the preset ``toy-<dataset>`` (the ``make demo`` model family) with
  ``train.max_cpu_seconds`` set to the budget, trained by the real loop
  (:func:`iresnet.train.loop.train`:
  warm-up, cosine schedule, EMA, clipping, periodic evaluation and checkpoints all count against
  the clock), evaluated by ``load_run`` + ``full_evaluation`` (exact 2x2 log-det). Its
  ``train.steps`` is fitted to the budget by a 15-step timing run (not counted), so the cosine
  schedule ends with the budget.
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

Peers see the training set standardised per coordinate (train mean and std; the affine map's
log-det is added back, so every NLL is in the data's units). Ours sees the raw data (its
ActNorm layers standardise). Batches: 256 points, epochs of random permutations of the same
50 000-point training set, seeded. Test set: the same 20 000 points for every model
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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from iresnet.data.toy import toy_log_density, toy_split, true_entropy  # noqa: E402
from iresnet.plots import plot_density_comparison  # noqa: E402
from iresnet.presets import get_preset  # noqa: E402
from iresnet.train.evaluate import load_run  # noqa: E402
from iresnet.train.loop import train  # noqa: E402
from iresnet.train.tasks import exact_logdets, mean_se  # noqa: E402

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
EVAL_CHUNK = 4096


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_avg() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return math.nan


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class Standard:
    """Per-coordinate standardisation fitted on the training set; ``log_det`` of ``x -> z``."""

    def __init__(self, train_x: Tensor) -> None:
        self.mean = train_x.mean(0)
        self.std = train_x.std(0)
        self.log_det = float(-self.std.log().sum())

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Batches:
    """Epochs of seeded random permutations of ``n`` indices."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch = n, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> Tensor:
        if self.pos + self.batch > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------


class Peer:
    """A peer flow on standardised data: build, one training step, log-density in data units."""

    name = "peer"

    def __init__(self, std: Standard, seed: int) -> None:
        self.std = std
        torch.manual_seed(seed)
        self.model = self.build()
        self.optimizer = self.make_optimizer()

    def build(self) -> nn.Module:
        raise NotImplementedError

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=PEER_LR)

    def log_prob_std(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def init(self, z: Tensor) -> None:
        """Data-dependent initialisation on a first batch (where the peer has one)."""

    def step(self, z: Tensor) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = -self.log_prob_std(z).mean()
        if torch.isfinite(loss):
            loss.backward()
            self.optimizer.step()
        self.after_step()
        return float(loss.detach())

    def after_step(self) -> None:
        pass

    def prepare_eval(self) -> dict[str, Any]:
        self.model.eval()
        return {"estimator": "exact"}

    def log_prob(self, x: Tensor) -> Tensor:
        """``log q(x)`` in data units, evaluated in chunks (no graph kept)."""
        out = []
        for chunk in torch.split(x.float(), EVAL_CHUNK):
            with torch.no_grad():
                out.append(self.log_prob_std(self.std(chunk)).detach() + self.std.log_det)
        return torch.cat(out)


class NormflowsResFlow(Peer):
    name = "normflows"

    def build(self) -> nn.Module:
        import normflows as nf

        flows: list[nn.Module] = []
        for _ in range(16):
            net = nf.nets.LipschitzMLP([2, 128, 128, 2], init_zeros=True, lipschitz_const=0.9)
            flows += [nf.flows.Residual(net, reduce_memory=True), nf.flows.ActNorm(2)]
        q0 = nf.distributions.DiagGaussian(2, trainable=False)
        return nf.NormalizingFlow(q0=q0, flows=flows)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=PEER_LR, weight_decay=NF_WEIGHT_DECAY)

    def init(self, z: Tensor) -> None:
        self.model.log_prob(z)  # initialises the ActNorm layers, as in the example

    def log_prob_std(self, z: Tensor) -> Tensor:
        return self.model.log_prob(z)

    def after_step(self) -> None:
        import normflows as nf

        nf.utils.update_lipschitz(self.model, NF_LIPSCHITZ_ITERS)

    def prepare_eval(self) -> dict[str, Any]:
        import normflows as nf

        nf.utils.update_lipschitz(self.model, NF_EVAL_LIPSCHITZ_ITERS)
        self.model.eval()
        # The constraint as it holds: each layer's effective weight's exact spectral norm.
        sigmas = [
            float(torch.linalg.matrix_norm(m.compute_weight(update=False).detach(), ord=2))
            for m in self.model.modules()
            if isinstance(m, nf.nets.lipschitz.InducedNormLinear)
        ]
        return {
            "estimator": "exact (normflows eval mode: brute-force 2x2 Jacobian per block)",
            "max_layer_spectral_norm": max(sigmas),
        }

    def log_prob(self, x: Tensor) -> Tensor:
        # normflows computes the Jacobian with autograd inside the block, so no torch.no_grad()
        # around the call (it enables grad itself); the graph is dropped per chunk.
        out = []
        for chunk in torch.split(x.float(), 1024):
            with torch.enable_grad():
                lp = self.model.log_prob(self.std(chunk))
            out.append(lp.detach() + self.std.log_det)
        return torch.cat(out)


class ZukoFlow(Peer):
    kind = "RealNVP"
    kwargs: dict[str, Any] = {}

    def build(self) -> nn.Module:
        import zuko

        return getattr(zuko.flows, self.kind)(2, **self.kwargs)

    def log_prob_std(self, z: Tensor) -> Tensor:
        return self.model().log_prob(z)


class ZukoRealNVP(ZukoFlow):
    name, kind, kwargs = "realnvp", "RealNVP", REALNVP_KW


class ZukoNSF(ZukoFlow):
    name, kind, kwargs = "nsf", "NSF", NSF_KW


PEERS: dict[str, type[Peer]] = {
    "normflows": NormflowsResFlow,
    "realnvp": ZukoRealNVP,
    "nsf": ZukoNSF,
}


def train_peer(
    cls: type[Peer], train_x: Tensor, budget: float, seed: int, max_steps: int | None
) -> tuple[Peer, dict[str, Any]]:
    std = Standard(train_x)
    z_train = std(train_x)
    peer = cls(std, seed)
    batches = Batches(z_train.shape[0], BATCH, seed)
    t_start, c_start = time.perf_counter(), time.process_time()
    peer.init(z_train[Batches(z_train.shape[0], BATCH, seed).next()])
    step_times: list[float] = []
    losses: list[tuple[int, float]] = []
    skipped = 0
    while True:
        t0 = time.process_time()
        loss = peer.step(z_train[batches.next()])
        step_times.append(time.process_time() - t0)
        if not math.isfinite(loss):
            skipped += 1
        if len(step_times) % 50 == 0:
            losses.append((len(step_times), loss))
        elapsed = time.process_time() - c_start
        if elapsed >= budget or (max_steps is not None and len(step_times) >= max_steps):
            break
    return peer, {
        "steps": len(step_times),
        "train_seconds": elapsed,
        "cpu_share": elapsed / (time.perf_counter() - t_start),
        "step_seconds": common.summarize(step_times),
        "skipped_nonfinite_steps": skipped,
        "loss_curve": losses,
        "params": n_params(peer.model),
    }


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------


def train_ours(
    dataset: str,
    budget: float,
    seed: int,
    run_dir: Path,
    max_steps: int | None,
    extra: list[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    overrides = [*(extra or []), f"train.max_cpu_seconds={budget}", f"train.seed={seed}"]
    cfg = get_preset(f"toy-{dataset}").override(overrides)
    # The cosine schedule is fitted to the budget (a short timing run, not counted), so it ends
    # with the budget instead of being cut mid-decay or finishing early.
    steps, timing = common.fit_steps(cfg, budget, run_dir.parent / f"{run_dir.name}-timing")
    if max_steps is not None:
        steps = min(steps, max_steps)
    cfg = cfg.override([f"train.steps={steps}"])
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - t0
    cpu_share = (time.process_time() - c0) / wall  # over train(), final plots included
    records = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    train_rows = [r for r in records if "loss" in r and "cpu_seconds" in r]
    # metrics.jsonl logs every log_every steps with the elapsed CPU seconds: per-step times from
    # the differences of consecutive rows (periodic evaluations and checkpoints included).
    per_step = [
        (b["cpu_seconds"] - a["cpu_seconds"]) / (b["step"] - a["step"])
        for a, b in zip(train_rows, train_rows[1:], strict=False)
        if b["step"] > a["step"]
    ]
    seconds = max((r["cpu_seconds"] for r in records if "cpu_seconds" in r), default=math.nan)
    trained = load_run(run_dir)
    return trained, {
        "steps": result.step,
        "train_seconds": seconds,
        "planned_steps": steps,
        "timing_cpu_seconds_per_step": timing,
        "wall_seconds_incl_final_plots": wall,
        "cpu_share": cpu_share,
        "step_seconds": common.summarize(per_step),
        "params": n_params(trained.model),
        "config": cfg.to_dict(),
        "loss_curve": [(r["step"], r["loss"]) for r in train_rows[::5]],
    }


def ours_log_density(trained: Any) -> Callable[[Tensor], Tensor]:
    task, model = trained.task, trained.model

    def fn(x: Tensor) -> Tensor:
        out = []
        for chunk in torch.split(x.float(), EVAL_CHUNK):
            with exact_logdets(model, 2), torch.no_grad():
                out.append(model.log_prob(chunk) + task.offset)
        return torch.cat(out)

    return fn


# --------------------------------------------------------------------------------------------
# Evaluation and output
# --------------------------------------------------------------------------------------------


def evaluate_logq(
    logq: Tensor, test_x: Tensor, truth: Callable[[Tensor], Tensor] | None
) -> dict[str, Any]:
    logq = logq.double()
    nll, nll_se = mean_se(-logq)
    out: dict[str, Any] = {
        "test_nll": nll,
        "test_nll_se": nll_se,
        "nonfinite_test_points": int((~torch.isfinite(logq)).sum()),
    }
    if truth is not None:
        out["kl"], out["kl_se"] = mean_se(truth(test_x.double()) - logq)
    else:
        out["kl"] = out["kl_se"] = None
    return out


def run_dataset(dataset: str, args: argparse.Namespace, runs_root: Path) -> dict[str, Any]:
    cfg = get_preset(f"toy-{dataset}")
    train_x, test_x = toy_split(dataset, cfg.data.n_train, cfg.data.n_test, seed=cfg.data.seed)
    truth = toy_log_density(dataset)
    results: dict[str, Any] = {}
    densities: dict[str, Callable[[Tensor], Tensor]] = {}
    for name in args.models:
        print(f"[{dataset}] {LABELS[name]}: training for {args.budget:g} s ...", flush=True)
        before = load_avg()
        if name == "ours":
            trained, info = train_ours(
                dataset,
                args.budget,
                args.seed,
                runs_root / f"{dataset}-ours",
                args.max_steps,
                args.ours_override,
            )
            assert torch.equal(trained.data.test_x, test_x), (
                "our run's test set differs from toy_split's"
            )
            t0 = time.perf_counter()
            full = trained.task.full_evaluation(trained.model)
            info["eval_seconds"] = time.perf_counter() - t0
            info["full_evaluation"] = {k: v for k, v in full.items() if k != "certificate"}
            logq_fn = ours_log_density(trained)
            own = evaluate_logq(logq_fn(test_x), test_x, truth)
            info.update(
                test_nll=full["test_nll"],
                test_nll_se=full["test_nll_se"],
                kl=full.get("entropy_gap"),
                kl_se=full.get("entropy_gap_se"),
                check_nll_same_path=own["test_nll"],
                estimator=full["estimator"],
            )
        else:
            peer, info = train_peer(PEERS[name], train_x, args.budget, args.seed, args.max_steps)
            t0 = time.perf_counter()
            info.update(peer.prepare_eval())
            logq_fn = peer.log_prob
            info.update(evaluate_logq(logq_fn(test_x), test_x, truth))
            info["eval_seconds"] = time.perf_counter() - t0
        info["load_avg_before"] = before
        info["load_avg_after"] = load_avg()
        results[name] = info
        densities[name] = logq_fn
        kl = f", KL {info['kl']:.4f} ± {info['kl_se']:.4f}" if info.get("kl") is not None else ""
        print(
            f"[{dataset}] {LABELS[name]}: {info['steps']} steps in {info['train_seconds']:.1f} s, "
            f"test NLL {info['test_nll']:.4f} ± {info['test_nll_se']:.4f}{kl} "
            f"(load {before:.2f} -> {info['load_avg_after']:.2f}, "
            f"CPU share {info['cpu_share']:.2f})",
            flush=True,
        )
    panels = {PANEL[m]: densities[m] for m in ("ours", "realnvp", "nsf") if m in densities}
    if args.figure_all:
        panels = {PANEL[m]: densities[m] for m in args.models}
    fig = None
    if panels and not args.no_figure:
        fig = plot_density_comparison(
            test_x[:20000], panels, args.out_dir / f"{args.name}-{dataset}.png", grid=args.grid
        )
    entropy = true_entropy(dataset)
    return {
        "models": results,
        "true_entropy": entropy,
        "figure": str(fig.relative_to(common.REPO_ROOT)) if fig else None,
        "n_train": int(train_x.shape[0]),
        "n_test": int(test_x.shape[0]),
    }


def table(all_results: dict[str, Any]) -> str:
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
    for dataset, res in all_results.items():
        for name, r in res["models"].items():
            gap = common.pm(r["kl"], r["kl_se"], 3) if r.get("kl") is not None else "- (no truth)"
            rows.append(
                [
                    dataset,
                    LABELS[name],
                    common.pm(r["test_nll"], r["test_nll_se"], 4),
                    gap,
                    f"{float(r['step_seconds']['median']) * 1000:.1f} ms",
                    str(r["steps"]),
                    f"{r['train_seconds']:.1f}",
                    f"{r['cpu_share']:.2f}",
                    f"{r['params']:,}",
                ]
            )
    return common.markdown_table(cols, rows)


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
            verdict = (
                "ours better"
                if d < -2 * se
                else ("peer better" if d > 2 * se else "tie (within 2 SE)")
            )
            lines.append(
                f"- {dataset}: ours - {LABELS[peer]} {what} = {d:+.4f} (± {se:.4f}): {verdict}"
            )
        if res.get("true_entropy"):
            h, hse = res["true_entropy"]
            lines.append(f"- {dataset}: true entropy {h:.4f} ± {hse:.4f} (Monte Carlo, 200k draws)")
    return "\n".join(lines)


def main() -> None:
    global NF_LIPSCHITZ_ITERS
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "--render-only",
        action="store_true",
        help="rewrite NAME.md (and NAME.json) from an existing NAME.json without training",
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
    common.add_common_args(ap)
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 5.0 if args.quick else DEFAULT_BUDGET
    if args.datasets is None:
        args.datasets = ["8gaussians"] if args.quick else list(DATASETS)
    if args.quick:
        args.grid = min(args.grid, 80)
    args.name = args.name or ("toy-quick" if args.quick else "toy")
    args.out_dir = args.out_dir or common.RESULTS_DIR
    if args.render_only:
        payload = json.loads((args.out_dir / f"{args.name}.json").read_text())
        write_report(
            args.name, args.out_dir, payload["environment"], payload["settings"], payload["raw"]
        )
        return
    NF_LIPSCHITZ_ITERS = args.nf_lipschitz_iters
    threads = common.set_threads(args.threads)
    # Our loop flushes subnormal floats to zero on CPUs (they are orders of magnitude slower);
    # the same for every model here (it is process-wide and would otherwise depend on order).
    torch.set_flush_denormal(True)
    common.seed_all(args.seed)
    env = common.environment()
    env["load_avg_start"] = load_avg()
    t_all = time.perf_counter()

    tmp = None
    if args.keep_runs is None:
        tmp = Path(tempfile.mkdtemp(prefix="iresnet-toy-bench-"))
        runs_root = tmp
    else:
        runs_root = args.keep_runs
        runs_root.mkdir(parents=True, exist_ok=True)
    try:
        all_results = {d: run_dataset(d, args, runs_root) for d in args.datasets}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    env["load_avg_end"] = load_avg()
    env["total_seconds"] = time.perf_counter() - t_all

    settings = {
        "budget_s": args.budget,
        "datasets": " ".join(args.datasets),
        "batch": BATCH,
        "threads": threads,
        "seed": args.seed,
        "peer_lr": PEER_LR,
        "normflows_update_lipschitz_per_step": NF_LIPSCHITZ_ITERS,
        "normflows_update_lipschitz_before_eval": NF_EVAL_LIPSCHITZ_ITERS,
        "flush_denormal": True,
        "realnvp": REALNVP_KW,
        "nsf": NSF_KW,
        "max_steps": args.max_steps,
        "ours_override": " ".join(args.ours_override) or None,
    }
    write_report(args.name, args.out_dir, env, settings, all_results)


def write_report(
    name: str, out_dir: Path, env: dict[str, Any], settings: dict[str, Any], all_results: dict
) -> None:
    """Write ``NAME.md`` and ``NAME.json`` (also used by ``--render-only``)."""
    ours_cfgs = [
        res["models"]["ours"]["config"] for res in all_results.values() if "ours" in res["models"]
    ]
    ours_line = ""
    if ours_cfgs:
        m, t = ours_cfgs[0]["model"], ours_cfgs[0]["train"]
        ours_line = (
            f"Ours = preset `{ours_cfgs[0]['preset']}` (per data set): {m['n_blocks']} blocks, "
            f"hidden {m['hidden']}, {m['n_layers']} layers, coeff {m['coeff']}, "
            f"{m['activation']} (beta {m['lipswish_beta']}), log-det `{m['logdet']}`; "
            f"Adam lr {t['lr']}, warm-up {t['warmup_steps']}, {t['lr_schedule']} schedule over "
            f"{t['steps']} steps, EMA {t['ema_decay']}, batch {t['batch_size']}, "
            f"max_cpu_seconds {t['max_cpu_seconds']:g}.\n\n"
        )
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
        ("Results", ours_line + table(all_results)),
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
    md, js = common.write_results(
        name,
        "2-D toy densities at an equal CPU budget: ours vs normflows, zuko",
        env,
        settings,
        sections,
        all_results,
        summary,
        out_dir=out_dir,
    )
    print(table(all_results))
    print(verdicts(all_results))
    print(f"wrote {md} and {js} ({env['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
