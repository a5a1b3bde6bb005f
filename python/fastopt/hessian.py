"""Diagonal Hessian estimates for :class:`fastopt.Sophia` with PyTorch autograd (exported by
``fastopt.torch``): Sophia's estimators (Liu et al., 2023, Algorithms 1 and 2)."""

from __future__ import annotations

from typing import Sequence

import torch


def gauss_newton_bartlett(logits: torch.Tensor, params: Sequence[torch.Tensor],
                          generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The Gauss-Newton-Bartlett estimate (Algorithm 2): labels ``y`` sampled from
    ``softmax(logits)`` (the model's own distribution), ``g = grad of mean cross_entropy(logits, y)``
    with respect to ``params``, and ``B * g * g`` per param, B the number of samples.

    ``logits``: ``(..., classes)`` from a forward pass with grad enabled (each leading index a
    sample: tokens for a language model); its graph is used once and freed. ``params``: the
    tensors to estimate for (a param the logits do not depend on, or a frozen one, gets zeros). Returns float32
    tensors shaped like the params (as ``update_hessian`` takes them). ``generator``: the
    sampling's random generator (default: torch's global one)."""
    params = list(params)
    wanted = [p for p in params if p.requires_grad]  # (a frozen param: zeros)
    classes = logits.shape[-1]
    flat = logits.reshape(-1, classes).float()
    with torch.no_grad():
        labels = torch.multinomial(torch.softmax(flat, dim=-1), 1, generator=generator).squeeze(-1)
    loss = torch.nn.functional.cross_entropy(flat, labels)
    got = dict(zip(map(id, wanted), torch.autograd.grad(loss, wanted, allow_unused=True)))
    batch = labels.numel()
    grads = [got.get(id(p)) for p in params]
    return [torch.zeros(p.shape, device=p.device) if g is None else batch * g.float() * g.float()
            for g, p in zip(grads, params)]


def hutchinson(loss: torch.Tensor, params: Sequence[torch.Tensor],
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Hutchinson's estimate (Algorithm 1): ``u * (H u)`` per param, ``u ~ N(0, I)`` and ``H u``
    the Hessian-vector product of ``loss`` (a scalar with its graph; used once and freed) by
    double backward. Unbiased, and it may be negative. Returns float32 tensors shaped like the
    params (zeros for a frozen param and where the Hessian is zero: a param unused, or used
    linearly); ``generator`` draws u (default: torch's global one)."""
    params = list(params)
    us = [torch.randn(p.shape, generator=generator, device=p.device, dtype=torch.float32) for p in params]
    wanted = [p for p in params if p.requires_grad]  # (a frozen param: zeros)
    grads = torch.autograd.grad(loss, wanted, create_graph=True, allow_unused=True)
    # (a param the loss does not use, or uses linearly, has a zero Hessian: no product to take)
    pairs = [(p, g) for p, g in zip(wanted, grads) if g is not None and g.requires_grad]
    u_of = {id(p): u for p, u in zip(params, us)}
    hvps = torch.autograd.grad([g for _, g in pairs], [p for p, _ in pairs],
                               grad_outputs=[u_of[id(p)].to(p.dtype) for p, _ in pairs],
                               allow_unused=True) if pairs else []
    hv_of = {id(p): hv for (p, _), hv in zip(pairs, hvps)}
    return [torch.zeros(p.shape, device=p.device) if hv_of.get(id(p)) is None else u * hv_of[id(p)].float()
            for u, p in zip(us, params)]
