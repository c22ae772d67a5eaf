"""Per-sample Jacobians of samplewise maps, in forward mode where the layers allow it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["jacobian", "linearize"]

G = Callable[[Tensor], Tensor]


def _forward_jacobian(g: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Jacobian by propagating ``d`` tangents through a chain of layers that offer
    ``jvp(x, t) -> (f(x), J_f(x) t)`` (forward mode, one pass, no double backward)."""
    b, d = x.shape[0], x[0].numel()
    t = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, 1, *x.shape[1:]).expand(d, *x.shape)
    h = x
    for layer in g:
        h, t = layer.jvp(h, t)
    return h, t.reshape(d, b, d).permute(1, 2, 0)


def linearize(
    g: G, x: Tensor, tangents: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Callable[[Tensor], Tensor] | None]:
    """``g(x)`` and ``J_g(x) t`` with their graphs, and ``w -> w J_g(x)`` in closed form, where
    ``g`` allows it.

    A ``nn.Sequential`` whose layers all offer ``linearize(x, t) -> (f(x), J_f t, vjp)`` (the
    spectral layers and the Lipschitz activations) caches what its vector-Jacobian products need
    (the normalised weights, the activations' slopes) in one forward pass that also pushes the
    tangents (forward mode, so the gradient of ``w^T J t`` is a first-order backward pass, not a
    double backward); each product is then a chain of matrix products, transposed convolutions
    and element-wise scalings, without autograd's graph walk. For any other ``g`` only ``g(x)``
    is returned, with None for the rest (use autograd).

    Args:
        g: a samplewise map.
        x: ``(B, *event)``.
        tangents: ``(d, B, *event)`` or None.

    Returns:
        ``g(x)`` (differentiable as ``g(x)`` is); ``J_g(x) t`` of the tangents' shape
        (differentiable; None without tangents or for other maps); ``vjp`` with
        ``vjp(w) = w J_g(x)`` for ``w`` of ``g(x)``'s shape (equal to
        ``torch.autograd.grad(g(x), x, w)`` up to rounding; never differentiable), or None.

    Examples:
        >>> from iresnet.nn import mlp_branch
        >>> g = mlp_branch(2, (8,))
        >>> x = torch.randn(4, 2, requires_grad=True)
        >>> gx, _, vjp = linearize(g, x)
        >>> w = torch.randn(4, 2)
        >>> torch.allclose(vjp(w), torch.autograd.grad(gx, x, w)[0], atol=1e-6)
        True
    """
    if not (isinstance(g, nn.Sequential) and all(hasattr(m, "linearize") for m in g)):
        return g(x), None, None
    h, t, backs = x, tangents, []
    for layer in g:
        h, t, back = layer.linearize(h, t)
        backs.append(back)
    backs.reverse()

    def vjp(w: Tensor) -> Tensor:
        with torch.no_grad():
            for back in backs:
                w = back(w)
        return w

    return h, t, vjp


def _supports_forward_jacobian(g: G) -> bool:
    return isinstance(g, nn.Sequential) and all(callable(getattr(m, "jvp", None)) for m in g)


def jacobian(g: G, x: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Per-sample Jacobian of ``g`` at ``x``.

    A ``nn.Sequential`` of layers with a ``jvp`` method (the spectral layers and the Lipschitz
    activations) is differentiated in forward mode, which costs about ``D`` forward passes and
    no double backward; anything else by batched reverse-mode autograd (``D`` vector-Jacobian
    products). Both are differentiable when ``create_graph`` (forward mode: when autograd is on).

    Args:
        g: a map applied samplewise (no coupling across the batch).
        x: ``(B, *event)``.
        create_graph: keep the graph so the Jacobian is differentiable.

    Returns:
        ``(g(x), J)`` with ``g(x)`` of the shape of ``x`` and ``J`` of shape ``(B, D, D)``,
            ``D = prod(event)``, ``J[b, i, j] = d g_i(x_b) / d x_j``.

    Examples:
        >>> W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> gx, J = jacobian(lambda x: x @ W.T, torch.zeros(3, 2))
        >>> J.shape, bool(torch.equal(J[0], W))
        (torch.Size([3, 2, 2]), True)
    """
    if _supports_forward_jacobian(g):
        with torch.set_grad_enabled(create_graph):
            return _forward_jacobian(g, x)  # type: ignore[arg-type]
    with torch.enable_grad():
        x_ = x if x.requires_grad else x.detach().requires_grad_()
        gx = g(x_)
        b, d = x.shape[0], x[0].numel()
        basis = torch.eye(d, dtype=x.dtype, device=x.device).reshape(d, 1, *x.shape[1:])
        basis = basis.expand(d, *x.shape)
        try:
            rows = torch.autograd.grad(
                gx, x_, basis, retain_graph=True, create_graph=create_graph, is_grads_batched=True
            )[0]
        except RuntimeError:  # an op without a batching rule: one backward pass per row
            rows = torch.stack(
                [
                    torch.autograd.grad(
                        gx, x_, basis[i], retain_graph=True, create_graph=create_graph
                    )[0]
                    for i in range(d)
                ]
            )
        jac = rows.reshape(d, b, d).transpose(0, 1)
    return gx, jac
