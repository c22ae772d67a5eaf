"""Image densities at an equal CPU budget: our CPU image preset against a coupling flow.

For each data set (``digits`` 8x8 with 17 levels, ``fashion-mnist`` 1x28x28 with 256 levels):

- ``ours``: the image preset of the same name (a multi-scale Residual Flow, see
  :data:`iresnet.app.presets.PRESETS`), trained by the real loop
  (:func:`iresnet.app.training.train`) with ``train.max_cpu_seconds`` set to the budget. Its
  cosine schedule is fitted to the budget: a short timing run (not counted) measures CPU seconds
  per step, and ``train.steps`` is set to what fits in 95% of the budget. Test bits/dim from
  ``DensityTask.full_evaluation``, the number ``iresnet evaluate --json`` prints: exact log-dets
  where ``D <= 64`` (digits), else an unbiased Russian-roulette estimate with 20 always-computed
  terms (no truncation bias); its standard error is over test images and includes the
  estimator's noise.
- ``zuko RealNVP``: ``zuko.flows.RealNVP`` on the flattened image, the coupling-flow stand-in
  for Glow that the seed report compares against. Same data, same preprocessing as ours (the
  library's ``Dequantize`` and ``Logit`` transforms: uniform dequantisation ``u = (x + U)/K`` and
  the preset's logit map, each with its log-det), same batch size, Adam lr 1e-3 with a 100-step
  warm-up and the same cosine-to-zero shape over the budget, gradient norm clipped at 10,
  non-finite losses skipped. Exact test log-density.

The budget is CPU time of each model's own process with one torch thread (periodic evaluation
and logging included), i.e. the wall-clock of one dedicated core: on a shared machine the
wall-clock of a run depends on the other processes, its CPU time does not. Both models train at
the same time, one process each (the share of a core each got is reported).
``bpd = (-log p(u) + D log K) / (D log 2)`` with every preprocessing log-det counted, on the
standard test split (digits: the library's fixed split; Fashion-MNIST: the 10 000
``t10k`` images), each image dequantised with fixed-seed noise.

**Variants of ours** (``--variants``, issue 17): the Residual Flow preset beside an i-DenseNet
of about the same size (the same skeleton with dense branches: depth 3, CLipSwish, learned
concatenation weights; growth 12 on digits, 16 on Fashion-MNIST, the ``fashion-mnist-idensenet``
preset), each with uniform and with variational dequantisation (Flow++: ``q(v | x)`` with 4
couplings of width 16, trained jointly), all four trained side by side at the same CPU budget.
With variational dequantisation the reported bits/dim are the negative ELBO (an upper bound of
the code length); the same model's uniform-dequantisation bound is measured beside it on the
same test images.

Run: ``.venv/bin/python benchmarks/images.py`` (digits 10 CPU-minutes, Fashion-MNIST 60
CPU-minutes per model, plus evaluation); ``--datasets digits --budget digits=600`` for one;
``--quick`` for a smoke run (writes ``images-<data>-quick.*``). ``--data-dir DIR`` points at
the image files.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from iresnet import ComposedTransform, Dequantize, Logit
from iresnet.app.batches import EpochBatches
from iresnet.app.builder import load_data
from iresnet.app.config import Config
from iresnet.app.files import atomic_write
from iresnet.app.plots import plot_image_grid
from iresnet.app.presets import get_preset
from iresnet.transforms import bits_per_dim

from bench import RESULTS_DIR
from bench.density import chunked
from bench.env import environment, script_parser, seed_all, set_threads
from bench.metrics import logged_max
from bench.ours import train_under_budget
from bench.peers import train_for_budget, trainable_parameters, zuko_flow
from bench.report import doc_body, markdown_table, pm, write_results
from bench.stats import mean_se, summarize, verdict
from bench.worker import add_worker_flag, run_side_by_side, serve

DEFAULT_BUDGETS = {"digits": 600.0, "fashion-mnist": 3600.0}
#: ``--variants``: config overrides of the data set's preset, per variant.
_DENSE = ["model.branch=dense", "model.activation=clipswish", "model.dense_depth=3"]
_VARDEQ = [
    "model.dequantization=variational",
    "model.dequant_hidden=16",
    "model.dequant_steps=4",
]
DENSE_GROWTH = {"digits": 12, "fashion-mnist": 16}  # about the Residual Flow's parameters


def variants(dataset: str) -> dict[str, list[str]]:
    dense = [*_DENSE, f"model.dense_growth={DENSE_GROWTH[dataset]}"]
    return {
        "Residual Flow": [],
        "Residual Flow + var. deq.": list(_VARDEQ),
        "i-DenseNet": dense,
        "i-DenseNet + var. deq.": [*dense, *_VARDEQ],
    }


#: The peer's size per data set: enough capacity that time, not width, limits it.
PEER_KW = {
    "digits": {"transforms": 8, "hidden_features": [256, 256]},
    "fashion-mnist": {"transforms": 8, "hidden_features": [512, 512]},
}
PEER_LR, PEER_WARMUP, PEER_CLIP = 1e-3, 100, 10.0
EVAL_CHUNK = 500
TIMING_STEPS = 15


def preset_config(dataset: str, data_dir: str | None, seed: int) -> Config:
    overrides = [f"train.seed={seed}", "train.threads=1"]
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    return get_preset(dataset).override(overrides)


# --------------------------------------------------------------------------------------------
# The peer
# --------------------------------------------------------------------------------------------


class FlatPeer:
    """zuko RealNVP on flattened images after the library's preprocessing transforms."""

    def __init__(
        self, kw: dict[str, Any], levels: int, shape: tuple[int, ...], alpha: float, seed: int
    ) -> None:
        torch.manual_seed(seed)
        self.kw, self.shape = kw, shape
        self.flow = zuko_flow("RealNVP", math.prod(shape), **kw)
        self.logit = Logit(alpha) if alpha > 0 else None
        self.pre = ComposedTransform(Dequantize(levels), *([self.logit] if self.logit else []))

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p`` (nats) of integer images ``x`` ``(B, C, H, W)`` dequantised, in level
        units (every preprocessing log-det counted), as our image flows return it."""
        z, logdet = self.pre(x)
        return self.flow().log_prob(z.flatten(1)) + logdet

    def sample(self, n: int) -> Tensor:
        """``n`` images in ``[0, 1]``."""
        with torch.no_grad():
            z = self.flow().sample((n,))
        u = self.logit.inverse(z) if self.logit is not None else z
        return u.clamp(0, 1).reshape(n, *self.shape)


def train_peer(
    dataset: str,
    cfg: Config,
    budget: float,
    seed: int,
    out: Path,
    n_test: int | None,
    peer_kw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    data = load_data(cfg.data)
    shape, dim = data.event_shape, math.prod(data.event_shape)
    kw = PEER_KW[dataset] | (peer_kw or {})
    peer = FlatPeer(kw, int(data.n_levels), shape, cfg.data.logit_alpha, seed)
    batches = EpochBatches(data.train_x.shape[0], cfg.train.batch_size, seed)

    def lr_at(step: int, spent: float) -> float:
        # Warm-up, then cosine to zero over the CPU budget (ours decays over its fitted step
        # count; this one follows the clock, which needs no timing run).
        return PEER_LR * min(1.0, (step + 1) / PEER_WARMUP) * 0.5 * (1 + math.cos(math.pi * spent))

    run = train_for_budget(
        peer.flow,
        torch.optim.Adam(peer.flow.parameters(), lr=PEER_LR),
        lambda xb: bits_per_dim(peer.log_prob(xb), dim).mean(),
        lambda: data.train_x[batches.next()],
        budget,
        lr_at=lr_at,
        clip=PEER_CLIP,
    )
    # Evaluation: exact log-densities of every test image, fixed dequantisation noise.
    peer.flow.eval()
    torch.manual_seed(seed + 1)
    test_x = data.test_x[:n_test] if n_test else data.test_x
    bpd = bits_per_dim(chunked(peer.log_prob, EVAL_CHUNK)(test_x).double(), dim)
    finite = torch.isfinite(bpd)
    mean, se = mean_se(bpd[finite])
    torch.manual_seed(seed + 2)
    torch.save(peer.sample(64), out / "peer_samples.pt")
    return {
        "model": f"zuko RealNVP {kw}",
        "test_bpd": mean,
        "test_bpd_se": se,
        "estimator": "exact (coupling flow)",
        "nonfinite_test_images": int((~finite).sum()),
        "n_test": int(bpd.numel()),
        "steps": run.steps,
        "train_seconds": run.cpu_seconds,
        "wall_seconds": run.wall_seconds,
        "cpu_share": run.cpu_share,
        "step_seconds": summarize(run.step_seconds),
        "skipped_nonfinite_steps": run.skipped,
        "params": trainable_parameters(peer.flow),
        "loss_curve": run.curve,
    }


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------


def train_ours(
    dataset: str, cfg: Config, budget: float, out: Path, n_test: int | None
) -> dict[str, Any]:
    # The CPU budget replaces the preset's wall-clock cap (which a loaded machine hits early).
    run_dir = out / "ours"
    run = train_under_budget(cfg, budget, run_dir, out, timing_steps=TIMING_STEPS)
    trained = run.trained
    torch.manual_seed(cfg.train.seed + 1)
    ev = trained.task.full_evaluation(trained.model, n_inverse=256, n_test=n_test)
    torch.manual_seed(cfg.train.seed + 2)
    samples, _ = trained.task.sample(trained.model, 64)
    torch.save(samples.cpu(), out / "ours_samples.pt")
    m, records = run.cfg.model, run.records
    return {
        "model": f"preset {dataset}: {m.kind}, {m.n_scales} scales x {m.n_blocks} blocks x "
        f"{m.hidden} channels, {m.activation}, c={m.coeff}, log-det {m.logdet}",
        "test_bpd": ev["test_bpd"],
        "test_bpd_se": ev["test_bpd_se"],
        "dequantization": ev.get("dequantization"),
        "test_bpd_uniform": ev.get("test_bpd_uniform"),
        "test_bpd_uniform_se": ev.get("test_bpd_uniform_se"),
        "estimator": ev["estimator"],
        "n_test": ev["n_test"],
        "inverse_max_error": ev["inverse_max_error"],
        "invertible": ev["invertible"],
        "max_lipschitz": ev["max_lipschitz"],
        "steps": run.result.step,
        "planned_steps": run.planned_steps,
        "timing_cpu_seconds_per_step": run.timing_cpu_seconds_per_step,
        "train_seconds": logged_max(records, "cpu_seconds"),
        "wall_seconds": logged_max(records, "seconds"),
        "cpu_share": run.cpu_share,
        "params": trainable_parameters(trained.model),
        "run_dir": str(run_dir),
        "config": run.cfg.to_dict(),
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> None:
    set_threads(1)
    seed_all(spec["seed"])
    cfg = preset_config(spec["dataset"], spec["data_dir"], spec["seed"]).override(
        spec.get("ours_override") or []
    )
    out = Path(spec["out"])
    if spec["who"] == "ours":
        result = train_ours(spec["dataset"], cfg, spec["budget"], out, spec["n_test"])
    else:
        result = train_peer(
            spec["dataset"],
            cfg,
            spec["budget"],
            spec["seed"],
            out,
            spec["n_test"],
            spec.get("peer_kw"),
        )
    atomic_write(out / f"{spec['who']}.json", json.dumps(result))


def load_result(folder: Path, who: str) -> dict[str, Any]:
    result = json.loads((folder / f"{who}.json").read_text())
    result["samples"] = torch.load(folder / f"{who}_samples.pt")
    return result


def run_dataset(dataset: str, budget: float, args: argparse.Namespace, work: Path) -> dict:
    """Train ours and the peer at the same time (one process each) and collect their results."""
    results = {}
    if args.ours_from:  # reuse ours' run and result from an earlier run
        prior = args.ours_from / dataset / "ours"
        results["ours"] = load_result(prior, "ours")
        results["ours"]["reused_from"] = str(prior)
        if results["ours"]["config"]["train"]["max_cpu_seconds"] != budget:
            raise SystemExit(f"--ours-from {prior}: its budget differs from {budget} CPU s")
    jobs = {}
    for who in ("peer",) if args.ours_from else ("ours", "peer"):
        out = work / dataset / who
        spec = {
            "who": who,
            "dataset": dataset,
            "budget": budget,
            "seed": args.seed,
            "data_dir": args.data_dir,
            "out": str(out),
            "n_test": args.n_test,
            "peer_kw": args.peer_kw,
            "ours_override": args.ours_override,
        }
        jobs[f"{dataset}/{who}"] = (spec, out)
    run_side_by_side(__file__, jobs)
    for spec, out in jobs.values():
        results[spec["who"]] = load_result(out, spec["who"])
    return results


def run_variants(dataset: str, budget: float, args: argparse.Namespace, work: Path) -> dict:
    """Train the variants of ours side by side (one process each) and collect their results."""
    jobs = {}
    for label, override in variants(dataset).items():
        slug = label.lower().replace(" ", "-").replace("+", "").replace(".", "").replace("--", "-")
        out = work / dataset / slug
        spec = {
            "who": "ours",
            "dataset": dataset,
            "budget": budget,
            "seed": args.seed,
            "data_dir": args.data_dir,
            "out": str(out),
            "n_test": args.n_test,
            "ours_override": [*override, *args.ours_override],
        }
        jobs[label] = (spec, out)
    run_side_by_side(__file__, jobs)
    return {label: load_result(out, "ours") for label, (_, out) in jobs.items()}


def variants_report(dataset: str, results: dict[str, Any], budget: float) -> tuple[str, str]:
    head = [
        "model",
        "test bits/dim ± SE",
        "same model, uniform deq. ± SE",
        "estimator",
        "steps",
        "CPU s/step (mean)",
        "CPU share",
        "parameters",
        "max Lip(g)",
    ]
    rows = []
    for label, r in results.items():
        variational = r.get("dequantization") == "variational"
        rows.append(
            [
                label,
                pm(r["test_bpd"], r["test_bpd_se"], 4) + (" (-ELBO)" if variational else ""),
                pm(r["test_bpd_uniform"], r["test_bpd_uniform_se"], 4) if variational else "-",
                r["estimator"],
                r["steps"],
                f"{1000 * r['train_seconds'] / max(r['steps'], 1):.1f} ms",
                f"{r['cpu_share']:.2f}",
                f"{r['params']:,}",
                f"{r['max_lipschitz']:.4f}",
            ]
        )
    base = results["Residual Flow"]
    lines = []
    for label, r in results.items():
        if label == "Residual Flow":
            continue
        d = r["test_bpd"] - base["test_bpd"]
        se = math.hypot(r["test_bpd_se"], base["test_bpd_se"])
        said = verdict(d, se).replace("ours", label).replace("peer", "Residual Flow")
        lines.append(
            f"- {dataset}, {budget:.0f} CPU s: {label} - Residual Flow = {d:+.4f} (± {se:.4f}) "
            f"bits/dim: {said}"
        )
        if r.get("dequantization") == "variational":
            g = r["test_bpd"] - r["test_bpd_uniform"]
            gse = math.hypot(r["test_bpd_se"], r["test_bpd_uniform_se"])
            lines.append(
                f"  - its variational bound - its own uniform bound = {g:+.4f} (± {gse:.4f}, "
                "unpaired SE: conservative, both on the same images) bits/dim"
            )
    return markdown_table(head, rows), "\n".join(lines)


def variants_figure(dataset: str, results: dict[str, Any], path: Path) -> Path:
    """16 samples per variant, one row each, in the order of the table."""
    grid = torch.cat([r["samples"][:16] for r in results.values()])
    title = f"{dataset}, rows: " + " | ".join(results)
    return plot_image_grid(grid, path, nrow=16, title=title)


def figure(dataset: str, results: dict[str, Any], path: Path) -> Path:
    """Samples of ours (left 8 columns) beside the peer's (right 8 columns), one grid."""
    a, b = results["ours"]["samples"][:64], results["peer"]["samples"][:64]
    rows = [torch.cat([a[i : i + 8], b[i : i + 8]]) for i in range(0, 64, 8)]
    title = (
        f"{dataset}: ours {results['ours']['test_bpd']:.3f} bpd (left) | "
        f"RealNVP {results['peer']['test_bpd']:.3f} bpd (right)"
    )
    return plot_image_grid(torch.cat(rows), path, nrow=16, title=title)


