"""Log-det estimator accuracy per cost.

For residual blocks ``y = x + g(x)`` whose every spectrally normalised layer sits at its
coefficient ``c`` (raw weights scaled up x5, so ``W_hat = c W / ||W||``), compare on a fixed batch:

- the float64 exact log-det (``iresnet.ExactLogDet``: full Jacobian + slogdet) as the reference;
- ``PowerSeriesLogDet(n_terms=n)`` for ``n = 1..20`` (one Gaussian probe per call);
- ``RussianRouletteLogDet`` (geometric ``p = 0.5``, ``n_exact = 2``; one probe per call).

Statistics over many probe draws (all in float64, so rounding does not pollute the bias):

- bias: mean over draws and over the batch of ``estimate - exact``, with the standard error of
  that mean (from the spread of the per-draw batch means);
- std: root-mean-square over the batch of the per-sample standard deviation of one estimate (one
  probe, one roulette draw), with its approximate standard error ``std / sqrt(2 (R - 1))``;
- mean terms: series terms per call (``n``, or the mean of the roulette's drawn ``N``);
- ms/call: median wall-clock time of one estimator call on the batch in float32 without a graph
  (value only; all estimators of a setting are timed interleaved, round by round), and
  ms/grad-step: one call plus ``logdet.mean().backward()`` (the estimator's own
  gradient mode: backprop through the series for the power series, Neumann + memory-efficient
  for the roulette).

The power series is evaluated with the same probes for every ``n`` (a seeded generator), so the
curves over ``n`` share their noise. Many draws are taken at once by repeating the batch
(``g`` acts samplewise, and each row gets its own probe).

Blocks: ``mlp16`` (16-D, SpectralLinear->LipSwish->SpectralLinear->LipSwish->SpectralLinear,
hidden 64, default init x5), ``conv8x8`` (1x8x8, SpectralConv2d 3x3 -> LipSwish -> 1x1 -> LipSwish
-> 3x3, 16 hidden channels, default init x5), and a stress case ``mlp16-aligned`` (the same
layers, weights chosen so the singular directions line up and ``J ~ -c^3 I``: the regime where
truncation bias and roulette variance matter; for ``rho(J)^2 > 1/2`` the geometric(0.5)
roulette has infinite variance, and its sample std is then not a stable number).

**Variance per VJP** (issue 17): on every setting, the roulette (1 and 2 probes; and
``roulette-auto``: ``p``, ``n_exact`` chosen from the design bound ``L = c^3``) against the
stratified roulette (``StratifiedRouletteLogDet``: the first term averaged over 4 probes, the
tail from the first probe), each with Gaussian probes, value only, float64. For each: bias ±
se, the per-sample variance of one call, the vector-Jacobian products per call counted from the
drawn ``N``, and ``variance x VJPs`` (the variance at a budget of one VJP; lower is better),
also as a ratio to the one-probe roulette's.

Run: ``.venv/bin/python benchmarks/estimators.py`` (``--quick`` for a smoke run;
``--variance-only`` for the variance-per-VJP section alone).
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

import iresnet
from iresnet.nn import conv_branch, mlp_branch
from iresnet.ops import jacobian

from bench import RESULTS_DIR
from bench.blocks import exact_layer_norms, scale_raw_weights
from bench.env import environment, script_parser, set_threads
from bench.report import fmt, markdown_table, pm, write_results
from bench.stats import summarize
from bench.timing import time_calls, time_interleaved

NAME = "estimators"


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def make_mlp16(c: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return scale_raw_weights(mlp_branch(16, (64, 64), coeff=c), 5.0)


def make_mlp16_aligned(c: float, seed: int) -> nn.Module:
    """Stress case: ``W1 = Q`` (orthonormal columns), ``W2 = I``, ``W3 = -Q^T`` (each then
    normalised to ``c``), biases keeping the pre-activations positive (LipSwish slope ~ 0.9-1),
    so ``J ~ -c^3 D I`` with ``D`` near 1: the largest Jacobian these layers allow."""
    g = make_mlp16(c, seed)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(64, 16, generator=gen))
    with torch.no_grad():
        g[0].weight.copy_(5 * q)
        g[0].bias.fill_(3.0)
        g[2].weight.copy_(5 * torch.eye(64))
        g[2].bias.zero_()
        g[4].weight.copy_(-5 * q.T)
        g[4].bias.zero_()
    return g


def make_conv8x8(c: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return scale_raw_weights(conv_branch(1, (16, 16), coeff=c), 5.0)


BLOCKS = {
    # name: (builder, event shape, batch, input scale)
    "mlp16": (make_mlp16, (16,), 64, 2.0),
    "conv8x8": (make_conv8x8, (1, 8, 8), 16, 2.0),
    "mlp16-aligned": (make_mlp16_aligned, (16,), 64, 1.0),
}


def prepare(name: str, c: float, seed: int) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(float64 eval block, float32 eval copy, float64 fixed batch)."""
    build, shape, batch, scale = BLOCKS[name]
    g = build(c, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *shape, generator=gen) * scale
    g(x[:1])  # SpectralConv2d learns its input shape (converges its vectors once)
    g32 = copy.deepcopy(g).eval()
    g64 = g.double().eval()
    return g64, g32, x.double()


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def error_stats(est: torch.Tensor, exact: torch.Tensor, groups: torch.Tensor | None = None) -> dict:
    """``est``: (R, B) draws; ``exact``: (B,). ``groups``: (R,) call index when draws within one
    call share randomness (the roulette's N): standard errors then come from per-call means."""
    err = est - exact[None]
    r = est.shape[0]
    bias = float(err.mean())
    per_draw = err.mean(1)  # batch mean of each draw
    if groups is not None:
        ids = torch.unique(groups)
        per_draw = torch.stack([per_draw[groups == i].mean() for i in ids])
    k = per_draw.numel()
    bias_se = float(per_draw.std(unbiased=True) / math.sqrt(k)) if k > 1 else math.nan
    var = est.var(0, unbiased=True)  # (B,) per-sample variance of one estimate
    std = float(var.mean().sqrt())
    std_se = std / math.sqrt(2 * max(r - 1, 1))
    return {
        "bias": bias,
        "bias_se": bias_se,
        "std": std,
        "std_se": std_se,
        "rmse": math.sqrt(bias**2 + std**2),
        "max_abs_err": float(err.abs().max()),
        "draws": r,
    }


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def per_term_partial_sums(
    g: nn.Module, x: torch.Tensor, v: torch.Tensor, n_max: int
) -> torch.Tensor:
    """``S[n-1] = sum_{k<=n} (-1)^(k+1) v^T J^k v / k`` per row, for ``n = 1..n_max``."""
    with torch.enable_grad():
        x_ = x.detach().requires_grad_()
        gx = g(x_)
        w = v
        total = torch.zeros(x.shape[0], dtype=x.dtype)
        out = []
        for k in range(1, n_max + 1):
            w = torch.autograd.grad(gx, x_, w, retain_graph=k < n_max)[0]
            total = total + (-1) ** (k + 1) / k * (w * v).flatten(1).sum(1)
            out.append(total)
    return torch.stack(out).detach()


