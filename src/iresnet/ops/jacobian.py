"""Per-sample Jacobians of samplewise maps, in forward mode where the layers allow it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["jacobian", "linearize", "linearize_adjoint"]

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


class Samplewise(NamedTuple):
    """A layer's input with its autograd graph, as the target of a cotangent given sample by
    sample (``linearize_adjoint(..., graph=True)``)."""

    tensor: Tensor


Pairs = list[tuple[Any, Tensor]]
"""``(target, gradient)``: the target is a parameter, a tensor whose autograd graph leads to
the parameters, or an object with ``param`` and ``pullback`` (gradient of the computed tensor
-> gradient of ``param``: ``iresnet.nn.Pullback``)."""
ClosedGrad = Callable[[Tensor], tuple[Tensor | None, Pairs]]


def linearize_adjoint(
    g: G, x: Tensor, tangents: Tensor, *, graph: bool = False
) -> tuple[Tensor, Callable[[Tensor], Tensor], ClosedGrad, ClosedGrad] | None:
    """``g(x)``, ``w -> w J_g(x)``, and the gradients of ``sum_p c_p^T J_g(x) t_p`` and of
    ``r^T g(x)`` in closed form, where ``g`` allows it; None otherwise.

    The Neumann-series gradient (Residual Flows Theorem 2) is the gradient of the surrogate
    ``S = sum_p c_p^T J_g(x) t_p`` with respect to ``x`` and the parameters, for fixed ``c``
    and probes ``t``. For a chain ``g = f_L o ... o f_1`` the tangents are pushed forward once
    (``t_l = J_{f_l} t_{l-1}``), and the gradient is one pass back through the chain carrying
    two cotangents: ``c`` of the tangents (``c_{l-1} = J_{f_l}^T c_l``) and ``r`` of the layer
    outputs, fed by the tangent map's dependence on the layer's input (an activation's
    ``f''``: ``r_{l-1} = J_{f_l}^T r_l + f_l''(x_l) sum_p c_p t_p``); each layer gives the
    gradients of the tensors it used (normalised weights, biases, ``beta``). The gradient of
    ``r^T g(x)`` (the backward pass of ``g``) is the same pass with ``c = 0``. No autograd
    graph is built for ``g(x)``, ``J v`` or the slopes: a few matrix products (or
    convolutions) and element-wise products per layer replace autograd's walk through them,
    and the pass for ``r`` keeps as many tensors as autograd's graph of ``g`` would.

    Args:
        g: a samplewise map; a ``nn.Sequential`` whose layers all offer
            ``linearize_adjoint(x, t) -> (f(x), J_f t, vjp, adjoint)`` (the spectral layers
            and LipSwish; with ``graph``, ``linearize_adjoint(x, t, graph=True)``) is handled,
            anything else returns None.
        x: ``(B, *event)``.
        tangents: ``(m, B, *event)``, the probes.
        graph: give ``g(x)`` its autograd graph (to ``x`` and the parameters) for autograd's
            backward pass, instead of ``grad``'s (the memory-efficient route that
            ``torch.compile`` traces). ``surrogate_grad`` then carries no cotangent back
            through the chain: it returns None for ``x`` and, among its pairs, each layer's
            share of the cotangent of its own input, as ``(Samplewise(input), cotangent)``
            (the input with its graph), for autograd to carry back with the loss's.

    Returns:
        None, or ``(g(x), vjp, surrogate_grad, grad)``, none with a graph (but ``g(x)`` with
        ``graph``): ``vjp(w) = w
        J_g(x)``; ``surrogate_grad(c)`` for ``c`` of the tangents' shape (called at most once:
        the pushed tangents are released then) and ``grad(r)`` for ``r`` of ``g(x)``'s shape
        return the gradient with respect to ``x`` (None where it is zero) and
        ``(target, gradient)`` pairs for the differentiable tensors of ``g``: parameters,
        tensors whose graphs lead to them, or closed-form pullbacks of the normalised weights
        and ``beta`` to them (objects with ``param`` and ``pullback``).

    Examples:
        >>> from iresnet.nn import mlp_branch
        >>> g = mlp_branch(2, (8,)).eval()  # eval: every call applies the same weights
        >>> x, v = torch.randn(4, 2, requires_grad=True), torch.randn(1, 4, 2)
        >>> gx, vjp, surrogate_grad, grad = linearize_adjoint(g, x, v)
        >>> grad_x, pairs = surrogate_grad(v)
        >>> _, jv, _ = linearize(g, x, v)  # J v with its graph
        >>> torch.allclose(grad_x, torch.autograd.grad((jv * v).sum(), x)[0], atol=1e-5)
        True
    """
    if not (isinstance(g, nn.Sequential) and all(hasattr(m, "linearize_adjoint") for m in g)):
        return None
    h, t, backs, adjoints, inputs = x, tangents, [], [], []
    for layer in g:
        inputs.append(h)
        if graph:  # a keyword the layers' protocol added later: asked for only when used
            h, t, back, adjoint = layer.linearize_adjoint(h, t, graph=True)
        else:
            h, t, back, adjoint = layer.linearize_adjoint(h, t)
        backs.append(back)
        adjoints.append(adjoint)
    backs.reverse()
    adjoints.reverse()
    inputs.reverse()
    last = len(adjoints) - 1

    def vjp(w: Tensor) -> Tensor:
        with torch.no_grad():
            for back in backs:
                w = back(w)
        return w

    def surrogate_grad(c: Tensor) -> tuple[Tensor | None, Pairs]:
        cc: Tensor | None = c
        r: Tensor | None = None
        pairs: Pairs = []
        for i, adjoint in enumerate(adjoints):
            if graph:
                # Each layer's own share of the cotangent of its input goes to that input's
                # graph, where autograd's backward pass of g carries it together with the
                # loss's own cotangent (one pass back through the chain, not two).
                cc, r, layer_pairs = adjoint(cc, None, i < last)
                if r is not None:
                    pairs.append((Samplewise(inputs[i]), r))
            else:
                cc, r, layer_pairs = adjoint(cc, r, i < last)
            pairs += layer_pairs
        return (None, pairs) if graph else (r, pairs)

    def grad(r: Tensor) -> tuple[Tensor | None, Pairs]:
        rr: Tensor | None = r
        pairs: Pairs = []
        for adjoint in adjoints:
            _, rr, layer_pairs = adjoint(None, rr, False)
            pairs += layer_pairs
        return rr, pairs

    return h, vjp, surrogate_grad, grad


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
