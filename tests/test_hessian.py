"""fastopt.torch's diagonal Hessian estimators (python/fastopt/hessian.py) against their
definitions (Sophia, Liu et al. 2023, Algorithms 1 and 2)."""

from __future__ import annotations

import torch

import fastopt.torch as ft


def test_gauss_newton_bartlett_is_b_g_g_on_sampled_labels():
    """B * g * g, g the grad of the mean loss on labels sampled from softmax(logits) (the same
    generator draws them); a param the logits do not depend on gets zeros."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    unused = torch.nn.Parameter(torch.ones(2))
    x = torch.randn(16, 5)
    logits = model(x)
    est = ft.gauss_newton_bartlett(logits, [model.weight, unused], torch.Generator().manual_seed(3))
    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=torch.Generator().manual_seed(3))
    g, = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), labels.squeeze(-1)), [model.weight])
    torch.testing.assert_close(est[0], 16 * g * g)
    assert torch.equal(est[1], torch.zeros(2))


def test_hutchinson_is_u_times_hu():
    """u * (H u), H the explicit Hessian of a small quadratic-plus-cubic loss, u ~ N(0, I) from
    the generator given."""
    w = torch.randn(4, requires_grad=True)
    a = torch.randn(4, 4)

    def loss_of(v):
        return (v @ a @ v) + (v ** 3).sum()

    est = ft.hutchinson(loss_of(w), [w], torch.Generator().manual_seed(4))
    u = torch.randn(4, generator=torch.Generator().manual_seed(4))
    hessian = torch.autograd.functional.hessian(loss_of, w.detach())
    torch.testing.assert_close(est[0], u * (hessian @ u))


def test_frozen_unused_and_linear_params_get_zeros():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    model.bias.requires_grad_(False)
    logits = model(torch.randn(8, 4))
    est = ft.gauss_newton_bartlett(logits, list(model.parameters()))
    assert est[1].abs().sum() == 0 and est[0].abs().sum() > 0
    w, lin, unused = (torch.randn(3, requires_grad=True) for _ in range(3))
    est = ft.hutchinson((w ** 3).sum() + lin.sum(), [w, lin, unused])
    assert est[0].abs().sum() > 0 and torch.equal(est[1], torch.zeros(3)) and torch.equal(est[2], torch.zeros(3))
