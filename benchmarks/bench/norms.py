"""Two Lipschitz normalisations (``model.lipschitz_norm``) compared on the same models.

The pieces of a "variant against the default" benchmark (``frobenius.py``: Frobenius against
spectral, ``certified_norm.py``: the certified bound against spectral):

- likelihood: a toy preset trained by the library's own loop with each norm (same steps, seed
  and data), scored on the same test points with exact 2x2 log-dets, the paired difference of
  the two runs' log-densities, the certificate and the actual (SVD) block bounds;
- time: training steps (forward, backward, Adam) of the variants timed interleaved, on the toy
  model and on one convolutional block of an image preset, and the normalisation alone.

A *pair* is ``(baseline, variant)``; every ratio is ``variant / baseline`` and every paired
difference ``NLL(variant) - NLL(baseline)``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import iresnet
from iresnet.app.builder import build_model, load_data
from iresnet.app.presets import get_preset
from iresnet.app.runs import TrainedRun, load_run
from iresnet.app.trainer import TrainResult
from iresnet.app.training import train
from iresnet.datasets import DataBundle
from iresnet.words import count

from .blocks import exact_layer_norms
from .density import exact_log_density, scores
from .env import environment, script_parser, seed_all, set_threads
from .metrics import records, seconds_per_step
from .report import known, markdown_table, pm
from .stats import mean_se, paired_ratios, summarize
from .timing import time_interleaved

Pair = tuple[str, str]
"""``(baseline, variant)`` norms: ratios are ``variant / baseline``."""

# --------------------------------------------------------------------------------------------
# Command line and set-up
# --------------------------------------------------------------------------------------------


def pair_parser(doc: str | None, repeats_help: str) -> argparse.ArgumentParser:
    """A comparison script's parser: the common flags, ``--steps`` (each toy run),
    ``--repeats`` (interleaved rounds) and ``--render-only JSON``."""
    ap = script_parser(doc)
    ap.add_argument(
        "--steps", type=int, default=600, help="training steps of each toy run (both norms)"
    )
    ap.add_argument("--repeats", type=int, default=40, help=repeats_help)
    ap.add_argument(
        "--render-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="rewrite the Markdown of a recorded run from its JSON (no measuring)",
    )
    return ap


def parse_or_render(
    ap: argparse.ArgumentParser, render: Callable[[Path], Any]
) -> argparse.Namespace | None:
    """The parsed flags; with ``--render-only JSON``, ``render(JSON)`` instead, and None."""
    args = ap.parse_args()
    if args.repeats < 1:  # no toy round timed: its ratio cells read "nan (nan-nan)"
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.render_only is None:
        return args
    render(args.render_only)
    return None


def set_up(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Threads, seeds and the environment record of a measuring run: ``(threads, env)``.

    As ``benchmarks/toy.py``: subnormal floats are flushed to zero for both variants, so that
    tiny values (the Frobenius bound shrinks weights several-fold) cannot slow one of them down.
    """
    threads = set_threads(args.threads)
    torch.set_flush_denormal(True)
    seed_all(args.seed)
    return threads, environment()


SPECTRAL_LAYERS = (iresnet.SpectralLinear, iresnet.SpectralConv2d)

# --------------------------------------------------------------------------------------------
# Likelihood of trained toy models
# --------------------------------------------------------------------------------------------


def actual_block_bounds(model: nn.Module, grad_mode: bool = False) -> list[float]:
    """Per residual block, the product of the exact spectral norms (SVD) of the weights the
    forward pass uses: the Lipschitz bound the layers really have, whatever bound certified them.
    ``grad_mode``: the weights as built with autograd on (see
    :func:`bench.blocks.exact_layer_norms`)."""
    return [
        math.prod(exact_layer_norms(block.g, grad_mode))
        for block in model.modules()
        if isinstance(block, iresnet.InvertibleResidualBlock)
    ]