def report(all_results: dict[str, Any], budgets: dict[str, float]) -> tuple[str, str]:
    head = [
        "data set",
        "model",
        "test bits/dim ± SE",
        "estimator",
        "steps",
        "CPU s/step (mean)",
        "CPU seconds trained",
        "wall seconds",
        "CPU share",
        "parameters",
    ]
    rows, lines = [], []
    for ds, res in all_results.items():
        for who, label in (("ours", "ours (Residual Flow preset)"), ("peer", "zuko RealNVP")):
            r = res[who]
            sps = r["train_seconds"] / max(r["steps"], 1)  # CPU seconds, evaluations included
            rows.append(
                [
                    ds,
                    label,
                    pm(r["test_bpd"], r["test_bpd_se"], 4),
                    r["estimator"],
                    r["steps"],
                    f"{1000 * sps:.1f} ms",
                    f"{r['train_seconds']:.0f}",
                    f"{r['wall_seconds']:.0f}",
                    f"{r['cpu_share']:.2f}",
                    f"{r['params']:,}",
                ]
            )
        d = res["ours"]["test_bpd"] - res["peer"]["test_bpd"]
        se = math.hypot(res["ours"]["test_bpd_se"], res["peer"]["test_bpd_se"])
        lines.append(
            f"- {ds} after {budgets[ds]:.0f} CPU s: ours - RealNVP = {d:+.4f} "
            f"(± {se:.4f}) bits/dim: {verdict(d, se)}"
        )
        o = res["ours"]
        lines.append(
            f"- {ds}: ours inverse max error {o['inverse_max_error']:.2e} (pixel units, [0, 1]) "
            f"on 256 test images, certified invertible: {o['invertible']} "
            f"(largest block bound {o['max_lipschitz']:.4f})"
        )
    return markdown_table(head, rows), "\n".join(lines)


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument(
        "--datasets", nargs="+", default=list(DEFAULT_BUDGETS), choices=list(DEFAULT_BUDGETS)
    )
    ap.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="DATA=SECONDS",
        help="CPU-seconds training budget per model (default digits=600, fashion-mnist=3600)",
    )
    ap.add_argument("--data-dir", default=None, help="folder with the image files")
    ap.add_argument("--work-dir", type=Path, default=None, help="where run folders go (kept)")
    ap.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="evaluate both models on the first N test images (default: all); our "
        "unbiased estimator at D = 784 costs ~20 vector-Jacobian products per "
        "block and image",
    )
    ap.add_argument(
        "--peer-kw",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='override the peer\'s size, e.g. \'{"transforms": 4, "hidden_features": [64, 64]}\'',
    )
    ap.add_argument(
        "--ours-from",
        type=Path,
        default=None,
        metavar="WORK_DIR",
        help="reuse our model's run and result from an earlier --work-dir (same budget)",
    )
    ap.add_argument(
        "--ours-override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of our preset, for what-if runs",
    )
    ap.add_argument("--name", default=None, help="results name (default images-<data>)")
    ap.add_argument(
        "--variants",
        action="store_true",
        help="ours only: Residual Flow vs i-DenseNet, each with uniform and variational "
        "dequantisation (writes images-variants-<data>.*)",
    )
    add_worker_flag(ap)
    args = ap.parse_args()
    if serve(args, worker):
        return
    budgets = dict(DEFAULT_BUDGETS)
    if args.quick:
        budgets = {k: 20.0 for k in budgets}
    for item in args.budget:
        name, _, secs = item.partition("=")
        if name not in budgets or not secs:
            ap.error(f"--budget expects DATA=SECONDS with DATA in {list(budgets)}, got {item!r}")
        budgets[name] = float(secs)
    set_threads(1)  # the driver only waits; each worker sets its own single thread
    env = environment()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="iresnet-images-"))
    out_dir = args.out_dir or RESULTS_DIR
    if args.variants:
        for ds in args.datasets:
            print(
                f"[{ds}] training 4 variants side by side, {budgets[ds]:g} CPU s each", flush=True
            )
            res = run_variants(ds, budgets[ds], args, work)
            name = args.name or f"images-variants-{ds}{'-quick' if args.quick else ''}"
            png = variants_figure(ds, res, out_dir / f"{name}.png")
            table, verdicts = variants_report(ds, res, budgets[ds])
            raw = {who: {k: v for k, v in r.items() if k != "samples"} for who, r in res.items()}
            settings = {
                "dataset": ds,
                "budget_s": budgets[ds],
                "seed": args.seed,
                "threads": 1,
                "n_test": args.n_test or "all",
                "variants": variants(ds),
                "work_dir": str(work),
                "ours_override": args.ours_override,
            }
            notes = doc_body(__doc__) + f"\n\nSamples (one row per variant): `{png.name}`."
            md, _ = write_results(
                name,
                f"Residual Flow vs i-DenseNet, uniform vs variational dequantisation, on {ds}",
                env,
                settings,
                [("Results", table), ("Against the Residual Flow", verdicts), ("Notes", notes)],
                raw,
                summary={k: r["test_bpd"] for k, r in res.items()},
                out_dir=out_dir,
            )
            print(md.read_text(), flush=True)
        return
    for ds in args.datasets:
        print(
            f"[{ds}] training ours and zuko RealNVP side by side, {budgets[ds]:g} CPU s each",
            flush=True,
        )
        res = run_dataset(ds, budgets[ds], args, work)
        name = args.name or f"images-{ds}{'-quick' if args.quick else ''}"
        png = figure(ds, res, out_dir / f"{name}.png")
        table, verdicts = report({ds: res}, budgets)
        raw = {who: {k: v for k, v in r.items() if k != "samples"} for who, r in res.items()}
        settings = {
            "dataset": ds,
            "budget_s": budgets[ds],
            "seed": args.seed,
            "threads": 1,
            "n_test": args.n_test or "all",
            "peer": PEER_KW[ds] | (args.peer_kw or {}),
            "peer_lr": PEER_LR,
            "work_dir": str(work),
            "ours_from": str(args.ours_from or ""),
            "ours_override": args.ours_override,
        }
        notes = doc_body(__doc__) + f"\n\nSamples (ours left, RealNVP right): `{png.name}`."
        md, _ = write_results(
            name,
            f"Image density on {ds} at an equal CPU budget: ours vs zuko RealNVP",
            env,
            settings,
            [("Results", table), ("Ours against the peer", verdicts), ("Notes", notes)],
            raw,
            summary={"ours_bpd": res["ours"]["test_bpd"], "peer_bpd": res["peer"]["test_bpd"]},
            out_dir=out_dir,
        )
        print(md.read_text(), flush=True)


if __name__ == "__main__":
    main()
