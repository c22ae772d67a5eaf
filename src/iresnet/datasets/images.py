"""Image data sets read offline from local files: MNIST, Fashion-MNIST, CIFAR-10, digits, PNGs.

Every loader returns an [`ImageData`][iresnet.datasets.images.ImageData] whose ``images`` hold
integer levels ``{0, ..., n_levels - 1}`` as ``uint8`` of shape ``(N, C, H, W)``; turning them
into densities on ``[0, 1)^D`` is the job of the preprocessing transforms
([`Dequantize`][iresnet.transforms.preprocess.Dequantize]). Nothing is ever downloaded: a
missing file raises [`DataError`][iresnet.errors.DataError] saying which names were expected,
where they were looked for and how to obtain them.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib
import math
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

__all__ = [
    "ImageData",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_digits",
    "load_png_folder",
    "load_image_dataset",
    "train_size",
    "check_image_files",
    "FASHION_MNIST_SYSTEM_DIRS",
    "DATASET_NAMES",
]

FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
"""Where Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files."""

DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "png")
"""Names accepted by [`load_image_dataset`][iresnet.datasets.images.load_image_dataset]."""

_SPLITS = ("train", "test")

#: How to get each set's files, for the messages of a missing file or folder.
_HOW = {
    "mnist": "Get the four IDX files from the MNIST site (yann.lecun.com/exdb/mnist or a mirror) "
    "or use the folder that holds a torchvision MNIST/raw folder.",
    "fashion-mnist": "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) "
    "or download the IDX files from the Zalando repository "
    "github.com/zalandoresearch/fashion-mnist.",
    "cifar10": "Download the 'CIFAR-10 python version' from www.cs.toronto.edu/~kriz/cifar.html "
    "and extract it there.",
}

#: What the folder of a set that needs one holds, for the message that asks for it.
_FOLDER_OF = {
    "mnist": "the four MNIST IDX files (from yann.lecun.com/exdb/mnist or a mirror)",
    "cifar10": "the 'CIFAR-10 python version' (www.cs.toronto.edu/~kriz/cifar.html), extracted",
    "png": "train/ and test/ subfolders of *.png images",
}


@dataclass(frozen=True)
class ImageData:
    """A labelled set of images quantised to ``n_levels`` integer levels.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)`` with values in ``{0, ..., n_levels - 1}``.
        labels: ``int64`` tensor ``(N,)`` (all zeros for unlabelled data).
        n_levels: number of quantisation levels ``K`` (256 for 8-bit images, 17 for digits).
        name: short data set name, e.g. ``"mnist"``.

    Raises:
        DataError: images not ``uint8`` ``(N, C, H, W)``, labels not ``int64`` ``(N,)``,
            ``n_levels`` outside ``2..256``, or a level ``>= n_levels``.

    Examples:
        >>> data = ImageData(torch.zeros(5, 1, 8, 8, dtype=torch.uint8),
        ...                  torch.zeros(5, dtype=torch.int64), 17, "blank")
        >>> len(data), data.shape
        (5, (1, 8, 8))
    """

    images: torch.Tensor
    labels: torch.Tensor
    n_levels: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: labels must be int64 ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if not 2 <= self.n_levels <= 256:
            raise DataError(f"{self.name}: n_levels must be in 2..256, got {self.n_levels}")
        if self.images.numel() and int(self.images.max()) >= self.n_levels:
            raise DataError(
                f"{self.name}: image level {int(self.images.max())} is >= n_levels={self.n_levels}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------- IDX
# IDX type codes; multi-byte types are big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed, detected by its magic bytes, not its suffix).

    Layout: ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian ``uint32`` sizes, then
    exactly ``prod(sizes)`` big-endian items.

    Args:
        path: the file.

    Returns:
        A native-endian, writable array of shape ``sizes``.

    Raises:
        DataError: an unreadable file, a corrupt gzip stream, bad magic, an unknown type code,
            zero dimensions, truncated data or trailing bytes; the message names the file.

    Examples:
        >>> import pathlib, tempfile
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(folder.name) / "tiny-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(path).tolist()
        [7, 8, 9]
        >>> folder.cleanup()
    """
    path = Path(path)
    return _parse_idx(path, _idx_content(path))


