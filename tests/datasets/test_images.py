"""Offline image loaders: IDX parsing, MNIST-style folders, safe CIFAR unpickling, PNGs, digits."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from iresnet.datasets.images import (
    FASHION_MNIST_SYSTEM_DIRS,
    ImageData,
    check_image_files,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_image_dataset,
    load_mnist,
    load_png_folder,
    read_idx,
    train_size,
)
from iresnet.errors import DataError

_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = _CODES[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    data = _idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _write_mnist(folder: Path, split: str, n: int, gz: bool, n_labels: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_labels if n_labels is not None else n, dtype=np.uint8)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


# ------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(_CODES))
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: type) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype is np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    # A misleading suffix: gzip must be detected from the magic bytes, not the name.
    path = _write_idx(tmp_path / ("a.idx" if gz else "a.gz"), arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 1  # writable


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((3, 2), dtype=np.uint8))
    cases = {
        "magic.idx": b"\x01" + good[1:],
        "code.idx": good[:2] + b"\x07" + good[3:],
        "short.idx": good[:-1],
        "header.idx": good[:6],
        "trail.idx": good + b"\x00",
    }
    messages = {
        "magic.idx": "bad magic",
        "code.idx": "type code",
        "short.idx": "truncated",
        "header.idx": "truncated",
        "trail.idx": "trailing",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=messages[name]) as info:
            read_idx(tmp_path / name)
        assert name in str(info.value)
    (tmp_path / "gz.idx").write_bytes(gzip.compress(good)[:-6])  # truncated gzip stream
    with pytest.raises(DataError, match="gz.idx"):
        read_idx(tmp_path / "gz.idx")


# ----------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_layouts(tmp_path: Path, layout: str, gz: bool) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    _write_mnist(folder, "train", 5, gz)
    _write_mnist(folder, "test", 3, gz)
    train = load_mnist(tmp_path, "train")
    test = load_image_dataset("mnist", "test", data_dir=str(tmp_path))
    assert isinstance(train, ImageData)
    assert train.images.shape == (5, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and len(test) == 3
    assert train.shape == (1, 28, 28) and train.n_levels == 256 and train.name == "mnist"


def test_load_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "FashionMNIST" / "raw", "test", 4, gz=True)
    data = load_fashion_mnist(tmp_path, "test")
    assert data.images.shape == (4, 1, 28, 28) and data.name == "fashion-mnist"


def test_load_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, "train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "MNIST/raw" in msg
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path, "test")
    assert "t10k-images-idx3-ubyte" in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    _write_mnist(tmp_path, "train", 5, gz=False, n_labels=4)
    with pytest.raises(DataError, match="mismatched"):
        load_mnist(tmp_path, "train")
    with pytest.raises(DataError, match="split"):
        load_mnist(tmp_path, "valid")


@pytest.mark.skipif(
    not any(d.is_dir() for d in FASHION_MNIST_SYSTEM_DIRS), reason="dataset-fashion-mnist absent"
)
def test_real_fashion_mnist_test_split() -> None:
    data = load_fashion_mnist(split="test")
    assert data.images.shape == (10000, 1, 28, 28)
    assert int(data.labels.min()) == 0 and int(data.labels.max()) == 9
    assert torch.bincount(data.labels).tolist() == [1000] * 10


_SYSTEM_FASHION = next((d for d in FASHION_MNIST_SYSTEM_DIRS if d.is_dir()), None)


@pytest.mark.skipif(_SYSTEM_FASHION is None, reason="dataset-fashion-mnist absent")
def test_fashion_mnist_files_read_as_mnist_are_refused(tmp_path: Path) -> None:
    """The two sets share their file names and shapes: a Fashion-MNIST folder given to mnist
    trained and reported "mnist" bits/dim (a user try-out). Its files are known by the MD5 of
    their content, gzipped (Debian's, recompressed) or not."""
    assert _SYSTEM_FASHION is not None
    with pytest.raises(DataError) as info:
        load_mnist(_SYSTEM_FASHION, "test")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(
        f"{_SYSTEM_FASHION / 't10k-images-idx3-ubyte.gz'} holds Fashion-MNIST's "
        "t10k-images-idx3-ubyte (the published file's MD5), not MNIST's: use it as "
        f"fashion-mnist (a fashion-mnist preset, or data.name=fashion-mnist, with --data-dir "
        f"{_SYSTEM_FASHION})"
    )
    # decompressed, in torchvision's layout, the labels alone: the same file, refused
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = gzip.decompress((_SYSTEM_FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((10000, 28, 28), np.uint8))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte holds Fashion-MNIST's"):
        load_image_dataset("mnist", "test", data_dir=str(tmp_path))
    assert len(load_fashion_mnist(tmp_path / "MNIST" / "raw", "test")) == 10000  # as itself


def test_only_the_other_sets_published_files_are_refused(tmp_path: Path, monkeypatch) -> None:
    """Files that are neither set's (your own IDX files) load under either name; a file whose
    content is MNIST's published one is refused as Fashion-MNIST (a tiny stand-in, no MNIST
    file here: its MD5 is put in MNIST's table)."""
    from iresnet.datasets import images

    _write_mnist(tmp_path, "test", 3, gz=True)
    assert len(load_mnist(tmp_path, "test")) == len(load_fashion_mnist(tmp_path, "test")) == 3
    content = images._idx_content(tmp_path / "t10k-images-idx3-ubyte.gz")
    table = {**images._PUBLISHED_IDX_MD5["mnist"]}
    table["t10k-images-idx3-ubyte"] = hashlib.md5(content).hexdigest()
    monkeypatch.setitem(images._PUBLISHED_IDX_MD5, "mnist", table)
    with pytest.raises(
        DataError, match="holds MNIST's t10k-images-idx3-ubyte .* not Fashion-MNIST"
    ):
        load_fashion_mnist(tmp_path, "test")
    assert len(load_mnist(tmp_path, "test")) == 3  # MNIST's own file, read as MNIST


# ---------------------------------------------------------------------------------- CIFAR
def _cifar_batch(n: int, seed: int, bytes_keys: bool) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": "fake",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "labels": [int(v) for v in rng.integers(0, 10, size=n)],
    }
    return {k.encode(): v for k, v in batch.items()} if bytes_keys else batch


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_cifar10(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(2, i, bytes_keys=i % 2 == 0) for i in range(6)]
    for i, batch in enumerate(batches[:5]):
        with (folder / f"data_batch_{i + 1}").open("wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    with (folder / "test_batch").open("wb") as fh:
        pickle.dump(batches[5], fh, protocol=protocol)
    train = load_cifar10(tmp_path, "train")
    test = load_image_dataset("cifar10", "test", data_dir=folder)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    first = batches[0][b"data"][0]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    np.testing.assert_array_equal(train.images[0, 1].numpy(), first[1024:2048].reshape(32, 32))
    assert train.labels[:2].tolist() == batches[0][b"labels"]
    assert test.labels.tolist() == batches[5]["labels"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with (tmp_path / "test_batch").open("wb") as fh:
        pickle.dump({"data": _Exploit(marker), "labels": []}, fh)
    with pytest.raises(DataError, match="refusing to unpickle") as info:
        load_cifar10(tmp_path, "test")
    assert "test_batch" in str(info.value)
    assert not marker.exists()


def test_cifar_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path, "train")
    with (tmp_path / "test_batch").open("wb") as fh:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, fh)
    with pytest.raises(DataError, match="3072"):
        load_cifar10(tmp_path, "test")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(tmp_path, "test")


# ------------------------------------------------------------------------------------ PNG
def test_png_folder_round_trip(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    flat.mkdir()
    arrays = [rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8) for _ in range(3)]
    for i, arr in enumerate(arrays):
        image.fromarray(arr, mode="RGB").save(flat / f"{i:02d}.png")
    data = load_png_folder(flat)
    assert data.images.shape == (3, 3, 5, 4) and data.labels.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(data.images[1].numpy(), arrays[1].transpose(2, 0, 1))

    classes = tmp_path / "classes" / "train"
    for name, count in (("cat", 2), ("dog", 1)):
        (classes / name).mkdir(parents=True)
        for j in range(count):
            gray = rng.integers(0, 256, size=(6, 6), dtype=np.uint8)
            image.fromarray(gray, mode="L").save(classes / name / f"{j}.png")
    data = load_image_dataset("png", "train", data_dir=tmp_path / "classes")
    assert data.images.shape == (3, 1, 6, 6) and data.labels.tolist() == [0, 0, 1]

    image.fromarray(np.zeros((7, 6), np.uint8), mode="L").save(classes / "dog" / "odd.png")
    with pytest.raises(DataError, match="odd.png"):
        load_png_folder(classes)
    with pytest.raises(DataError, match="does not exist"):
        load_png_folder(tmp_path / "classes", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.png"):
        load_png_folder(tmp_path / "empty")


# --------------------------------------------------------------------------------- digits
def test_digits_split() -> None:
    pytest.importorskip("sklearn")
    train, test = load_digits("train"), load_image_dataset("digits", "test")
    assert train.images.shape[1:] == (1, 8, 8) and train.n_levels == 17
    assert int(train.images.max()) == 16 and len(train) + len(test) == 1797
    assert len(test) == 1797 // 5
    again = load_digits("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "png"])
def test_a_set_without_its_folder_names_the_flag_and_the_key(name: str) -> None:
    """Try-out 14, F13: "needs data_dir" named the function's argument, not the CLI's."""
    with pytest.raises(DataError) as info:
        load_image_dataset(name, "train")
    msg = str(info.value)
    assert msg.startswith(f"data set '{name}' needs") and "--data-dir" in msg, msg
    assert "data.data_dir" in msg, msg


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="fashion-mnist"):
        load_image_dataset("imagenet", "train")


def test_a_training_subset_keeps_images_with_their_labels_and_the_whole_test_split() -> None:
    pytest.importorskip("sklearn")
    from iresnet.datasets import load_dataset

    full = load_dataset("digits")
    part = load_dataset("digits", train_subset=100, seed=3)
    assert part.train_x.shape == (100, 1, 8, 8) and part.train_y.shape == (100,)
    assert torch.equal(part.test_x, full.test_x) and torch.equal(part.test_y, full.test_y)
    # Every kept image is a training image, with the label it had there.
    rows = full.train_x.flatten(1)
    for img, label in zip(part.train_x.flatten(1), part.train_y, strict=True):
        hits = (rows == img).all(1).nonzero().flatten()
        assert hits.numel() >= 1 and bool((full.train_y[hits] == label).any())
    # The same seed draws the same subset; another seed another one.
    assert torch.equal(load_dataset("digits", train_subset=100, seed=3).train_x, part.train_x)
    assert not torch.equal(load_dataset("digits", train_subset=100, seed=4).train_x, part.train_x)


def test_a_training_subset_larger_than_the_split_or_of_a_toy_is_refused() -> None:
    pytest.importorskip("sklearn")
    from iresnet.datasets import load_dataset

    with pytest.raises(DataError, match=r"train_subset=5000 exceeds the 1438 training images"):
        load_dataset("digits", train_subset=5000)
    with pytest.raises(DataError, match="data.n_train"):
        load_dataset("8gaussians", train_subset=10)


def test_a_training_subset_without_some_classes_says_which() -> None:
    pytest.importorskip("sklearn")
    import warnings

    from iresnet.datasets import load_dataset

    with pytest.warns(UserWarning, match=r"train_subset=5: the subset of digits holds no"):
        part = load_dataset("digits", train_subset=5, seed=0)  # 5 images: 5 classes at most
    assert len(set(part.train_y.tolist())) <= 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("digits", train_subset=500, seed=0)  # every class is there


def test_a_data_folder_with_a_data_set_that_reads_no_files_is_refused(tmp_path) -> None:
    """``iresnet train toy-8gaussians --data-dir DIR`` ignored the folder without a word."""
    pytest.importorskip("sklearn")
    from iresnet.datasets import load_dataset

    with pytest.raises(DataError, match="'8gaussians' reads none"):
        load_dataset("8gaussians", n_train=10, n_test=5, data_dir=str(tmp_path))
    with pytest.raises(DataError, match="'digits' reads none"):  # scikit-learn's
        load_dataset("digits", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------- train_size
@pytest.mark.parametrize("gz", [False, True])
def test_train_size_reads_the_idx_header_and_knows_digits(tmp_path: Path, gz: bool) -> None:
    """The size the CLI refuses a batch or a subset against before it loads anything: the
    digits constant is the loader's count, an IDX file's is its header's, not 60000."""
    pytest.importorskip("sklearn")
    assert train_size("digits") == len(load_digits("train")) == 1438
    _write_mnist(tmp_path / "MNIST" / "raw", "train", 37, gz)
    assert train_size("mnist", tmp_path) == len(load_mnist(tmp_path)) == 37
    _write_mnist(tmp_path / "f", "train", 12, gz)
    assert train_size("fashion_mnist", tmp_path / "f") == 12
    # not known cheaply, or not there: None (the loader counts, or names what is missing)
    assert train_size("mnist", tmp_path / "none") is None and train_size("mnist") is None
    assert train_size("cifar10", tmp_path) is None and train_size("png", tmp_path) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8bnot gzip")
    (tmp_path / "bad" / "train-labels-idx1-ubyte").write_bytes(b"")
    assert train_size("mnist", tmp_path / "bad") is None


def test_train_size_of_the_system_fashion_mnist_is_its_header() -> None:
    folder = next((d for d in FASHION_MNIST_SYSTEM_DIRS if d.is_dir()), None)
    if folder is None:
        pytest.skip("no system Fashion-MNIST")
    assert train_size("fashion-mnist") == 60000


def test_check_image_files_finds_what_the_loader_would_not_without_reading(tmp_path: Path) -> None:
    """The check a dry run makes: each split's files where the loader looks, with the loader's
    own message where they are not; what the files hold is the loader's to check."""
    check_image_files("digits")
    mnist = tmp_path / "mnist"
    _write_mnist(mnist, "train", 3, gz=True)
    with pytest.raises(DataError) as info:
        check_image_files("mnist", mnist)
    with pytest.raises(DataError) as loaded:
        load_mnist(mnist, "test")
    assert str(info.value) == str(loaded.value) and "t10k-images" in str(info.value)
    _write_mnist(mnist, "test", 2, gz=False)
    check_image_files("mnist", mnist)
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"):
        (tmp_path / "cifar" / "cifar-10-batches-py" / name).write_bytes(b"unread")
    with pytest.raises(DataError) as info:
        check_image_files("cifar10", tmp_path / "cifar")
    assert str(info.value).startswith("cifar10 train split not found: expected data_batch_1, ")
    (tmp_path / "png" / "train").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        check_image_files("png", tmp_path / "png")
    assert str(info.value) == (
        f"PNG folder {tmp_path / 'png' / 'test'} does not exist: --data-dir DIR "
        "(data.data_dir=DIR) needs train/ and test/ subfolders of *.png images"
    )
    with pytest.raises(DataError, match="valid names"):
        check_image_files("imagenet", tmp_path)
