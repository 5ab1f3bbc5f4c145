"""NT-Xent: the loop form of the loss, lightly, the gradient in the Gram, and the local-anchor decomposition (§8)."""

import pytest
import torch
from conftest import assert_close, randn
from fusedssl import kernels
from fusedssl.bench import originals


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (9, 4, 0.1), (5, 16, 0.2)])
def test_equals_loop_form(n, d, tau):
    za, zb = randn(n, d), randn(n, d)
    assert_close(kernels.nt_xent_loss(za, zb, temperature=tau), originals.nt_xent(za, zb, tau), what="NT-Xent")


def test_against_lightly():
    loss_mod = pytest.importorskip("lightly.loss")
    za, zb = randn(24, 8), randn(24, 8)
    assert_close(kernels.nt_xent_loss(za, zb, temperature=0.3),
                 loss_mod.NTXentLoss(temperature=0.3)(za, zb), what="vs lightly")


def test_gradient_closed_form():
    """d/dG^ = (softmax_row(S) - Y)/(2N tau) (diagonal excluded), dZ^ = (dG^ + dG^') Z^."""
    n, d, tau = 6, 5, 0.4
    z = randn(2 * n, d)
    zh = torch.nn.functional.normalize(z, dim=1).requires_grad_(True)
    loss = kernels.nt_xent_loss(zh[:n], zh[n:], temperature=tau)
    (g,) = torch.autograd.grad(loss, zh)
    s = zh.detach() @ zh.detach().T / tau
    s.fill_diagonal_(float("-inf"))
    y = torch.zeros(2 * n, 2 * n, dtype=z.dtype)
    y[torch.arange(2 * n), (torch.arange(2 * n) + n) % (2 * n)] = 1
    dg = (torch.softmax(s, 1) - y) / (2 * n * tau)
    expected_z = (dg + dg.T) @ zh.detach()
    # the loss normalises its inputs again; for unit rows that step's backward projects out the radial part
    radial = (expected_z * zh.detach()).sum(1, keepdim=True) * zh.detach()
    assert_close(g, expected_z - radial, what="dZ")


def test_local_anchor_split_averages_to_global_loss():
    """Two 'ranks' with local anchors against the gathered keys average to the single-process loss."""
    n, d = 4, 6
    za, zb = randn(2 * n, d), randn(2 * n, d)
    full = kernels.nt_xent_loss(za, zb, temperature=0.2)
    parts = [kernels.nt_xent_loss(za[r * n:(r + 1) * n], zb[r * n:(r + 1) * n], temperature=0.2, keys_a=za,
                                  keys_b=zb, offset=r * n) for r in range(2)]
    assert_close(sum(parts) / 2, full, what="split")


def test_gradcheck():
    za, zb = randn(4, 3, requires_grad=True), randn(4, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kernels.nt_xent_loss(a, b, temperature=0.5, backend="torch"),
                                    (za, zb))
