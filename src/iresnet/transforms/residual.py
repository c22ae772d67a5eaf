"""The invertible residual block ``y = x + g(x)``.

Invertible when ``Lip(g) < 1`` (i-ResNet, Theorem 1), inverted by the Banach fixed point
(i-ResNet Algorithm 1), its log-det ``log det(I + J_g)`` estimated by a
[`LogDetEstimator`][iresnet.ops.logdet.LogDetEstimator] (exact, i-ResNet's power series or
Residual Flows' Russian roulette).

References:
    - Behrmann et al., "Invertible Residual Networks", ICML 2019, arXiv:1811.00995.
    - Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019,
      arXiv:1906.02735.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_input
from ..errors import DataError
from ..nn import ConditionalBranch, bind_context, frozen_normalisation, lipschitz_bound_of
from ..nn.attributes import temporarily_set
from ..nn.spectral import SpectralConv2d, conv_layout, float64_forward
from ..ops import (
    FixedPointInverse,
    LogDetEstimator,
    PowerSeriesLogDet,
    compile_options,
    logdet_estimator,
)
from .base import InverseReport, Transform

__all__ = ["InvertibleResidualBlock", "compile_blocks", "set_branch_precision", "swap_logdets"]


class _AutocastBranch(nn.Module):
    """Runs ``g`` under autocast (bf16/fp16) and returns float32, so the log-det series, its
    accumulation and the fixed-point inverse stay in float32 while the matmuls run cheaper."""

    def __init__(self, g: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.g, self.dtype = g, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.g(x)
        return out.to(x.dtype)

    @property
    def grad_inputs(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self.g, "grad_inputs", ()))


class InvertibleResidualBlock(Transform):
    """Residual block ``y = x + g(x)``, invertible when ``Lip(g) < 1`` (i-ResNet Theorem 1).

    ``forward`` returns ``y`` and the log-det ``log det(I + J_g(x))`` from ``logdet_estimator``
    (one graph of ``g`` serves both). ``inverse`` solves ``x + g(x) = y`` by fixed-point iteration
    (i-ResNet Algorithm 1) with the spectral layers frozen; in eval mode the certified
    ``Lip(g)`` gives the a-priori error bound of i-ResNet eq. (1) in the diagnostics.

    With a conditional branch ``g(x, c)``
    ([`ConditionalBranch`][iresnet.nn.conditional.ConditionalBranch]) the block is conditional,
    ``y = x + g(x, c)``: ``forward``, ``inverse`` and ``inverse_with_diagnostics`` take the
    contexts as ``c=`` ``(B, k)``; the log-det is that of the Jacobian in ``x`` only, and the
    inverse solves for ``x`` at the given ``c``. The branch's bound in ``x`` holds for every
    context, so the block is invertible for every context.

    Arguments:
        g: the residual branch, a samplewise ``nn.Module`` built from Lipschitz-constrained
            layers (e.g. [`mlp_branch`][iresnet.nn.branches.mlp_branch]) so that
            ``Lip(g) < 1``, or a conditional one
            ([`conditional_mlp_branch`][iresnet.nn.conditional.conditional_mlp_branch]).
        logdet: estimator of ``log det(I + J_g)`` (default
            [`PowerSeriesLogDet`][iresnet.ops.logdet.PowerSeriesLogDet]); the attribute
            ``logdet_estimator`` may be swapped any time (e.g. exact at evaluation, see
            [`swap_logdets`][iresnet.transforms.residual.swap_logdets]).
        inverse: solver of ``x + g(x) = y`` (default
            [`FixedPointInverse`][iresnet.ops.fixed_point.FixedPointInverse]); attribute
            ``inverse_solver``. Estimators and solvers keep no state, so blocks may share them.

    Shapes:
        ``x``, ``y``: ``(B, *event)``; ``logdet``: ``(B,)``, in nats.

    Raises:
        InverseNotConvergedError: from ``inverse`` when the solver's ``on_failure="raise"`` and
            a sample does not converge (with ``"warn"``, an ``InverseNotConvergedWarning``).
        DataError: an empty, boolean, complex or integer input, one of another dtype or device
            than ``g``, a conditional block called without contexts, an unconditional one with
            contexts, or contexts whose batch does not match.
        TypeError: an input that is not a tensor.
        ValueError: from ``forward`` with an [`ExactLogDet`][iresnet.ops.logdet.ExactLogDet],
            an input of more than its ``max_dim`` values per sample.

    References:
        - Behrmann et al., arXiv:1811.00995, sec. 2-3, Theorem 1, Algorithm 1.

    Examples:
        >>> import torch, iresnet
        >>> g = torch.nn.Sequential(iresnet.SpectralLinear(2, 16, coeff=0.9), iresnet.LipSwish(),
        ...                         iresnet.SpectralLinear(16, 2, coeff=0.9))
        >>> block = iresnet.InvertibleResidualBlock(g, logdet=iresnet.ExactLogDet()).eval()
        >>> x = torch.randn(5, 2)
        >>> y, logdet = block(x)
        >>> bool(torch.allclose(block.inverse(y), x, atol=1e-5)), tuple(logdet.shape)
        (True, (5,))
    """

    # Set by ``compile_blocks``: the compiled training forward (shared by the blocks) and
    # whether this block's first training call ran. Class defaults: a block pickled before
    # they existed still loads.
    _compiled_forward: Callable[..., Any] | None = None
    _compiled_primed: bool = False

    def __init__(
        self,
        g: nn.Module,
        logdet: LogDetEstimator | None = None,
        inverse: FixedPointInverse | None = None,
    ) -> None:
        super().__init__()
        self.g = g
        self.logdet_estimator: LogDetEstimator = (
            logdet if logdet is not None else PowerSeriesLogDet()
        )
        self.inverse_solver: FixedPointInverse = (
            inverse if inverse is not None else FixedPointInverse()
        )
        # ``torch.bfloat16``/``torch.float16`` runs ``g`` under autocast (mixed precision);
        # set by ``set_branch_precision``.
        self.branch_dtype: torch.dtype | None = None
        # A branch with the spectral convolutions runs them in their fastest layout
        # (``conv_layout``); the block then keeps its input in it too.
        self._convolutional = any(isinstance(m, SpectralConv2d) for m in g.modules())

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles are not compiled (a compiled function does not pickle); call
        ``compile_blocks`` on them."""
        state = super().__getstate__()
        state.pop("_compiled_forward", None)
        state.pop("_compiled_primed", None)
        return state  # type: ignore[no-any-return]

    @property
    def conditional(self) -> bool:  # type: ignore[override]
        """Whether the branch takes a context (a ``ConditionalBranch``)."""
        return isinstance(self.g, ConditionalBranch)

    def _bound(self, x: Tensor, c: Tensor | None, where: str) -> nn.Module:
        """``g`` as a map of ``x`` alone: bound to the contexts ``c`` when conditional."""
        if not self.conditional:
            if c is not None:
                raise DataError(f"{where}: this block is not conditional; call it without c=")
            return self.g
        if c is None:
            raise DataError(
                f"{where}: this block is conditional; pass the contexts as c=, shape "
                f"(batch, {self.g.context})"
            )
        if c.dim() != 2 or c.shape[0] != x.shape[0]:
            raise DataError(
                f"{where}: expected contexts of shape ({x.shape[0]}, {self.g.context}), one per "
                f"sample, got {tuple(c.shape)}"
            )
        return bind_context(self.g, c)  # type: ignore[arg-type]

    def _branch(self, g: nn.Module) -> nn.Module:
        return g if self.branch_dtype is None else _AutocastBranch(g, self.branch_dtype)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        compiled = self._compiled_forward
        if (
            compiled is not None
            and self.training
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            if self._compiled_primed:
                return compiled(self, x, c)  # type: ignore[no-any-return]
            out = self._forward(x, c)  # the first call sets up what depends on the data
            self._compiled_primed = True
            return out
        return self._forward(x, c)

    def _forward(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        check_input(x, "InvertibleResidualBlock", like=self.g)
        g = self._bound(x, c, "InvertibleResidualBlock")
        if self._convolutional:
            # x + g(x) takes x's layout: channels-last from here on, as g's convolutions run
            x = conv_layout(x)
        gx, logdet = self.logdet_estimator(self._branch(g), x)
        return x + gx, logdet

    def inverse(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        return self.inverse_with_diagnostics(y, c=c)[0]

    def _inverse_lipschitz_bound(self, y: Tensor, c: Tensor | None) -> float | None:
        """The certified ``L`` an inverse's error bound uses: in eval mode only (in training the
        weights move every step and certifying each call would cost more than the solve)."""
        if self.training:
            return None
        with torch.no_grad():
            # a convolution learns the input size its norm depends on
            self.g(y[:1], c[:1]) if c is not None else self.g(y[:1])
        return self.lipschitz_bound()

    def inverse_with_diagnostics(
        self, y: Tensor, c: Tensor | None = None
    ) -> tuple[Tensor, InverseReport]:
        """The fixed-point inverse and the report of its one solve: its
        [`InverseDiagnostics`][iresnet.ops.fixed_point.InverseDiagnostics] and, in eval mode,
        the certified error of the computed ``x``: ``||y - x - g(x)|| / (1 - L)`` with the
        residual evaluated in float64 and ``L`` this block's certified bound (this replaces the
        solver's exact-arithmetic ``a_posteriori_bound``, which rounding can undercut)."""
        # In eval mode the certified L gives the a-priori Banach bound in the diagnostics; in
        # training mode the weights move every step and certifying each call would cost more.
        check_input(y, "InvertibleResidualBlock.inverse", like=self.g)
        g = self._bound(y, c, "InvertibleResidualBlock.inverse")
        lipschitz = self._inverse_lipschitz_bound(y, c)
        with frozen_normalisation(self.g):
            # The branch runs in full precision: a bf16 branch has a precision floor far above
            # the solver's tolerance.
            x, diagnostics = self.inverse_solver.solve(
                g, y, lipschitz=lipschitz, where=type(self).__name__
            )
        if lipschitz is not None:
            diagnostics.a_posteriori_bound = self._residual_bound(g, x, y, lipschitz)
        return x, InverseReport([diagnostics], diagnostics.a_posteriori_bound)

    def _residual_bound(
        self, g: nn.Module, x: Tensor, y: Tensor, lipschitz: float
    ) -> Tensor | None:
        """``||x - x*|| <= ||y - x - g(x)|| / (1 - L)`` per sample, the residual evaluated in
        float64 (``x -> x + g(x)`` shrinks distances by at most ``1 - L``), so the bound holds
        for the computed ``x`` whatever the rounding of the solve; a relative ``1e-9`` of the
        sizes involved covers float64's own rounding. None where ``g`` has a layer that cannot
        be evaluated in float64, or ``L >= 1``."""
        if not lipschitz < 1:
            return None
        g64 = float64_forward(g, x.detach())
        if g64 is None:
            return None
        x64, y64 = x.detach().double(), y.detach().double()
        residual = (y64 - x64 - g64).flatten(1).norm(dim=1)
        scale = y64.flatten(1).norm(dim=1) + x64.flatten(1).norm(dim=1) + g64.flatten(1).norm(dim=1)
        return (residual + 1e-9 * scale) / (1.0 - lipschitz)

    def inverse_lipschitz(self) -> float:
        """``1 / (1 - L)`` with ``L`` the certified ``Lip(g)`` (i-ResNet, arXiv:1811.00995,
        Lemma 2); ``inf`` where ``L >= 1`` or unknown."""
        try:
            lip = self.lipschitz_bound()
        except RuntimeError:  # a convolution that has not seen an input: no known norm
            return math.inf
        return 1.0 / (1.0 - lip) if lip < 1 else math.inf

    def lipschitz_bound(self) -> float:
        """Upper bound of ``Lip(g)`` from its layers' norms in force now (``inf`` if unknown);
        for a conditional branch, of ``Lip_x(g(., c))`` for every context ``c``.

        See [`lipschitz_bound_of`][iresnet.nn.lipschitz.lipschitz_bound_of].

        A convolution of ``g`` that has not yet seen an input contributes ``inf``.

        Raises:
            ValueError: a spectral layer of ``g`` whose weight has NaN or infinite entries.
        """
        return lipschitz_bound_of(self.g)


def _block_forward(
    block: InvertibleResidualBlock, x: Tensor, c: Tensor | None
) -> tuple[Tensor, Tensor]:
    """What ``compile_blocks`` compiles: a block's forward, the block an argument."""
    return block._forward(x, c)


def compile_blocks(
    model: nn.Module,
    device: torch.device | str = "cpu",
    *,
    backend: str | Callable[..., Any] = "inductor",
    eager_first: bool = True,
) -> nn.Module:
    """Compile the training forward of every residual block of ``model``, in place.

    The unit ``torch.compile`` sees is one block (its branch, log-det estimator and the
    gradients they carry), with the block an argument: blocks of the same structure, input
    shape and estimator share one compiled graph, so compiling a 32-block flow costs what one
    block costs, where compiling the whole training step (``compile_after_first_call``) traces
    and compiles every block anew and grows with the depth. What lies between the blocks
    (ActNorm, squeezes, the base density, the flow's input check) stays eager.

    Only the training forward with autograd on is compiled: evaluation (``eval()`` or
    ``torch.no_grad()``), sampling and inverses run eagerly, so they trigger no compilation.
    Blocks with a forward of their own (``MonotoneBlock``: its inverse's implicit gradient runs
    autograd in the backward pass) stay eager. Copies (``copy.deepcopy``) and pickles
    (``torch.save``) of the model are not compiled.
    With ``eager_first``, each block's first training call after ``compile_blocks`` runs
    eagerly: on a fresh model it sets up what depends on the data (a convolution's
    power-iteration vectors for the input size) with host reads that would otherwise split the
    compiled graph for good.

    Args:
        model: any module; its ``InvertibleResidualBlock``s are compiled.
        device: where it runs (for inductor's options,
            [`compile_options`][iresnet.ops.compiling.compile_options]).
        backend: ``torch.compile``'s backend; the options go to inductor only.
        eager_first: run each block's first training call eagerly; pass False for a model
            restored from a checkpoint of a compiled run (its set-up is done), so that its
            steps are the uninterrupted run's, bit for bit.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: nothing to compile; or a block whose training backward is a double
            backward, which ``torch.compile`` does not trace: a conditional block or one
            under mixed precision (``set_branch_precision``: their branch's Jacobian goes
            through autograd), or a series estimator without the Neumann gradient.

    Examples:
        >>> import torch, iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=2, hidden_features=(8,), logdet="exact")
        >>> flow = compile_blocks(flow, backend="eager")
        >>> loss = -flow.log_prob(torch.randn(16, 2)).mean()  # first call: eager
        >>> loss = -flow.log_prob(torch.randn(16, 2)).mean()  # compiled blocks
        >>> with torch.no_grad():  # evaluation stays eager
        ...     tuple(flow.log_prob(torch.zeros(3, 2)).shape)
        (3,)
    """
    blocks = [
        m
        for m in model.modules()
        if isinstance(m, InvertibleResidualBlock)
        and type(m).forward is InvertibleResidualBlock.forward
    ]
    if not blocks:
        raise ValueError(
            "compile_blocks found no residual block to compile (blocks with a forward of "
            "their own, such as MonotoneBlock, stay eager)"
        )
    for b in blocks:
        why = (
            "a conditional block"
            if b.conditional
            else "a block under mixed precision (set_branch_precision)"
            if b.branch_dtype is not None
            else "a series estimator without neumann_gradient=True"
            if getattr(b.logdet_estimator, "neumann_gradient", True) is False
            else None
        )
        if why is not None:
            raise ValueError(
                f"compile_blocks cannot compile {why}: its training backward is a double "
                "backward, which torch.compile does not trace"
            )
    options = compile_options(device) if backend == "inductor" else None
    # A copy of the code per call: dynamo keeps its compiled graphs (and its limit of
    # recompilations) per code object, so models compiled one after another in a process
    # (a sweep) do not share, and exhaust, one cache.
    forward = types.FunctionType(
        _block_forward.__code__.replace(), _block_forward.__globals__, "_block_forward"
    )
    compiled = torch.compile(forward, backend=backend, options=options)
    for block in blocks:
        block._compiled_forward, block._compiled_primed = compiled, not eager_first
    return model


def set_branch_precision(model: nn.Module, precision: str) -> None:
    """Mixed precision where it is safe: run every residual branch ``g`` under autocast.

    With ``"bf16"``/``"fp16"`` the branches' matrix products run in that dtype and return the
    input's dtype, while the log-det series, its accumulation and the fixed-point inverse stay in
    full precision (the inverse always runs the branch in full precision); ``"fp32"`` turns it
    off.

    Args:
        model: any module; its residual blocks are set.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: an unknown ``precision``.
    """
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {list(dtypes)}, got {precision!r}")
    for m in model.modules():
        if isinstance(m, InvertibleResidualBlock):
            m.branch_dtype = dtypes[precision]


@contextlib.contextmanager
def swap_logdets(model: nn.Module, estimator: LogDetEstimator | str | None) -> Iterator[None]:
    """Inside the block every residual block of ``model`` uses ``estimator``.

    The previous estimators are restored on exit, also after an error. Typical use: exact
    log-dets for evaluation of a model trained with a stochastic estimator.

    Args:
        model: any module.
        estimator: the estimator to use, a name (``"exact"``, ``"series"``, ``"roulette"``,
            ``"stratified"``, ``"none"``; see
            [`logdet_estimator`][iresnet.ops.logdet.logdet_estimator]), or None to leave the
            blocks as they are.

    Raises:
        ValueError: an unknown name, or ``"roulette-auto"`` / ``"stratified-auto"`` (a name
            carries no Lipschitz bound to choose from: pass an estimator built with
            ``lipschitz=``).

    Examples:
        >>> import torch, iresnet
        >>> flow = iresnet.ResidualFlow(2, transforms=1, hidden_features=(4,), logdet="roulette")
        >>> with swap_logdets(flow, iresnet.ExactLogDet()):
        ...     exact = flow.log_prob(torch.zeros(1, 2))
        >>> type(flow.transform[1].logdet_estimator).__name__
        'RussianRouletteLogDet'
    """
    if isinstance(estimator, str):
        estimator = logdet_estimator(estimator)
    if estimator is None:
        yield
        return
    with temporarily_set(model, InvertibleResidualBlock, "logdet_estimator", estimator):
        yield
