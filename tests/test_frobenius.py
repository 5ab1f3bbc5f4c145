"""FroSSL: original code (both variants), the Frobenius identity, the closed-form gradient (methods.md §4)."""

import math

import pytest
import torch
from conftest import assert_close, check_triton_case, randn
from fusedssl import kernels
from fusedssl.bench import originals


@pytest.mark.parametrize("n,d,v", [(12, 5, 2), (5, 12, 2), (9, 9, 3), (4, 20, 4)])
def test_multiview_equals_original_code(n, d, v):
    views = [randn(n, d) for _ in range(v)]
    assert_close(kernels.frossl_loss(views, invariance_weight=1.3),
                 originals.frossl_multiview(views, w=1.3), what="multiview")


@pytest.mark.parametrize("n,d", [(12, 5), (5, 12)])
def test_legacy_equals_original_code(n, d):
    za, zb = randn(n, d), randn(n, d)
    assert_close(kernels.frossl_loss([za, zb], variant="legacy", invariance_weight=0.7),
                 originals.frossl_legacy(za, zb, w=0.7), what="legacy")


def test_frobenius_identity_and_renyi_entropy():
    """||Z'Z||_F = ||ZZ'||_F, and log||Z'Z||_F^2 = -S2(K^) + 2 log tr K with S2 from the eigenvalues."""
    z = randn(6, 11)
    assert_close(torch.linalg.norm(z.T @ z), torch.linalg.norm(z @ z.T), what="identity")
    k = z.T @ z
    lam = torch.linalg.eigvalsh(k / k.trace()).clamp_min(0)
    s2 = -torch.log(lam.pow(2).sum())
    assert_close(kernels.log_frobenius(z), -s2 + 2 * torch.log(k.trace()), what="S2")


def test_multiview_gradient_closed_form():
    """d/dZ^ log||Z^'Z^||_F^2 = 4 Z^K/||K||^2 and invariance 2Vw/N (Z^_v - Z-), then the column-L2 backward."""
    n, d, v, w = 7, 4, 3, 1.5
    views = [randn(n, d, requires_grad=True) for _ in range(v)]
    grads = torch.autograd.grad(kernels.frossl_loss(views, invariance_weight=w), views)
    zh = [torch.nn.functional.normalize(x.detach(), dim=0) for x in views]
    mean = torch.stack(zh).mean(0)
    for x, z, g in zip(views, zh, grads, strict=True):
        k = z.T @ z
        gz = 4 * z @ k / k.pow(2).sum() + 2 * v * w / n * (z - mean)
        norm = x.detach().norm(dim=0)
        expected = (gz - z * (z * gz).sum(0)) / norm
        assert_close(g, expected, what="dZ")


@pytest.mark.parametrize("variant,v", [("multiview", 2), ("multiview", 3), ("legacy", 2)])
def test_gradcheck(variant, v):
    views = [randn(5, 4, requires_grad=True) for _ in range(v)]
    assert torch.autograd.gradcheck(
        lambda *vs: kernels.frossl_loss(list(vs), variant=variant, backend="torch"), tuple(views))


def test_constant_makes_value_minus_entropy():
    """With the constants, a perfectly decorrelated view has regulariser -S2 = -log D (the maximum entropy)."""
    d = 4
    z = torch.eye(d, dtype=torch.float64).repeat(2, 1)  # orthogonal columns of equal norm
    loss = kernels.frossl_loss([z, z])
    assert_close(loss, 2 * -math.log(d), what="max entropy")


# --------------------------------------------------------------------------------------------------------------- Triton

from fusedssl.bench import verify  # noqa: E402


@pytest.mark.parametrize("case", [c for c in verify.CASES if c.op in ("frossl_loss", "log_frobenius")],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_three_way(case, dtype, kernel_device):
    """Both sides (N > D: D x D; N < D: the N x N Gram through the transposed strides) within the three-way rule."""
    check_triton_case(case, dtype, kernel_device)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_inductor_compiles_frossl_on_the_gram_side(backend):
    """N < D runs the Frobenius norm on the N x N side through a transposed view: the backward fakes must report the
    real ops' (contiguous) strides, or Inductor's stride asserts fail in the compiled backward (the review's repro)."""
    views = [torch.randn(64, 256, device="cuda", requires_grad=True) for _ in range(2)]
    fn = torch.compile(lambda a, b: kernels.frossl_loss([a, b], backend=backend, check_finite=False), fullgraph=True)
    got = fn(*views)
    grads = torch.autograd.grad(got, views)
    ref_views = [v.detach().double().requires_grad_() for v in views]
    ref = kernels.frossl_loss(ref_views, backend="torch")
    assert_close(got.cpu(), ref.detach().cpu(), tol=verify.FLOORS[torch.float32], what="value")
    for g, r in zip(grads, torch.autograd.grad(ref, ref_views), strict=True):
        assert_close(g.cpu(), r.cpu(), tol=verify.FLOORS[torch.float32], what="grad")
