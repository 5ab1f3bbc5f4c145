"""Matrix-SSL / Kernel-SSL: trace-series forms equal the code's matrix powers, Gram side equals D side, HSIC identity,
G_U / G_A closed forms, exact log with a degeneracy-safe backward (methods.md §2, §3)."""

import pytest
import torch
from conftest import FINITE_DIFF, assert_close, check_triton_case, randn
from fusedssl import kernels
from fusedssl.bench import originals
from fusedssl.kernels.matrix_log import _alignment, _prep, _uniformity, trace_powers


def _four(m, d, **kw):
    return [randn(m, d, **kw) for _ in range(4)]


@pytest.mark.parametrize("m,d", [(16, 6), (6, 16), (9, 9)])
@pytest.mark.parametrize("mu", [1.0, 0.7])
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_trace_series_equals_matrix_power_code(m, d, mu, order):
    o1, o2, t1, t2 = _four(m, d)
    ours = kernels.matrix_ssl_loss(o1, o2, t1, t2, lam=0.9, mu=mu, gamma=1.3, order=order)
    assert_close(ours, originals.matrix_ssl(o1, o2, t1, t2, lam=0.9, mu=mu, gamma=1.3, order=order), what="MSSL")


@pytest.mark.parametrize("m,d", [(16, 6), (6, 16)])
def test_kernel_ssl_equals_hsic_code(m, d):
    o1, o2, t1, t2 = _four(m, d)
    ours = kernels.kernel_ssl_loss(o1, o2, t1, t2, hsic_weight=0.003)
    assert_close(ours, originals.matrix_ssl(o1, o2, t1, t2, hsic_a=0.003), what="Kernel-SSL")


def test_hsic_term_equals_frobenius_of_cross_covariance():
    """(1/m^2) tr(T^T^' J O^O^' J) = ||C_x||_F^2 (methods.md §3.2)."""
    m, d = 10, 7
    t, o = randn(m, d), randn(m, d)
    th, oh = torch.nn.functional.normalize(t, dim=1), torch.nn.functional.normalize(o, dim=1)
    j = torch.eye(m, dtype=t.dtype) - 1.0 / m
    chain = torch.trace(th @ th.T @ j @ oh @ oh.T @ j) / m**2
    assert_close(kernels.hsic_term(t, o), chain, what="HSIC")
    cx = (j @ th).T @ (j @ oh) / m
    assert_close(kernels.hsic_term(t, o), cx.pow(2).sum(), what="||Cx||")


def test_gram_side_equals_d_side():
    """Sylvester: the m x m evaluation (m < D) equals the D x D one, for the series and the exact log."""
    m, d = 5, 12
    t, o = _prep(randn(m, d), torch.float64), _prep(randn(m, d), torch.float64)
    for mu, order in ((1.0, 4), (0.6, 3), (1.4, 6)):
        x = t.T @ o / m + (mu - 1) * torch.eye(d, dtype=t.dtype)
        d_side = -0.8 * sum((-1) ** (k + 1) / k * tr for k, tr in enumerate(trace_powers(x, order), 1))
        assert_close(_uniformity(t, o, 0.8, mu, order, False), d_side, what="U gram")
        xo = o.T @ o / m + (mu - 1) * torch.eye(d, dtype=t.dtype)
        p = t.T @ t / m + mu * torch.eye(d, dtype=t.dtype)
        a_d = -sum((-1) ** (k + 1) / k * torch.trace(p @ torch.linalg.matrix_power(xo, k)) for k in range(1, order + 1))
        assert_close(_alignment(t, o, mu, order, False), a_d, what="A gram")
    exact_d = -torch.linalg.slogdet(t.T @ o / m + 0.9 * torch.eye(d, dtype=t.dtype)).logabsdet
    assert_close(_uniformity(t, o, 1.0, 0.9, 4, True), exact_d, what="U exact gram")


def test_trace_powers():
    a = randn(6, 6)
    for k, tr in enumerate(trace_powers(a, 7), 1):
        assert_close(tr, torch.trace(torch.linalg.matrix_power(a, k)), what=f"tr a^{k}")