def _idx_content(path: Path) -> bytes:
    """An IDX file's bytes, decompressed where it is gzipped (by its magic bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"IDX file {path}: corrupt or truncated gzip stream ({exc})") from exc
    return raw


def _parse_idx(path: Path, raw: bytes) -> np.ndarray:
    """``read_idx`` of the bytes ``raw`` read from ``path`` (named in the errors)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"IDX file {path}: bad magic {raw[:4]!r} (expected 0x00 0x00 type ndim)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"IDX file {path}: unknown data type code 0x{code:02X}")
    if ndim == 0:
        raise DataError(f"IDX file {path}: zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path}: truncated header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(raw) - header
    if have < need:
        raise DataError(
            f"IDX file {path}: truncated, {have} data bytes but dims {dims} need {need}"
        )
    if have > need:
        raise DataError(f"IDX file {path}: {have - need} trailing bytes after dims {dims} data")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _check_split(split: str, allowed: Sequence[str] = _SPLITS) -> None:
    if split not in allowed:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")


def _idx_length(path: Path) -> int | None:
    """The first dimension in an IDX file's header (raw or gzip), read without its data; None
    where the header cannot be read (the loader then says what is wrong)."""
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else path.open("rb") as fh:
            head = fh.read(8)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 8 or head[:2] != b"\x00\x00" or head[3] == 0:
        return None
    return int(struct.unpack(">I", head[4:8])[0])


def _find_idx(folder: Path, stem: str) -> Path | None:
    # Extracted files first (faster); the MNIST site's unzipped names use a dot before "idx".
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_pair(split: str, folders: Sequence[Path]) -> tuple[Path, Path] | None:
    """The first folder's images and labels files of ``split``, or None where no folder holds
    both (images and labels must come from the same folder, or they could be mispaired)."""
    for folder in folders:
        img_path, lab_path = (_find_idx(folder, s) for s in _IDX_STEMS[split])
        if img_path is not None and lab_path is not None:
            return img_path, lab_path
    return None


def _idx_folders(name: str, root: str | Path | None) -> list[Path]:
    """Where ``mnist`` or ``fashion-mnist`` looks for its files (``root=None``: fashion-mnist's
    system install; mnist has none)."""
    if root is None:
        return list(FASHION_MNIST_SYSTEM_DIRS) if name == "fashion-mnist" else []
    sub = "MNIST" if name == "mnist" else "FashionMNIST"
    return [Path(root), Path(root) / sub / "raw"]


def _found_idx_pair(name: str, split: str, folders: Sequence[Path]) -> tuple[Path, Path]:
    """The images and labels files of ``split``, or the error that says where they were looked
    for and how to get them."""
    _check_split(split)
    found = _idx_pair(split, folders)
    if found is None:
        stems = _IDX_STEMS[split]
        raise DataError(
            f"{name} {split} split not found: expected {stems[0]}[.gz] and {stems[1]}[.gz] in "
            f"one of: {', '.join(str(f) for f in folders)}. {_HOW[name]}"
        )
    return found


#: MD5 of the decompressed content of each set's published IDX files (the ``.gz`` files'
#: own MD5s differ wherever a file was recompressed, as Debian's ``dataset-fashion-mnist``
#: is). Fashion-MNIST: checked here on Debian's files, whose ``.gz`` bytes are not Zalando's
#: (Zalando's .gz MD5s: 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) but whose content
#: is. MNIST: the content of the files with the .gz MD5s f68b3c2d..., d53e105e..., 9fb629c4...,
#: ec29112d... (torchvision's), as published with them; no MNIST file on this project's
#: machines to check them on.
_PUBLISHED_IDX_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _check_not_the_other_set(name: str, stem: str, path: Path, content: bytes) -> None:
    """Refuse an IDX file of ``name`` (``mnist`` or ``fashion-mnist``) whose content is the
    other set's published file of the same name: the two sets share their file names and
    shapes, so a folder of one read as the other trained and reported under the wrong name.
    Files that are neither set's (your own) pass. One MD5 of bytes already in memory."""
    other = "fashion-mnist" if name == "mnist" else "mnist"
    if hashlib.md5(content, usedforsecurity=False).hexdigest() != _PUBLISHED_IDX_MD5[other][stem]:
        return
    raise DataError(
        f"{path} holds {_TITLES[other]}'s {stem} (the published file's MD5), not "
        f"{_TITLES[name]}'s: use it as {other} (a {other} preset, or data.name={other}, with "
        f"--data-dir {path.parent}), or give --data-dir (data.data_dir) a folder of "
        f"{_TITLES[name]}'s files"
    )


def _load_idx_pair(name: str, split: str, folders: Sequence[Path]) -> ImageData:
    img_path, lab_path = _found_idx_pair(name, split, folders)
    arrays = []
    for path, stem in zip((img_path, lab_path), _IDX_STEMS[split], strict=True):
        content = _idx_content(path)
        _check_not_the_other_set(name, stem, path, content)
        arrays.append(_parse_idx(path, content))
    images, labels = arrays
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{lab_path}: expected integer (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{name}: mismatched counts, {len(images)} images in {img_path} but "
            f"{len(labels)} labels in {lab_path}"
        )
    return ImageData(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        n_levels=256,
        name=name,
    )


def load_mnist(root: str | Path, split: str = "train") -> ImageData:
    """MNIST from local IDX files: ``(N, 1, 28, 28)`` uint8, 256 levels, labels 0..9.

    Looks for ``train-*``/``t10k-*`` ``images-idx3-ubyte`` and ``labels-idx1-ubyte`` (optionally
    ``.gz``) in ``root`` and in torchvision's ``root/MNIST/raw``.

    Args:
        root: the folder holding the files.
        split: ``"train"`` or ``"test"``.

    Raises:
        DataError: an unknown split, missing files (the message says where to get them),
            malformed ones, or Fashion-MNIST's published files (known by the MD5 of their
            content; the two sets share file names and shapes).

    References:
        - LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document
          Recognition", Proc. IEEE 86(11), 1998 (MNIST).

    Examples:
        >>> load_mnist("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: mnist train split not found: expected train-images-idx3-ubyte...
    """
    return _load_idx_pair("mnist", split, _idx_folders("mnist", root))


def load_fashion_mnist(root: str | Path | None = None, split: str = "train") -> ImageData:
    """Fashion-MNIST from local IDX files: ``(N, 1, 28, 28)`` uint8, 256 levels, labels 0..9.

    With ``root=None`` it reads Debian's ``dataset-fashion-mnist`` install
    ([`FASHION_MNIST_SYSTEM_DIRS`][iresnet.datasets.images.FASHION_MNIST_SYSTEM_DIRS]);
    otherwise ``root`` and ``root/FashionMNIST/raw``.

    Args:
        root: the folder holding the files, or None for the system install.
        split: ``"train"`` or ``"test"``.

    Raises:
        DataError: an unknown split, missing files (the message says where to get them),
            malformed ones, or MNIST's published files (known by the MD5 of their content).

    References:
        - Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
          Learning Algorithms", arXiv:1708.07747.

    Examples:
        >>> load_fashion_mnist("/nonexistent", "test")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: fashion-mnist test split not found: ...
    """
    return _load_idx_pair("fashion-mnist", split, _idx_folders("fashion-mnist", root))


# ----------------------------------------------------------------------------------- CIFAR-10
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# The only callables a pickled dict of numpy arrays needs; all merely rebuild arrays or bytes.
_NUMPY_CORE_GLOBALS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}