def train_preset(
    preset: str, norm: str, steps: int, seed: int, run_dir: Path
) -> tuple[TrainResult, float, TrainedRun]:
    """Train ``preset`` with ``model.lipschitz_norm=norm`` for exactly ``steps`` steps by the
    library's loop into ``run_dir``: what the loop returned, its wall seconds and the run
    loaded as ``iresnet evaluate`` loads it."""
    cfg = get_preset(preset).override(
        [
            f"model.lipschitz_norm={norm}",
            f"train.steps={steps}",
            f"train.seed={seed}",
            # max_seconds off: both variants do the same number of steps, however loaded the box.
            "train.max_seconds=0",
        ]
    )
    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=False, figures=False)
    wall = time.perf_counter() - t0
    return result, wall, load_run(run_dir)


def train_and_evaluate(
    dataset: str, norm: str, steps: int, seed: int, run_dir: Path
) -> tuple[dict[str, Any], Tensor]:
    """Train ``toy-<dataset>`` with ``norm`` via the library's loop; evaluate it exactly."""
    result, wall, trained = train_preset(f"toy-{dataset}", norm, steps, seed, run_dir)
    cfg = trained.cfg
    test_x = trained.data.test_x
    logq = exact_log_density(trained.model, 2)(test_x).double()
    score = scores(logq, test_x, trained.data.true_log_density)
    cert = iresnet.certify(trained.model)
    actual = actual_block_bounds(trained.model)
    info = {
        "steps": result.step,
        "train_wall_seconds": wall,
        "train_step_seconds_from_metrics": summarize(seconds_per_step(records(run_dir), "seconds")),
        "test_nll": score["test_nll"],
        "test_nll_se": score["test_nll_se"],
        "kl": score["kl"],
        "kl_se": score["kl_se"],
        "n_test": int(test_x.shape[0]),
        "certified_max_bound": cert.max_bound,
        "certified_invertible": cert.invertible,
        "certified_block_bounds": [b.bound for b in cert.blocks],
        "actual_max_bound": max(actual),
        "actual_block_bounds": actual,
        "coeff": cfg.model.coeff,
        "layers_per_block": cfg.model.n_layers,
    }
    return info, logq


