"""The certificate names what each block is, so an image model's fully connected blocks are
told from its convolutional ones (tryout 13: all read ``transform.N``)."""

from __future__ import annotations

import json

import torch

import iresnet
from iresnet.certificate import Certificate


def _image_flow(**kw) -> iresnet.MultiscaleResidualFlow:
    torch.manual_seed(0)
    flow = iresnet.MultiscaleResidualFlow(
        (1, 8, 8),
        scales=2,
        blocks=1,
        hidden_channels=(4, 4),
        fc_blocks=2,
        fc_hidden_features=(8,),
        logdet="exact",
        **kw,
    ).double()
    flow.train()
    with torch.no_grad():  # initialises the ActNorms and the convolutions' input sizes
        flow.transform(torch.rand(4, 1, 8, 8, dtype=torch.float64))
    return flow.eval()


def test_blocks_say_whether_they_are_convolutional_or_fully_connected():
    cert = iresnet.certify(_image_flow())
    assert [b.kind for b in cert.blocks] == ["conv", "conv", "fc", "fc"]
    names = dict(_image_flow().named_modules())
    # The name stays the module's path: code looks the block up by it.
    assert all(isinstance(names[b.name], iresnet.InvertibleResidualBlock) for b in cert.blocks)
    rows = str(cert).splitlines()
    assert rows[0].split()[:2] == ["block", "kind"]
    assert [r.split()[1] for r in rows[2:6]] == ["conv", "conv", "fc", "fc"]


def test_dense_branches_are_named_dense():
    cert = iresnet.certify(_image_flow(branch="dense", dense_depth=2, dense_growth=4))
    assert [b.kind for b in cert.blocks] == ["dense conv", "dense conv", "fc", "fc"]


def test_kind_survives_json_and_an_older_certificate_still_reads():
    cert = iresnet.certify(_image_flow())
    data = json.loads(json.dumps(cert.to_dict()))
    assert [b["kind"] for b in data["blocks"]] == ["conv", "conv", "fc", "fc"]
    assert Certificate.from_dict(data) == cert
    # the JSON's name of a block's bound reads on the object too (it raised AttributeError)
    assert [b.lipschitz for b in cert.blocks] == [b["lipschitz"] for b in data["blocks"]]
    assert [b.lipschitz for b in cert.blocks] == [b.bound for b in cert.blocks]
    for b in data["blocks"]:
        del b["kind"]  # an eval.json written before the field existed
    old = Certificate.from_dict(data)
    assert [b.kind for b in old.blocks] == [""] * 4
    assert str(old).splitlines()[2].split()[1] == "-"
