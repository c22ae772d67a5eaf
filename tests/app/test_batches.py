"""Batches: resumable order and where the data are staged."""

from __future__ import annotations

import torch

from iresnet.app import batches
from iresnet.app.batches import EpochBatches, stage_data
from iresnet.datasets import DataBundle


def _images(n: int = 10) -> DataBundle:
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    return DataBundle("tiny", "image", x, x[:3], y, y[:3], n_levels=256)


def test_cpu_and_vectors_stay_in_place():
    data = _images()
    assert stage_data(data, torch.device("cpu")) is data
    vec = DataBundle("v", "vector", torch.randn(5, 2), torch.randn(2, 2))
    assert stage_data(vec, torch.device("meta")) is vec


def test_small_image_sets_move_to_the_device_once():
    data = _images()
    staged = stage_data(data, torch.device("meta"))  # a device without memory stands in for cuda
    for name in ("train_x", "test_x", "train_y", "test_y"):
        assert getattr(staged, name).device.type == "meta"
        assert getattr(data, name).device.type == "cpu"  # the caller's bundle is untouched
    assert staged.n_levels == 256 and staged.kind == "image"


def test_large_image_sets_are_pinned_not_moved(monkeypatch):
    pinned = []
    monkeypatch.setattr(batches, "DEVICE_DATA_LIMIT", 10)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t.shape) or t)
    staged = stage_data(_images(), torch.device("meta"))
    assert staged.train_x.device.type == "cpu" and len(pinned) == 4


def test_resumed_order_matches_uninterrupted():
    a = EpochBatches(n=23, batch_size=4, seed=3)
    first = [a.next() for _ in range(9)]
    b = EpochBatches(n=23, batch_size=4, seed=3)
    for _ in range(4):
        b.next()
    c = EpochBatches(n=23, batch_size=4, seed=3)
    c.load_state(b.state())
    resumed = [c.next() for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(first[4:], resumed, strict=True))