def time_estimators(
    estimators: dict, with_grad: set, g32: nn.Module, x32: torch.Tensor, repeats: int
) -> dict:
    """Median ms of one value-only call and of one grad step of every estimator, all timed
    interleaved round by round (so a slow spell of the machine hits them all alike). Names
    listed more than once in the rounds (``name#i``) are pooled."""

    def value_fn(est):
        def f():
            with torch.no_grad():
                est(g32, x32)

        return f

    def grad_fn(est):
        def f():
            g32.zero_grad(set_to_none=True)
            xr = x32.clone().requires_grad_()
            _, ld = est(g32, xr)
            ld.mean().backward()

        return f

    fv = {key: value_fn(est) for key, est in estimators.items()}
    fg = {key: grad_fn(est) for key, est in estimators.items() if key.split("#")[0] in with_grad}
    tv = time_interleaved(fv, repeats, warmup=2)
    tg = time_interleaved(fg, max(repeats // 2, 3), warmup=1)
    out: dict = {}
    for key in estimators:
        name = key.split("#")[0]
        rec = out.setdefault(name, {"v": [], "g": []})
        rec["v"] += [t * 1e3 for t in tv[key]]
        rec["g"] += [t * 1e3 for t in tg.get(key, [])]
    return {
        name: {
            "ms_value": summarize(rec["v"]),
            "ms_grad_step": summarize(rec["g"]) if rec["g"] else None,
        }
        for name, rec in out.items()
    }


# --------------------------------------------------------------------------------------------
# One (block, c) setting
# --------------------------------------------------------------------------------------------


def run_setting(name: str, c: float, args) -> dict:
    g64, g32, x = prepare(name, c, args.seed)
    shape = x.shape[1:]
    norms = exact_layer_norms(g64)
    x32 = x.float()
    t0 = time.perf_counter()
    with torch.no_grad():
        _, exact = iresnet.ExactLogDet(max_dim=max(64, x[0].numel()))(g64, x)
        _, jac = jacobian(g64, x)
    jnorm = torch.linalg.matrix_norm(jac, ord=2)
    specrad = torch.linalg.eigvals(jac).abs().amax(-1)
    exact32 = iresnet.ExactLogDet(max_dim=max(64, x[0].numel()))

    def exact_value():
        with torch.no_grad():
            exact32(g32, x32)

    exact_ms = summarize([t * 1e3 for t in time_calls(exact_value, max(args.time_repeats // 2, 3))])
    info = {
        "block": name,
        "coeff": c,
        "layer_operator_norms": norms,
        "batch": x.shape[0],
        "event_shape": list(shape),
        "exact_logdet_mean": float(exact.mean()),
        "exact_logdet_raw": exact,
        "jacobian_norm_mean": float(jnorm.mean()),
        "jacobian_norm_max": float(jnorm.max()),
        "spectral_radius_mean": float(specrad.mean()),
        "spectral_radius_max": float(specrad.max()),
        "exact_ms_value": exact_ms,
    }

    info["variance_per_vjp"] = variance_per_vjp(name, c, g64, x, exact, args)
    if args.variance_only:
        info["rows"] = []
        info["seconds"] = time.perf_counter() - t0
        return info
    draws = args.draws_conv if name.startswith("conv") else args.draws_mlp
    reps = (1,) * len(shape)
    xr = x.repeat(draws, *reps)
    # All n at once: the n-term estimate with probe v is the partial sum of the per-term values
    # v^T J^k v (-1)^(k+1) / k, so one pass of max_terms vector-Jacobian products gives every n.
    # The library's PowerSeriesLogDet is run on the same probes for a few n and must agree.
    probe_seed = args.seed + 7
    probes = torch.randn(
        (1, *xr.shape), dtype=xr.dtype, generator=torch.Generator().manual_seed(probe_seed)
    )
    partial = per_term_partial_sums(g64, xr, probes[0], args.max_terms)  # (max_terms, R*B)
    checks = {}
    for n in args.check_terms:
        if n > args.max_terms:
            continue
        est = iresnet.PowerSeriesLogDet(
            n_terms=n, generator=torch.Generator().manual_seed(probe_seed)
        )
        with torch.no_grad():
            _, ld = est(g64, xr)
        checks[n] = float((ld - partial[n - 1]).abs().max())
    info["library_check_max_abs_diff"] = checks
    # Timing (float32, the training dtype): every n and the roulette (listed three times, for
    # three times the samples of its random cost), interleaved.
    to_time: dict = {
        f"ps{n}": iresnet.PowerSeriesLogDet(n_terms=n) for n in range(1, args.max_terms + 1)
    }
    for i in range(3):
        to_time[f"rr#{i}"] = iresnet.RussianRouletteLogDet("geometric", p=0.5, n_exact=2)
    with_grad = {f"ps{n}" for n in args.check_terms} | {"rr"}
    timings = time_estimators(to_time, with_grad, g32, x32, args.time_repeats)
    rows = []
    for n in range(1, args.max_terms + 1):
        stats = error_stats(partial[n - 1].reshape(draws, -1), exact)
        timing = timings[f"ps{n}"]
        rows.append(
            {
                "estimator": "PowerSeriesLogDet",
                "setting": f"n_terms={n}",
                "n_terms": n,
                "mean_terms": float(n),
                "library_checked": n in checks,
                **stats,
                **timing,
            }
        )

    # Russian roulette: N is drawn once per call (shared by the batch), so take many calls,
    # each on the batch repeated a few times (several probes per N).
    calls = args.roulette_calls_conv if name.startswith("conv") else args.roulette_calls_mlp
    inner = args.roulette_inner
    rr = iresnet.RussianRouletteLogDet(
        distribution="geometric",
        p=0.5,
        n_exact=2,
        generator=torch.Generator().manual_seed(args.seed + 11),
    )
    torch.manual_seed(args.seed + 13)  # the roulette draws N from the default CPU generator
    drawn: list[int] = []
    orig_draw = rr.draw_n_terms

    def recording_draw() -> int:
        n_ = orig_draw()
        drawn.append(n_)
        return n_

    rr.draw_n_terms = recording_draw  # type: ignore[method-assign]
    xin = x.repeat(inner, *reps)
    chunks = []
    with torch.no_grad():
        for _ in range(calls):
            _, ld = rr(g64, xin)
            chunks.append(ld.reshape(inner, -1))
    est_rr = torch.cat(chunks)
    groups = torch.arange(calls).repeat_interleave(inner)
    stats = error_stats(est_rr, exact, groups)
    timing = timings["rr"]
    drawn_t = torch.tensor(drawn, dtype=torch.float64)
    rows.append(
        {
            "estimator": "RussianRouletteLogDet",
            "setting": "geometric p=0.5, n_exact=2",
            "mean_terms": float(drawn_t.mean()),
            "max_terms_drawn": int(drawn_t.max()),
            "expected_terms": 2 + (1 - 0.5) / 0.5,
            "calls": calls,
            "probes_per_call": inner,
            "drawn_terms_raw": drawn,
            **stats,
            **timing,
        }
    )
    info["rows"] = rows
    info["seconds"] = time.perf_counter() - t0
    return info


def variance_per_vjp(name: str, c: float, g64: nn.Module, x: torch.Tensor, exact, args) -> list:
    """The variance-per-VJP comparison of one setting (see the module docstring)."""
    design = c**3  # three normalised layers, each at c
    estimators = {
        "roulette p=0.5, n_exact=2": iresnet.RussianRouletteLogDet(p=0.5, n_exact=2),
        "roulette p=0.5, n_exact=2, 2 probes": iresnet.RussianRouletteLogDet(n_probes=2),
        f"roulette-auto (L={design:.3g})": iresnet.RussianRouletteLogDet(
            auto=True, lipschitz=design
        ),
        "stratified 4 head probes (p=0.5)": iresnet.StratifiedRouletteLogDet(head_probes=4),
        f"stratified 4 head probes, auto tail (L={design:.3g})": (
            iresnet.StratifiedRouletteLogDet(head_probes=4, auto=True, lipschitz=design)
        ),
    }
    calls = args.vpv_calls_conv if name.startswith("conv") else args.vpv_calls_mlp
    inner = args.vpv_inner
    reps = (1,) * (x.dim() - 1)
    xin = x.repeat(inner, *reps)
    rows, base = [], None
    for i, (label, est) in enumerate(estimators.items()):
        est.memory_efficient = False
        est.generator = torch.Generator().manual_seed(args.seed + 100 + i)
        torch.manual_seed(args.seed + 200 + i)  # N is drawn from the default CPU generator
        drawn: list[int] = []
        orig = est.draw_n_terms

        def recording(orig=orig, drawn=drawn) -> int:
            n_ = orig()
            drawn.append(n_)
            return n_

        est.draw_n_terms = recording  # type: ignore[method-assign]
        with torch.no_grad():
            chunks = [est(g64, xin)[1].reshape(inner, -1) for _ in range(calls)]
        stats = error_stats(torch.cat(chunks), exact, torch.arange(calls).repeat_interleave(inner))
        n = torch.tensor(drawn, dtype=torch.float64)
        if isinstance(est, iresnet.StratifiedRouletteLogDet):
            vjps = est.head_probes * est.head_terms + est.n_probes * (n - est.head_terms)
        else:
            vjps = est.n_probes * n
        var = stats["std"] ** 2
        work = var * float(vjps.mean())
        base = work if base is None else base
        rows.append(
            {
                "estimator": label,
                "p": est.p,
                "n_exact": est.n_exact,
                "variance": var,
                "vjps_mean": float(vjps.mean()),
                "vjps_expected": est.expected_vjps(),
                "variance_x_vjps": work,
                "ratio_to_roulette": work / base,
                **stats,
            }
        )
    return rows


def variance_table(results: list[dict]) -> str:
    cols = [
        "block",
        "c",
        "spectral radius max",
        "estimator",
        "bias ± se",
        "variance (one call)",
        "VJPs / call",
        "variance x VJPs",
        "vs roulette",
    ]
    rows = []
    for s in results:
        for r in s["variance_per_vjp"]:
            rows.append(
                [
                    s["block"],
                    fmt(s["coeff"]),
                    fmt(s["spectral_radius_max"]),
                    r["estimator"],
                    pm(r["bias"], r["bias_se"]),
                    fmt(r["variance"]),
                    fmt(r["vjps_mean"]),
                    fmt(r["variance_x_vjps"]),
                    fmt(r["ratio_to_roulette"]),
                ]
            )
    return markdown_table(cols, rows)


def finite_variance_note(specrad: float) -> str:
    # Geometric(0.5) roulette: E[est^2] has terms ~ rho^(2k) 2^k, finite iff 2 rho^2 < 1.
    return "finite" if 2 * specrad**2 < 1 else "INFINITE (2 rho^2 >= 1)"


def table_for(setting: dict) -> str:
    cols = [
        "estimator",
        "n / setting",
        "bias ± se",
        "std ± se",
        "rmse",
        "mean terms",
        "ms/call (value)",
        "ms/grad-step",
    ]
    rows = []
    for r in setting["rows"]:
        rows.append(
            [
                "PowerSeries" if r["estimator"] == "PowerSeriesLogDet" else "RussianRoulette",
                str(r["n_terms"]) if "n_terms" in r else r["setting"],
                pm(r["bias"], r["bias_se"]),
                pm(r["std"], r["std_se"]),
                fmt(r["rmse"]),
                fmt(r["mean_terms"]),
                fmt(r["ms_value"]["median"]),
                fmt(r["ms_grad_step"]["median"]) if r["ms_grad_step"] else "-",
            ]
        )
    head = (
        f"Layer operator norms {', '.join(f'{v:.4f}' for v in setting['layer_operator_norms'])}; "
        f"batch {setting['batch']} x {tuple(setting['event_shape'])}; exact log-det mean "
        f"{setting['exact_logdet_mean']:.5f} "
        f"(exact: {setting['exact_ms_value']['median']:.2f} ms/call "
        f"float32); ||J_g||_2 mean {setting['jacobian_norm_mean']:.3f} max "
        f"{setting['jacobian_norm_max']:.3f}; spectral radius max "
        f"{setting['spectral_radius_max']:.3f} (geometric(0.5) roulette variance: "
        f"{finite_variance_note(setting['spectral_radius_max'])}).\n\n"
    )
    return head + markdown_table(cols, rows)


def summary_table(results: list[dict]) -> str:
    """Bias (± standard error) of the power series at a few n and of the roulette."""
    shown = (1, 2, 5, 20)
    cols = [
        "block",
        "c",
        "||J|| max",
        *[f"PS n={n} bias ± se" for n in shown],
        "PS std (any n)",
        "RR bias ± se",
        "RR std",
        "RR mean terms",
        "ms/call PS n=5 / RR",
    ]
    rows = []
    for s in results:
        ps = {r["n_terms"]: r for r in s["rows"] if "n_terms" in r}
        rr = s["rows"][-1]
        last = ps[max(ps)]
        rows.append(
            [
                s["block"],
                fmt(s["coeff"]),
                fmt(s["jacobian_norm_max"]),
                *[pm(ps[n]["bias"], ps[n]["bias_se"]) if n in ps else "-" for n in shown],
                fmt(last["std"]),
                pm(rr["bias"], rr["bias_se"]),
                fmt(rr["std"]),
                fmt(rr["mean_terms"]),
                (f"{fmt(ps[5]['ms_value']['median'])} / " if 5 in ps else "- / ")
                + fmt(rr["ms_value"]["median"]),
            ]
        )
    return markdown_table(cols, rows)


def main() -> None:
    ap = script_parser(__doc__)
    ap.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    ap.add_argument("--coeffs", nargs="+", type=float, default=[0.5, 0.9, 0.97])
    ap.add_argument(
        "--check-terms",
        nargs="+",
        type=int,
        default=[1, 2, 5, 10, 20],
        help="n at which the library estimator is run and timed with a backward pass",
    )
    ap.add_argument(
        "--variance-only",
        action="store_true",
        help="only the variance-per-VJP comparison (writes estimators-variance.md)",
    )
    args = ap.parse_args()
    set_threads(args.threads)
    args.vpv_calls_mlp, args.vpv_calls_conv, args.vpv_inner = 300, 100, 4
    if args.quick:
        args.vpv_calls_mlp, args.vpv_calls_conv, args.vpv_inner = 20, 10, 2
    if args.quick:
        args.max_terms, args.draws_mlp, args.draws_conv = 4, 20, 5
        args.roulette_calls_mlp, args.roulette_calls_conv, args.roulette_inner = 30, 10, 2
        args.time_repeats = 4
        args.check_terms = [n for n in args.check_terms if n <= args.max_terms] or [1]
    else:
        args.max_terms, args.draws_mlp, args.draws_conv = 20, 300, 40
        args.roulette_calls_mlp, args.roulette_calls_conv, args.roulette_inner = 1000, 300, 8
        args.time_repeats = 15

    env = environment()
    results = []
    for name in args.blocks:
        for c in args.coeffs:
            s = run_setting(name, c, args)
            results.append(s)
            for r in s["variance_per_vjp"]:
                print(
                    f"  {name} c={c} {r['estimator']}: var {r['variance']:.3g} "
                    f"VJPs {r['vjps_mean']:.2f} var*VJPs {r['variance_x_vjps']:.3g} "
                    f"({r['ratio_to_roulette']:.2f}x roulette)",
                    flush=True,
                )
            if args.variance_only:
                continue
            rr = s["rows"][-1]
            print(
                f"{name} c={c}: exact {s['exact_logdet_mean']:.4f}, "
                f"PS1 bias {s['rows'][0]['bias']:.2e}, "
                f"RR bias {rr['bias']:.2e}±{rr['bias_se']:.1e} std {rr['std']:.3f} "
                f"terms {rr['mean_terms']:.2f} ({s['seconds']:.1f}s)",
                flush=True,
            )

    settings = {k: v for k, v in vars(args).items() if k != "out_dir"}
    vpv = (
        "Variance per VJP: the roulette against the stratified roulette "
        "(lower `variance x VJPs` is better; `vs roulette`: ratio to the one-probe roulette's)",
        variance_table(results),
    )
    sections = [("What is measured", __doc__.split("\n\n", 1)[1].split("Run:")[0].strip())]
    if args.variance_only:
        sections.append(vpv)
    else:
        sections.append(
            (
                "Summary (bias of the batch-mean log-det per sample; std of one single-probe "
                "estimate)",
                summary_table(results),
            )
        )
        sections.append(vpv)
        for s in results:
            sections.append((f"{s['block']}, c = {s['coeff']}", table_for(s)))
    name = NAME + "-variance" if args.variance_only else NAME
    write_results(
        name,
        "Log-det estimators: accuracy per cost",
        env,
        settings,
        sections,
        raw={"settings": results},
        out_dir=args.out_dir,
    )
    print(f"wrote {(args.out_dir or RESULTS_DIR) / (name + '.md')}")


if __name__ == "__main__":
    main()
