"""BYOL / SimSiam cosine objectives: formulas, stop-gradient, the closed-form cosine backward (§6.3, §9, §10)."""

import torch
from conftest import assert_close, randn
from fusedssl import kernels


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def test_byol_and_simsiam_values():
    p1, p2, z1, z2 = (randn(7, 5) for _ in range(4))
    assert_close(kernels.byol_loss(p1, p2, z1, z2), (2 - 2 * _cos(p1, z2)).mean() + (2 - 2 * _cos(p2, z1)).mean())
    assert_close(kernels.simsiam_loss(p1, p2, z1, z2), -0.5 * (_cos(p1, z2).mean() + _cos(p2, z1).mean()))


def test_stop_gradient_on_targets_and_cosine_backward():
    """d(-2 p^.t^)/dp = -2 (t^ - p^(p^.t^)) / ||p||; targets receive no gradient."""
    p1, p2 = randn(6, 4, requires_grad=True), randn(6, 4, requires_grad=True)
    z1, z2 = randn(6, 4, requires_grad=True), randn(6, 4, requires_grad=True)
    loss = kernels.byol_loss(p1, p2, z1, z2)
    loss.backward()
    assert z1.grad is None and z2.grad is None
    ph = torch.nn.functional.normalize(p1.detach(), dim=1)
    th = torch.nn.functional.normalize(z2.detach(), dim=1)
    expected = -2 * (th - ph * (ph * th).sum(1, keepdim=True)) / p1.detach().norm(dim=1, keepdim=True) / 6
    assert_close(p1.grad, expected, what="dp")


def test_gradcheck():
    p1, p2 = randn(3, 4, requires_grad=True), randn(3, 4, requires_grad=True)
    z1, z2 = randn(3, 4), randn(3, 4)
    assert torch.autograd.gradcheck(lambda a, b: kernels.byol_loss(a, b, z1, z2, backend="torch"), (p1, p2))
    assert torch.autograd.gradcheck(lambda a, b: kernels.simsiam_loss(a, b, z1, z2, backend="torch"), (p1, p2))
