"""Image densities at an equal CPU budget: our CPU image preset against a coupling flow.

For each data set (``digits`` 8x8 with 17 levels, ``fashion-mnist`` 1x28x28 with 256 levels):

- ``ours``: the image preset of the same name (a multi-scale Residual Flow, see
  :func:`iresnet.image_models.image_presets`), trained by the real loop
  (:func:`iresnet.train.loop.train`) with ``train.max_cpu_seconds`` set to the budget. Its
  cosine schedule is fitted to the budget: a short timing run (not counted) measures CPU seconds
  per step, and ``train.steps`` is set to what fits in 95% of the budget. Test bits/dim from
  ``DensityTask.full_evaluation``, the number ``iresnet evaluate --json`` prints: exact log-dets
  where ``D <= 64`` (digits), else an unbiased Russian-roulette estimate with 20 always-computed
  terms (no truncation bias); its standard error is over test images and includes the
  estimator's noise.
- ``zuko RealNVP``: ``zuko.flows.RealNVP`` on the flattened image, the coupling-flow stand-in
  for Glow that the seed report compares against. Same data, same preprocessing as ours (uniform
  dequantisation ``u = (x + U)/K``, the preset's logit transform with its log-det), same batch
  size, Adam lr 1e-3 with a 100-step warm-up and the same cosine-to-zero shape over the
  budget, gradient norm clipped at 10, non-finite losses skipped. Exact test log-density.

The budget is CPU time of each model's own process with one torch thread (periodic evaluation
and logging included), i.e. the wall-clock of one dedicated core: on a shared machine the
wall-clock of a run depends on the other processes, its CPU time does not. Both models train at
the same time, one process each (the share of a core each got is reported).
``bpd = (-log p(u) + D log K) / (D log 2)`` with every preprocessing log-det counted, on the
standard test split (digits: the library's fixed split; Fashion-MNIST: the 10 000
``t10k`` images), each image dequantised with fixed-seed noise.

Run: ``.venv/bin/python benchmarks/images.py`` (digits 10 CPU-minutes, Fashion-MNIST 60
CPU-minutes per model, plus evaluation); ``--datasets digits --budget digits=600`` for one;
``--quick`` for a smoke run (writes ``images-<data>-quick.*``). ``--data-dir DIR`` points at
the image files.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from iresnet.config import Config  # noqa: E402
from iresnet.data import load_data  # noqa: E402
from iresnet.plots import plot_image_grid  # noqa: E402
from iresnet.preprocess import bits_per_dim, dequantize, logit_inverse, logit_transform  # noqa: E402
from iresnet.presets import get_preset  # noqa: E402
from iresnet.train.evaluate import load_run  # noqa: E402
from iresnet.train.loop import train  # noqa: E402
from iresnet.train.tasks import mean_se  # noqa: E402

DEFAULT_BUDGETS = {"digits": 600.0, "fashion-mnist": 3600.0}
#: The peer's size per data set: enough capacity that time, not width, limits it.
PEER_KW = {
    "digits": {"transforms": 8, "hidden_features": [256, 256]},
    "fashion-mnist": {"transforms": 8, "hidden_features": [512, 512]},
}
PEER_LR, PEER_WARMUP, PEER_CLIP = 1e-3, 100, 10.0
EVAL_CHUNK = 500
TIMING_STEPS = 15


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def preset_config(dataset: str, data_dir: str | None, seed: int) -> Config:
    overrides = [f"train.seed={seed}", "train.threads=1"]
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    return get_preset(dataset).override(overrides)


# --------------------------------------------------------------------------------------------
# The peer
# --------------------------------------------------------------------------------------------


class FlatPeer:
    """zuko RealNVP on flattened, dequantised, logit-transformed images."""

    def __init__(self, dataset: str, cfg: Config, dim: int, seed: int,
                 cfg_peer_kw: dict[str, Any] | None = None) -> None:
        import zuko

        torch.manual_seed(seed)
        self.cfg, self.dim = cfg, dim
        self.kw = PEER_KW[dataset] | (cfg_peer_kw or {})
        self.flow = zuko.flows.RealNVP(dim, **self.kw)

    def log_prob_u(self, x: Tensor, n_levels: int) -> Tensor:
        """``log p(u)`` (nats) of integer images ``x`` ``(B, C, H, W)`` after dequantisation."""
        u = dequantize(x, n_levels).flatten(1)
        alpha = self.cfg.data.logit_alpha
        if alpha > 0:
            z, ld = logit_transform(u, alpha)
            return self.flow().log_prob(z) + ld
        return self.flow().log_prob(u)

    def sample(self, n: int, shape: tuple[int, ...]) -> Tensor:
        with torch.no_grad():
            z = self.flow().sample((n,))
        alpha = self.cfg.data.logit_alpha
        u = logit_inverse(z, alpha) if alpha > 0 else z
        return u.clamp(0, 1).reshape(n, *shape)


def train_peer(dataset: str, cfg: Config, budget: float, seed: int, out: Path,
               n_test: int | None, peer_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    data = load_data(cfg.data)
    k, dim = int(data.n_levels), int(math.prod(data.event_shape))
    peer = FlatPeer(dataset, cfg, dim, seed, peer_kw)
    opt = torch.optim.Adam(peer.flow.parameters(), lr=PEER_LR)
    gen = torch.Generator().manual_seed(seed)
    n, batch = data.train_x.shape[0], cfg.train.batch_size
    perm, pos = torch.randperm(n, generator=gen), 0
    step_times, curve, skipped = [], [], 0
    t_start, c_start = time.perf_counter(), time.process_time()
    elapsed = 0.0  # CPU seconds of this process
    while elapsed < budget:
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        xb = data.train_x[perm[pos : pos + batch]]
        pos += batch
        step = len(step_times)
        # Warm-up, then cosine to zero over the CPU budget (ours decays over its fitted step
        # count; this one follows the clock, which needs no timing run).
        frac = min(elapsed / budget, 1.0)
        lr = PEER_LR * min(1.0, (step + 1) / PEER_WARMUP) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = bits_per_dim(peer.log_prob_u(xb, k), dim, k).mean()
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(peer.flow.parameters(), PEER_CLIP)
            opt.step()
        else:
            skipped += 1
        step_times.append(time.perf_counter() - t0)
        if step % 50 == 0:
            curve.append((step, float(loss.detach()), time.process_time() - c_start))
        elapsed = time.process_time() - c_start
    wall = time.perf_counter() - t_start
    cpu_share = elapsed / wall
    # Evaluation: exact log-densities of every test image, fixed dequantisation noise.
    peer.flow.eval()
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        test_x = data.test_x[:n_test] if n_test else data.test_x
        logp = torch.cat([peer.log_prob_u(c, k) for c in torch.split(test_x, EVAL_CHUNK)])
    bpd = bits_per_dim(logp.double(), dim, k)
    finite = torch.isfinite(bpd)
    mean, se = mean_se(bpd[finite])
    torch.manual_seed(seed + 2)
    samples = peer.sample(64, data.event_shape)
    torch.save(samples, out / "peer_samples.pt")
    return {
        "model": f"zuko RealNVP {peer.kw}",
        "test_bpd": mean,
        "test_bpd_se": se,
        "estimator": "exact (coupling flow)",
        "nonfinite_test_images": int((~finite).sum()),
        "n_test": int(bpd.numel()),
        "steps": len(step_times),
        "train_seconds": elapsed,
        "wall_seconds": wall,
        "cpu_share": cpu_share,
        "step_seconds": common.summarize(step_times),
        "skipped_nonfinite_steps": skipped,
        "params": n_params(peer.flow),
        "loss_curve": curve,
    }


# --------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------


def train_ours(dataset: str, cfg: Config, budget: float, out: Path,
               n_test: int | None) -> dict[str, Any]:
    steps, per_step = common.fit_steps(cfg, budget, out, TIMING_STEPS)
    run_dir = out / "ours"
    # The CPU budget replaces the preset's wall-clock cap (which a loaded machine hits early).
    cfg = cfg.override([f"train.steps={steps}", f"train.max_cpu_seconds={budget}",
                        "train.max_seconds=0"])
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - t0
    cpu_share = (time.process_time() - c0) / wall
    trained = load_run(run_dir)
    torch.manual_seed(cfg.train.seed + 1)
    ev = trained.task.full_evaluation(trained.model, n_inverse=256, n_test=n_test)
    torch.manual_seed(cfg.train.seed + 2)
    torch.save(trained.task.sample(trained.model, 64).cpu(), out / "ours_samples.pt")
    m = cfg.model
    return {
        "model": f"preset {dataset}: {m.kind}, {m.n_scales} scales x {m.n_blocks} blocks x "
                 f"{m.hidden} channels, {m.activation}, c={m.coeff}, log-det {m.logdet}",
        "test_bpd": ev["test_bpd"],
        "test_bpd_se": ev["test_bpd_se"],
        "estimator": ev["estimator"],
        "n_test": ev["n_test"],
        "inverse_max_error": ev["inverse_max_error"],
        "invertible": ev["invertible"],
        "max_lipschitz": ev["max_lipschitz"],
        "steps": result.step,
        "planned_steps": steps,
        "timing_cpu_seconds_per_step": per_step,
        "train_seconds": common.logged_max(run_dir, "cpu_seconds"),
        "wall_seconds": common.logged_max(run_dir, "seconds"),
        "cpu_share": cpu_share,
        "params": n_params(trained.model),
        "run_dir": str(run_dir),
        "config": cfg.to_dict(),
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def worker(spec: dict[str, Any]) -> None:
    common.set_threads(1)
    common.seed_all(spec["seed"])
    cfg = preset_config(spec["dataset"], spec["data_dir"], spec["seed"]).override(
        spec.get("ours_override") or [])
    out = Path(spec["out"])
    if spec["who"] == "ours":
        result = train_ours(spec["dataset"], cfg, spec["budget"], out, spec["n_test"])
    else:
        result = train_peer(spec["dataset"], cfg, spec["budget"], spec["seed"], out, spec["n_test"],
                            spec.get("peer_kw"))
    (out / f"{spec['who']}.json").write_text(json.dumps(result))


def run_dataset(dataset: str, budget: float, args: argparse.Namespace, work: Path) -> dict:
    """Train ours and the peer at the same time (one process each) and collect their results."""
    procs = {}
    for who in ("ours", "peer"):
        if who == "ours" and args.ours_from:  # reuse ours' run and result from an earlier run
            continue
        out = work / dataset / who
        out.mkdir(parents=True, exist_ok=True)
        spec = {"who": who, "dataset": dataset, "budget": budget, "seed": args.seed,
                "data_dir": args.data_dir, "out": str(out), "n_test": args.n_test,
                "peer_kw": args.peer_kw, "ours_override": args.ours_override}
        log = open(out / "log.txt", "w")  # noqa: SIM115 (closed after wait)
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
        procs[who] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env=common.worker_env(), cwd=common.REPO_ROOT), log, out)
    results = {}
    if args.ours_from:
        prior = args.ours_from / dataset / "ours"
        results["ours"] = json.loads((prior / "ours.json").read_text())
        results["ours"]["samples"] = torch.load(prior / "ours_samples.pt")
        results["ours"]["reused_from"] = str(prior)
        if results["ours"]["config"]["train"]["max_cpu_seconds"] != budget:
            raise SystemExit(f"--ours-from {prior}: its budget differs from {budget} CPU s")
    for who, (proc, log, out) in procs.items():
        rc = proc.wait()
        log.close()
        if rc != 0:
            for other, _, _ in procs.values():  # no orphan keeps training after a failure
                other.kill()
            tail = (out / "log.txt").read_text()[-3000:]
            raise RuntimeError(f"{dataset}/{who} failed with exit code {rc}:\n{tail}")
        results[who] = json.loads((out / f"{who}.json").read_text())
        results[who]["samples"] = torch.load(out / f"{who}_samples.pt")
    return results


def figure(dataset: str, results: dict[str, Any], path: Path) -> Path:
    """Samples of ours (left 8 columns) beside the peer's (right 8 columns), one grid."""
    a, b = results["ours"]["samples"][:64], results["peer"]["samples"][:64]
    rows = [torch.cat([a[i : i + 8], b[i : i + 8]]) for i in range(0, 64, 8)]
    title = (f"{dataset}: ours {results['ours']['test_bpd']:.3f} bpd (left) | "
             f"RealNVP {results['peer']['test_bpd']:.3f} bpd (right)")
    return plot_image_grid(torch.cat(rows), path, nrow=16, title=title)


