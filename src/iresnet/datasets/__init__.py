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

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..words import count
from .arrays import (
    Standardizer,
    check_range,
    check_spread,
    constant_columns,
    discrete_columns,
    load_array,
    note_outliers,
    split_array,
)
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
    "check_dataset_options",
    "check_train_subset",
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
        dequantize_width: user arrays with discrete columns, dequantised: the cell width per
            column (0 for continuous ones). The test split holds one fixed draw of
            ``x + width * (u - 1/2)``, ``u ~ U[0, 1)``; training batches get a fresh draw each
            step. The NLL of the dequantised data bounds the discrete NLL from above, less
            ``sum log width`` (Theis et al., arXiv:1511.01844, sec. 3.1).
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
    dequantize_width: list[float] | None = None
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


def _note_constant_contexts(train_c: np.ndarray, ctx: np.ndarray, source: str) -> None:
    """Warn of context columns without spread. Unlike a constant data column (refused: the
    likelihood grows without bound), a constant context is harmless, only useless: the flow
    is conditioned on a constant and learns nothing of how the column acts."""
    flat = constant_columns(train_c)
    if flat.size:
        j = int(flat[0])
        also = f" (and {flat.size - 1} more)" if flat.size > 1 else ""
        where = "" if j in constant_columns(ctx) else " in the training split"
        warnings.warn(
            f"{source}: context column {j + 1} is constant{where} (every value is "
            f"{train_c[0, j]:g}){also}: the model learns nothing of it, and samples or scores at "
            "other values of it are guesses; drop the column unless it varies in your data",
            UserWarning,
            stacklevel=3,
        )


def check_dataset_options(
    name: str,
    *,
    context_path: str | None = None,
    class_context: bool = False,
    data_dir: str | None = None,
    train_subset: int = 0,
) -> None:
    """Refuse, before anything is read, a data set name that
    [`load_dataset`][iresnet.datasets.load_dataset] does not know, or an option that the data
    set does not take.

    Raises:
        DataError: an unknown name; contexts from a file, class contexts, a ``data_dir`` or a
            ``train_subset`` asked of a data set that has none of them.
    """
    known = [*TOY_DATASETS, *CONDITIONAL_TOYS, "array", *IMAGE_DATASETS]
    if name not in known:
        raise DataError(f"unknown data set '{name}'; known: {known}")
    if context_path and name != "array":
        raise DataError(
            f"contexts from a file go with your own data (--data); data set '{name}' has its own"
        )
    if class_context and name not in IMAGE_DATASETS:
        raise DataError(f"class labels as contexts need an image set, not '{name}'")
    if data_dir is not None and (name not in IMAGE_DATASETS or name == "digits"):
        raise DataError(
            f"a data folder (--data-dir, data.data_dir) holds an image set's files; '{name}' "
            "reads none (digits come with scikit-learn): leave it out (your own data: --data "
            "FILE)"
        )
    if train_subset and name not in IMAGE_DATASETS:
        raise DataError(
            f"a training subset is drawn from an image set, not '{name}' (toys: data.n_train; "
            "your own data: keep the rows you want in the file)"
        )


