"""Property-based invertibility over random widths, depths, coefficients and shapes."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import iresnet


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(1, 6),
    hidden=st.integers(1, 24),
    depth=st.integers(1, 4),
    coeff=st.floats(0.1, 0.95),
    batch=st.integers(1, 9),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 2**16),
)
def test_mlp_flows_invert(dim, hidden, depth, coeff, batch, scale, seed):
    torch.manual_seed(seed)
    blocks = []
    for _ in range(depth):
        g = nn.Sequential(
            iresnet.SpectralLinear(dim, hidden, coeff=coeff),
            iresnet.LipSwish(),
            iresnet.SpectralLinear(hidden, dim, coeff=coeff),
        )
        blocks.append(
            iresnet.InvertibleResidualBlock(
                g,
                logdet=iresnet.ExactLogDet(),
                inverse=iresnet.FixedPointInverse(
                    atol=1e-12, rtol=0.0, max_iter=1000, on_failure="raise"
                ),
            )
        )
    flow = iresnet.Flow(blocks, event_shape=(dim,)).double().eval()
    x = scale * torch.randn(batch, dim, dtype=torch.float64)
    with torch.no_grad():
        z, _ = flow.transform(x)
        assert (flow.inverse(z) - x).abs().max() <= 1e-9 * max(1.0, scale)
    assert iresnet.certify(flow).invertible


@settings(max_examples=10, deadline=None)
@given(
    channels=st.integers(1, 3),
    size=st.sampled_from([2, 4, 6]),
    coeff=st.floats(0.3, 0.9),
    kernel=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16),
)
def test_conv_blocks_invert(channels, size, coeff, kernel, seed):
    torch.manual_seed(seed)
    g = nn.Sequential(
        iresnet.SpectralConv2d(channels, 4, kernel, padding=kernel // 2, coeff=coeff),
        iresnet.LipELU(),
        iresnet.SpectralConv2d(4, channels, kernel, padding=kernel // 2, coeff=coeff),
    )
    block = (
        iresnet.InvertibleResidualBlock(
            g,
            inverse=iresnet.FixedPointInverse(
                atol=1e-12, rtol=0.0, max_iter=1000, on_failure="raise"
            ),
        )
        .double()
        .eval()
    )
    x = torch.randn(3, channels, size, size, dtype=torch.float64)
    with torch.no_grad():
        y, _ = block(x)
        assert (block.inverse(y) - x).abs().max() <= 1e-9
