"""Sample quality of trained image flows, measured by a classifier of the data set, not by eye.

Issue 13 asks for samples "a person recognises as garments". Bits/dim does not say it (a model
can assign high likelihood to the test images and still draw blobs), and an eye judges one
picture at a time, so this script puts a number on it. A multilayer perceptron
(``sklearn.neural_network.MLPClassifier``, one hidden layer of 256 ReLU units, 12 epochs of Adam,
``random_state=0``) is fitted to the data set's training images and labels; every model then
draws ``--n-samples`` samples at each ``--temperature`` (the base normal's standard deviation,
Kingma & Dhariwal 2018, arXiv 1807.03039, Section 5: Glow's own samples use T = 0.7), rounded
to the data's levels as an image file would store them, and gets:

- **KID** (Binkowski et al. 2018, arXiv 1801.01401, Section 3): the unbiased squared maximum
  mean discrepancy between the classifier's hidden features of the samples and of as many test
  images, with the cubic polynomial kernel ``k(a, b) = (a.b / d + 1)^3``: one estimate over all
  pairs, its standard error the delete-a-group jackknife over ``--subsets`` groups (shown
  x 1000; :func:`kid`). Zero for a model that draws the test distribution; it sees both quality
  and diversity. (Before 2026-12-02 it was the mean over ``--subsets`` disjoint subsets, which
  leaves out the pairs across subsets: ~3x the spread; ``benchmarks/kid_calibration.py``.)
- **confident**: the fraction of samples the classifier puts in one class with probability at
  least 0.9 (binomial standard error), and the **class entropy** of its predicted labels, in bits
  (log2 10 = 3.32 when every class is drawn equally often). Not a quality measure on its own:
  a classifier is confident far from its data too (the noise a 5-step model draws scored 0.285
  in a try-out, above both 60-minute models); read it beside KID.
- **non-finite samples**: draws whose inverse overflowed (NaN or infinite pixels); they count
  as not confident, and KID is over the others.

Two references frame the numbers: held-out test images (what a perfect model's samples would
get; KID near 0) and the independent per-pixel categorical model fitted to the training images
(the floor of issue 13: its samples are noise with the right mean, nobody's garments).

Runs (``--runs LABEL=PATH``, one or more): an unconditional ``iresnet`` image density run
folder (ours), or a peer's
folder written by ``benchmarks/images.py --work-dir`` (``spec.json`` and ``peer_checkpoint.pt``:
normflows Glow or zuko RealNVP), or the ``ours`` folder it writes. Nothing is trained but the
classifier (about 90 CPU s on Fashion-MNIST); sampling ours costs about 40 CPU s per 1 000.

Run: ``.venv/bin/python benchmarks/sample_quality.py --runs ours=W/fashion-mnist/ours
glow=W/fashion-mnist/glow`` (W: the ``--work-dir`` of an ``images.py`` run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iresnet.app.plots import plot_image_grid
from iresnet.app.runs import load_run
from iresnet.app.tasks.base import evaluating, scoring_estimator, scoring_lipschitz
from iresnet.app.words import count
from iresnet.datasets import load_dataset
from iresnet.transforms import bits_per_dim, swap_logdets

from bench import RESULTS_DIR
from bench.density import chunked
from bench.env import environment, run_script, script_parser, set_threads
from bench.report import markdown_table, pm, write_results

NAME = "sample-quality"
CONFIDENT = 0.9
HIDDEN = 256
EPOCHS = 12
PER_ROW = 16


# ------------------------------------------------------------------------------- the metrics


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """``(a b^T / d + 1)^3`` for rows ``a`` ``(n, d)`` and ``b`` ``(m, d)``: ``(n, m)``."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased squared MMD between samples ``x`` ``(n, d)`` and ``y`` ``(m, d)`` under
    :func:`polynomial_kernel` (Gretton et al. 2012, JMLR 13, Lemma 6): the within-sample sums
    leave out their diagonals, so its mean over draws is the population MMD^2 (it can be
    negative)."""
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def _group_sums(k: Tensor, groups: int, within: bool) -> Tensor:
    """Sums of a kernel matrix ``k`` ``(n, n)`` over its ``(groups, groups)`` blocks of equal,
    consecutive rows and columns; ``within``: the diagonal (a sample with itself) left out."""
    if within:
        k = k - torch.diag(k.diagonal())
    size = k.shape[0] // groups
    return k.reshape(groups, size, groups, size).sum((1, 3))


def mmd2_leave_one_group_out(x: Tensor, y: Tensor, groups: int) -> tuple[float, Tensor]:
    """:func:`mmd2_unbiased` of ``x`` and ``y`` (rows ``(n, d)``, ``n`` a multiple of
    ``groups``), and the ``(groups,)`` values it takes with group ``g`` (rows ``g n/groups`` to
    ``(g + 1) n/groups - 1``) left out of both samples, all from one set of kernel matrices.

    Raises:
        ValueError: ``x`` and ``y`` differ in rows, or the rows do not split into ``groups``.
    """
    n = x.shape[0]
    if y.shape[0] != n or n % groups:
        raise ValueError(f"{x.shape[0]} and {y.shape[0]} rows do not split into {groups} groups")
    size = n // groups
    within = _group_sums(polynomial_kernel(x, x), groups, within=True) + _group_sums(
        polynomial_kernel(y, y), groups, within=True
    )
    cross = _group_sums(polynomial_kernel(x, y), groups, within=False)

    def value(keep: Tensor) -> Tensor:  # keep: (groups,) 1 for the groups in, 0 for out
        m = int(keep.sum()) * size
        both = torch.outer(keep, keep)
        return (within * both).sum() / (m * (m - 1)) - 2 * (cross * both).sum() / (m * m)

    ones = torch.ones(groups, dtype=x.dtype)
    left_out = torch.stack(
        [value(ones.index_fill(0, torch.tensor([g]), 0.0)) for g in range(groups)]
    )
    return float(value(ones)), left_out


def kid(features: Tensor, reference: Tensor, subsets: int) -> tuple[float, float]:
    """KID of ``features`` against ``reference`` (rows ``(N, d)``, float64) and its standard
    error.

    KID is :func:`mmd2_unbiased` of the first ``n`` rows of each, ``n`` the smaller row count
    rounded down to a multiple of ``subsets``: one estimate over every pair, not a mean over
    disjoint slices (that would leave out the pairs across slices: on Fashion-MNIST's test
    images its spread was ~3x larger). The standard error is the delete-a-group jackknife
    (Efron & Stein 1981, Ann. Stat. 9(3)) over ``subsets`` equal groups, each left out of both
    samples: ``sqrt((G - 1)/G sum_g (v_g - mean v)^2)``. Measured against the spread over 200
    random splits (``benchmarks/kid_calibration.py``) it is honest at ``n = 1000``, on the
    conservative side near KID = 0.

    Raises:
        ValueError: fewer than 2 rows per group.
    """
    n = min(features.shape[0], reference.shape[0]) // subsets
    if n < 2:
        raise ValueError(f"{subsets} subsets of {features.shape[0]} samples: fewer than 2 each")
    full, left_out = mmd2_leave_one_group_out(
        features[: n * subsets], reference[: n * subsets], subsets
    )
    spread = ((left_out - left_out.mean()) ** 2).sum()
    return full, float(torch.sqrt((subsets - 1) / subsets * spread))


def class_entropy_bits(labels: np.ndarray, n_classes: int) -> float:
    """Entropy of the label histogram in bits (``log2 n_classes`` when uniform)."""
    p = np.bincount(labels, minlength=n_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


class Judge:
    """The data set's classifier and what it says of a set of images.

    ``train_x`` ``(N, C, H, W)`` integer levels in ``[0, levels)``, ``train_y`` ``(N,)``.
    """

    def __init__(self, train_x: Tensor, train_y: Tensor, levels: int, seed: int, epochs: int):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.levels = levels
        self.mlp = MLPClassifier(
            hidden_layer_sizes=(HIDDEN,), max_iter=epochs, batch_size=256, random_state=seed
        )
        t = time.process_time()
        with warnings.catch_warnings():  # a fixed number of epochs "did not converge": by design
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp.fit(self.pixels(train_x), train_y.numpy())
        self.fit_cpu_seconds = time.process_time() - t

    def pixels(self, levels_x: Tensor) -> np.ndarray:
        """Integer levels ``(N, C, H, W)`` as flat rows in ``[0, 1]``."""
        return levels_x.reshape(levels_x.shape[0], -1).double().numpy() / (self.levels - 1)

    def features(self, levels_x: Tensor) -> Tensor:
        """The hidden layer's ReLU activations ``(N, 256)``, float64."""
        x = self.pixels(levels_x)
        h = np.maximum(x @ self.mlp.coefs_[0] + self.mlp.intercepts_[0], 0.0)
        return torch.from_numpy(h)

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        return float((self.mlp.predict(self.pixels(x)) == y.numpy()).mean())

    def judge(
        self, levels_x: Tensor, reference: Tensor, subsets: int, failed: int = 0
    ) -> dict[str, Any]:
        """KID against ``reference`` features, the confident fraction and the class entropy.

        ``failed``: samples that came out non-finite (not in ``levels_x``); they count as
        not confident, and KID is over the others (``nan`` when fewer than 2 per subset are
        left)."""
        if levels_x.shape[0] < 2 * subsets:  # (nearly) every draw overflowed
            n = levels_x.shape[0] + failed
            return {
                "kid": math.nan,
                "kid_se": math.nan,
                "confident": math.nan,
                "confident_se": math.nan,
                "mean_top_probability": math.nan,
                "class_entropy_bits": math.nan,
                "n": n,
                "non_finite": failed,
            }
        proba = self.mlp.predict_proba(self.pixels(levels_x))
        confident = proba.max(axis=1) >= CONFIDENT
        n = len(confident) + failed
        frac = float(confident.sum() / n)
        kid_mean, kid_se = kid(self.features(levels_x), reference, subsets)
        return {
            "kid": kid_mean,
            "kid_se": kid_se,
            "confident": frac,
            "confident_se": math.sqrt(frac * (1 - frac) / max(n - 1, 1)),
            "mean_top_probability": float(proba.max(axis=1).mean()),
            "class_entropy_bits": class_entropy_bits(proba.argmax(axis=1), proba.shape[1]),
            "n": n,
            "non_finite": failed,
        }