@pytest.mark.parametrize("mu", [1.0, 0.7])
def test_uniformity_and_alignment_gradient_closed_forms(mu):
    """G_U = -lam (I - X' + X^2' - X^3'), G_A = -[P - (PX+XP)/2 + (PX^2+XPX+X^2P)/3 - (PX^3+...+X^3P)/4] (§2.7)."""
    m, d, lam = 12, 5, 0.8
    cx = randn(d, d, requires_grad=True)
    eye = torch.eye(d, dtype=torch.float64)
    x = cx + (mu - 1) * eye
    u = -lam * sum((-1) ** (k + 1) / k * tr for k, tr in enumerate(trace_powers(x, 4), 1))
    (gu,) = torch.autograd.grad(u, cx)
    xd = x.detach()
    assert_close(gu, -lam * (eye - xd.T + (xd @ xd).T - (xd @ xd @ xd).T), what="G_U")

    s = randn(d, m)
    co = (s @ s.T / m).requires_grad_(True)
    pm = randn(d, m)
    p = pm @ pm.T / m + mu * eye
    xo = co + (mu - 1) * eye
    a = -sum((-1) ** (k + 1) / k * torch.trace(p @ torch.linalg.matrix_power(xo, k)) for k in range(1, 5))
    (ga,) = torch.autograd.grad(a, co)
    X = xo.detach()
    mp = torch.linalg.matrix_power
    expected = -(p - (p @ X + X @ p) / 2 + (p @ mp(X, 2) + X @ p @ X + mp(X, 2) @ p) / 3
                 - (p @ mp(X, 3) + X @ p @ mp(X, 2) + mp(X, 2) @ p @ X + mp(X, 3) @ p) / 4)
    assert_close(ga, expected, what="G_A")


@pytest.mark.parametrize("m,d", [(6, 4), (4, 6)])
@pytest.mark.parametrize("exact", [False, True])
def test_gradcheck(m, d, exact):
    o1, o2 = randn(m, d, requires_grad=True), randn(m, d, requires_grad=True)
    t1, t2 = randn(m, d), randn(m, d)
    assert torch.autograd.gradcheck(
        lambda a, b: kernels.kernel_ssl_loss(a, b, t1, t2, mu=0.8, exact=exact, backend="torch"), (o1, o2))


def test_exact_uniformity_is_log_det_and_series_converges_to_it():
    m, d = 40, 6
    t, o = randn(m, d), randn(m, d)
    exact = kernels.mce_uniformity(t, o, exact=True)
    th, oh = _prep(t, torch.float64), _prep(o, torch.float64)
    cx = th.T @ oh / m
    assert_close(exact, -torch.logdet(cx + torch.eye(d, dtype=cx.dtype)), what="logdet")
    # eigenvalues of C_x are small here, so the order-12 series is essentially exact
    assert_close(kernels.mce_uniformity(t, o, order=12), exact, what="series")


def test_exact_alignment_matches_eigh_log():
    m, d, mu = 30, 5, 0.9
    t, o = randn(m, d), randn(m, d)
    th, oh = _prep(t, torch.float64), _prep(o, torch.float64)
    s = oh.T @ oh / m + mu * torch.eye(d, dtype=torch.float64)
    w, v = torch.linalg.eigh(s)
    logs = v @ torch.diag(torch.log(w)) @ v.T
    p = th.T @ th / m + mu * torch.eye(d, dtype=torch.float64)
    assert_close(kernels.mce_alignment(t, o, mu=mu, exact=True), -torch.trace(p @ logs), what="exact A")


