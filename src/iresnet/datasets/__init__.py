"""Data: toy 2-D densities, user arrays and image sets, all read or generated locally.

[`load_dataset`][iresnet.datasets.load_dataset] returns a
[`DataBundle`][iresnet.datasets.DataBundle], the one object the application's training loop and
evaluation read. Nothing is downloaded: missing files raise
[`DataError`][iresnet.errors.DataError] naming what was expected and where to get it.

Examples:
    >>> from iresnet import datasets
    >>> bundle = datasets.load_dataset("8gaussians", n_train=100, n_test=50)
    >>> bundle.kind, tuple(bundle.train_x.shape), bundle.event_shape
    ('vector', (100, 2), (2,))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import DataError
from .arrays import Standardizer, load_array, split_array
from .conditional import (
    CONDITIONAL_TOYS,
    conditional_log_density,
    conditional_toy_split,
    kl_contexts,
    sample_conditional,
)
from .images import DATASET_NAMES, load_image_dataset
from .toy import TOY_DATASETS, toy_log_density, toy_split, true_entropy

__all__ = [
    "CONDITIONAL_TOYS",
    "DataBundle",
    "IMAGE_DATASETS",
    "Standardizer",
    "TOY_DATASETS",
    "load_dataset",
]

IMAGE_DATASETS = tuple(DATASET_NAMES)
"""Image set names [`load_dataset`][iresnet.datasets.load_dataset] accepts."""


@dataclass
class DataBundle:
    """Train and test tensors and what is known about them.

    Attributes:
        name: the data set's name (a user array: its path).
        kind: ``"vector"`` (``(N, d)`` floats in the data's own units; user arrays in float64)
            or ``"image"`` (``(N, C, H, W)`` uint8 levels).
        train_x: the training data.
        test_x: the test data.
        train_y: training labels ``(N,)`` (images) or None.
        test_y: test labels (images) or None.
        n_levels: images: quantisation levels ``K``.
        standardizer: user arrays: per-column statistics of the training split, for a model
            that standardises its input
            ([`Standardize`][iresnet.transforms.preprocess.Standardize]).
        true_log_density: toy densities with a closed form: ``log p(x)`` in nats, ``(M, 2)`` to
            ``(M,)``.
        train_c: conditional data: the training contexts ``(N, k)`` (rows paired with
            ``train_x``), or None.
        test_c: the test contexts, or None.
        context_standardizer: user contexts: per-column statistics of the training contexts,
            for a flow that standardises its contexts.
        true_conditional_log_density: conditional toys: ``log p(x | c)`` in nats,
            ``(M, 2), (M, 1) -> (M,)``.
        sample_given: conditional toys: one draw of ``x | c`` per context row,
            ``(M, 1), generator -> (M, 2)``.
        report_contexts: conditional toys: the contexts ``(m, k)`` at which the gap to the truth
            is reported one by one.
        class_context: images: the class label is the context (one-hot, ``n_classes`` wide).

    Examples:
        >>> bundle = DataBundle("mine", "vector", torch.zeros(8, 3), torch.zeros(2, 3))
        >>> bundle.event_shape, bundle.true_entropy() is None
        ((3,), True)
    """

    name: str
    kind: str
    train_x: Tensor
    test_x: Tensor
    train_y: Tensor | None = None
    test_y: Tensor | None = None
    n_levels: int | None = None
    standardizer: Standardizer | None = None
    true_log_density: Callable[[Tensor], Tensor] | None = None
    train_c: Tensor | None = None
    test_c: Tensor | None = None
    context_standardizer: Standardizer | None = None
    true_conditional_log_density: Callable[[Tensor, Tensor], Tensor] | None = None
    sample_given: Callable[[Tensor, torch.Generator], Tensor] | None = None
    report_contexts: Tensor | None = None
    class_context: bool = False

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one sample, ``train_x.shape[1:]``."""
        return tuple(self.train_x.shape[1:])

    @property
    def n_classes(self) -> int:
        """Images with labels: the number of classes (largest label + 1); else 0."""
        if self.train_y is None:
            return 0
        top = int(self.train_y.max())
        if self.test_y is not None and self.test_y.numel():
            top = max(top, int(self.test_y.max()))
        return top + 1

    @property
    def context_dim(self) -> int:
        """The context size ``k`` of conditional data (0: unconditional)."""
        if self.class_context:
            return self.n_classes
        return 0 if self.train_c is None else int(self.train_c.shape[1])

    def true_entropy(self) -> tuple[float, float] | None:
        """Monte Carlo entropy of the true density in nats with its standard error, where known.

        See [`true_entropy`][iresnet.datasets.toy.true_entropy]; None without a closed form.
        """
        return true_entropy(self.name) if self.true_log_density is not None else None


def load_dataset(
    name: str,
    *,
    path: str | None = None,
    data_dir: str | None = None,
    n_train: int = 50_000,
    n_test: int = 20_000,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardizer: Standardizer | None = None,
    context_path: str | None = None,
    context_standardizer: Standardizer | None = None,
    class_context: bool = False,
) -> DataBundle:
    """Load or generate a data set.

    Args:
        name: a toy density (one of [`TOY_DATASETS`][iresnet.datasets.toy.TOY_DATASETS]), a
            conditional toy (one of
            [`CONDITIONAL_TOYS`][iresnet.datasets.conditional.CONDITIONAL_TOYS]), ``"array"``
            (with ``path``) or an image set (one of
            [`IMAGE_DATASETS`][iresnet.datasets.IMAGE_DATASETS]).
        path: a ``.npy`` / ``.csv`` file of shape ``(N, d)`` for ``"array"``.
        data_dir: the folder of an image set's standard files.
        n_train: toy training sample size (drawn with ``seed``).
        n_test: toy test sample size.
        test_fraction: held-out share of a user array (split with ``seed``).
        seed: the seed of the toy draws and of the user-array split.
        standardizer: user arrays: reuse saved statistics (a resumed or evaluated run) instead
            of fitting them on the training split.
        context_path: ``"array"``: a ``.npy`` / ``.csv`` file of contexts ``(N, k)``, one row
            per data row (split with the same permutation).
        context_standardizer: saved statistics of the contexts (as ``standardizer``).
        class_context: image sets: the label is the context.

    Returns:
        The [`DataBundle`][iresnet.datasets.DataBundle].

    Raises:
        DataError: an unknown name, a missing or malformed file, a saved ``standardizer``
            of another width, contexts whose rows do not pair with the data's, or contexts
            asked of a data set that has none.

    Examples:
        >>> bundle = load_dataset("checkerboard", n_train=10, n_test=5, seed=1)
        >>> x = torch.tensor([[-3.0, -3.0], [-1.0, -3.0]], dtype=torch.float64)
        >>> bundle.true_log_density(x).tolist()  # log(1/32) on the black squares
        [-3.4657359027997265, -inf]
    """
    if context_path and name != "array":
        raise DataError(
            f"contexts from a file go with your own data (--data); data set '{name}' has its own"
        )
    if class_context and name not in IMAGE_DATASETS:
        raise DataError(f"class labels as contexts need an image set, not '{name}'")
    if name in TOY_DATASETS:
        train, test = toy_split(name, n_train, n_test, seed=seed)
        return DataBundle(name, "vector", train, test, true_log_density=toy_log_density(name))
    if name in CONDITIONAL_TOYS:
        train, train_c, test, test_c = conditional_toy_split(name, n_train, n_test, seed=seed)
        cstd = context_standardizer or Standardizer.fit(train_c)
        return DataBundle(
            name,
            "vector",
            train,
            test,
            train_c=train_c,
            test_c=test_c,
            context_standardizer=cstd,
            true_conditional_log_density=conditional_log_density(name),
            sample_given=lambda c, g: sample_conditional(name, c, g),
            report_contexts=kl_contexts(name),
        )
    if name == "array":
        if not path:
            raise DataError("data set 'array' needs a path to a .npy or .csv file")
        arr = load_array(path)
        train_np, test_np = split_array(arr, test_fraction, seed)
        std = standardizer or Standardizer.fit(train_np)
        if std.dim != arr.shape[1]:
            raise DataError(f"{path}: {arr.shape[1]} columns, but the run was trained on {std.dim}")
        train = torch.as_tensor(train_np, dtype=torch.float64)
        test = torch.as_tensor(test_np, dtype=torch.float64)
        bundle = DataBundle(path, "vector", train, test, standardizer=std)
        if context_path:
            ctx = load_array(context_path)
            if ctx.shape[0] != arr.shape[0]:
                raise DataError(
                    f"{context_path}: {ctx.shape[0]} context rows but {path} has "
                    f"{arr.shape[0]} data rows; row i of the contexts goes with row i of the data"
                )
            train_c, test_c = split_array(ctx, test_fraction, seed)  # the same permutation
            cstd = context_standardizer or Standardizer.fit(train_c)
            if cstd.dim != ctx.shape[1]:
                raise DataError(
                    f"{context_path}: {ctx.shape[1]} columns, but the run was trained on {cstd.dim}"
                )
            bundle.train_c = torch.as_tensor(train_c, dtype=torch.float64)
            bundle.test_c = torch.as_tensor(test_c, dtype=torch.float64)
            bundle.context_standardizer = cstd
        return bundle
    if name in IMAGE_DATASETS:
        tr = load_image_dataset(name, "train", data_dir)
        te = load_image_dataset(name, "test", data_dir)
        bundle = DataBundle(
            name, "image", tr.images, te.images, tr.labels, te.labels, n_levels=tr.n_levels
        )
        if class_context:
            if tr.labels is None:
                raise DataError(f"{name}: no labels to use as contexts")
            bundle.class_context = True
        return bundle
    known = [*TOY_DATASETS, *CONDITIONAL_TOYS, "array", *IMAGE_DATASETS]
    raise DataError(f"unknown data set '{name}'; known: {known}")
