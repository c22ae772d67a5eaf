"""``benchmarks/images.py`` flags that would otherwise be ignored without a word."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from images import peer_kw_problem, variant_problem, variants  # noqa: E402


def test_peer_sizes_must_be_keyed_by_a_peer_that_is_trained():
    peers = ["realnvp", "glow"]
    assert peer_kw_problem(None, peers) is None
    assert peer_kw_problem({"realnvp": {"transforms": 4}}, peers) is None
    unkeyed = peer_kw_problem({"transforms": 4, "hidden_features": [64, 64]}, peers)
    assert unkeyed is not None and "keyed by peer" in unkeyed
    assert "keyed by peer" in peer_kw_problem([1, 2], peers)
    misspelt = peer_kw_problem({"realnpv": {"transforms": 4}}, peers)
    assert misspelt is not None and "realnpv" in misspelt
    # a peer left out of --peers: its sizes would be unused
    assert "glow" in peer_kw_problem({"glow": {"blocks": 4}}, ["realnvp"])


def test_variants_by_name_pick_a_subset_and_a_misspelt_name_is_refused():
    assert list(variants("fashion-mnist")) == [
        "Residual Flow",
        "Residual Flow + var. deq.",
        "i-DenseNet",
        "i-DenseNet + var. deq.",
    ]
    assert list(variants("fashion-mnist", [])) == list(variants("fashion-mnist"))
    picked = variants("fashion-mnist", ["i-densenet", "residual-flow"])
    assert list(picked) == ["Residual Flow", "i-DenseNet"]  # the table's order, not the flag's
    assert picked["i-DenseNet"] == variants("fashion-mnist")["i-DenseNet"]
    assert variant_problem(None) is None and variant_problem(["i-densenet-var-deq"]) is None
    problem = variant_problem(["idensenet"])
    assert problem is not None and "idensenet" in problem and "i-densenet" in problem
