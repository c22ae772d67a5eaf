"""One typed configuration shared by the CLI, the presets and the checkpoints.

A ``Config`` holds three sections (``ModelConfig``, ``DataConfig``, ``TrainConfig``). It
round-trips through plain dicts (JSON in a run folder), refuses unknown keys, wrong types and
out-of-range values with [`ConfigError`][iresnet.errors.ConfigError] before any work starts,
and takes command-line overrides such as ``model.coeff=0.8`` or ``coeff=0.8``.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..datasets import check_dataset_options
from ..datasets.conditional import CONDITIONAL_TOYS
from ..errors import ConfigError, DataError
from .distributed import parse_device
from .words import count

__all__ = [
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "Config",
    "SECTIONS",
    "differing_settings",
    "key_section",
]

MODEL_KINDS = ("toy", "iresnet-image", "resflow-image", "classifier", "hybrid")
LOGDETS = ("exact", "series", "roulette", "roulette-auto", "stratified", "stratified-auto")
AUTO_LOGDETS = ("roulette-auto", "stratified-auto")  # the law chosen from the design bound
ACTIVATIONS = ("lipswish", "elu", "clipswish", "cpila")
BRANCHES = ("plain", "dense")
BLOCKS = ("residual", "monotone")


@dataclass
class ModelConfig:
    """The network. ``kind`` picks the family; fields a family does not use are ignored by it.

    Attributes:
        kind: ``toy`` (MLP flow on vectors), ``iresnet-image`` / ``resflow-image`` (multi-scale
            image flows), ``classifier`` (i-ResNet classifier), ``hybrid`` (density + classifier).
        coeff: Lipschitz coefficient ``c`` of every spectrally normalised layer, in (0, 1].
        constrained: False builds the same architecture without spectral normalisation
            (the paper's "vanilla" model; no inverse is guaranteed).
        lipschitz_norm: how constrained layers are bounded: ``spectral`` (power iteration, the
            default), ``certified`` (a provable bound of every layer's norm, so the applied map
            is within ``coeff`` by construction; dearer per step), ``frobenius`` (cheaper,
            looser ``||W||_F``) or ``penalty`` (no hard bound; the loss adds
            ``train.spectral_penalty * sum ||W||_2^2``, the spectral norm regulariser of
            Yoshida & Miyato, arXiv:1705.10941; the certificate then reports honestly whether
            the trained model is invertible).
        n_blocks: residual blocks (toy: in total; images: per scale).
        hidden: hidden width (units for MLPs, channels for convolutions).
        n_layers: linear/conv layers inside each residual branch ``g`` (>= 2).
        activation: ``lipswish``, ``elu``, ``clipswish`` (concatenated LipSwish of
            i-DenseNet: twice the width out, 1-Lipschitz) or ``cpila`` (concatenated Pila of
            Monotone Flows: twice the width out, 1-Lipschitz).
        lipswish_beta: initial LipSwish ``beta``; a sharper activation (larger ``beta``) lets
            small pre-activations bend, which helps narrow 2-D models leave the Gaussian plateau.
        actnorm: ActNorm before every block.
        n_power_iterations: power-iteration steps per training call.
        logdet: ``exact``, ``series`` (i-ResNet power series), ``roulette`` (Residual Flows) or
            ``roulette-auto`` (flows and the hybrid: the roulette with ``p`` and ``n_exact``
            chosen from each block's design bound so its variance is finite; ``roulette_p`` and
            ``n_exact`` then stay at their defaults: another value is refused, since it would
            not be used) or ``stratified`` (the roulette with its first
            ``head_terms`` terms averaged over ``head_probes`` probes: lower variance per
            vector-Jacobian product; ``n_probes`` probes continue into the tail) or
            ``stratified-auto`` (the same with its tail's ``p`` and ``n_exact`` chosen as
            ``roulette-auto`` chooses them: finite variance; ``roulette_p`` and ``n_exact`` as
            for ``roulette-auto``).
        n_terms: series terms; n_exact: roulette's always-computed terms; roulette_p: geometric p.
        n_probes: Hutchinson probes per log-det call; probe: the Hutchinson probes'
            distribution
            (``gaussian`` or ``rademacher``).
        neumann_gradient: the series' gradient from the Neumann series (Residual Flows
            eq. (8)) instead of backpropagating its terms; memory_efficient: the log-det's
            gradient taken during the forward pass (Residual Flows sec. 3.2), so its graph is
            not stored.
        inverse_atol: the fixed-point inverse stops when
            ``max|x_{k+1} - x_k| <= atol + rtol * max|x_k|``; inverse_rtol: the inverse's
            relative tolerance (``rtol`` there); inverse_max_iter: the inverse's
            iteration cap; anderson: memory of Anderson
            acceleration (0: plain Banach iteration).
        n_scales: image flows: scales (squeeze between them); factor_out: split off half the
            channels after each scale; base: image flows' latent distribution, ``standard``
            ``N(0, I)`` or ``diagonal`` (Glow's learned per-dimension mean and scale,
            [`DiagonalNormal`][iresnet.flows.flow.DiagonalNormal]); fc_blocks: fully connected
            blocks at the end; fc_hidden: their width.
        n_classes: classifier / hybrid heads.
        init_squeeze: squeeze the input once (``(C, H, W) -> (4C, H/2, W/2)``) before anything
            else (classifiers: before the padding), the i-ResNet code's ``init_ds=2``; makes
            the first stage four times cheaper on 28x28 images. Image flows of the i-ResNet
            kind squeeze first anyway where there is room.
        head_terms: the ``stratified`` log-det's head terms; head_probes: the probes
            averaged over in those terms.
        dequantization: image flows: ``uniform`` or ``variational`` (Flow++: a conditional
            flow ``q(v | x)`` over the dequantisation noise, trained jointly; the bits/dim are
            then the ELBO's upper bound, and the final evaluation reports the same model's
            uniform bound beside them); dequant_hidden: the width of ``q``'s networks;
            dequant_steps: ``q``'s coupling steps.
        branch: toy and image flows: ``plain`` (the MLP / CNN branch) or ``dense``
            (i-DenseNet's dense branch: ``dense_depth`` dense layers adding ``dense_growth``
            features each, concatenation weights of norm ``dense_coeff``; ``hidden`` and
            ``n_layers`` then set only the fc blocks).
        dense_depth: dense branches: dense layers per branch.
        dense_growth: dense branches: features (channels) each dense layer adds.
        dense_coeff: dense branches: ``sqrt(eta_1^2 + eta_2^2)`` of every dense layer, in
            ``(0, 1]``.
        block: toy and image flows: ``residual`` (``x + g(x)``) or ``monotone`` (Monotone
            Flows' ``2 (Id + g)^{-1} - Id`` on the same branch, arXiv:2210.08176: forward and
            inverse each ``(1 + L)/(1 - L)``-Lipschitz; every forward runs a fixed-point solve
            with the inverse settings).
        head_pool: classifiers: the head average-pools the features to a ``head_pool x
            head_pool`` grid before its linear layer (1: global average pooling, the paper's).
    """

    kind: str = "toy"
    coeff: float = 0.9
    constrained: bool = True
    lipschitz_norm: str = "spectral"
    n_blocks: int = 8
    hidden: int = 128
    n_layers: int = 3
    activation: str = "lipswish"
    lipswish_beta: float = 1.0
    actnorm: bool = True
    n_power_iterations: int = 1
    logdet: str = "exact"
    n_terms: int = 5
    n_exact: int = 2
    roulette_p: float = 0.5
    n_probes: int = 1
    probe: str = "gaussian"
    neumann_gradient: bool = False
    memory_efficient: bool = False
    inverse_atol: float = 1e-6
    inverse_rtol: float = 1e-6
    inverse_max_iter: int = 200
    anderson: int = 0
    n_scales: int = 2
    factor_out: bool = False
    base: str = "standard"
    fc_blocks: int = 0
    fc_hidden: int = 64
    n_classes: int = 10
    init_squeeze: bool = False
    head_pool: int = 1
    branch: str = "plain"
    dense_depth: int = 3
    dense_growth: int = 32
    dense_coeff: float = 0.98
    block: str = "residual"
    head_terms: int = 1
    head_probes: int = 4
    dequantization: str = "uniform"
    dequant_hidden: int = 32
    dequant_steps: int = 4

    def size(self) -> str:
        """The network's size in words, as the CLI's summary and the benchmarks print it:
        ``"8 blocks x 64 units"`` (toy), ``"2 scales x 3 blocks x 32 channels, 8 fc blocks x
        128"`` (image; a dense branch's depth and growth in place of the channels)."""
        if self.branch == "dense":
            width = f"dense depth {self.dense_depth} x growth {self.dense_growth}"
        else:
            width = count(self.hidden, "unit" if self.kind == "toy" else "channel")
        blocks = count(self.n_blocks, "block")
        if self.kind == "toy":
            return f"{blocks} x {width}"
        fc = f", {count(self.fc_blocks, 'fc block')} x {self.fc_hidden}" if self.fc_blocks else ""
        return f"{count(self.n_scales, 'scale')} x {blocks} x {width}{fc}"

    def validate(self) -> None:
        """Raise [`ConfigError`][iresnet.errors.ConfigError] on an out-of-range or unknown value."""
        _choice("model.kind", self.kind, MODEL_KINDS)
        _choice("model.logdet", self.logdet, LOGDETS)
        _choice("model.activation", self.activation, ACTIVATIONS)
        _choice("model.branch", self.branch, BRANCHES)
        _choice("model.block", self.block, BLOCKS)
        if self.block == "monotone" and self.kind in ("classifier", "hybrid"):
            raise ConfigError(
                f"model.block=monotone is for the flows (toy, iresnet-image, resflow-image), "
                f"not model.kind={self.kind}; use model.block=residual"
            )
        if self.branch == "dense" and self.kind in ("classifier", "hybrid"):
            raise ConfigError(
                f"model.branch=dense is for the flows (toy, iresnet-image, resflow-image), not "
                f"model.kind={self.kind}, whose blocks are plain: use model.branch=plain"
            )
        _choice("model.dequantization", self.dequantization, ("uniform", "variational"))
        if self.dequantization == "variational" and self.kind in ("toy", "classifier"):
            raise ConfigError(
                f"model.dequantization=variational needs an image density model (resflow-image, "
                f"iresnet-image, hybrid), not model.kind={self.kind}"
            )
        _choice("model.base", self.base, ("standard", "diagonal"))
        if self.base == "diagonal" and self.kind not in ("iresnet-image", "resflow-image"):
            raise ConfigError(
                f"model.base=diagonal is for the image flows (resflow-image, iresnet-image), "
                f"not model.kind={self.kind}; use model.base=standard"
            )
        _choice("model.probe", self.probe, ("gaussian", "rademacher"))
        _choice(
            "model.lipschitz_norm",
            self.lipschitz_norm,
            ("spectral", "certified", "frobenius", "penalty"),
        )
        if not 0.0 < self.coeff <= 1.0:
            raise ConfigError(f"model.coeff must lie in (0, 1], got {self.coeff}")
        if not 0.0 < self.dense_coeff <= 1.0:
            raise ConfigError(f"model.dense_coeff must lie in (0, 1], got {self.dense_coeff}")
        if self.logdet in AUTO_LOGDETS and self.kind == "classifier":
            raise ConfigError(
                f"model.logdet={self.logdet} is for models with a log-det (the flows and the "
                "hybrid); a classifier computes none"
            )
        if self.logdet in AUTO_LOGDETS:
            # The automatic law chooses p and n_exact per block: a law set beside it would be
            # dropped without a word. "Set" is told by the value: the field's default is what
            # every preset and saved config holds, so only another value is refused.
            defaults = {f.name: f.default for f in fields(ModelConfig)}
            given = [
                f"model.{key}={getattr(self, key)}"
                for key in ("roulette_p", "n_exact")
                if getattr(self, key) != defaults[key]
            ]
            if given:
                raise ConfigError(
                    f"model.logdet={self.logdet} chooses model.roulette_p and model.n_exact from "
                    f"the blocks' bound, got {' and '.join(given)}: drop them, or use "
                    f"model.logdet={self.logdet.removesuffix('-auto')} to set the law yourself"
                )
        # the automatic law's n_exact is at least 2, whatever model.n_exact says
        sure, named = (
            (2, "2 (the least n_exact it chooses)")
            if self.logdet == "stratified-auto"
            else (self.n_exact, "model.n_exact")
        )
        if self.logdet in ("stratified", "stratified-auto") and not (
            self.head_terms <= sure and self.head_probes >= self.n_probes
        ):
            raise ConfigError(
                f"model.logdet={self.logdet} needs model.head_terms <= {named} and "
                "model.head_probes >= model.n_probes"
            )
        doubling = self.activation in ("clipswish", "cpila")
        if self.branch == "dense" and doubling and self.dense_growth % 2:
            raise ConfigError(
                f"model.dense_growth must be even with {self.activation}, got {self.dense_growth}"
            )
        if not 0.0 < self.roulette_p < 1.0:
            raise ConfigError(f"model.roulette_p must lie in (0, 1), got {self.roulette_p}")
        for name in (
            "n_blocks",
            "hidden",
            "n_power_iterations",
            "n_terms",
            "n_exact",
            "n_probes",
            "inverse_max_iter",
            "n_scales",
            "fc_hidden",
            "n_classes",
            "head_pool",
            "dense_depth",
            "dense_growth",
            "head_terms",
            "head_probes",
            "dequant_hidden",
        ):
            _positive(f"model.{name}", getattr(self, name))
        _at_least("model.n_layers", self.n_layers, 2)
        _at_least("model.anderson", self.anderson, 0)
        _at_least("model.fc_blocks", self.fc_blocks, 0)
        _at_least("model.dequant_steps", self.dequant_steps, 0)
        if not self.inverse_atol > 0 or self.inverse_rtol < 0:
            raise ConfigError("model.inverse_atol must be positive and model.inverse_rtol >= 0")
        if not self.lipswish_beta > 0:
            raise ConfigError(f"model.lipswish_beta must be positive, got {self.lipswish_beta}")
        if self.logdet in AUTO_LOGDETS and self.coeff >= 1.0:
            raise ConfigError(
                f"model.logdet={self.logdet} chooses its law from a block bound below 1: "
                f"use model.coeff < 1, got {self.coeff}"
            )
        if self.logdet in AUTO_LOGDETS and (
            not self.constrained or self.lipschitz_norm == "penalty"
        ):
            why = "model.constrained=false" if not self.constrained else "lipschitz_norm=penalty"
            raise ConfigError(
                f"model.logdet={self.logdet} chooses its law from the blocks' design bound, "
                f"which {why} does not give: use model.logdet=roulette (a fixed law) or a "
                "bounded norm (spectral, certified, frobenius)"
            )
        if self.block == "monotone" and self.coeff >= 1.0:
            raise ConfigError(
                "model.block=monotone needs model.coeff < 1: at Lip(g) = 1 its bi-Lipschitz "
                "bound (1 + c)/(1 - c) is infinite and the solves may not converge; "
                f"got {self.coeff}"
            )


@dataclass
class DataConfig:
    """The data.

    Attributes:
        name: a toy density (``8gaussians``, ``checkerboard``, ...), a conditional toy
            (``rotated-8gaussians``, ``moving-gaussian``), ``array`` (with ``path``), or an
            image set (``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``png``).
        path: ``.npy``/``.csv`` file for ``array``.
        context_path: ``array``: a ``.npy``/``.csv`` file of contexts ``(N, k)``, row ``i`` the
            context of data row ``i``; the flow then models ``p(x | c)`` (contexts are
            standardised like the data).
        class_context: image sets: the class label is the context (a class-conditional flow).
        data_dir: folder of an image set's standard files.
        n_train: toy training sample size (fixed-seed split); n_test: toy test sample size.
        test_fraction: held-out share of a user array.
        logit_alpha: image flows: logit transform ``logit(a + (1-2a) u)``; 0 disables it.
        seed: seed of the toy split / array split (independent of the training seed).
        dequantize: user arrays with discrete columns (few distinct values): ``refuse``,
            ``uniform`` (uniform noise over each value's cell; the NLL then bounds the
            discrete NLL) or ``off`` (fit them as they are).
        index_column: a CSV whose first column is an unnamed row index (pandas' ``to_csv()``):
            ``refuse``, ``drop`` or ``keep`` (model it as a feature).
        train_subset: image sets: train on a random subset of this many training images
            (drawn with ``data.seed``); the test split stays whole. 0: all of them.
        max_dim: user arrays: the most columns accepted (64), in the data and in the contexts
            (``context_path``). Above 64 dimensions the
            periodic and final evaluations score with the roulette instead of exact log-dets,
            and above 256 the toy family cannot train exact log-dets (``model.logdet=roulette``).
    """

    name: str = "8gaussians"
    path: str | None = None
    context_path: str | None = None
    class_context: bool = False
    data_dir: str | None = None
    n_train: int = 50_000
    n_test: int = 20_000
    test_fraction: float = 0.2
    logit_alpha: float = 0.05
    seed: int = 0
    dequantize: str = "refuse"
    index_column: str = "refuse"
    train_subset: int = 0
    max_dim: int = 64

    def validate(self) -> None:
        _at_least("data.n_train", self.n_train, 2)
        _at_least("data.max_dim", self.max_dim, 1)
        if self.train_subset != 0 and self.train_subset < 2:  # --help: "0: all of them"
            raise ConfigError(f"data.train_subset must be 0 (all) or >= 2, got {self.train_subset}")
        check_seed("data.seed", self.seed)
        _choice("data.dequantize", self.dequantize, ("refuse", "uniform", "off"))
        _choice("data.index_column", self.index_column, ("refuse", "drop", "keep"))
        _at_least("data.n_test", self.n_test, 2)  # a test NLL needs a standard error
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.logit_alpha < 0.5:
            raise ConfigError(f"data.logit_alpha must lie in [0, 0.5), got {self.logit_alpha}")
        if self.name == "array" and not self.path:
            raise ConfigError(
                "data.name=array needs data.path, the array file (`iresnet train --data FILE` "
                "sets it)"
            )
        if self.context_path and self.name != "array":
            raise ConfigError(
                "data.context_path (--context) pairs contexts with your own data: pass --data FILE"
            )
        try:  # before anything is printed or read
            check_dataset_options(self.name)
        except DataError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class TrainConfig:
    """The optimisation and the run's bookkeeping.

    Attributes:
        steps: optimiser steps; batch_size: global batch (split across DDP ranks).
        max_seconds: wall-clock budget of training (0: none); the run stops, evaluated and
            saved, at the first step past it (for equal-time comparisons).
        max_cpu_seconds: CPU-time budget of the training process (all its threads, and the
            compiler runs of ``train.compile``; 0: none),
            checked like ``max_seconds``. On a shared machine, wall-clock depends on the other
            processes; CPU time does not, so it makes equal-budget comparisons fair.
        optimizer: ``adam``, ``adamw`` (Adam with decoupled weight decay, Loshchilov & Hutter)
            or ``sgd`` (momentum 0.9).
        lr: peak learning rate.
        weight_decay: coupled L2 for ``adam``/``sgd``, decoupled for ``adamw``.
        warmup_steps: linear warm-up of the learning rate from ``lr / warmup_steps``.
        lr_schedule: ``constant`` (after warm-up), ``cosine`` (decay to 0 at ``steps``) or
            ``cosine-budget`` (a cosine over the larger of the share of ``steps`` done and the
            share of the time budget spent, ``max_cpu_seconds`` if set, else ``max_seconds``:
            the decay ends when the budget does, however fast the machine runs; the learning
            rate then depends on the clock, so runs are not step-for-step reproducible; one
            process only).
        cycle_start: the step where the current cosine cycle began: 0, or where ``--resume RUN
            --steps N`` extended the run (a warm restart: the extension decays from ``lr`` at
            ``cycle_start`` to 0 at the new ``steps``; Loshchilov & Hutter, arXiv:1608.03983).
            Set by the command; a constant schedule ignores it.
        grad_clip: max gradient norm (0 disables clipping).
        ema_decay: decay of the EMA weights used for evaluation (0 disables EMA).
        eval_every: steps between test evaluations; log_every: steps between logged
            training rows; checkpoint_every: steps between checkpoints; keep_last: checkpoints
            kept.
        eval_batches: test batches per periodic evaluation (``iresnet evaluate`` uses all).
        max_bad_steps: stop after this many consecutive steps with NaN/Inf loss or gradient.
        seed: training seed (initialisation, batches, probes); device: ``cpu``, ``cuda``, ...
        threads: CPU threads of PyTorch (0: its default). Small models gain little from more
            threads and lose much when cores are shared, so the toy presets use 1.
        density_weight: hybrid models: weight of the density term in the loss.
        spectral_penalty: ``lambda`` of the penalty ``lambda * sum ||W||_2^2`` (Yoshida &
            Miyato, arXiv:1705.10941), added to the loss of layers with a power-iteration
            estimate.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast for the residual branches.
        compile: run the training loss through ``torch.compile`` (a minute or more of
            compilation first; pays on long runs, see docs/benchmarks.md).
        compile_scope: what ``train.compile=true`` compiles: ``step``, the whole training loss
            as one graph (``iresnet.compile_after_first_call``), or ``blocks``, each residual
            block's training forward, one graph shared by the blocks of the same shape
            (``iresnet.compile_blocks``): seconds of compilation instead of minutes for deep
            flows (the 32-block toys), with the flow's input checks kept.
        augment: classifiers: random translations by up to ``H // 8`` pixels (zero fill) and,
            for colour images, random horizontal flips of every training batch.
    """

    steps: int = 2000
    max_seconds: float = 0.0
    max_cpu_seconds: float = 0.0
    batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    cycle_start: int = 0
    grad_clip: float = 10.0
    ema_decay: float = 0.995
    eval_every: int = 500
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 2
    eval_batches: int = 10
    max_bad_steps: int = 20
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    density_weight: float = 1.0
    spectral_penalty: float = 0.0
    precision: str = "fp32"
    augment: bool = False
    compile: bool = False
    compile_scope: str = "step"

    def validate(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "eval_every",
            "log_every",
            "checkpoint_every",
            "keep_last",
            "eval_batches",
            "max_bad_steps",
        ):
            _positive(f"train.{name}", getattr(self, name))
        check_seed("train.seed", self.seed)
        parse_device(self.device)
        _choice("train.optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        _choice("train.lr_schedule", self.lr_schedule, ("constant", "cosine", "cosine-budget"))
        _choice("train.precision", self.precision, ("fp32", "bf16", "fp16"))
        _choice("train.compile_scope", self.compile_scope, ("step", "blocks"))
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        _at_least("train.warmup_steps", self.warmup_steps, 0)
        if not 0 <= self.cycle_start < self.steps:
            raise ConfigError(
                f"train.cycle_start must lie in [0, train.steps={self.steps}), "
                f"got {self.cycle_start}"
            )
        _at_least("train.threads", self.threads, 0)
        for name in ("max_seconds", "max_cpu_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr_schedule == "cosine-budget" and not (
            self.max_cpu_seconds > 0 or self.max_seconds > 0
        ):
            raise ConfigError(
                "train.lr_schedule=cosine-budget decays over the time budget: set "
                "train.max_cpu_seconds or train.max_seconds (or use lr_schedule=cosine)"
            )
        if self.spectral_penalty < 0:
            raise ConfigError(f"train.spectral_penalty must be >= 0, got {self.spectral_penalty}")
        for key in ("weight_decay", "grad_clip", "density_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@dataclass
class Config:
    """The whole configuration of a run; ``preset`` names where it started from."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "custom"

    def validate(self) -> Config:
        """Validate every section and their combination; return ``self``.

        Raises:
            ConfigError: the first problem found, naming the key.
        """
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.train.augment and self.model.kind not in ("classifier", "hybrid"):
            raise ConfigError(
                "train.augment moves images for classifiers and hybrids; a density model "
                f"(model.kind={self.model.kind}) would learn the moved images: set it to false"
            )
        conditional = bool(
            self.data.context_path or self.data.class_context or self.data.name in CONDITIONAL_TOYS
        )
        if conditional and self.model.branch == "dense":
            raise ConfigError(
                "model.branch=dense has no conditional form yet, and this data set comes with "
                "contexts: use model.branch=plain"
            )
        if self.train.compile and self.model.block == "monotone":
            # Its inverse's implicit gradient calls autograd inside the backward pass (a hook),
            # which a compiled backward does not run: a traceback at the first step.
            raise ConfigError(
                "train.compile=true cannot compile model.block=monotone (its inverse's implicit "
                "gradient calls autograd in the backward pass); set train.compile=false (the "
                "toy-checkerboard and toy-2spirals presets turn it on)"
            )
        density = self.train.compile and self.model.kind != "classifier"
        if density and conditional:
            # The context branch's Jacobian products go through autograd (no forward-mode or
            # closed form): compiled, that is a double backward, whatever the log-det.
            raise ConfigError(
                "train.compile=true cannot compile a conditional flow yet (its branch's "
                "Jacobian goes through autograd: a double backward, which torch.compile does "
                "not trace); set train.compile=false (the toy-checkerboard and toy-2spirals "
                "presets turn it on)"
            )
        if density and self.model.logdet != "none" and self.train.precision != "fp32":
            # Under autocast the branch is wrapped (``set_branch_precision``), and its Jacobian
            # products go through autograd: compiled, that is a double backward.
            raise ConfigError(
                f"train.compile=true cannot compile train.precision={self.train.precision} with "
                "a log-det yet (the autocast branch's Jacobian goes through autograd: a double "
                "backward, which torch.compile does not trace); use train.precision=fp32 or "
                "train.compile=false"
            )
        lacking = [
            name
            for name, lacks in (
                (f"model.activation={self.model.activation}", self.model.activation
                 in ("clipswish", "cpila")),
                ("model.branch=dense", self.model.branch == "dense"),
            )
            if lacks
        ]  # fmt: skip
        if density and self.model.logdet not in ("exact", "none") and lacking:
            raise ConfigError(
                f"train.compile=true with model.logdet={self.model.logdet} needs the branch's "
                f"Jacobian products in closed form, which {' and '.join(lacking)} lacks (a "
                "double backward under torch.compile): use model.activation=lipswish or elu "
                "and model.branch=plain, or model.logdet=exact"
            )
        if (
            self.train.compile
            and self.model.kind != "classifier"  # no log-det to differentiate
            and self.model.logdet != "exact"
            and not self.model.neumann_gradient
        ):
            # The series' own gradient is a double backward, which AOTAutograd does not trace.
            raise ConfigError(
                f"train.compile=true with model.logdet={self.model.logdet} needs "
                "model.neumann_gradient=true (torch.compile has no double backward), or use "
                "model.logdet=exact"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (what ``config.json`` holds)."""
        return asdict(self)

    def to_json(self) -> str:
        """The config as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build and validate from a dict; unknown sections or keys and wrong types are refused."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {*SECTIONS, "preset"}
        if unknown:
            noun = "section" if len(unknown) == 1 else "sections"
            raise ConfigError(f"unknown config {noun} {sorted(unknown)}; known: {sorted(SECTIONS)}")
        parts = {}
        for name, section_cls in SECTIONS.items():
            raw = d.get(name, {})
            if not isinstance(raw, dict):
                raise ConfigError(
                    f"config section '{name}' must be an object, got {type(raw).__name__}"
                )
            known = {f.name: f for f in fields(section_cls)}
            bad = set(raw) - set(known)
            if bad:
                noun = "key" if len(bad) == 1 else "keys"
                raise ConfigError(
                    f"unknown {noun} {sorted(bad)} in section '{name}'; known: {sorted(known)}"
                )
            hints = typing.get_type_hints(section_cls)
            parts[name] = section_cls(
                **{k: _check_type(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
            )
        preset = d.get("preset", "custom")
        if not isinstance(preset, str):
            raise ConfigError("config key 'preset' must be a string")
        return cls(preset=preset, **parts).validate()

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` (or ``key=value`` where the key is unique) overrides, in
        order: a key given twice takes its last value (see ``repeated_keys``).

        Raises:
            ConfigError: a malformed assignment, an unknown or ambiguous key, a bad value, or
                a config that does not validate.
        """
        d = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(
                    f"override '{item}' is not of the form key=value (e.g. model.coeff=0.8)"
                )
            key, text = item.split("=", 1)
            section, name = _resolve_key(key.strip())
            hint = typing.get_type_hints(SECTIONS[section])[name]
            d[section][name] = _parse_value(f"{section}.{name}", text.strip(), hint)
        return Config.from_dict(d)


def repeated_keys(assignments: list[str]) -> list[str]:
    """Notes on keys given more than once with different values among ``KEY=VALUE``
    overrides (in any spelling: ``hidden=16 model.hidden=32``), which ``Config.override``
    resolves to the last value: it did so silently (try-out 10, F12). Layering on purpose (a
    list of defaults, then a change) stays allowed; the CLI says which value it used.
    Malformed items are left to ``Config.override`` to name.

    Raises:
        ConfigError: an unknown or ambiguous key.
    """
    given: dict[tuple[str, str], list[str]] = {}
    for item in assignments:
        key, eq, text = item.partition("=")
        if eq:
            given.setdefault(_resolve_key(key.strip()), []).append(text.strip())
    return [
        f"{'.'.join(where)} is given {len(values)} times ({', '.join(values)}): "
        f"the last, {values[-1]}, is used"
        for where, values in given.items()
        if len(set(values)) > 1
    ]


#: Data settings that name where the data lies, not what it is.
PATH_KEYS = frozenset({"data_dir", "path", "context_path"})


def differing_settings(a: Config, b: Config) -> list[tuple[str, Any, Any]]:
    """``(key, a's value, b's value)`` for every model and data setting in which two configs
    differ, paths aside (a moved data folder is the same data): what makes weights or numbers
    of one config not those of the other."""
    out = []
    for section in ("model", "data"):
        sa, sb = getattr(a, section), getattr(b, section)
        for f in fields(sa):
            va, vb = getattr(sa, f.name), getattr(sb, f.name)
            if f.name not in PATH_KEYS and va != vb:
                out.append((f"{section}.{f.name}", va, vb))
    return out


def key_section(key: str) -> str:
    """The section (``model``, ``data``, ``train``) of a config key, written in full
    (``data.logit_alpha``) or short (``logit_alpha``).

    Raises:
        ConfigError: an unknown or ambiguous key.
    """
    return _resolve_key(key)[0]


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section '{section}' in '{key}'{_near_miss(key)}; known: "
                f"{sorted(SECTIONS)}"
            )
        if name not in {f.name for f in fields(SECTIONS[section])}:
            hint = _near_miss(key) or " (see `iresnet train --help` for the keys)"
            raise ConfigError(f"unknown config key '{key}'{hint}")
        return section, name
    owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
    if not owners:
        raise ConfigError(
            f"unknown config key '{key}'{_near_miss(key)} (see `iresnet train --help` for the keys)"
        )
    if len(owners) > 1:
        raise ConfigError(
            f"config key '{key}' is ambiguous: write one of {[f'{o}.{key}' for o in owners]}"
        )
    return owners[0], key


def _near_miss(key: str) -> str:
    """``"; did you mean 'model.n_blocks'?"`` for a key close to a real one, else ``""``: the
    same name in another section first (``train.hidden`` -> ``model.hidden``), then a near
    spelling of the whole key or of its name in any section."""
    known = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]
    name = key.rsplit(".", 1)[-1]
    elsewhere = [k for k in known if k.split(".", 1)[1] == name and k != key]
    close = elsewhere or difflib.get_close_matches(key, known, n=1, cutoff=0.8)
    if not close:
        names = {k.split(".", 1)[1]: k for k in known}
        near = difflib.get_close_matches(name, list(names), n=1, cutoff=0.8)
        close = [names[near[0]] if "." in key else near[0]] if near else []
    return f"; did you mean '{close[0]}'?" if close else ""


def _base_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_args(hint))
    return (hint,)


