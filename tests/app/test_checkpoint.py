"""``iresnet.app.checkpoint``: weights files whose bytes follow their contents."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load, save

from iresnet.app.checkpoint import safetensors_bytes


def _header(raw: bytes) -> tuple[int, str]:
    n = int.from_bytes(raw[:8], "little")
    return n, raw[8 : 8 + n].decode()


def test_equal_contents_give_equal_bytes_whatever_the_metadata_order(tmp_path):
    """safetensors keeps the metadata in a hash map whose order is drawn afresh for each file:
    a resumed run's ``model.safetensors`` came out in other bytes than the uninterrupted run's
    (the same tensors, ``step`` before ``sha256``). The metadata is written in sorted order."""
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float64)}
    keys = ["step", "sha256", "zeta", "alpha", "mu", "nu", "omega", "beta"]
    files = [
        safetensors_bytes(tensors, {k: f"value of {k}" for k in (keys if i % 2 else keys[::-1])})
        for i in range(8)
    ]
    assert len(set(files)) == 1
    n, header = _header(files[0])
    assert list(json.loads(header)["__metadata__"]) == sorted(keys)
    assert n % 8 == 0 and (8 + n) % 8 == 0  # padded as safetensors pads it
    path = tmp_path / "w.safetensors"
    path.write_bytes(files[0])
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {k: f"value of {k}" for k in keys}
    loaded = load(files[0])
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype


def test_without_metadata_the_file_is_safetensors_own():
    tensors = {"w": torch.zeros(2, 2)}
    assert safetensors_bytes(tensors) == save(tensors)
    assert safetensors_bytes(tensors, {}) == save(tensors, metadata={})
