"""Column/row normalisations: forward against their definitions, backward against the closed forms (methods.md §1.1)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, check_triton_case, randn
from fusedssl import kernels
from fusedssl.bench import verify
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


# ---------------------------------------------------------------------------------------------- Triton kernels


@pytest.mark.parametrize("case", [c for c in verify.CASES if c.op in ("col_normalize", "row_normalize")],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_normalisation_three_way(case, dtype, kernel_device):
    """Value and gradient of every normalisation mode within the verify rule, contiguous and strided inputs."""
    check_triton_case(case, dtype, kernel_device)


@pytest.mark.parametrize("mode", ["l2", "std_l2"])
def test_triton_l2_clamp_matches_reference(mode, kernel_device):
    """A zero column (norm below eps) takes the clamped branch in both value and gradient."""
    z = randn(9, 6).float().to(kernel_device)
    z[:, 2] = 0.0 if mode == "l2" else 3.0  # std_l2 centres first: a constant column has zero norm
    g = randn(9, 6).float().to(kernel_device)
    ref = _vjp(lambda x: col_normalize_ref(x, mode), z, g)
    got = _vjp(lambda x: kernels.col_normalize(x, mode, backend="triton"), z, g)
    assert_close(kernels.col_normalize(z, mode, backend="triton"), col_normalize_ref(z, mode), 1e-5,
                 what=f"{mode} forward with a zero-norm column")
    assert_close(got, ref, 1e-5, what=f"{mode} backward with a zero-norm column")


def test_triton_bn_is_stable_for_large_offsets(kernel_device):
    """Shifted sums: a column of 1e4 + N(0, 1) keeps its variance (a naive E[x^2] - E[x]^2 in fp32 loses it)."""
    z = (randn(64, 8) + 1e4).float().to(kernel_device)
    ref = col_normalize_ref(z.double(), "bn")
    assert_close(kernels.col_normalize(z, "bn", backend="triton"), ref, 2e-3, what="bn with a 1e4 offset")


def test_triton_l2_norm_is_exact_when_the_first_row_is_atypical(kernel_device):
    """The l2 mode needs sum z^2: rebuilding it from sums shifted by the first row (the centred modes' trick) cancels
    when that row dwarfs the rest (3.5e-4 relative error here against fp32's 1e-6)."""
    z = randn(1024, 16)
    z[0] = 3e3
    got = kernels.col_normalize(z.float().to(kernel_device), "l2", backend="triton")
    assert_close(got.cpu(), col_normalize_ref(z, "l2"), tol=verify.FLOORS[torch.float32], what="l2, atypical row 0")