def compare_toy_likelihood(
    datasets: Sequence[str], pair: Pair, steps: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per data set: :func:`train_and_evaluate` with each norm of ``pair`` and the paired
    difference ``NLL(variant) - NLL(baseline)`` on the same test points (``nll_difference``).
    The runs live in a temporary folder, removed afterwards."""
    base, variant = pair
    likelihood: dict[str, dict[str, Any]] = {}
    root = Path(tempfile.mkdtemp(prefix=f"iresnet-{variant}-"))
    try:
        for dataset in datasets:
            likelihood[dataset] = {}
            logqs = {}
            for norm in pair:
                print(
                    f"[{dataset}] training with lipschitz_norm={norm} for "
                    f"{count(steps, 'step')} ...",
                    flush=True,
                )
                info, logqs[norm] = train_and_evaluate(
                    dataset, norm, steps, seed, root / f"{dataset}-{norm}"
                )
                likelihood[dataset][norm] = info
                print(
                    f"    test NLL {info['test_nll']:.4f}, KL {info['kl']:.4f}, certified "
                    f"{info['certified_max_bound']:.4f}, actual {info['actual_max_bound']:.4f}",
                    flush=True,
                )
            diff, diff_se = mean_se(logqs[base] - logqs[variant])
            likelihood[dataset]["nll_difference"] = {"mean": diff, "se": diff_se}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return likelihood


# --------------------------------------------------------------------------------------------
# Time per training step, interleaved
# --------------------------------------------------------------------------------------------


class Stepper:
    """One model, its optimiser and a fixed batch: ``step()`` runs one training step.

    The RNG is re-seeded before every step with the same seed for every variant, so stochastic
    log-det estimators draw the same number of terms and the same probes in both."""

    def __init__(self, model: nn.Module, batch: Tensor, step_seed: int) -> None:
        self.model = model.train()
        self.batch = batch
        self.step_seed = step_seed
        # small lr: the map barely moves; fused, as the library's Trainer builds it
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step(self) -> None:
        torch.manual_seed(self.step_seed)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.optimizer.step()

    def loss(self) -> Tensor:
        return -self.model.log_prob(self.batch).mean()

    def layers(self) -> list[nn.Module]:
        return [m for m in self.model.modules() if isinstance(m, SPECTRAL_LAYERS)]

    def normalise(self) -> None:
        """Only the Lipschitz normalisation of every layer, as a training forward does it
        (without a graph: for a cached bound, such as ``certified`` under ``no_grad``, this
        is a cache look-up; use :meth:`normalise_with_grad`)."""
        with torch.no_grad():
            for m in self.layers():
                m.normalized_weight()

    def normalise_with_grad(self) -> None:
        """Every layer's normalised weight with its graph, as a training step builds it, and the
        backward pass through it (of ``sum_l sum(W_hat_l)``): what the normalisation adds to a
        step, the optimiser and the rest of the model left out."""
        self.optimizer.zero_grad(set_to_none=True)
        total = sum(m.normalized_weight().sum() for m in self.layers())
        assert isinstance(total, Tensor)
        total.backward()

    def run(self, what: str) -> Callable[[], None]:
        """The timed call: ``step``, ``normalise`` or ``normalise_with_grad``."""
        calls = {
            "step": self.step,
            "normalise": self.normalise,
            "normalise_with_grad": self.normalise_with_grad,
        }
        return calls[what]


class BlockStepper(Stepper):
    """A single residual block on images: the loss is ``-(log N(y) + logdet)`` summed per sample."""

    def loss(self) -> Tensor:
        y, logdet = self.model(self.batch)
        log_pz = -0.5 * y.pow(2).flatten(1).sum(1)
        return -(log_pz + logdet).mean()


def flow_steppers(
    preset: str, seed: int, norms: Sequence[str], batch: Callable[[Any, DataBundle], Tensor]
) -> dict[str, Stepper]:
    """A preset's whole model with each norm (same initial weights), stepped on the fixed
    ``batch(cfg, data)``."""
    out = {}
    for norm in norms:
        cfg = get_preset(preset).override([f"model.lipschitz_norm={norm}"])
        data = load_data(cfg.data)
        torch.manual_seed(seed)
        model = build_model(cfg, data)
        x = batch(cfg, data)
        with torch.no_grad():
            torch.manual_seed(seed)
            model.log_prob(x)  # ActNorm's data-dependent initialisation, outside the timing
        out[norm] = Stepper(model, x, seed)
    return out


def toy_steppers(dataset: str, seed: int, norms: Sequence[str]) -> dict[str, Stepper]:
    """The ``toy-<dataset>`` preset's model with each norm, on a batch of ``2 N(0, I)``."""

    def batch(cfg: Any, data: DataBundle) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(cfg.train.batch_size, 2, generator=gen) * 2

    return flow_steppers(f"toy-{dataset}", seed, norms, batch)


def image_steppers(preset: str, seed: int, norms: Sequence[str]) -> dict[str, Stepper]:
    """An image preset's whole flow with each norm, on its first training batch."""
    return flow_steppers(
        preset, seed, norms, lambda cfg, data: data.train_x[: cfg.train.batch_size]
    )


def conv_steppers(
    hidden: int,
    seed: int,
    norms: Sequence[str],
    *,
    preset: str = "mnist",
    squeeze: bool = False,
) -> dict[str, Stepper]:
    """The first residual block of an image preset's flow (built for 1x28x28 images) with each
    norm: on the 1x28x28 input itself (``squeeze=False``, the preset's initial squeeze off) or
    on the 4x14x14 one the squeezed flow's first block sees (``squeeze=True``)."""
    out = {}
    image = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    shape_only = DataBundle(preset, "image", image, image, n_levels=256)
    shape = (4, 14, 14) if squeeze else (1, 28, 28)
    for norm in norms:
        cfg = get_preset(preset).override(
            [
                f"model.lipschitz_norm={norm}",
                f"model.hidden={hidden}",
                f"model.init_squeeze={str(squeeze).lower()}",
            ]
        )
        torch.manual_seed(seed)
        flow = build_model(cfg, shape_only)
        block = next(m for m in flow.modules() if isinstance(m, iresnet.InvertibleResidualBlock))
        gen = torch.Generator().manual_seed(seed)
        batch = torch.rand(cfg.train.batch_size, *shape, generator=gen)
        with torch.no_grad():
            block(batch)  # the convolutions learn their input shape (and converge u, v once)
        out[norm] = BlockStepper(block, batch, seed)
    return out


def time_pair(steppers: dict[str, Stepper], repeats: int, what: str, pair: Pair) -> dict[str, Any]:
    """``what`` (see :meth:`Stepper.run`) of the two norms of ``pair`` timed interleaved: each
    norm's seconds and the paired ratios ``variant / baseline``."""
    base, variant = pair
    fns = {n: steppers[n].run(what) for n in pair}
    times = time_interleaved(fns, repeats=repeats, warmup=2)
    return {
        base: summarize(times[base]),
        variant: summarize(times[variant]),
        "ratio": summarize(paired_ratios(times[variant], times[base])),
    }


Case = tuple[str, Callable[[], dict[str, Stepper]], int]
"""``(label, builder of the steppers, interleaved rounds)``."""


def toy_and_mnist_cases(seed: int, norms: Sequence[str], repeats: int) -> tuple[Case, Case]:
    """The two cases every comparison times: the ``toy-8gaussians`` model (``repeats`` rounds)
    and the ``mnist`` preset's block on 1x28x28 with 32 hidden channels (half as many)."""
    return (
        (
            "toy-8gaussians model (8 blocks x 3 linear, 64 wide), batch 256, exact 2x2 log-det",
            lambda: toy_steppers("8gaussians", seed, norms),
            repeats,
        ),
        (
            "mnist preset block on 1x28x28 (conv 3x3 -> 1x1 -> 3x3, 32 hidden), batch 64, roulette",
            lambda: conv_steppers(32, seed, norms),
            max(3, repeats // 2),
        ),
    )


def time_cases(cases: Sequence[Case], pair: Pair, normalise: str = "normalise") -> dict[str, Any]:
    """Per case: ``rounds`` training steps of both norms interleaved (``step``) and ten times as
    many rounds of the normalisation alone (``normalisation_only``; ``normalise`` says which
    :meth:`Stepper.run` call)."""
    timing: dict[str, dict[str, Any]] = {}
    for label, make, repeats in cases:
        print(f"[timing] {label} ({count(repeats, 'round')}) ...", flush=True)
        steppers = make()
        timing[label] = {
            "rounds": repeats,
            "step": time_pair(steppers, repeats, "step", pair),
            # The normalisation alone is cheap: many more rounds cost little.
            "normalisation_only": time_pair(steppers, 10 * repeats, normalise, pair),
        }
        r = timing[label]["step"]["ratio"]
        print(f"    step ratio {pair[1]}/{pair[0]} {r['median']:.3f}", flush=True)
    return timing


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def ms(x: float | str | None) -> str:
    """Seconds as ms or µs; "-" where no step was timed (the median of none: None, or the NaN,
    ``"nan"`` in a results file, of earlier runs, which the table printed as "nan µs"):
    :func:`untimed` says why."""
    seconds = known(x)
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def untimed(steps_flag: str) -> str:
    """The note under a table with an untimed training loop (:func:`ms` gave "-"), naming the
    flag that sets the loop's steps."""
    return (
        '"-" in s/step: fewer than two training rows were logged (one every train.log_every '
        f"steps), so no step of the loop was timed; give more {steps_flag}"
    )


#: The note under the toy likelihood table with an untimed training loop (``--steps``).
UNTIMED = untimed("--steps")


def ratio_cell(r: dict[str, Any]) -> str:
    return f"{r['median']:.3f} ({r['q25']:.3f}-{r['q75']:.3f})"


def likelihood_table(likelihood: dict[str, Any], datasets: Sequence[str], pair: Pair) -> str:
    """One row per data set and norm, and the paired difference ``variant - baseline``."""
    rows = []
    for dataset in datasets:
        for norm in pair:
            i = likelihood[dataset][norm]
            rows.append(
                [
                    dataset,
                    norm,
                    pm(i["test_nll"], i["test_nll_se"], 4),
                    pm(i["kl"], i["kl_se"], 3),
                    f"{i['certified_max_bound']:.4f}",
                    f"{i['actual_max_bound']:.4f}",
                    "yes" if i["certified_invertible"] else "NO",
                    ms(i["train_step_seconds_from_metrics"]["median"]),
                    str(i["steps"]),
                ]
            )
        d = likelihood[dataset]["nll_difference"]
        rows.append(
            [
                dataset,
                f"**{pair[1]} - {pair[0]}**",
                pm(d["mean"], d["se"], 3),
                "(paired)",
                *[""] * 5,
            ]
        )
    table = markdown_table(
        [
            "data set",
            "lipschitz_norm",
            "test NLL ± SE (nats)",
            "gap to truth KL(p‖q) ± SE",
            "certified max Lip(g)",
            "actual max Lip(g) (SVD)",
            "certified invertible",
            "s/step (train loop, not interleaved)",
            "steps",
        ],
        rows,
    )
    untimed = any(row[7] == "-" for row in rows if row[1] in pair)
    return table + (f"\n\n{UNTIMED}" if untimed else "")


def time_table(
    timing: dict[str, Any], pair: Pair, normalisation: str = "normalisation only"
) -> str:
    """Per case: the training step and the normalisation alone (``normalisation`` names it),
    each norm's median and the paired ratio's median (IQR)."""
    base, variant = pair
    rows = []
    for label, t in timing.items():
        for what in ("step", "normalisation_only"):
            x = t[what]
            rounds = x["ratio"]["n"]
            rows.append(
                [
                    label if what == "step" else "",
                    f"training step ({count(rounds, 'round')})"
                    if what == "step"
                    else f"{normalisation} ({count(rounds, 'round')})",
                    ms(x[base]["median"]),
                    ms(x[variant]["median"]),
                    ratio_cell(x["ratio"]),
                ]
            )
    return markdown_table(
        [
            "model",
            "timed",
            f"{base} (median)",
            f"{variant} (median)",
            f"{variant} / {base}, paired median (IQR)",
        ],
        rows,
    )


def pair_summary(
    likelihood: dict[str, Any], timing: dict[str, Any], datasets: Sequence[str], pair: Pair
) -> dict[str, Any]:
    """The JSON summary of a comparison: per data set the paired NLL difference, each norm's KL,
    certified and actual bounds; per timed case the median step ratio."""
    return {
        "nll_difference": {d: likelihood[d]["nll_difference"] for d in datasets},
        "kl": {d: {n: likelihood[d][n]["kl"] for n in pair} for d in datasets},
        "certified_max_bound": {
            d: {n: likelihood[d][n]["certified_max_bound"] for n in pair} for d in datasets
        },
        "actual_max_bound": {
            d: {n: likelihood[d][n]["actual_max_bound"] for n in pair} for d in datasets
        },
        f"step_ratio_{pair[1]}_over_{pair[0]}": {
            k: v["step"]["ratio"]["median"] for k, v in timing.items()
        },
    }
