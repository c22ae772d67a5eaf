"""ActNorm: a per-channel affine transform with data-dependent initialisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_input, check_size
from ..errors import DataError
from .base import Transform

__all__ = ["ActNorm"]


class ActNorm(Transform):
    """Per-channel affine map ``y = (x + b) * exp(s)`` with data-dependent initialisation.

    Glow's actnorm (sec. 3.1), parametrised by a log-scale ``s`` so the scale stays positive.
    Initialised on the first training batch: ``b = -mean``, ``s = -log std`` per channel, so
    activations start standardised. A channel with (near-)zero spread keeps ``s = 0`` instead of
    dividing by zero. The ``initialized`` buffer is saved with the weights, so a loaded model is
    never re-initialised. Residual Flows puts one before and after every residual block
    (app. E).

    Arguments:
        num_features: channels ``C``.
        eps: spread below which a channel is treated as constant.

    Shapes:
        ``x``, ``y``: ``(B, C)`` or ``(B, C, H, W)``; ``logdet = H W sum(s)``, shape ``(B,)``
        (``H W = 1`` for vectors).

    Raises:
        TypeError: ``forward`` of an input that is not a tensor.
        DataError: ``forward`` of an empty, boolean, complex or integer input, one of another
            dtype or device than the layer, or one without ``C`` channels in dimension 1.

    References:
        - Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
          NeurIPS 2018, arXiv:1807.03039, sec. 3.1.

    Examples:
        >>> import torch
        >>> layer = ActNorm(2)
        >>> y, logdet = layer(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # initialises on it
        >>> y.tolist(), logdet.tolist()  # standardised per channel; log-det -log(1 * 2)
        ([[-1.0, -1.0], [1.0, 1.0]], [-0.6931471824645996, -0.6931471824645996])
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps
        self._seen_initialized = False

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b``, ``s`` from a batch ``x`` (called automatically on the first training call).

        Args:
            x: ``(B, C)`` or ``(B, C, H, W)``; statistics over every dimension but ``C``.

        Raises:
            DataError: an empty batch (nothing is changed).
        """
        if x.shape[0] == 0:
            raise DataError(
                "ActNorm: cannot initialise on an empty batch; pass at least one sample"
            )
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False) if x.numel() > x.shape[1] else torch.ones_like(mean)
        safe = std > self.eps
        self.bias.copy_(-mean)
        self.log_scale.copy_(
            torch.where(safe, -torch.log(std.clamp_min(self.eps)), torch.zeros_like(std))
        )
        self.initialized.fill_(True)

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._seen_initialized = False
        super()._load_from_state_dict(*args, **kwargs)

    def is_initialized(self) -> bool:
        """Whether ``b`` and ``s`` are set, read from the ``initialized`` buffer once and then
        remembered (a host synchronisation, and a graph break under ``torch.compile``; loading a
        state dict reads it again). Call it eagerly before compiling a loaded model."""
        if not self._seen_initialized:
            self._seen_initialized = bool(self.initialized)
        return self._seen_initialized

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, "ActNorm", like=self)
        check_size(x, "ActNorm", 1, self.bias.numel(), "channels")
        if self.training and not self.is_initialized():
            self.initialize(x)
            self._seen_initialized = True
        y = (x + self._view(self.bias, x)) * self._view(self.log_scale, x).exp()
        spatial = x.shape[2:].numel()
        logdet = (self.log_scale.sum() * spatial).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return y * self._view(-self.log_scale, y).exp() - self._view(self.bias, y)

    def inverse_lipschitz(self) -> float:
        """``max_c exp(-s_c)``: the largest per-channel factor of the inverse."""
        return float(torch.exp(-self.log_scale.detach().double()).max())