# ------------------------------------------------------------------------------- the samplers


def to_levels(u: Tensor, levels: int) -> Tensor:
    """Dequantised images ``u`` in ``[0, 1]`` (``u = (x + U) / K``) back to integer levels.

    Raises:
        ValueError: a non-finite pixel (it has no level; filter those samples first).
    """
    if not torch.isfinite(u).all():
        raise ValueError("non-finite pixels have no level: filter those samples first")
    return (u.double() * levels).floor().clamp(0, levels - 1).to(torch.int64)


def categorical_samples(train_x: Tensor, levels: int, n: int) -> Tensor:
    """``n`` draws of the per-pixel categorical model (add-one smoothed training histograms,
    as ``categorical_bpd``), integer levels ``(n, C, H, W)``."""
    flat = train_x.reshape(train_x.shape[0], -1).long()
    counts = torch.ones(flat.shape[1], levels, dtype=torch.float64)
    counts.scatter_add_(1, flat.T, torch.ones_like(flat.T, dtype=torch.float64))
    draws = torch.multinomial(counts / counts.sum(1, keepdim=True), n, replacement=True)
    return draws.T.reshape(n, *train_x.shape[1:])


class Sampler:
    """A trained model from its folder: ``sample(n, temperature)`` gives dequantised images in
    ``[0, 1]``, ``test_bits_per_dim(n_test, seed)`` its per-image test bits/dim; ``dataset``
    and ``levels`` say what it was trained on."""

    def __init__(self, path: Path):
        spec_file = path / "spec.json"
        if spec_file.is_file() and (path / "ours").is_dir():
            path = path / "ours"  # images.py's folder of ours: the run is inside
            spec_file = path / "spec.json"
        if spec_file.is_file():
            try:
                spec = json.loads(spec_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SystemExit(
                    f"{spec_file}: not the spec.json images.py writes ({e}); point at another "
                    "folder or rerun images.py"
                ) from None
            keys = {"who", "dataset", "data_dir", "seed"}
            if not isinstance(spec, dict) or not keys <= set(spec):
                raise SystemExit(
                    f"{spec_file}: not the spec.json images.py writes (it has {sorted(keys)})"
                )
            self._peer(path, spec)
        elif (path / "config.json").is_file():
            self._ours(path)
        else:
            raise SystemExit(
                f"{path}: neither an iresnet run folder (config.json) nor a peer folder of "
                "benchmarks/images.py (spec.json); give one of those"
            )

    def _ours(self, path: Path) -> None:
        trained = load_run(path, data=False)
        if not getattr(trained.task, "images", False) or trained.cfg.model.kind == "hybrid":
            raise SystemExit(
                f"{path}: not an image density run; sample_quality.py and paired_bpd.py take "
                "unconditional image density runs"
            )
        if getattr(trained.task, "context_dim", 0):
            raise SystemExit(
                f"{path}: a conditional run; sample_quality.py and paired_bpd.py take "
                "unconditional image density runs (`iresnet sample --context` draws per class, "
                "`iresnet evaluate` scores one)"
            )
        self.kind, self.dataset = "ours", trained.cfg.data.name
        self.data_dir = trained.cfg.data.data_dir
        self.levels = int(trained.data.n_levels or 0)
        self._draw = lambda n, t: trained.task.sample(trained.model, n, temperature=t)[0]
        self._score = lambda x: _our_bits_per_dim(trained, x)

    def _peer(self, path: Path, spec: dict[str, Any]) -> None:
        from images import PEER_KW, ImagePeer, spec_config

        who, self.dataset = spec["who"], spec["dataset"]
        if who not in PEER_KW:
            raise SystemExit(f"{path}: spec.json names {who!r}, not a peer ({list(PEER_KW)})")
        checkpoint = path / "peer_checkpoint.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"{path}: no peer_checkpoint.pt; the peer has not been trained")
        cfg = spec_config(spec)
        self.data_dir = cfg.data.data_dir
        data = load_dataset(self.dataset, **_data_dir(cfg.data.data_dir))
        self.levels = int(data.n_levels or 0)
        kw = PEER_KW[who][self.dataset] | ((spec.get("peer_kw") or {}).get(who) or {})
        try:  # the file read first: a damaged one is found before the peer's library loads
            state = torch.load(checkpoint, weights_only=True)["model"]
            peer = ImagePeer(who, kw, self.levels, tuple(data.event_shape), cfg.data.logit_alpha, 0)
            peer.flow.load_state_dict(state)
        except ImportError:
            raise
        except Exception as e:  # torch.load's errors on a damaged file have no common type
            raise SystemExit(
                f"{checkpoint}: not a readable checkpoint of this peer ({type(e).__name__}); "
                "retrain it (images.py) or point at another folder"
            ) from None
        peer.flow.eval()
        self.kind = who
        self._draw = peer.sample
        dim = math.prod(data.event_shape)
        self._score = lambda x: bits_per_dim(chunked(peer.log_prob)(x).double(), dim)

    def sample(self, n: int, temperature: float, chunk: int = 250) -> Tensor:
        parts = [self._draw(min(chunk, n - i), temperature) for i in range(0, n, chunk)]
        return torch.cat(parts).detach()

    def test_images(self, n_test: int | None) -> Tensor:
        """The first ``n_test`` test images (all with ``None``) of the data the model was
        trained on, from its own data folder: integer levels ``(n, C, H, W)``."""
        data = load_dataset(self.dataset, **_data_dir(self.data_dir))
        return data.test_x[:n_test] if n_test else data.test_x

    def bits_per_dim(self, x: Tensor, seed: int) -> Tensor:
        """Bits/dim ``(n,)`` of each integer image of ``x``, float64, after
        ``torch.manual_seed(seed)`` (the dequantisation noise; our estimator's draws): a
        peer's exact, ours under the scoring estimator ``iresnet evaluate`` uses."""
        torch.manual_seed(seed)
        return self._score(x).double()

    def test_bits_per_dim(self, n_test: int | None, seed: int) -> Tensor:
        """:meth:`bits_per_dim` of :meth:`test_images`."""
        return self.bits_per_dim(self.test_images(n_test), seed)


def _our_bits_per_dim(trained: Any, x: Tensor) -> Tensor:
    """Per-image bits/dim of integer images ``x`` under the run's scoring estimator (its
    certified bound picks a roulette of finite variance), as ``iresnet evaluate`` scores: the
    same certificate first, then batches of its evaluation size, so that after the same seed
    the same noise is drawn."""
    model, task = trained.model, trained.task
    _, estimator = scoring_estimator(task.dim, lipschitz=scoring_lipschitz(model, certified=True))
    with evaluating(model), swap_logdets(model, estimator):
        parts = [task.value(task.log_prob(model, b)).detach() for b in x.split(task.eval_batch)]
    return torch.cat(parts)


def _data_dir(data_dir: str | None) -> dict[str, str]:
    return {"data_dir": data_dir} if data_dir else {}


# ------------------------------------------------------------------------------- the driver


def parse_runs(items: list[str]) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--runs takes LABEL=PATH, got {item!r}")
        if label in runs:
            raise SystemExit(f"--runs: the label {label!r} is given twice")
        runs[label] = Path(path)
    return runs


#: The sizes a run takes unless told (``--quick``: a smoke run's, whose judge is barely trained
#: and whose numbers mean nothing); a size given on the command line is kept either way.
SIZES = {"n_samples": 1000, "subsets": 10, "epochs": EPOCHS}
QUICK_SIZES = {"n_samples": 60, "subsets": 3, "epochs": 1}


def load_models(items: list[str], doing: str) -> tuple[dict[str, Sampler], str]:
    """The models of ``--runs LABEL=PATH`` items by label, and the one data set they share
    (``doing``: what the script does with them, for the refusal of two data sets)."""
    models = {label: Sampler(path) for label, path in parse_runs(items).items()}
    datasets = {m.dataset for m in models.values()}
    if len(datasets) != 1:
        raise SystemExit(f"--runs are on different data sets ({sorted(datasets)}): {doing}")
    return models, datasets.pop()


def shared_test_images(
    models: dict[str, Sampler], runs: dict[str, Path], n_test: int | None, doing: str
) -> Tensor:
    """The first ``n_test`` test images (all with ``None``) that every model's own data folder
    gives, the same for each; runs whose folders give other images (other files, or the same
    images in another order) are refused in one line (``doing``: why they must be the same,
    and what to do)."""
    (first, x), *rest = ((label, m.test_images(n_test)) for label, m in models.items())
    for label, y in rest:
        if y.shape != x.shape or not torch.equal(x, y):
            raise SystemExit(
                f"{first} and {label} read different test images ({runs[first]} and "
                f"{runs[label]} name different data folders' files): {doing}"
            )
    return x


def parser() -> argparse.ArgumentParser:
    ap = script_parser(__doc__)
    ap.add_argument("--runs", nargs="+", required=True, metavar="LABEL=PATH")
    ap.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.7])
    for flag, key, what in (
        ("--n-samples", "n_samples", "samples per model and T"),
        ("--subsets", "subsets", "groups for KID's jackknife SE"),
        ("--epochs", "epochs", "classifier epochs"),
    ):
        ap.add_argument(
            flag,
            type=int,
            default=None,
            help=f"{what} (default {SIZES[key]}; {QUICK_SIZES[key]} with --quick)",
        )
    ap.add_argument("--name", default=NAME, help="results name")
    ap.add_argument(
        "--data-dir", default=None, help="the image files' folder (default: the runs' own)"
    )
    return ap


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with the sizes not given filled in (``--quick`` lowers only those), and the
    ones that cannot give a number refused."""
    args = ap.parse_args(argv)
    for key, value in (QUICK_SIZES if args.quick else SIZES).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.subsets < 2:
        ap.error(f"--subsets must be >= 2 (a standard error needs two), got {args.subsets}")
    if args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")
    bad_t = [t for t in args.temperatures if not (math.isfinite(t) and t > 0)]
    if bad_t:
        ap.error(f"--temperatures must be finite and positive, got {bad_t}")
    if args.n_samples < 2 * args.subsets:
        ap.error(f"--n-samples {args.n_samples} is too few for {args.subsets} subsets of 2+")
    return args


def main() -> None:
    ap = parser()
    args = parse_args(ap)
    set_threads(args.threads)
    env = environment()
    runs = parse_runs(args.runs)
    samplers, dataset = load_models(args.runs, "judge one at a time")
    if args.data_dir is None:  # the reference is the first run's: the others' must be the same
        shared_test_images(
            samplers,
            runs,
            None,
            "their samples are judged against one set of test images; give runs of one data "
            "folder, or --data-dir to judge every run against that folder's",
        )
    data_dir = args.data_dir or next((s.data_dir for s in samplers.values() if s.data_dir), None)
    data = load_dataset(dataset, **_data_dir(data_dir))
    levels = int(data.n_levels or 0)
    if data.train_y is None or not levels:
        raise SystemExit(f"{dataset}: no labelled images to fit the judge to")
    n = args.n_samples
    if 2 * n > data.test_x.shape[0]:
        given = "" if n_samples_given(sys.argv[1:]) else " (the default)"
        ap.error(
            f"--n-samples {n}{given}: the reference and the held-out row take 2 x {n} test images; "
            f"{dataset} has {data.test_x.shape[0]}: use at most {data.test_x.shape[0] // 2}"
        )
    print(f"fitting the judge on {data.train_x.shape[0]} {dataset} images", flush=True)
    judge = Judge(data.train_x, data.train_y, levels, args.seed, args.epochs)
    reference = judge.features(data.test_x[:n])
    rows: list[list[Any]] = []
    raw: dict[str, Any] = {}
    grid: list[Tensor] = []
    legend: list[str] = []

    def add(label: str, temperature: str, levels_x: Tensor, cpu: float, failed: int = 0) -> None:
        r = judge.judge(levels_x, reference, args.subsets, failed) | {"cpu_seconds": cpu}
        raw[f"{label} T={temperature}"] = r
        rows.append(
            [
                label,
                temperature,
                pm(1000 * r["kid"], 1000 * r["kid_se"], 2),
                pm(r["confident"], r["confident_se"], 3),
                f"{r['mean_top_probability']:.3f}",
                f"{r['class_entropy_bits']:.2f}",
                failed,
                f"{cpu:.0f}",
            ]
        )
        grid.append(levels_x[:PER_ROW].double() / (levels - 1))
        legend.append(f"{label} T={temperature}")
        print(f"  {legend[-1]}: KID x 1000 {rows[-1][2]}, confident {rows[-1][3]}", flush=True)

    add("test images (held out)", "-", data.test_x[n : 2 * n].long(), 0.0)
    torch.manual_seed(args.seed)
    add("per-pixel categorical", "-", categorical_samples(data.train_x, levels, n), 0.0)
    for label, sampler in samplers.items():
        for t in args.temperatures:
            torch.manual_seed(args.seed)
            start = time.process_time()
            u = sampler.sample(n, t)
            cpu = time.process_time() - start
            finite = torch.isfinite(u).flatten(1).all(1)
            add(label, f"{t:g}", to_levels(u[finite], levels), cpu, int((~finite).sum()))
    png = plot_image_grid(
        torch.cat(grid),
        (args.out_dir or RESULTS_DIR) / f"{args.name}.png",
        nrow=PER_ROW,
        title=f"{dataset}: {PER_ROW} samples per row, rounded to levels",
    )
    table = markdown_table(
        [
            "model",
            "T",
            "KID x 1000 ± SE",
            f"confident (p >= {CONFIDENT}) ± SE",
            "mean top p",
            "class entropy (bits)",
            "non-finite samples",
            "CPU s to sample",
        ],
        rows,
    )
    legend_md = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(legend))
    judge_md = (
        f"MLPClassifier(({HIDDEN},)), {count(args.epochs, 'epoch')}, seed {args.seed}, fitted in "
        f"{judge.fit_cpu_seconds:.0f} CPU s; test accuracy "
        f"{judge.accuracy(data.test_x, data.test_y):.4f} on all {data.test_x.shape[0]} test "
        f"images. KID's reference: test images 1-{n}; the held-out row: test images "
        f"{n + 1}-{2 * n}."
    )
    write_results(
        args.name,
        f"Sample quality on {dataset}, judged by a classifier",
        env,
        {
            "dataset": dataset,
            "runs": {k: str(v) for k, v in runs.items()},
            "temperatures": args.temperatures,
            "n_samples": n,
            "subsets": args.subsets,
        },
        [
            ("Samples against test images", table),
            ("The judge", judge_md),
            (f"Picture: {png.name}, one row each", legend_md),
        ],
        raw | {"judge": {"fit_cpu_seconds": judge.fit_cpu_seconds, "epochs": args.epochs}},
        out_dir=args.out_dir,
    )


def n_samples_given(argv: list[str]) -> bool:
    return any(a == "--n-samples" or a.startswith("--n-samples=") for a in argv)


if __name__ == "__main__":
    run_script(main)