def _check_type(name: str, value: Any, hint: Any) -> Any:
    allowed = _base_types(hint)
    if value is None and type(None) in allowed:
        return None
    if bool in allowed:
        if isinstance(value, bool):
            return value
    elif int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        return float(value)
    elif str in allowed and isinstance(value, str):
        return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{name} must be {names}, got {value!r} ({type(value).__name__})")


def _parse_value(name: str, text: str, hint: Any) -> Any:
    allowed = _base_types(hint)
    if text.lower() in ("none", "null") and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
        elif t is int:
            try:
                return int(text)
            except ValueError:
                pass
        elif t is float:
            try:
                return float(text)
            except ValueError:
                pass
        elif t is str:
            return text
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"{name} must be {names}, got '{text}'")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {list(options)}, got '{value}'")


#: Seeds are taken by torch and numpy as 63-bit non-negative integers.
SEED_LIMIT = 2**63


def check_seed(name: str, value: int) -> None:
    """Refuse a seed outside ``[0, 2**63)`` in one line (torch would overflow, numpy refuse
    negatives)."""
    if not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer in [0, 2**63), got {value}")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some fields of some sections replaced (used by the presets)."""
    d = cfg.to_dict()
    for section, values in sections.items():
        d[section].update(values)
    return Config.from_dict(d)