def report(all_results: dict[str, Any], budgets: dict[str, float]) -> tuple[str, str]:
    head = ["data set", "model", "test bits/dim ± SE", "estimator", "steps", "CPU s/step (mean)",
            "CPU seconds trained", "wall seconds", "CPU share", "parameters"]
    rows, lines = [], []
    for ds, res in all_results.items():
        for who, label in (("ours", "ours (Residual Flow preset)"), ("peer", "zuko RealNVP")):
            r = res[who]
            sps = r["train_seconds"] / max(r["steps"], 1)  # CPU seconds, evaluations included
            rows.append([ds, label, common.pm(r["test_bpd"], r["test_bpd_se"], 4), r["estimator"],
                         r["steps"], f"{1000 * sps:.1f} ms", f"{r['train_seconds']:.0f}",
                         f"{r['wall_seconds']:.0f}", f"{r['cpu_share']:.2f}", f"{r['params']:,}"])
        d = res["ours"]["test_bpd"] - res["peer"]["test_bpd"]
        se = math.hypot(res["ours"]["test_bpd_se"], res["peer"]["test_bpd_se"])
        verdict = ("ours better" if d < -2 * se
                   else "peer better" if d > 2 * se else "tie (within 2 SE)")
        lines.append(f"- {ds} after {budgets[ds]:.0f} CPU s: ours - RealNVP = {d:+.4f} "
                     f"(± {se:.4f}) bits/dim: {verdict}")
        o = res["ours"]
        lines.append(f"- {ds}: ours inverse max error {o['inverse_max_error']:.2e} on 256 test "
                     f"images, certified invertible: {o['invertible']} "
                     f"(largest block bound {o['max_lipschitz']:.4f})")
    return common.markdown_table(head, rows), "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--datasets", nargs="+", default=list(DEFAULT_BUDGETS),
                    choices=list(DEFAULT_BUDGETS))
    ap.add_argument("--budget", action="append", default=[], metavar="DATA=SECONDS",
                    help="CPU-seconds training budget per model (default digits=600, "
                         "fashion-mnist=3600)")
    ap.add_argument("--data-dir", default=None, help="folder with the image files")
    ap.add_argument("--work-dir", type=Path, default=None, help="where run folders go (kept)")
    ap.add_argument("--n-test", type=int, default=None,
                    help="evaluate both models on the first N test images (default: all); our "
                         "unbiased estimator at D = 784 costs ~20 vector-Jacobian products per "
                         "block and image")
    ap.add_argument("--peer-kw", type=json.loads, default=None, metavar="JSON",
                    help="override the peer's size, e.g. "
                         "'{\"transforms\": 4, \"hidden_features\": [64, 64]}'")
    ap.add_argument("--ours-from", type=Path, default=None, metavar="WORK_DIR",
                    help="reuse our model's run and result from an earlier --work-dir "
                         "(same budget)")
    ap.add_argument("--ours-override", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides of our preset, for what-if runs")
    ap.add_argument("--name", default=None, help="results name (default images-<data>)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    budgets = dict(DEFAULT_BUDGETS)
    if args.quick:
        budgets = {k: 20.0 for k in budgets}
    for item in args.budget:
        name, _, secs = item.partition("=")
        if name not in budgets or not secs:
            ap.error(f"--budget expects DATA=SECONDS with DATA in {list(budgets)}, got {item!r}")
        budgets[name] = float(secs)
    common.set_threads(1)  # the driver only waits; each worker sets its own single thread
    env = common.environment()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="iresnet-images-"))
    for ds in args.datasets:
        print(f"[{ds}] training ours and zuko RealNVP side by side, {budgets[ds]:g} CPU s each",
              flush=True)
        res = run_dataset(ds, budgets[ds], args, work)
        suffix = "-quick" if args.quick else ""
        out_dir = args.out_dir or common.RESULTS_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        name = args.name or f"images-{ds}{suffix}"
        png = figure(ds, res, out_dir / f"{name}.png")
        table, verdicts = report({ds: res}, budgets)
        raw = {who: {k: v for k, v in r.items() if k != "samples"} for who, r in res.items()}
        settings = {"dataset": ds, "budget_s": budgets[ds], "seed": args.seed, "threads": 1,
                    "n_test": args.n_test or "all",
                    "peer": PEER_KW[ds] | (args.peer_kw or {}), "peer_lr": PEER_LR,
                    "work_dir": str(work), "ours_from": str(args.ours_from or ""),
                    "ours_override": args.ours_override}
        md, _ = common.write_results(
            name, f"Image density on {ds} at an equal CPU budget: ours vs zuko RealNVP",
            env, settings,
            [("Results", table), ("Ours against the peer", verdicts),
             ("Notes", __doc__.split("\n\n", 1)[1].split("Run:")[0].strip() +
              f"\n\nSamples (ours left, RealNVP right): `{png.name}`.")],
            raw, summary={"ours_bpd": res["ours"]["test_bpd"], "peer_bpd": res["peer"]["test_bpd"]},
            out_dir=out_dir)
        print(md.read_text(), flush=True)


if __name__ == "__main__":
    main()