def _allowed_global(module: str, name: str) -> Any | None:
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if (module, name) == ("_codecs", "encode"):  # Python 3 pickles bytes this way at protocol 2
        return codecs.encode
    for prefix in ("numpy.core.", "numpy._core."):
        sub = module[len(prefix) :] if module.startswith(prefix) else None
        if sub is None or name not in _NUMPY_CORE_GLOBALS.get(sub, ()):
            continue
        # numpy>=2 moved numpy.core to numpy._core (old name warns); pickles may use either.
        for base in ("numpy._core", "numpy.core"):
            try:
                obj = getattr(importlib.import_module(f"{base}.{sub}"), name, None)
            except ImportError:
                continue
            if obj is not None:
                return obj
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else, so no file can run code."""

    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR batches are Python 2 pickles
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_global(module, name)
        if obj is None:
            raise DataError(
                f"refusing to unpickle {module}.{name} from file {self._source}: only numpy "
                "array globals are allowed in a CIFAR-10 batch"
            )
        return obj


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc!r}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR-10 batch {path}: expected a dict, got {type(obj).__name__}")
    got = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in got or "labels" not in got:
        raise DataError(f"CIFAR-10 batch {path}: missing 'data' or 'labels' key")
    data, labels = got["data"], np.asarray(got["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        got_desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise DataError(f"CIFAR-10 batch {path}: 'data' must be uint8 (N, 3072), got {got_desc}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise DataError(
            f"CIFAR-10 batch {path}: mismatched or non-integer labels {labels.dtype} "
            f"{labels.shape} for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {path}: labels outside 0..9")
    return data, labels.astype(np.int64)


def load_cifar10(root: str | Path, split: str = "train") -> ImageData:
    """CIFAR-10 from the *python* batches: ``(N, 3, 32, 32)`` uint8, 256 levels, labels 0..9.

    Reads ``data_batch_1..5`` (train) or ``test_batch`` (test) from ``root/cifar-10-batches-py``
    or ``root``. Each row of a batch's ``data`` is 1024 red, then green, then blue values in
    row-major order, hence the plain reshape to ``(3, 32, 32)``. Batches are unpickled with an
    allow-list of numpy globals; anything else is refused.

    Args:
        root: the folder holding ``cifar-10-batches-py`` (or the batches themselves).
        split: ``"train"`` or ``"test"``.

    Raises:
        DataError: an unknown split, missing batches (the message says where to get them),
            malformed ones, or a pickle that asks for anything but numpy arrays.

    References:
        - Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", technical
          report, University of Toronto, 2009 (CIFAR-10).

    Examples:
        >>> load_cifar10("/nonexistent", "test")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: cifar10 test split not found: expected test_batch in one of: ...
    """
    folder = _cifar_folder(root, split)
    batches = [_read_cifar_batch(folder / n) for n in _CIFAR_FILES[split]]
    data = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([b[1] for b in batches])
    return ImageData(torch.from_numpy(data), torch.from_numpy(labels), 256, "cifar10")


def _cifar_folder(root: str | Path, split: str) -> Path:
    """The folder holding the batches of ``split``, or the error that says where they were
    looked for and how to get them."""
    _check_split(split)
    files = _CIFAR_FILES[split]
    folders = [Path(root) / _CIFAR_DIR, Path(root)]
    folder = next((f for f in folders if all((f / n).is_file() for n in files)), None)
    if folder is None:
        raise DataError(
            f"cifar10 {split} split not found: expected {', '.join(files)} in one of: "
            f"{', '.join(str(f) for f in folders)}. {_HOW['cifar10']}"
        )
    return folder


# ------------------------------------------------------------------------------------- digits
_DIGITS_IMAGES = 1797
"""The images scikit-learn bundles; ``load_digits`` keeps ``1797 // 5`` for its test split."""


