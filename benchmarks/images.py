"""Image densities at an equal CPU budget: our CPU image preset against coupling flows.

For each data set (``digits`` 8x8 with 17 levels, ``fashion-mnist`` 1x28x28 with 256 levels):

- ``ours``: the image preset of the same name (a multi-scale Residual Flow, see
  :data:`iresnet.app.presets.PRESETS`), trained by the real loop
  (:func:`iresnet.app.training.train`) with ``train.max_cpu_seconds`` set to the budget. Its
  cosine decays over the CPU budget (``train.lr_schedule=cosine-budget``), as the peers' does,
  so it trains for all of it however fast the steps run; ``--ours-fit-steps`` instead fits
  ``train.steps`` to 95% of the budget from a short timing run (not counted), which a timing
  taken under another load than the run's makes stop early or late. Test bits/dim from
  ``DensityTask.full_evaluation``, the number ``iresnet evaluate --json`` prints: exact log-dets
  where ``D <= 64`` (digits), else an unbiased Russian-roulette estimate with 20 always-computed
  terms (no truncation bias); its standard error is over test images and includes the
  estimator's noise.
- ``zuko RealNVP``: ``zuko.flows.RealNVP`` on the flattened image, a single-scale coupling
  flow. ``normflows Glow``: normflows' multi-scale Glow (Kingma & Dhariwal 2018: ActNorm,
  invertible 1x1 convolutions, affine couplings with convolutional networks, squeeze and
  split per level, learned Gaussian priors), two levels of 8 blocks with 64 hidden channels.
  Both peers see the same data and preprocessing as ours (the library's ``Dequantize`` and
  ``Logit`` transforms: uniform dequantisation ``u = (x + U)/K`` and the preset's logit map,
  each with its log-det; the ``data.*`` part of ``--ours-override`` reaches them too), the
  same batch size, Adam lr 1e-3 with a 100-step warm-up and the
  same cosine-to-zero shape over the budget, gradient norm clipped at 10, non-finite losses
  skipped. Exact test log-density.

The budget is CPU time of each model's own process with one torch thread (periodic evaluation
and logging included), i.e. the wall-clock of one dedicated core: on a shared machine the
wall-clock of a run depends on the other processes, its CPU time does not. Every model trains at
the same time, one process each (the share of a core each got is reported). The table's "CPU
s trained" is each model's CPU time at its last training step, the final evaluation left out
(ours: at its last logged step, at most ``train.log_every`` steps before the budget stopped it).
``bpd = (-log p(u) + D log K) / (D log 2)`` with every preprocessing log-det counted, on the
standard test split (digits: the library's fixed split; Fashion-MNIST: the 10 000
``t10k`` images), each image dequantised with fixed-seed noise.

**Variants of ours** (``--variants``, issue 17): the Residual Flow preset beside an i-DenseNet
with branches of about the same size (the same convolutional skeleton with dense branches:
depth 3, CLipSwish, learned concatenation weights; growth 12 on digits, 16 on Fashion-MNIST, the
``fashion-mnist-idensenet`` preset, which does not carry the ``fashion-mnist`` preset's fully
connected blocks), each with uniform and with variational dequantisation (Flow++: ``q(v | x)``
with 4 couplings of width 16, trained jointly), trained side by side with the peers at the same CPU
budget. With variational dequantisation the reported bits/dim are the negative ELBO (an upper
bound of the code length); the same model's uniform-dequantisation bound is measured beside it
on the same test images. The per-pixel categorical model (independent 256-way histograms of
the training images, exact) is the floor any image model must clear.

The samples each model draws are shown side by side (``<name>.png``); to judge them by a
classifier rather than by eye, give the work dir's model folders to
``benchmarks/sample_quality.py``.

Run: ``.venv/bin/python benchmarks/images.py`` (digits 10 CPU-minutes, Fashion-MNIST 60
CPU-minutes per model, plus evaluation); ``--datasets digits --budget digits=600`` for one;
``--quick`` for a smoke run (writes ``images-<data>-quick.*``). ``--data-dir DIR`` points at
the image files.

Long runs survive interruptions: with ``--work-dir DIR`` every model saves its state as it goes
(peers every 120 CPU s, ours every 250 steps), and the same command with ``--resume`` added
reads back the models that finished and continues the others, each budget counting the CPU
seconds of every process that worked on it. The six-model Fashion-MNIST run at 60 CPU-minutes
(six CPU-hours) can so be spread over several sittings of a 2-core machine.
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
from iresnet.app.config import Config, differing_settings, key_section
from iresnet.app.files import atomic_write
from iresnet.app.plots import plot_image_grid
from iresnet.app.presets import get_preset
from iresnet.app.trainer import check_batch_size
from iresnet.errors import IResNetError
from iresnet.transforms import bits_per_dim

from bench import RESULTS_DIR
from bench.density import chunked
from bench.env import environment, run_script, script_parser, seed_all, set_threads
from bench.env import out_dir as writable_dir
from bench.metrics import logged_max, train_rows
from bench.ours import train_under_budget
from bench.peers import (
    Resumable,
    normflows_glow,
    train_for_budget,
    trainable_parameters,
    zuko_flow,
)
from bench.report import doc_body, fmt, known, markdown_table, pm, untimed_note, write_results
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


def variants(dataset: str, only: list[str] | None = None) -> dict[str, list[str]]:
    """Our four variants (label -> config overrides), or those whose slugs ``only`` names
    (``residual-flow``, ``residual-flow-var-deq``, ``i-densenet``, ``i-densenet-var-deq``)."""
    dense = [*_DENSE, f"model.dense_growth={DENSE_GROWTH[dataset]}"]
    every = {
        "Residual Flow": [],
        "Residual Flow + var. deq.": list(_VARDEQ),
        "i-DenseNet": dense,
        "i-DenseNet + var. deq.": [*dense, *_VARDEQ],
    }
    if not only:
        return every
    return {label: o for label, o in every.items() if _slug(label) in only}


def variant_problem(only: list[str] | None) -> str | None:
    """One line naming a ``--variants`` name that is not a variant, or None."""
    known = [_slug(label) for label in variants("digits")]
    unknown = [name for name in only or [] if name not in known]
    if unknown:
        return f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(known)}"
    return None


#: The peers' sizes per data set: enough capacity that time, not width, limits them.
PEER_KW = {
    "realnvp": {
        "digits": {"transforms": 8, "hidden_features": [256, 256]},
        "fashion-mnist": {"transforms": 8, "hidden_features": [512, 512]},
    },
    # Two levels of 8 Glow blocks (normflows' example has 3 x 32 blocks of 512 channels on
    # CIFAR-10, far beyond a CPU budget): one step of 64 Fashion-MNIST images costs about 0.26
    # CPU s, less than ours (about 0.39).
    "glow": {
        "digits": {"levels": 2, "blocks": 8, "hidden": 64},
        "fashion-mnist": {"levels": 2, "blocks": 8, "hidden": 64},
    },
}
PEER_LABEL = {"realnvp": "zuko RealNVP", "glow": "normflows Glow"}
PEER_LR, PEER_WARMUP, PEER_CLIP = 1e-3, 100, 10.0
EVAL_CHUNK = 500
#: How often a model's state is saved for ``--resume``: every 120 CPU s (peers), every 250
#: steps (ours: about 100 CPU s of the Fashion-MNIST preset). A killed run redoes at most that.
CHECKPOINT_EVERY, OURS_CHECKPOINT_EVERY = 120.0, 250
TIMING_STEPS = 15
NO_EVAL = 10**9  # train.eval_every for ours: never within a run


def preset_config(dataset: str, data_dir: str | None, seed: int) -> Config:
    overrides = [f"train.seed={seed}", "train.threads=1"]
    if data_dir and dataset != "digits":  # digits come with scikit-learn: no folder
        overrides.append(f"data.data_dir={data_dir}")
    return get_preset(dataset).override(overrides)


def data_overrides(ours_override: list[str]) -> list[str]:
    """The data part of ``--ours-override`` (``data.logit_alpha=...`` or the short
    ``logit_alpha=...``): the peers train with it too, so that every model sees the same
    preprocessing (a logit margin given to ours alone once favoured ours)."""
    return [o for o in ours_override if key_section(o.partition("=")[0].strip()) == "data"]


def reuse_problem(reused: dict[str, Any], cfg: Config, prior: Path) -> str | None:
    """One line when the run reused by ``--ours-from`` has other model or data settings
    (paths aside) than ``--ours-override`` asks of ours (``cfg``), or None. The overrides
    cannot reach a model that is not trained again, and its data settings are the peers' too
    (:func:`data_overrides`): a margin that differs would compare unequal preprocessing."""
    then = Config.from_dict(reused.get("config", {}))
    diff = [f"{key}={a} there, {b} here" for key, a, b in differing_settings(then, cfg)]
    if not diff:
        return None
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    return (
        f"--ours-from {prior}: its run has other settings than --ours-override asks ({shown}); "
        "an override cannot reach a reused run: give its settings, or leave out --ours-from"
    )


# --------------------------------------------------------------------------------------------
# The peers
# --------------------------------------------------------------------------------------------


class ImagePeer:
    """A peer flow on images after the library's preprocessing transforms (uniform
    dequantisation and the preset's logit map, each with its log-det), as ours sees them.

    ``kind``: ``"realnvp"`` (zuko RealNVP on the flattened image) or ``"glow"`` (normflows'
    multi-scale Glow on the image).
    """

    def __init__(
        self,
        kind: str,
        kw: dict[str, Any],
        levels: int,
        shape: tuple[int, ...],
        alpha: float,
        seed: int,
    ) -> None:
        torch.manual_seed(seed)
        self.kind, self.kw, self.shape = kind, kw, shape
        if kind == "realnvp":
            self.flow = zuko_flow("RealNVP", math.prod(shape), **kw)
        elif kind == "glow":
            self.flow = normflows_glow(tuple(shape), **kw)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown peer {kind!r}: expected one of {list(PEER_LABEL)}")
        self.logit = Logit(alpha) if alpha > 0 else None
        self.pre = ComposedTransform(Dequantize(levels), *([self.logit] if self.logit else []))

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p`` (nats) of integer images ``x`` ``(B, C, H, W)`` dequantised, in level
        units (every preprocessing log-det counted), as our image flows return it."""
        z, logdet = self.pre(x)
        if self.kind == "glow":
            return self.flow.log_prob(z, None) + logdet
        return self.flow().log_prob(z.flatten(1)) + logdet

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` images in ``[0, 1]``, the base's standard deviation scaled by ``temperature``
        (Glow: each level's learned Gaussian; RealNVP: the standard normal)."""
        with torch.no_grad():
            if self.kind == "glow":
                z, _ = self.flow.sample(n, temperature=None if temperature == 1 else temperature)
            else:
                flow = self.flow()
                z = flow.transform.inv(temperature * flow.base.sample((n,)))
        u = self.logit.inverse(z) if self.logit is not None else z
        return u.clamp(0, 1).reshape(n, *self.shape)


def train_peer(
    kind: str,
    dataset: str,
    cfg: Config,
    budget: float,
    seed: int,
    out: Path,
    n_test: int | None,
    peer_kw: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    data = load_data(cfg.data)
    shape, dim = data.event_shape, math.prod(data.event_shape)
    kw = PEER_KW[kind][dataset] | (peer_kw or {})
    peer = ImagePeer(kind, kw, int(data.n_levels), shape, cfg.data.logit_alpha, seed)
    batches = EpochBatches(data.train_x.shape[0], cfg.train.batch_size, seed)
    checkpoint_file = out / "peer_checkpoint.pt"
    if not resume:
        checkpoint_file.unlink(missing_ok=True)  # a fresh run never continues an old one

    def lr_at(step: int, spent: float) -> float:
        # Warm-up, then cosine to zero over the CPU budget, as ours (cosine-budget).
        return PEER_LR * min(1.0, (step + 1) / PEER_WARMUP) * 0.5 * (1 + math.cos(math.pi * spent))

    run = train_for_budget(
        peer.flow,
        torch.optim.Adam(peer.flow.parameters(), lr=PEER_LR),
        lambda xb: bits_per_dim(peer.log_prob(xb), dim).mean(),
        lambda: data.train_x[batches.next()],
        budget,
        lr_at=lr_at,
        clip=PEER_CLIP,
        checkpoint=Resumable(
            checkpoint_file,
            CHECKPOINT_EVERY,
            batches.state,
            batches.load_state,  # type: ignore[arg-type]
        ),
    )
    # Evaluation: exact log-densities of every test image, fixed dequantisation noise.
    peer.flow.eval()
    torch.manual_seed(seed + 1)
    test_x = data.test_x[:n_test] if n_test else data.test_x
    with torch.no_grad():
        bpd = bits_per_dim(chunked(peer.log_prob, EVAL_CHUNK)(test_x).double(), dim)
    finite = torch.isfinite(bpd)
    mean, se = mean_se(bpd[finite])
    torch.manual_seed(seed + 2)
    torch.save(peer.sample(64), out / "peer_samples.pt")
    return {
        "model": f"{PEER_LABEL[kind]} {kw}",
        "budget_s": budget,
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
    dataset: str,
    cfg: Config,
    budget: float,
    out: Path,
    n_test: int | None,
    resume: bool = False,
    follow_clock: bool = True,
) -> dict[str, Any]:
    # The CPU budget replaces the preset's wall-clock cap (which a loaded machine hits early).
    run_dir = out / "ours"
    # No periodic test evaluation: the peers have none, and ours counts against the same CPU
    # budget (~7 CPU s per 1 024 test images with the scoring roulette on Fashion-MNIST, every
    # 500 steps: ~10% of the budget). The final evaluation below is outside it, as theirs.
    cfg = cfg.override(
        [f"train.checkpoint_every={OURS_CHECKPOINT_EVERY}", f"train.eval_every={NO_EVAL}"]
    )
    run = train_under_budget(
        cfg,
        budget,
        run_dir,
        out,
        timing_steps=TIMING_STEPS,
        resume=resume,
        follow_clock=follow_clock,
    )
    trained = run.trained
    torch.manual_seed(cfg.train.seed + 1)
    ev = trained.task.full_evaluation(trained.model, n_inverse=256, n_test=n_test)
    torch.manual_seed(cfg.train.seed + 2)
    samples, _ = trained.task.sample(trained.model, 64)
    torch.save(samples.cpu(), out / "ours_samples.pt")
    m, records = run.cfg.model, run.records
    return {
        "model": f"preset {dataset}: {m.kind}, {m.size()}, {m.activation}, c={m.coeff}, "
        f"log-det {m.logdet}",
        "test_bpd": ev["test_bpd"],
        "test_bpd_se": ev["test_bpd_se"],
        "dequantization": ev.get("dequantization"),
        "test_bpd_uniform": ev.get("test_bpd_uniform"),
        "test_bpd_uniform_se": ev.get("test_bpd_uniform_se"),
        "estimator": ev["estimator"],
        "n_test": ev["n_test"],
        "categorical_bpd": ev.get("categorical_bpd"),
        "categorical_bpd_se": ev.get("categorical_bpd_se"),
        "inverse_max_error": ev["inverse_max_error"],
        "invertible": ev["invertible"],
        "max_lipschitz": ev["max_lipschitz"],
        "steps": run.result.step,
        "planned_steps": run.planned_steps,
        "timing_cpu_seconds_per_step": run.timing_cpu_seconds_per_step,
        # Training rows only: the test row after the last step also counts the trainer's
        # final evaluation, which the peers' figure leaves out (~3.5 of 24 s on quick digits).
        # None where the budget stopped it before its first logged training row (a row every
        # train.log_every steps): its CPU time at a training step is not known.
        "train_seconds": known(logged_max(train_rows(records, "cpu_seconds"), "cpu_seconds")),
        "train_seconds_with_final_evaluation": logged_max(records, "cpu_seconds"),
        "wall_seconds": logged_max(records, "seconds"),
        "cpu_share": run.cpu_share,
        "params": trainable_parameters(trained.model),
        "run_dir": str(run_dir),
        "config": run.cfg.to_dict(),
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

#: The label of the preset run, the reference every other model is compared with.
REFERENCE = "Residual Flow"


def spec_config(spec: dict[str, Any]) -> Config:
    """The config a worker trains with: the preset's, with ours' overrides (ours) or their
    ``data.*`` part (a peer, :func:`peer_spec`)."""
    overrides = spec.get("ours_override") or spec.get("data_override") or []
    return preset_config(spec["dataset"], spec["data_dir"], spec["seed"]).override(overrides)


def peer_spec(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """A peer's worker settings: its sizes, and the ``data.*`` overrides given to ours."""
    spec: dict[str, Any] = {"who": kind, "peer_kw": args.peer_kw}
    shared = data_overrides(args.ours_override)
    if shared:  # only when given: older work dirs' spec.json stay resumable
        spec["data_override"] = shared
    return spec


def worker(spec: dict[str, Any]) -> None:
    set_threads(1)
    seed_all(spec["seed"])
    cfg = spec_config(spec)
    out = Path(spec["out"])
    if spec["who"] == "ours":
        result = train_ours(
            spec["dataset"],
            cfg,
            spec["budget"],
            out,
            spec["n_test"],
            spec.get("resume", False),
            not spec.get("fit_steps", False),
        )
    else:
        result = train_peer(
            spec["who"],
            spec["dataset"],
            cfg,
            spec["budget"],
            spec["seed"],
            out,
            spec["n_test"],
            (spec.get("peer_kw") or {}).get(spec["who"]),
            spec.get("resume", False),
        )
    atomic_write(out / f"{spec['who']}.json", json.dumps(result))


def load_result(folder: Path, who: str) -> dict[str, Any]:
    result = json.loads((folder / f"{who}.json").read_text())
    stem = "ours" if who == "ours" else "peer"
    result["samples"] = torch.load(folder / f"{stem}_samples.pt")
    return result


def _slug(label: str) -> str:
    return label.lower().replace(" ", "-").replace("+", "").replace(".", "").replace("--", "-")


def check_budget(result: dict[str, Any], budget: float, folder: Path) -> None:
    """Refuse to reuse a finished model trained for another budget."""
    had = result.get("budget_s", result.get("config", {}).get("train", {}).get("max_cpu_seconds"))
    if had != budget:
        raise SystemExit(
            f"--resume: {folder} was trained for {had} CPU s, not {budget:g}; "
            "use another --work-dir or the same --budget"
        )


def spec_problem(spec: dict[str, Any], folder: Path, resume: bool) -> str | None:
    """One line when a model's folder cannot take ``spec``: a fresh run into a folder that
    holds one (it would overwrite its settings and crash on its run), or a resume with other
    settings than it was started with; else None."""
    saved = folder / "spec.json"
    if not saved.exists():
        return None
    if not resume:
        return (
            f"{folder} already holds a model of an earlier run: add --resume to continue it "
            "(with the same flags), or use another --work-dir"
        )
    before = json.loads(saved.read_text())
    mine = {k: v for k, v in spec.items() if k != "resume"}
    # The folder may have moved with its work dir: where it is now is not a setting.
    diff = sorted(
        k for k in before.keys() | mine.keys() if k != "out" and before.get(k) != mine.get(k)
    )
    if diff:
        return (
            f"--resume: {folder} was started with other settings ({', '.join(diff)}); "
            "rerun with the first command's flags or use another --work-dir"
        )
    return None


def write_spec(spec: dict[str, Any], folder: Path) -> None:
    """Keep a model's settings beside its run (``spec.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    mine = {k: v for k, v in spec.items() if k != "resume"}
    atomic_write(folder / "spec.json", json.dumps(mine, sort_keys=True))


def prior_run(work_dir: Path, dataset: str) -> Path:
    """The finished run of the preset in an earlier ``--work-dir`` (a plain run keeps it in
    ``ours/``, a ``--variants`` run in ``residual-flow/``), for ``--ours-from``.

    Raises ``SystemExit`` with one line when there is none.
    """
    for folder in ("ours", _slug(REFERENCE)):
        if (work_dir / dataset / folder / "ours.json").is_file():
            return work_dir / dataset / folder
    raise SystemExit(
        f"--ours-from {work_dir}: no finished run of the {dataset} preset in "
        f"{work_dir / dataset / 'ours'} or {work_dir / dataset / _slug(REFERENCE)}; give the "
        "--work-dir of a run that finished, or leave out --ours-from to train it"
    )


def our_models(dataset: str, args: argparse.Namespace) -> dict[str, list[str]]:
    """Ours by label: the preset alone, or the ``--variants`` (all four, or those named)."""
    return {REFERENCE: []} if args.variants is None else variants(dataset, args.variants)


def run_models(dataset: str, budget: float, args: argparse.Namespace, work: Path) -> dict:
    """Train ours (the preset, or the ``--variants`` asked for) and the ``--peers`` side by side,
    one process each, and collect their results by label (ours' preset first)."""
    ours = our_models(dataset, args)
    results: dict[str, Any] = {}
    jobs = {}
    for label, override in ours.items():
        folder = "ours" if args.variants is None else _slug(label)
        if args.ours_from and label == REFERENCE:  # reuse an earlier run of the preset
            prior = prior_run(args.ours_from, dataset)
            results[label] = load_result(prior, "ours")
            results[label]["reused_from"] = str(prior)
            if results[label]["config"]["train"]["max_cpu_seconds"] != budget:
                raise SystemExit(f"--ours-from {prior}: its budget differs from {budget} CPU s")
            continue  # its settings were checked against the overrides before any training
        out = work / dataset / folder
        spec = {
            "who": "ours",
            "ours_override": [*override, *args.ours_override],
            "fit_steps": args.ours_fit_steps,
        }
        jobs[label] = (spec, out)
    for kind in args.peers:
        jobs[PEER_LABEL[kind]] = (peer_spec(kind, args), work / dataset / kind)
    for spec, out in jobs.values():
        spec |= {
            "dataset": dataset,
            "budget": budget,
            "seed": args.seed,
            "data_dir": args.data_dir,
            "out": str(out),
            "n_test": args.n_test,
            "resume": args.resume,
        }
    # Every folder checked before any is written: a refusal leaves the work dir as it was.
    for spec, out in jobs.values():
        problem = spec_problem(spec, out, args.resume)
        if problem:
            raise SystemExit(problem)
    for spec, out in jobs.values():
        write_spec(spec, out)
    if args.resume:  # models that finished in an earlier process are read back, not rerun
        for label, (spec, out) in list(jobs.items()):
            if (out / f"{spec['who']}.json").exists():
                results[label] = load_result(out, spec["who"])
                check_budget(results[label], budget, out)
                del jobs[label]
    run_side_by_side(__file__, jobs)
    for label, (spec, out) in jobs.items():
        results[label] = load_result(out, spec["who"])
    return {label: results[label] for label in [*ours, *(PEER_LABEL[k] for k in args.peers)]}


def cost_cells(label: str, r: dict[str, Any]) -> tuple[str, str, str | None]:
    """A result's "CPU s/step (mean)" and "CPU s trained" cells, and, where they are "-", the
    note that says why (None where they are known). A budget that ended before a training step
    was timed gave "nan ms | nan" (ours logs its CPU time every ``train.log_every`` steps), and
    a peer with no step "0.0 ms"."""
    seconds, steps = known(r.get("train_seconds")), int(r.get("steps") or 0)
    if seconds is not None and steps > 0:
        return f"{1000 * seconds / steps:.1f} ms", fmt(seconds), None
    why = (
        "no training step finished"
        if steps <= 0
        else f"it stopped at step {steps} before its first logged training row (one every "
        "train.log_every steps)"
    )
    return "-", "-", untimed_note(label, why)


def report(dataset: str, results: dict[str, Any], budget: float) -> tuple[str, str]:
    head = [
        "model",
        "test bits/dim ± SE",
        "same model, uniform deq. ± SE",
        "estimator",
        "steps",
        "CPU s/step (mean)",
        "CPU s trained",
        "CPU share",
        "parameters",
        "max Lip(g)",
    ]
    rows = []
    unknown: list[str] = []
    for label, r in results.items():
        variational = r.get("dequantization") == "variational"
        per_step, trained, why = cost_cells(label, r)
        if why:
            unknown.append(f"- {why}")
        rows.append(
            [
                label,
                pm(r["test_bpd"], r["test_bpd_se"], 4) + (" (-ELBO)" if variational else ""),
                pm(r["test_bpd_uniform"], r["test_bpd_uniform_se"], 4) if variational else "-",
                r["estimator"],
                r["steps"],
                per_step,
                trained,
                f"{r['cpu_share']:.2f}",
                f"{r['params']:,}",
                f"{r['max_lipschitz']:.4f}" if "max_lipschitz" in r else "-",
            ]
        )
    ref = next(iter(results))  # ours listed first: the preset, or the first variant trained
    base = results[ref]
    if base.get("categorical_bpd") is not None:
        rows.append(
            [
                "per-pixel categorical (the yardstick)",
                pm(base["categorical_bpd"], base["categorical_bpd_se"], 4),
                "-",
                "exact",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        )
    lines = []
    for label, r in results.items():
        if label == ref:
            continue
        d = r["test_bpd"] - base["test_bpd"]
        se = math.hypot(r["test_bpd_se"], base["test_bpd_se"])
        said = verdict(d, se).replace("ours", label).replace("peer", ref)
        lines.append(
            f"- {dataset}, {budget:g} CPU s: {label} - {ref} = {d:+.4f} (± {se:.4f}) "
            f"bits/dim: {said}"
        )
        if r.get("dequantization") == "variational":
            g = r["test_bpd"] - r["test_bpd_uniform"]
            gse = math.hypot(r["test_bpd_se"], r["test_bpd_uniform_se"])
            lines.append(
                f"  - its variational bound - its own uniform bound = {g:+.4f} (± {gse:.4f}, "
                "unpaired SE: conservative, both on the same images) bits/dim"
            )
    if base.get("categorical_bpd") is not None:
        d = base["test_bpd"] - base["categorical_bpd"]
        se = math.hypot(base["test_bpd_se"], base["categorical_bpd_se"])
        lines.append(f"- {dataset}: {ref} - per-pixel categorical = {d:+.4f} (± {se:.4f}) bits/dim")
    lines.append(
        f"- {dataset}: {ref} inverse max error {base['inverse_max_error']:.2e} (pixel "
        f"units, [0, 1]) on 256 test images, certified invertible: {base['invertible']} "
        f"(largest block bound {base['max_lipschitz']:.4f})"
    )
    lines.append("- standard errors are over test images (unpaired: conservative)")
    table = "\n\n".join([markdown_table(head, rows), *(["\n".join(unknown)] if unknown else [])])
    return table, "\n".join(lines)


def against(results: dict[str, Any]) -> str:
    """The heading of the comparisons: against the preset, or the first variant trained."""
    ref = next(iter(results))
    return f"Against the {ref} preset" if ref == REFERENCE else f"Against {ref}"


def figure(dataset: str, results: dict[str, Any], path: Path) -> Path:
    """16 samples per model, one row each, in the order of the table."""
    grid = torch.cat([r["samples"][:16] for r in results.values()])
    title = f"{dataset}, rows: " + " | ".join(
        f"{label} {r['test_bpd']:.2f}" for label, r in results.items()
    )
    return plot_image_grid(grid, path, nrow=16, title=title)


def peer_kw_problem(peer_kw: object, peers: list[str]) -> str | None:
    """What is wrong with ``--peer-kw`` (sizes keyed by the peers trained), or None: an
    unkeyed or misspelt form would otherwise be ignored and the peer trained at its default."""
    if peer_kw is None:
        return None
    if not isinstance(peer_kw, dict) or not all(isinstance(v, dict) for v in peer_kw.values()):
        return (
            "--peer-kw takes sizes keyed by peer, e.g. "
            '\'{"realnvp": {"transforms": 4}}\', got ' + json.dumps(peer_kw)
        )
    unknown = sorted(set(peer_kw) - set(peers))
    if unknown:
        return f"--peer-kw names {unknown}, not among the peers trained ({peers}); see --peers"
    return None


def parse_budgets(items: list[str], datasets: list[str], quick: bool) -> dict[str, float]:
    """``--budget DATA=SECONDS`` items over the defaults (20 s each with ``--quick``).

    Raises:
        ValueError: an item that is not ``DATA=SECONDS`` with DATA among ``datasets`` and a
            finite, positive number of seconds (the message says which and what to give).
    """
    budgets = {k: 20.0 if quick else v for k, v in DEFAULT_BUDGETS.items()}
    for item in items:
        name, _, secs = item.partition("=")
        if name not in budgets or not secs:
            raise ValueError(
                f"--budget expects DATA=SECONDS with DATA in {list(budgets)}, got {item!r}"
            )
        if name not in datasets:
            raise ValueError(
                f"--budget {item}: {name} is not among --datasets {datasets}; add it there or "
                "drop the budget"
            )
        try:
            value = float(secs)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--budget {item}: SECONDS must be a positive number of CPU seconds")
        budgets[name] = value
    return budgets


def preflight_problem(dataset: str, args: argparse.Namespace) -> str | None:
    """What would stop a model of ``dataset`` at its start, found before any trains (a worker
    that fails after the others' hour is an hour lost): our configs with ``--ours-override``
    and the data they read (its folder, a subset, a batch that fits), and each peer built at
    its ``--peer-kw`` size, with parameters to train and a finite log-density on two training
    images. None when all of them would start."""
    for label, override in our_models(dataset, args).items():
        try:
            cfg = preset_config(dataset, args.data_dir, args.seed).override(
                [*override, *args.ours_override]
            )
            data = load_data(cfg.data)
            check_batch_size(cfg.train.batch_size, data.train_x.shape[0], what="images")
        except IResNetError as e:
            return f"{label}: {e}"
    if not args.peers:
        return None
    try:
        cfg = preset_config(dataset, args.data_dir, args.seed).override(
            data_overrides(args.ours_override)
        )
        data = load_data(cfg.data)
    except IResNetError as e:
        return f"{dataset}: {e}"
    for kind in args.peers:
        kw = PEER_KW[kind][dataset] | ((args.peer_kw or {}).get(kind) or {})
        name = PEER_LABEL[kind]
        try:
            peer = ImagePeer(
                kind, kw, int(data.n_levels or 0), data.event_shape, cfg.data.logit_alpha, 0
            )
            if not trainable_parameters(peer.flow):
                return f"--peer-kw: {name} at {kw} has no parameters to train"
            with torch.no_grad():
                finite = bool(torch.isfinite(peer.log_prob(data.train_x[:2])).all())
        except ImportError as e:
            return f"{name} needs its library ({e.name}): pip install -e '.[bench]'"
        except Exception as e:  # a size the peer's own code rejects, in whatever form
            return f"--peer-kw: {name} cannot be built with {kw}: {type(e).__name__}: {e}"
        if not finite:
            return f"--peer-kw: {name} at {kw} gives a non-finite log-density at the start"
    return None


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
    ap.add_argument(
        "--work-dir", type=writable_dir, default=None, help="where run folders go (kept)"
    )
    ap.add_argument(
        "--ours-fit-steps",
        action="store_true",
        help="fit our train.steps to the budget from a timing run (the old way) instead of a "
        "cosine over the CPU budget",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --work-dir (the same command otherwise): finished "
        "models are read back, the others continue from their last checkpoint, CPU seconds "
        "counted across processes",
    )
    ap.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="evaluate every model on the first N test images (default: all); our "
        "unbiased estimator at D = 784 costs ~20 vector-Jacobian products per "
        "block and image",
    )
    ap.add_argument(
        "--peers",
        nargs="*",
        default=list(PEER_LABEL),
        choices=list(PEER_LABEL),
        help="the peers trained beside ours (default: all; none with an empty list)",
    )
    ap.add_argument(
        "--peer-kw",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="override a peer's size, e.g. "
        '\'{"realnvp": {"transforms": 4}, "glow": {"blocks": 4, "hidden": 32}}\'',
    )
    ap.add_argument(
        "--ours-from",
        type=Path,
        default=None,
        metavar="WORK_DIR",
        help="reuse the preset's finished run from an earlier --work-dir (same budget, and the "
        "model and data settings --ours-override gives; a plain run's ours/ or a --variants "
        "run's residual-flow/)",
    )
    ap.add_argument(
        "--ours-override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides of our preset (and its variants), for what-if runs; the data.* "
        "ones apply to the peers too (the same preprocessing for every model)",
    )
    ap.add_argument("--name", default=None, help="results name (default images[-variants]-<data>)")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=None,
        metavar="NAME",
        help="ours as four models: Residual Flow and i-DenseNet, each with uniform and "
        "variational dequantisation (writes images-variants-<data>.*); names pick some of them "
        "(residual-flow, residual-flow-var-deq, i-densenet, i-densenet-var-deq)",
    )
    add_worker_flag(ap)
    args = ap.parse_args()
    problem = peer_kw_problem(args.peer_kw, args.peers)
    problem = problem or variant_problem(args.variants)
    if args.n_test is not None and args.n_test < 2:
        problem = problem or (
            f"--n-test must be >= 2 (a standard error needs two images), got {args.n_test}"
        )
    if problem:
        ap.error(problem)
    if serve(args, worker):
        return
    try:
        budgets = parse_budgets(args.budget, args.datasets, args.quick)
    except ValueError as e:
        ap.error(str(e))
    for ds in args.datasets:  # every model built once before any trains
        problem = preflight_problem(ds, args)
        if problem:
            ap.error(problem)
    set_threads(1)  # the driver only waits; each worker sets its own single thread
    env = environment()
    if args.resume and args.work_dir is None:
        ap.error("--resume needs the --work-dir of the run to continue")
    if args.resume and not args.work_dir.is_dir():
        ap.error(f"--resume: no work dir {args.work_dir} to continue; leave out --resume to start")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="iresnet-images-"))
    out_dir = args.out_dir or RESULTS_DIR
    if args.ours_from:  # before any training: a wrong path is found now, not after an hour
        for ds in args.datasets:
            if REFERENCE in our_models(ds, args):
                prior = prior_run(args.ours_from, ds)
                reused = json.loads((prior / "ours.json").read_text())
                ours_cfg = preset_config(ds, args.data_dir, args.seed)
                problem = reuse_problem(reused, ours_cfg.override(args.ours_override), prior)
                if problem:
                    ap.error(problem)
    for ds in args.datasets:
        ours = our_models(ds, args)
        labels = [*ours, *(PEER_LABEL[k] for k in args.peers)]
        print(f"[{ds}] training side by side, {budgets[ds]:g} CPU s each: {labels}", flush=True)
        res = run_models(ds, budgets[ds], args, work)
        stem = "images" if args.variants is None else "images-variants"
        # Some variants only: their names in the default name, so two halves do not overwrite.
        picked = [_slug(label) for label in ours]
        some = f"-{'-'.join(picked)}" if args.variants and len(picked) < len(variants(ds)) else ""
        name = args.name or f"{stem}-{ds}{some}{'-quick' if args.quick else ''}"
        table, verdicts = report(ds, res, budgets[ds])  # before the picture: fails, writes none
        png = figure(ds, res, out_dir / f"{name}.png")
        raw = {who: {k: v for k, v in r.items() if k != "samples"} for who, r in res.items()}
        settings = {
            "dataset": ds,
            "budget_s": budgets[ds],
            "seed": args.seed,
            "threads": 1,
            "n_test": args.n_test or "all",
            "ours": ours,
            "peers": {
                PEER_LABEL[k]: PEER_KW[k][ds] | ((args.peer_kw or {}).get(k) or {})
                for k in args.peers
            },
            "peer_lr": PEER_LR,
            "work_dir": str(work),
            "ours_from": str(args.ours_from or ""),
            "ours_override": args.ours_override,
            "ours_schedule": "fitted steps" if args.ours_fit_steps else "cosine over the budget",
            "resumed": args.resume,
        }
        notes = (
            f"This run trained {', '.join(res)} (the notes below describe every model the "
            f"script can train).\n\n{doc_body(__doc__)}\n\n"
            f"Samples (one row per model, table order): `{png.name}`."
        )
        md, _ = write_results(
            name,
            f"Image density on {ds} at an equal CPU budget: " + ", ".join(res),
            env,
            settings,
            [("Results", table), (against(res), verdicts), ("Notes", notes)],
            raw,
            summary={k: r["test_bpd"] for k, r in res.items()},
            out_dir=out_dir,
        )
        print(md.read_text(), flush=True)


if __name__ == "__main__":
    run_script(main)
