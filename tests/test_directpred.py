"""DirectPred / DirectCopy predictor setting (methods.md §6.2)."""

import torch
from conftest import assert_close, randn
from fusedssl import kernels
from fusedssl.kernels import _originals as originals


def test_correlation_ema():
    f1, f2 = randn(10, 4), randn(10, 4)
    c1 = kernels.correlation_ema(f1, None, rho=0.3)
    assert_close(c1, f1.T @ f1 / 10, what="first step = B_f")
    c2 = kernels.correlation_ema(f2, c1, rho=0.3)
    assert_close(c2, 0.3 * c1 + 0.7 * f2.T @ f2 / 10, what="EMA")


def test_directpred_weight_equals_reference_code():
    f = randn(50, 6)
    corr = f.T @ f / 50
    for eps, convert in ((0.01, 2.0), (0.1, 1.0), (0.0, 3.0)):
        w = kernels.predictor_weight(corr, eps=eps, convert=convert)
        assert_close(w, originals.directpred_weight(corr, eps=eps, convert=convert), what="W_p")


def test_directpred_spectrum():
    """W_p shares F^'s eigenvectors; its eigenvalues are sqrt(s/max s) + eps (clamped at 1e-4)."""
    q, _ = torch.linalg.qr(randn(4, 4))
    s = torch.tensor([4.0, 1.0, 0.25, -0.5], dtype=torch.float64)
    corr = q @ torch.diag(s) @ q.T
    w = kernels.predictor_weight(corr, eps=0.01)
    got = torch.linalg.eigvalsh(w).sort().values
    expected = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64) + 0.01
    assert_close(got, expected.sort().values, what="spectrum")


def test_directcopy_and_zero_correlation():
    corr = randn(3, 3)
    corr = corr @ corr.T
    expected = corr + 0.05 * torch.eye(3, dtype=corr.dtype)
    assert_close(kernels.predictor_weight(corr, mode="directcopy", eps=0.05), expected)
    w = kernels.predictor_weight(torch.zeros(3, 3, dtype=torch.float64), eps=0.01)
    assert torch.isfinite(w).all()
    assert_close(w, 0.01 * torch.eye(3, dtype=torch.float64), what="all-zero F^ gives eps I")