def load_digits(split: str = "train") -> ImageData:
    """scikit-learn's bundled 8x8 digits: ``(N, 1, 8, 8)`` uint8 with 17 levels (0..16).

    The 1797 images are shuffled by ``numpy.random.default_rng(0).permutation``; the last
    ``1797 // 5 = 359`` form the test split and the first 1438 the train split, the same on
    every machine and run.

    Args:
        split: ``"train"`` or ``"test"``.

    Raises:
        DataError: an unknown split, or scikit-learn is not installed.

    References:
        - Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
          Repository, 1998 (the test set scikit-learn bundles).

    Examples:
        >>> data = load_digits("test")
        >>> len(data), data.shape, data.n_levels, int(data.images.max()) <= 16
        (359, (1, 8, 8), 17, True)
    """
    _check_split(split)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise DataError(
            "the digits data set needs scikit-learn: `pip install scikit-learn`"
        ) from exc
    bunch = sk_load_digits()
    images = np.asarray(bunch.images).round().astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(images))
    n_test = len(images) // 5
    idx = perm[-n_test:] if split == "test" else perm[:-n_test]
    return ImageData(
        torch.from_numpy(np.ascontiguousarray(images[idx])),
        torch.from_numpy(labels[idx]),
        17,
        "digits",
    )