def check_train_subset(name: str, train_subset: int, n_train: int) -> None:
    """Refuse a training subset larger than the image set ``name``'s ``n_train`` training
    images (known before loading for some sets:
    [`train_size`][iresnet.datasets.images.train_size]).

    Raises:
        DataError: ``train_subset > n_train``, with the largest subset there is.
    """
    if train_subset > n_train:
        raise DataError(
            f"data.train_subset={train_subset} exceeds the {n_train} training images of "
            f"{name}: use {n_train} or fewer (0: all)"
        )


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
    dequantize: str = "refuse",
    index_column: str = "refuse",
    context_path: str | None = None,
    context_standardizer: Standardizer | None = None,
    class_context: bool = False,
    train_subset: int = 0,
    max_dim: int = 64,
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
        dequantize: user arrays with discrete columns (few distinct values, see
            [`discrete_columns`][iresnet.datasets.arrays.discrete_columns]): ``"refuse"`` (a
            ``DataError`` naming the choices), ``"uniform"`` (uniform noise over each value's
            cell, see ``DataBundle.dequantize_width``) or ``"off"`` (fit them as they are).
        index_column: see [`load_array`][iresnet.datasets.arrays.load_array].
        context_path: ``"array"``: a ``.npy`` / ``.csv`` file of contexts ``(N, k)``, one row
            per data row (split with the same permutation).
        context_standardizer: saved statistics of the contexts (as ``standardizer``).
        class_context: image sets: the label is the context.
        train_subset: image sets: train on a random subset of this many training images
            (drawn with ``seed``, labels kept with their images); the test split is unchanged.
            0: all of them.
        max_dim: ``"array"``: the most columns accepted in the data and in the contexts (a
            ``DataError`` above; see [`load_array`][iresnet.datasets.arrays.load_array]).

    Returns:
        The [`DataBundle`][iresnet.datasets.DataBundle].

    Raises:
        DataError: an unknown name, a missing or malformed file, a saved ``standardizer``
            of another width, a constant column, discrete columns with
            ``dequantize="refuse"``, an unnamed index column with ``index_column="refuse"``,
            contexts whose rows do not pair with the data's, contexts asked of a data set
            that has none, a user array that splits into fewer than 2 training or 2 test rows,
            a ``train_subset`` of a data set that is not an image set or larger than its
            training split, or a ``data_dir`` given with a data set that reads no files (not
            an image set, or ``digits``).
        ValueError: a ``dequantize`` other than ``"refuse"``, ``"uniform"`` or ``"off"``.

    Warns:
        UserWarning: a ``train_subset`` that holds no image of some class (named).

    Examples:
        >>> bundle = load_dataset("checkerboard", n_train=10, n_test=5, seed=1)
        >>> x = torch.tensor([[-3.0, -3.0], [-1.0, -3.0]], dtype=torch.float64)
        >>> bundle.true_log_density(x).tolist()  # log(1/32) on the black squares
        [-3.4657359027997265, -inf]
    """
    check_dataset_options(
        name,
        context_path=context_path,
        class_context=class_context,
        data_dir=data_dir,
        train_subset=train_subset,
    )
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
        if dequantize not in ("refuse", "uniform", "off"):
            raise ValueError(f"dequantize must be refuse, uniform or off, got {dequantize!r}")
        arr = load_array(path, max_dim=max_dim, index_column=index_column)
        check_range(arr, path)
        note_outliers(arr, path)
        train_np, test_np = split_array(arr, test_fraction, seed)
        if min(len(train_np), len(test_np)) < 2:
            raise DataError(
                f"{path}: {len(arr)} rows split into {len(train_np)} training and "
                f"{len(test_np)} test rows; at least 2 of each are needed (a test NLL needs a "
                "standard error): give more rows or raise data.test_fraction"
            )
        check_spread(train_np, f"{path} (training split)" if len(train_np) < len(arr) else path)
        widths = discrete_columns(arr) if dequantize != "off" else [0.0] * arr.shape[1]
        if any(widths) and dequantize == "refuse":
            j = next(i for i, w in enumerate(widths) if w)
            levels = np.unique(arr[:, j])
            shown = ", ".join(f"{v:g}" for v in levels[:5]) + (", ..." if len(levels) > 5 else "")
            raise DataError(
                f"{path}: column {j + 1} takes only {len(levels)} values ({shown}) for "
                f"{len(arr)} rows: a continuous density on discrete values grows without bound; "
                "pass data.dequantize=uniform to spread each value over its cell (the NLL then "
                "bounds the discrete one), or data.dequantize=off to fit them as they are"
            )
        if standardizer is not None and standardizer.dim != arr.shape[1]:
            raise DataError(
                f"{path}: {count(arr.shape[1], 'column')}, but the run was trained on "
                f"{standardizer.dim}"
            )
        std = standardizer or Standardizer.fit(train_np)
        train = torch.as_tensor(train_np, dtype=torch.float64)
        test = torch.as_tensor(test_np, dtype=torch.float64)
        width = None
        if any(widths):
            width = widths
            gen = torch.Generator().manual_seed(seed)
            cell = torch.tensor(widths, dtype=torch.float64)
            test = test + cell * (torch.rand(test.shape, generator=gen, dtype=test.dtype) - 0.5)
        bundle = DataBundle(path, "vector", train, test, standardizer=std, dequantize_width=width)
        if context_path:
            ctx = load_array(context_path, max_dim=max_dim)
            if ctx.shape[0] != arr.shape[0]:
                raise DataError(
                    f"{context_path}: {ctx.shape[0]} context rows but {path} has "
                    f"{arr.shape[0]} data rows; row i of the contexts goes with row i of the data"
                )
            check_range(ctx, context_path)
            train_c, test_c = split_array(ctx, test_fraction, seed)  # the same permutation
            if context_standardizer is None:  # said once, when the run starts
                _note_constant_contexts(train_c, ctx, context_path)
            cstd = context_standardizer or Standardizer.fit(train_c)
            if cstd.dim != ctx.shape[1]:
                raise DataError(
                    f"{context_path}: {count(ctx.shape[1], 'column')}, but the run was trained "
                    f"on {cstd.dim}"
                )
            bundle.train_c = torch.as_tensor(train_c, dtype=torch.float64)
            bundle.test_c = torch.as_tensor(test_c, dtype=torch.float64)
            bundle.context_standardizer = cstd
        return bundle
    if name in IMAGE_DATASETS:
        tr = load_image_dataset(name, "train", data_dir)
        te = load_image_dataset(name, "test", data_dir)
        train_x, train_y = tr.images, tr.labels
        if train_subset:
            check_train_subset(name, train_subset, len(train_x))
            keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
            keep = keep[:train_subset].sort().values
            train_x = train_x[keep]
            if train_y is not None:
                missing = sorted(set(train_y.tolist()) - set(train_y[keep].tolist()))
                if missing:
                    warnings.warn(
                        f"data.train_subset={train_subset}: the subset of {name} holds no "
                        f"training image of class(es) {missing}; classifiers and "
                        "class-conditional flows never see them (use a larger subset)",
                        UserWarning,
                        stacklevel=2,
                    )
                train_y = train_y[keep]
        bundle = DataBundle(
            name, "image", train_x, te.images, train_y, te.labels, n_levels=tr.n_levels
        )
        if class_context:
            if tr.labels is None:
                raise DataError(f"{name}: no labels to use as contexts")
            bundle.class_context = True
        return bundle
    raise AssertionError(f"unreachable: {name}")  # check_dataset_options knows every name