def test_trace_logm_backward_is_finite_and_exact_on_degenerate_spectrum():
    """Autograd through eigh gives NaN for repeated eigenvalues; the Daleckii-Krein backward stays exact.

    Check: the gradient of tr(P log S) in direction E equals the derivative of the Frechet form computed with a
    perturbation that breaks no symmetry (central differences in float64 along a symmetric E).
    """
    d = 5
    q, _ = torch.linalg.qr(randn(d, d))
    s = (q @ torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64)) @ q.T).requires_grad_(True)
    p = randn(d, d)
    p = p @ p.T
    (g,) = torch.autograd.grad(kernels.trace_logm(s, p), s)
    assert torch.isfinite(g).all()
    e = randn(d, d)
    e = e + e.T
    h = 1e-5

    def f(x):
        w, v = torch.linalg.eigh(x)
        return torch.trace(p @ v @ torch.diag(torch.log(w)) @ v.T)

    numeric = (f(s.detach() + h * e) - f(s.detach() - h * e)) / (2 * h)
    assert_close((g * e).sum(), numeric, tol=FINITE_DIFF, what="directional derivative")
    # autograd through eigh is wrong here (NaN/Inf or, as on this torch, finite but off): the pitfall avoided
    s2 = s.detach().clone().requires_grad_(True)
    (g_naive,) = torch.autograd.grad(f(s2), s2)
    assert not torch.isfinite(g_naive).all() or not torch.allclose(g_naive, g, atol=FINITE_DIFF)


def test_teacher_gets_no_gradient():
    o1, o2, t1, t2 = _four(8, 4, requires_grad=True)
    kernels.matrix_ssl_loss(o1, o2, t1, t2).backward()
    assert t1.grad is None and t2.grad is None and o1.grad is not None


# --------------------------------------------------------------------------------------------------------------- Triton

from fusedssl.bench import verify  # noqa: E402