# ---------------------------------------------------------------------------------------- PNG
def _read_png(path: Path, image_module: Any) -> np.ndarray:
    try:
        with image_module.open(path) as im:
            mode = im.mode
            if mode in ("1", "L", "LA"):
                im = im.convert("L")  # alpha is dropped: the model sees intensities only
            elif mode in ("P", "PA", "RGB", "RGBA"):
                im = im.convert("RGB")
            else:  # 16-bit, float and CMYK images do not have 256 levels per channel
                raise DataError(f"PNG {path}: unsupported mode {mode!r} (need 8-bit gray or RGB)")
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises several types for unreadable files
        raise DataError(f"cannot read PNG {path}: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_png_folder(path: str | Path, split: str | None = None) -> ImageData:
    """Every ``*.png`` in a folder as ``(N, C, H, W)`` uint8, 256 levels (needs Pillow).

    With ``split`` the folder ``path/split`` is read instead. If that folder has (non-hidden)
    subfolders holding PNGs, each such subfolder is one class, labelled by its index in sorted
    name order, and loose PNGs beside them are an error; otherwise all labels are zero. Files
    are read in sorted order; grayscale images give ``C = 1``, colour ones ``C = 3``; all must
    share one shape.

    Args:
        path: the folder.
        split: a subfolder of ``path`` to read instead (``"train"``, ``"test"``), or None.

    Raises:
        DataError: a missing folder, no PNGs, class subfolders mixed with loose files, an
            unreadable or unsupported image (16-bit, float, CMYK), images of different shapes
            (the message names the first odd file), or Pillow not installed.
    """
    folder = Path(path) if split is None else Path(path) / split
    if not folder.is_dir():
        raise DataError(f"PNG folder {folder} does not exist")
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading PNG folders needs Pillow: `pip install pillow`") from exc
    subdirs = sorted(
        d
        for d in folder.iterdir()
        if d.is_dir() and not d.name.startswith(".") and any(d.glob("*.png"))
    )
    loose = sorted(folder.glob("*.png"))
    if subdirs and loose:
        raise DataError(
            f"PNG folder {folder} mixes class subfolders with loose files such as {loose[0]}"
        )
    files = [(p, i) for i, d in enumerate(subdirs) for p in sorted(d.glob("*.png"))] or [
        (p, 0) for p in loose
    ]
    if not files:
        raise DataError(f"PNG folder {folder} holds no *.png files")
    arrays: list[np.ndarray] = []
    for p, _ in files:
        arr = _read_png(p, Image)
        if arrays and arr.shape != arrays[0].shape:
            raise DataError(
                f"PNG {p} has shape (C, H, W) = {arr.shape}, but {files[0][0]} has "
                f"{arrays[0].shape}; all images must share one size and colour mode"
            )
        arrays.append(arr)
    return ImageData(
        torch.from_numpy(np.stack(arrays)),
        torch.tensor([label for _, label in files], dtype=torch.int64),
        256,
        f"png:{folder.name}",
    )


# ----------------------------------------------------------------------------------- dispatch
def train_size(name: str, data_dir: str | Path | None = None) -> int | None:
    """The number of training images of an image set, known without loading it: ``digits``'
    1438 (a constant: the images come with scikit-learn), and the count in the header of
    ``mnist``'s or ``fashion-mnist``'s training images file (its first 8 bytes: the files are
    the user's, so their count is read, not assumed to be the published 60,000). None where
    it is not known so cheaply (``cifar10``'s pickles, a ``png`` folder, files not found):
    the loader then counts, or says what is missing.

    Args:
        name: one of [`DATASET_NAMES`][iresnet.datasets.images.DATASET_NAMES].
        data_dir: the folder holding the files, as for
            [`load_image_dataset`][iresnet.datasets.images.load_image_dataset].

    Examples:
        >>> train_size("digits"), train_size("cifar10", "/nonexistent")
        (1438, None)
    """
    key = name.strip().lower().replace("_", "-")
    if key == "digits":
        return _DIGITS_IMAGES - _DIGITS_IMAGES // 5
    if key in ("mnist", "fashion-mnist"):
        found = _idx_pair("train", _idx_folders(key, data_dir))
        return None if found is None else _idx_length(found[0])
    return None


def _no_folder(key: str) -> DataError:
    return DataError(
        f"data set {key!r} needs the folder holding its files: --data-dir DIR "
        f"(data.data_dir=DIR) with {_FOLDER_OF[key]}"
    )


def check_image_files(name: str, data_dir: str | Path | None = None) -> None:
    """Refuse, without reading them, an image set whose files are not where
    [`load_image_dataset`][iresnet.datasets.images.load_image_dataset] looks for them (both
    splits), with the loader's own message: where they were looked for and how to get them.
    Cheap (a few ``stat`` calls), so a dry run and a run's first check can make it; the files'
    contents are the loader's to check. ``digits`` needs no files.

    Raises:
        DataError: an unknown name, no ``data_dir`` where one is required, or files missing.

    Examples:
        >>> check_image_files("digits")
        >>> check_image_files("mnist")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        iresnet.errors.DataError: data set 'mnist' needs the folder holding its files: ...
    """
    key = name.strip().lower().replace("_", "-")
    if key == "digits":
        return
    if key not in DATASET_NAMES:
        raise DataError(f"unknown image data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if data_dir is None and key != "fashion-mnist":
        raise _no_folder(key)
    for split in _SPLITS:
        if key in ("mnist", "fashion-mnist"):
            _found_idx_pair(key, split, _idx_folders(key, data_dir))
        elif key == "cifar10":
            _cifar_folder(data_dir or "", split)
        elif not (Path(data_dir or "") / split).is_dir():
            raise DataError(
                f"PNG folder {Path(data_dir or '') / split} does not exist: --data-dir DIR "
                f"(data.data_dir=DIR) needs {_FOLDER_OF['png']}"
            )


def load_image_dataset(name: str, split: str, data_dir: str | Path | None = None) -> ImageData:
    """Load an image set by name (``_`` and ``-`` are interchangeable).

    ``data_dir`` is the folder holding the files; it is required for ``mnist``, ``cifar10`` and
    ``png``, optional for ``fashion-mnist`` (Debian's install) and ignored for ``digits``. For
    ``png`` the images are read from ``data_dir/split`` (see
    [`load_png_folder`][iresnet.datasets.images.load_png_folder]).

    Args:
        name: one of [`DATASET_NAMES`][iresnet.datasets.images.DATASET_NAMES].
        split: ``"train"`` or ``"test"``.
        data_dir: the folder holding the files.

    Raises:
        DataError: an unknown name, a missing ``data_dir`` where one is required, or any error
            of the loader.

    Examples:
        >>> load_image_dataset("Digits", "train").name
        'digits'
    """
    key = name.strip().lower().replace("_", "-")
    if key == "digits":
        return load_digits(split)
    if key == "fashion-mnist":
        return load_fashion_mnist(data_dir, split)
    if key not in DATASET_NAMES:
        raise DataError(f"unknown image data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if data_dir is None:
        raise _no_folder(key)
    if key == "mnist":
        return load_mnist(data_dir, split)
    if key == "cifar10":
        return load_cifar10(data_dir, split)
    return load_png_folder(data_dir, split)
