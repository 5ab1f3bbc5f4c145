"""Column/row normalisations: forward against their definitions, backward against the closed forms (methods.md §1.1)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, randn

from fusedssl import kernels
from fusedssl.kernels.normalize import col_normalize_ref, row_normalize_ref


def _vjp(fn, z, g):
    z = z.clone().requires_grad_(True)
    (dz,) = torch.autograd.grad(fn(z), z, g)
    return dz


@pytest.mark.parametrize("n,d", [(2, 3), (9, 5), (6, 13)])
def test_bn_backward_closed_form(n, d):
    z, g = randn(n, d), randn(n, d)
    eps = 1e-5
    zh = col_normalize_ref(z, "bn")
    assert_close(zh, F.batch_norm(z, None, None, training=True, eps=eps), what="bn forward")
    s = torch.sqrt(z.var(0, unbiased=False) + eps)
    expected = (g - g.mean(0) - zh * (g * zh).mean(0)) / s
    assert_close(_vjp(lambda x: col_normalize_ref(x, "bn"), z, g), expected, what="bn backward")


@pytest.mark.parametrize("n,d", [(3, 4), (11, 2)])
def test_unbiased_std_backward_closed_form(n, d):
    z, g = randn(n, d), randn(n, d)
    zh = col_normalize_ref(z, "std")
    assert_close(zh, (z - z.mean(0)) / z.std(0), what="std forward")
    expected = (g - g.mean(0) - zh * (g * zh).sum(0) / (n - 1)) / z.std(0)
    assert_close(_vjp(lambda x: col_normalize_ref(x, "std"), z, g), expected, what="std backward")


def test_column_and_row_l2_backward_closed_form():
    z, g = randn(7, 5), randn(7, 5)
    zh = col_normalize_ref(z, "l2")
    norm = z.norm(dim=0)
    expected = (g - zh * (zh * g).sum(0)) / norm
    assert_close(_vjp(lambda x: col_normalize_ref(x, "l2"), z, g), expected, what="colL2 backward")
    zr = row_normalize_ref(z)
    expected = (g - zr * (zr * g).sum(1, keepdim=True)) / z.norm(dim=1, keepdim=True)
    assert_close(_vjp(row_normalize_ref, z, g), expected, what="rowL2 backward")


def test_centring_backward_and_no_op_on_zero_mean_gradient():
    z, g = randn(8, 3), randn(8, 3)
    assert_close(_vjp(lambda x: col_normalize_ref(x, "center"), z, g), g - g.mean(0), what="centring backward")
    zc = col_normalize_ref(z, "center")
    m = randn(3, 3)
    g2 = zc @ m  # column means already zero
    assert_close(_vjp(lambda x: col_normalize_ref(x, "center"), z, g2), g2, what="no-op")


def test_std_l2_equals_centre_then_scaled_column_l2():
    z = randn(10, 6)
    std_first = 6 ** 0.5 * F.normalize((z - z.mean(0)) / z.std(0), dim=0)
    assert_close(col_normalize_ref(z, "std_l2"), std_first, what="std_l2")


@pytest.mark.parametrize("mode", kernels.normalize.COL_MODES)
def test_gradcheck_column_modes(mode):
    z = randn(5, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kernels.col_normalize(x, mode, backend="torch"), (z,))


def test_gradcheck_row():
    z = randn(4, 6, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kernels.row_normalize(x, backend="torch"), (z,))