@pytest.mark.parametrize("case", [c for c in verify.CASES if c.op == "matrix_ssl_loss"], ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_three_way(case, dtype, kernel_device):
    check_triton_case(case, dtype, kernel_device, layouts=("contiguous",))


@pytest.mark.parametrize("m,d", [(48, 20), (20, 48)], ids=["D x D chain", "m x m Gram side"])
@pytest.mark.parametrize("mu", [1.0, 0.7])
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_triton_closed_form_backward_every_order(mu, order, m, d, kernel_device):
    """The Triton chain on both sides for orders other than the default 4: the closed-form G_U / G_A (and the HSIC
    term) when m >= D, the Gram-side algebra through the GEMM's own backward when m < D."""
    xs = [torch.randn(m, d, dtype=torch.float64, device=kernel_device) for _ in range(4)]

    def run(backend):
        o1, o2 = (x.float().requires_grad_() for x in xs[:2])
        loss = kernels.matrix_ssl_loss(o1, o2, xs[2].float(), xs[3].float(), lam=0.8, mu=mu, gamma=1.3, order=order,
                                       hsic_weight=0.01, backend=backend)
        return [loss, *torch.autograd.grad(loss, (o1, o2))]

    for got, ref in zip(run("triton"), run("torch"), strict=True):
        assert_close(got.cpu(), ref.cpu(), tol=verify.FLOORS[torch.float32])


@pytest.mark.parametrize("m,k,n", [(70, 9, 70), (5, 33, 70), (70, 20, 3)], ids=["square 2x2 tiles", "wide", "tall"])
def test_mm_trace_epilogue_reductions_and_backward(m, k, n, kernel_device):
    """The GEMM epilogue's tr C, <C, E> (E strided: a transposed view) and <C, C> over several output tiles equal the
    float64 products, and its backward (the traces' gradients folded into dL/dC, plus dL/dE) equals autograd's."""
    from fusedssl.kernels.matrix_log import mm_trace
    a64, b64 = torch.randn(m, k, dtype=torch.float64), torch.randn(k, n, dtype=torch.float64)
    e64 = torch.randn(n, m, dtype=torch.float64).T  # strides (1, m)
    w = torch.randn(4, dtype=torch.float64)         # fresh weights of the four outputs in the scalar pulled back
    g_c = torch.randn(m, n, dtype=torch.float64)

    def run(a, b, e, fn):
        c, tr, dot, sq = fn(a, b, e)
        return (g_c.to(c) * c).sum() * w[0] + tr * w[1] + dot * w[2] + sq * w[3], (c, tr, dot, sq)

    def ref(a, b, e):
        c = 0.7 * a @ b + torch.where(torch.eye(m, n, dtype=torch.bool), 0.3, 0.0).to(a)
        return c, torch.diagonal(c).sum(), (c * e).sum(), (c * c).sum()

    ins64 = [x.clone().requires_grad_() for x in (a64, b64, e64)]
    ins32 = [x.detach().float().to(kernel_device).requires_grad_() for x in ins64]
    l64, out64 = run(*ins64, ref)
    l32, out32 = run(*ins32, lambda a, b, e: mm_trace(a, b, 0.7, 0.3, e=e))
    for got, want, what in zip(out32, out64, ("C", "tr C", "<C, E>", "<C, C>"), strict=True):
        assert_close(got.detach().cpu(), want.detach(), tol=verify.FLOORS[torch.float32], what=what)
    for got, want, what in zip(torch.autograd.grad(l32, ins32), torch.autograd.grad(l64, ins64), "abe", strict=True):
        assert_close(got.cpu(), want, tol=verify.FLOORS[torch.float32], what=f"d{what}")


def test_gram_side_alignment_chain_needs_floor_k_half_plus_one_products():
    """r_j = tr(C_t C_o^j) from Y_i = B A^(i-1): <Y_i, Y_l> = r_(i+l-1), so K = 4 takes Y_2, Y_3 (2 products), and
    each r_j equals the direct <B A^(j-1), B>."""
    from fusedssl.kernels.matrix_log import _cross_traces
    m = 7
    b, x = randn(m, m), randn(m, m)
    a = x @ x.T / m
    calls = []

    def mm(u, v):
        calls.append(1)
        return u @ v

    for order in (1, 2, 3, 4, 5, 6):
        calls.clear()
        got = _cross_traces(b, a, order, mm)
        assert len(calls) == order // 2, (order, len(calls))
        for j, r in enumerate(got, 1):
            assert_close(r, (b @ torch.linalg.matrix_power(a, j - 1) * b).sum(), what=f"r_{j}")


def test_torch_compile_traces_the_triton_chain(kernel_device):
    """fullgraph compile of the Triton Matrix-SSL provider (normalisation and GEMM chain are custom ops with fakes),
    value and online gradients equal to the eager reference."""
    from fusedssl.kernels.matrix_log import _mm_shift_op
    a, b = torch.randn(16, 24, device=kernel_device), torch.randn(24, 32, device=kernel_device)
    torch.library.opcheck(_mm_shift_op, (a, b, 0.5, 0.1), test_utils=("test_schema", "test_faketensor"))
    fn = torch.compile(lambda *x: kernels.kernel_ssl_loss(*x, backend="triton", check_finite=False),
                       backend="aot_eager", fullgraph=True)
    for m, d in ((24, 16), (16, 24)):  # the D x D chain, the m x m Gram side
        xs = [torch.randn(m, d, device=kernel_device) for _ in range(4)]
        got = [x.clone().requires_grad_(i < 2) for i, x in enumerate(xs)]
        ref = [x.double().requires_grad_(i < 2) for i, x in enumerate(xs)]
        v, r = fn(*got), kernels.kernel_ssl_loss(*ref, backend="torch")
        v.backward()
        r.backward()
        assert_close(v, r, 1e-4, what=f"compiled value {m}x{d}")
        for i in range(2):
            assert_close(got[i].grad, ref[i].grad, 1e-4, what=f"compiled grad[{i}] {m}x{d}")


def test_triton_chain_ignores_the_global_default_dtype(kernel_device):
    """A user's torch.set_default_dtype(torch.float64) must not leak into the fp32 chain (an fp64 identity made the
    backward's GEMM operands disagree, which fails to compile on a GPU)."""
    xs = [torch.randn(24, 16, device=kernel_device) for _ in range(4)]
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        o1, o2 = (x.clone().requires_grad_() for x in xs[:2])
        loss = kernels.matrix_ssl_loss(o1, o2, xs[2], xs[3], backend="triton")
        g1, g2 = torch.autograd.grad(loss, (o1, o2))
    finally:
        torch.set_default_dtype(before)
    assert loss.dtype == g1.dtype == g2.dtype == torch.float32
    r = [x.double().requires_grad_(i < 2) for i, x in enumerate(xs)]
    ref = kernels.matrix_ssl_loss(*r, backend="torch")
    assert_close(loss, ref.detach(), verify.FLOORS[torch.float32], what="value")
    for g, rg in zip((g1, g2), torch.autograd.grad(ref, r[:2]), strict=True):
        assert_close(g, rg, verify.FLOORS[torch.float32], what="grad")
