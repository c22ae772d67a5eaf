"""Variational dequantisation (Flow++): learned noise ``v ~ q(v | x)`` instead of ``U[0, 1)``.

For integer levels ``x`` and any density ``q(v | x)`` on ``[0, 1)^D``, the discrete model
``P(x) = E_{v ~ U}[p((x + v) / K)] / K^D`` (see
[`iresnet.transforms.preprocess`][iresnet.transforms.preprocess]) also equals
``E_{v ~ q}[p((x + v) / K) / q(v | x)] / K^D``, and Jensen's inequality gives the ELBO

    log P(x) >= E_{v ~ q}[ log p((x + v) / K) - log q(v | x) ] - D log K.

Uniform dequantisation is the special case ``q = 1``; learning ``q`` jointly with the flow
tightens the bound (Ho et al., Flow++, sec. 3.1, eq. (12)-(13)). The bits per dimension of
``-ELBO`` are therefore an **upper bound** of the model's discrete code length, as the uniform
ones are; the two can be compared on the same model
([`uniform_dequantization`][iresnet.transforms.dequantization.uniform_dequantization]).

``q(v | x)``: ``h_0 ~ Logistic(0, 1)`` (``h_0 = logit(w)``, ``w ~ U[0, 1)``), then ``steps``
affine couplings on ``h`` conditioned on features of ``x`` (a checkerboard mask alternating
between steps; scale ``exp(2 tanh(s/2))``; the last convolution of every conditioner starts at
zero), then ``v = sigmoid(h)``. With the couplings at the identity ``v = w`` exactly, so
training starts from uniform dequantisation and ``log q = 0``.

References:
    - Ho, Chen, Srinivas, Duan, Abbeel, "Flow++: Improving Flow-Based Generative Models with
      Variational Dequantization and Architecture Design", ICML 2019, arXiv:1902.00275,
      sec. 3.1.
    - Theis, van den Oord & Bethge, ICLR 2016, arXiv:1511.01844.
    - Dinh et al., "Density estimation using Real NVP", ICLR 2017, arXiv:1605.08803 (affine
      couplings, checkerboard masks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attributes import temporarily_set
from .preprocess import Dequantize, _check_levels_eagerly

__all__ = ["VariationalDequantize", "uniform_dequantization"]


def _checkerboard(shape: tuple[int, ...], parity: int, like: Tensor) -> Tensor:
    h, w = shape[-2], shape[-1]
    grid = torch.arange(h, device=like.device)[:, None] + torch.arange(w, device=like.device)
    return ((grid + parity) % 2).to(like.dtype).expand(shape[-3], h, w)


class _Coupling(nn.Module):
    """``h -> m h + (1 - m)(h exp(s) + t)``, ``(s, t) = net([m h, context])``."""

    def __init__(self, channels: int, context: int, hidden: int, parity: int) -> None:
        super().__init__()
        self.parity = parity
        last = nn.Conv2d(hidden, 2 * channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(channels + context, hidden, 3, padding=1), nn.ELU(), last
        )

    def forward(self, h: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        m = _checkerboard(tuple(h.shape[1:]), self.parity, h)
        s, t = self.net(torch.cat([h * m, context], dim=1)).chunk(2, dim=1)
        s = 2.0 * torch.tanh(s / 2.0) * (1 - m)
        return h * m + (1 - m) * (h * torch.exp(s) + t), s.flatten(1).sum(1)


class VariationalDequantize(Dequantize):
    """Dequantisation ``u = (x + v) / K`` with ``v ~ q(v | x)`` learned (Flow++ sec. 3.1).

    ``forward(x)`` draws ``v`` by reparameterisation and returns ``u`` and the "log-det"
    ``-D log K - log q(v | x)``, so a flow starting with it returns the one-sample ELBO
    ``log p(u) - D log K - log q(v | x)`` as its ``log_prob`` (module docstring): its negative
    in bits per dimension is an upper bound of the code length, and gradients reach ``q``'s
    parameters through ``v`` (the flow is trained jointly). Inside
    [`uniform_dequantization`][iresnet.transforms.dequantization.uniform_dequantization] it is
    plain uniform dequantisation of the same model. ``inverse`` rounds down, as
    [`Dequantize`][iresnet.transforms.preprocess.Dequantize].

    Arguments:
        levels: ``K``.
        shape: ``(C, H, W)`` of one image.
        hidden: channels of the context network and of each coupling's conditioner.
        steps: affine couplings of ``q`` (checkerboard parity alternates).

    Shapes:
        ``x``: ``(B, C, H, W)`` integer levels; ``u``: same shape; ``logdet``: ``(B,)``.

    Raises:
        ValueError: ``levels < 2``, a shape that is not ``(C, H, W)``, ``hidden < 1`` or
            ``steps < 0``.
        DataError: at call time, a boolean or complex input, levels outside ``0..K-1`` or
            non-integer values.

    References:
        - Ho et al., arXiv:1902.00275, sec. 3.1, eq. (12)-(13).

    Examples:
        >>> t = VariationalDequantize(4, (1, 2, 2), hidden=4)
        >>> x = torch.tensor([[[[0, 1], [2, 3]]]])
        >>> u, logdet = t(x)  # starts as uniform dequantisation: log q = 0
        >>> t.inverse(u).tolist() == x.float().tolist(), [round(v, 4) for v in logdet.tolist()]
        (True, [-5.5452])
    """

    def __init__(
        self, levels: int, shape: tuple[int, ...], *, hidden: int = 32, steps: int = 4
    ) -> None:
        super().__init__(levels)
        if len(shape) != 3:
            raise ValueError(f"VariationalDequantize needs an image shape (C, H, W), got {shape}")
        if hidden < 1 or steps < 0:
            raise ValueError(f"need hidden >= 1 and steps >= 0, got {hidden}, {steps}")
        c = int(shape[0])
        self.shape = tuple(int(s) for s in shape)
        self.context = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ELU(),
        )
        self.couplings = nn.ModuleList(_Coupling(c, hidden, hidden, i % 2) for i in range(steps))
        self.uniform = False

    def sample_noise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``v ~ q(v | x)`` in ``[0, 1]`` (shape of ``x``) and ``log q(v | x)`` ``(B,)``."""
        dt = self._k.dtype
        w = torch.rand(x.shape, dtype=dt, device=x.device)
        return self.noise_from_uniform(x, w.clamp(min=torch.finfo(dt).tiny))

    def noise_from_uniform(self, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """The map ``w -> v`` of ``q(. | x)`` (``w ~ U(0, 1)``: ``h = logit(w)``, couplings,
        ``v = sigmoid(h)``) and ``log q(v | x) = -log |det dv/dw|``."""
        h = torch.log(w) - torch.log1p(-w)  # logistic base: log p(h) = log s(h) + log s(-h)
        log_q = (F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(1)
        if self.couplings:
            context = self.context(x.to(w.dtype) / (self.levels - 1) - 0.5)
            for coupling in self.couplings:
                h, logdet = coupling(h, context)
                log_q = log_q - logdet
        # v = sigmoid(h): log |dv/dh| = log s(h) + log s(-h)
        log_q = log_q - (F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(1)
        return torch.sigmoid(h), log_q

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.uniform:
            return super().forward(x)
        _check_levels_eagerly(x, self.levels)
        v, log_q = self.sample_noise(x)
        u = (x.to(v.dtype) + v) / self.levels
        u = u.clamp(max=1.0 - torch.finfo(u.dtype).eps / 2)  # keep u in its cell, [0, 1)
        return u, -x[0].numel() * math.log(self.levels) - log_q

    def extra_repr(self) -> str:
        return f"levels={self.levels}, shape={self.shape}, steps={len(self.couplings)}"


@contextlib.contextmanager
def uniform_dequantization(model: nn.Module) -> Iterator[None]:
    """Inside the block, every variational dequantisation of ``model``
    ([`VariationalDequantize`][iresnet.transforms.dequantization.VariationalDequantize])
    dequantises uniformly (``v ~ U[0, 1)``, ``log q = 0``): the same flow scored
    with the uniform bound. The previous setting is restored on exit.

    Examples:
        >>> t = VariationalDequantize(4, (1, 2, 2), hidden=4)
        >>> with uniform_dequantization(t):
        ...     t.uniform
        True
        >>> t.uniform
        False
    """
    with temporarily_set(model, VariationalDequantize, "uniform", True):
        yield
