"""Matrix-SSL and Kernel-SSL objectives (methods.md §2, §3, §16.3 kernel 4): matrix cross-entropy via trace series.

Notation: T^ = rowL2(teacher), O^ = rowL2(online), both (m, D); J centres columns (never formed: we subtract column
means). C_x = T^'J O^/m (cross, not symmetric), C_t = T^'J T^/m, C_o = O^'J O^/m, X = C + (mu - 1) I.

  uniformity  U = -lam * tr log_K(C_x + mu I) = -lam * sum_k (-1)^(k+1)/k tr X^k
  alignment   A = -tr[(C_t + mu I) log_K(C_o + mu I)] = -sum_k (-1)^(k+1)/k tr(P X^k),  P = C_t + mu I
  HSIC        H = ||C_x||_F^2  (= (1/m^2) tr(T^T^' J O^O^' J), Kernel-SSL's extra term, for free)
  Matrix-SSL  L = 1/2 [U(T2,O1) + U(T1,O2)] + gamma/2 [A(T2,O1) + A(T1,O2)] - a (1+gamma)/2 [H(T2,O1) + H(T1,O2)]
              (a = 0: Matrix-SSL; a = 0.003: Kernel-SSL, i.e. the code at bf80b2e run with --HSIC)

Efficient evaluation (exactly equal to the code's matrix-power form; tests prove it):
  * Only traces of powers are needed. With the powers X^1..X^ceil(K/2) stored, tr X^k = <X^a, (X^b)'> and
    tr(P X^k) = <P X^b, X^a> (a + b = k). For K = 4 that is 1 GEMM for U and 3 for A instead of the code's 5 each.
  * Gram side when m < D: tr(C_x^j) = tr(M^j) with M = O~T~'/m (m x m, Sylvester), tr X^k follows by the binomial
    expansion in (mu - 1); tr(C_t C_o^j) = <B A^(j-1), B> with A = O~O~'/m, B = T~O~'/m. No D x D matrix is formed.
  * Exact log (``exact=True``): U = -lam log|det(C_x + mu I)| (LU; on the Gram side D log mu + log det(I + M/mu));
    A via eigh of C_o + mu I with a Daleckii-Krein backward whose divided differences are evaluated with log1p, so
    (near-)degenerate spectra give finite, exact gradients (autograd through eigh gives NaN there).

Triton (backend "triton", series only): a Triton GEMM with a fused scale + diagonal-shift epilogue (transposes read
through strides) runs the D x D chain: uniformity forms X, X^2, X^3 (the value needs up to X^ceil(K/2), the backward
X^(K-1)) and returns the closed-form G_U (+ 2h C_x for Kernel-SSL's HSIC term); alignment forms P, X and, by the
recurrence S_1 = P, S_(k+1) = P X^k + X S_k, G_A in 3 + 2(K-1) GEMMs; one GEMM per call maps G back to the rows.
For m < D the provider runs the m x m Gram-side algebra of the reference instead, every product a Triton GEMM and
the backward through the GEMM's registered one (no D x D matrix; the same FLOPs as the efficient reference).
The GEMM is the custom op ``fusedssl::mm_shift`` (with a fake and a backward), so torch.compile traces both sides.
Traces are elementwise reductions in torch (Inductor fuses them under torch.compile), not GEMM epilogues yet.

The teacher outputs are constants (stop-gradient): every function here detaches them.
Distributed semantics: computed on the all-gathered batch (m = global batch), redundantly on every rank, as the
reference code does; with a gradient-preserving gather the DDP gradient equals the global-batch gradient.
Precision: float32 (float64 for float64 inputs) outside autocast (methods.md §16.6).
Shared primitive: ``frob2_cross`` of _gram.py (a Frobenius norm of a cross-product, from the smaller side).
"""

from __future__ import annotations

import math

import torch

from . import _backend, _triton
from ._checks import check_embeddings, check_number, check_pair, full_precision
from ._gram import frob2_cross, gram_side
from ._triton import HAS_TRITON, dot_precision, k_tile, tile, tl, triton
from .normalize import col_normalize_triton, row_normalize_ref, row_normalize_triton

# ----------------------------------------------------------------------------------------------------------- references


def mce_uniformity_ref(teacher, online, lam=1.0, mu=1.0, order=4, exact=False) -> torch.Tensor:
    with full_precision(online) as dt:
        return _uniformity(_prep(teacher.detach(), dt), _prep(online, dt), lam, mu, order, exact)


def mce_alignment_ref(teacher, online, mu=1.0, order=4, exact=False) -> torch.Tensor:
    with full_precision(online) as dt:
        return _alignment(_prep(teacher.detach(), dt), _prep(online, dt), mu, order, exact)


def hsic_term_ref(teacher, online) -> torch.Tensor:
    with full_precision(online) as dt:
        t, o = _prep(teacher.detach(), dt), _prep(online, dt)
        return frob2_cross(t, o) / o.shape[0] ** 2


def matrix_ssl_loss_ref(online1, online2, teacher1, teacher2, lam=1.0, mu=1.0, gamma=1.0, order=4, exact=False,
                        hsic_weight=0.0) -> torch.Tensor:
    with full_precision(online1) as dt:
        o1, o2 = _prep(online1, dt), _prep(online2, dt)
        t1, t2 = _prep(teacher1.detach(), dt), _prep(teacher2.detach(), dt)
        loss = 0.5 * (_uniformity(t2, o1, lam, mu, order, exact) + _uniformity(t1, o2, lam, mu, order, exact))
        loss = loss + 0.5 * gamma * (_alignment(t2, o1, mu, order, exact) + _alignment(t1, o2, mu, order, exact))
        if hsic_weight:
            m = o1.shape[0]
            h = (frob2_cross(t2, o1) + frob2_cross(t1, o2)) / (m * m)
            loss = loss - hsic_weight * (1.0 + gamma) / 2.0 * h
        return loss


# ------------------------------------------------------------------------------------------------------- Triton kernels


if HAS_TRITON:

    @triton.jit
    def _mm_shift_kernel(a_ptr, b_ptr, c_ptr, M, N, K, s_am, s_ak, s_bk, s_bn, alpha, shift,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr):
        """C = alpha * A @ B + shift * I (M x N, contiguous); A and B read through strides (transposes are free)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + offs_m[:, None] * s_am + offs_k[None, :] * s_ak,
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
            b = tl.load(b_ptr + offs_k[:, None] * s_bk + offs_n[None, :] * s_bn,
                        mask=(offs_k[:, None] < K) & (offs_n[None, :] < N), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        c = alpha * acc + tl.where(offs_m[:, None] == offs_n[None, :], shift, 0.0)
        tl.store(c_ptr + offs_m[:, None] * N + offs_n[None, :], c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ------------------------------------------------------------------------------------------------ launchers and helpers


def mm_shift(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Triton ``alpha * a @ b + shift * I`` in fp32 (a, b fp32, any strides). The custom op ``fusedssl::mm_shift``
    (with a fake), so torch.compile traces the chain and the autograd.Functions built from it."""
    return _mm_shift_op(a, b, float(alpha), float(shift))


def _tr(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """<a, b_t'> = tr(a b_t) without forming the product."""
    return (a * b_t.T).sum()


def _series_coeff(k: int) -> float:
    """Coefficient of X^k in the Taylor series of log(I + X)."""
    return (-1.0) ** (k + 1) / k


def _powers(a: torch.Tensor, count: int, matmul=torch.matmul) -> list[torch.Tensor]:
    """[a^1, ..., a^count] with count - 1 products by ``matmul``."""
    pw = [a]
    for _ in range(count - 1):
        pw.append(matmul(pw[-1], a))
    return pw


def _traces_from_powers(pw: list[torch.Tensor], order: int) -> list[torch.Tensor]:
    """[tr a^1, ..., tr a^order] from the powers a^1..a^ceil(order/2): tr a^k = <a^hi, (a^lo)'>, hi = ceil(k/2)."""
    out = []
    for k in range(1, order + 1):
        hi, lo = (k + 1) // 2, k // 2
        out.append(torch.diagonal(pw[hi - 1]).sum() if lo == 0 else (pw[hi - 1] * pw[lo - 1].T).sum())
    return out


def trace_powers(a: torch.Tensor, order: int) -> list[torch.Tensor]:
    """[tr a^1, ..., tr a^order] for a square matrix, with ceil(order/2) - 1 matrix products."""
    return _traces_from_powers(_powers(a, (order + 1) // 2), order)


def _shift_traces(traces: list[torch.Tensor], tr0: float | torch.Tensor, shift: float, order: int
                  ) -> list[torch.Tensor]:
    """tr (C + shift I)^k for k = 1..order from s_j = tr C^j (j >= 1) and s_0 = tr(C^0) = ``tr0``, binomially."""
    s = [tr0, *traces]
    return [sum(math.comb(k, j) * shift ** (k - j) * s[j] for j in range(k + 1)) for k in range(1, order + 1)]


def _prep(z: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """Row-L2 normalise, then centre the columns (J applied to the data, never formed)."""
    z = row_normalize_ref(z.to(dt))
    return z - z.mean(dim=0, keepdim=True)


def _uniformity(t: torch.Tensor, o: torch.Tensor, lam: float, mu: float, order: int, exact: bool,
                mm=torch.matmul) -> torch.Tensor:
    """U on prepared (row-L2, centred) teacher t and online o, each (m, D); ``mm`` forms the Gram-side products."""
    m, d = o.shape
    if exact:
        if d <= m:
            eye = torch.eye(d, dtype=o.dtype, device=o.device)
            return -lam * torch.linalg.slogdet(t.T @ o / m + mu * eye).logabsdet
        eye = torch.eye(m, dtype=o.dtype, device=o.device)
        return -lam * (d * math.log(mu) + torch.linalg.slogdet(eye + (o @ t.T) / (m * mu)).logabsdet)
    if d <= m:
        x = t.T @ o / m
        x = x + (mu - 1.0) * torch.eye(d, dtype=o.dtype, device=o.device)
        traces = trace_powers(x, order)
    else:
        traces = _shift_traces(_traces_from_powers(_powers(mm(o, t.T) / m, (order + 1) // 2, mm), order), float(d),
                               mu - 1.0, order)
    return -lam * sum(_series_coeff(k + 1) * traces[k] for k in range(order))


def _alignment(t: torch.Tensor, o: torch.Tensor, mu: float, order: int, exact: bool, mm=torch.matmul
               ) -> torch.Tensor:
    """A on prepared teacher t and online o, each (m, D); ``mm`` forms the Gram-side products."""
    m, d = o.shape
    if exact or d <= m:
        eye = torch.eye(d, dtype=o.dtype, device=o.device)
        p = t.T @ t / m + mu * eye
        if exact:
            # Exact alignment always runs on the D x D side (documented limitation; D <= a few thousand).
            return -_TraceLogm.apply(o.T @ o / m + mu * eye, p, 0.5 * mu)
        x = o.T @ o / m + (mu - 1.0) * eye
        half = (order + 1) // 2
        xp = [x]                                      # X^1 .. X^half
        for _ in range(half - 1):
            xp.append(xp[-1] @ x)
        pxp = [p] + [p @ xj for xj in xp[: order // 2]]  # P X^0 .. P X^(order//2)
        traces = [(pxp[k // 2] * xp[(k + 1) // 2 - 1]).sum() for k in range(1, order + 1)]
    else:
        a = mm(o, o.T) / m                            # m x m, eigenvalues of C_o plus zeros
        b = mm(t, o.T) / m
        tr_co = _traces_from_powers(_powers(a, (order + 1) // 2, mm), order)  # tr C_o^j, j >= 1
        tr_ctco, y = [], b                            # tr(C_t C_o^j) = <B A^(j-1), B>
        for j in range(1, order + 1):
            if j > 1:
                y = mm(y, a)
            tr_ctco.append((y * b).sum())
        tr_p = t.pow(2).sum() / m + mu * d            # tr P = tr C_t + mu D
        tr_pco = [tr_ctco[j] + mu * tr_co[j] for j in range(order)]
        traces = _shift_traces(tr_pco, tr_p, mu - 1.0, order)
    return -sum(_series_coeff(k + 1) * traces[k] for k in range(order))


def _check_mce(teacher, online, lam, mu, order, check_finite):
    check_pair("teacher", teacher, "online", online, check_finite=check_finite)
    check_number("lam", lam, low=0.0)
    check_number("mu", mu, low=0.0, low_open=True)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int (the Taylor order K), got {order!r}")


# -------------------------------------------------------------------------------- custom ops (torch.compile sees these)


@torch.library.custom_op("fusedssl::mm_shift", mutates_args=())
def _mm_shift_op(a: torch.Tensor, b: torch.Tensor, alpha: float, shift: float) -> torch.Tensor:
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise TypeError(f"mm_shift: the operands must be float32, got {a.dtype} and {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, dtype=torch.float32, device=a.device)
    precision = dot_precision(torch.float32, a.device)
    bm, bn, bk = tile(m), tile(n), k_tile(k, torch.float32, precision)
    with _triton.on_device(a):
        _mm_shift_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
            a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), alpha, shift,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION=precision)
    return c


@_mm_shift_op.register_fake
def _(a, b, alpha, shift):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.float32)


def _mm_shift_setup(ctx, inputs, output):
    a, b, alpha, _ = inputs
    ctx.save_for_backward(a, b)
    ctx.alpha = alpha


def _mm_shift_backward(ctx, g):
    # the shift is a constant; only the inputs that need it get a GEMM (the teacher side of the chain does not)
    a, b = ctx.saved_tensors
    ga = _mm_shift_op(g, b.T, ctx.alpha, 0.0) if ctx.needs_input_grad[0] else None
    gb = _mm_shift_op(a.T, g, ctx.alpha, 0.0) if ctx.needs_input_grad[1] else None
    return ga, gb, None, None


_mm_shift_op.register_autograd(_mm_shift_backward, setup_context=_mm_shift_setup)


class _UniformityTriton(torch.autograd.Function):
    """U + h ||C_x||_F^2 on prepared (t, o), D x D side, with the closed-form backward of methods.md §2.7 / §3.2:
    G = -lam sum_k (-1)^(k+1) (X^(k-1))' + 2 h C_x,  dO~ = (1/m) T~ G."""

    @staticmethod
    def forward(ctx, t, o, lam: float, mu: float, order: int, h: float):
        m = o.shape[0]
        x = mm_shift(t.T, o, 1.0 / m, mu - 1.0)               # X = C_x + (mu - 1) I
        pw = _powers(x, max((order + 1) // 2, order - 1), mm_shift)  # what the value and G need
        traces = _traces_from_powers(pw, order)
        val = -lam * sum(_series_coeff(k + 1) * traces[k] for k in range(order))
        eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)  # not the global default dtype
        cx = x - (mu - 1.0) * eye
        if h:
            val = val + h * cx.pow(2).sum()
        g = -lam * sum((-1.0) ** (k + 1) * (eye if k == 1 else pw[k - 2]).T for k in range(1, order + 1))
        g = g + 2.0 * h * cx
        ctx.save_for_backward(t, g)
        return val

    @staticmethod
    def backward(ctx, gout):
        t, g = ctx.saved_tensors
        return None, mm_shift(t, g, 1.0 / t.shape[0]) * gout, None, None, None, None


class _AlignmentTriton(torch.autograd.Function):
    """A on prepared (t, o), D x D side: value by trace identities, G_A = -sum_k c_k S_k with S_1 = P and
    S_(k+1) = P X^k + X S_k (the sum over r of X^r P X^(k-1-r)); dO~ = (2/m) O~ G_A."""

    @staticmethod
    def forward(ctx, t, o, mu: float, order: int):
        m = o.shape[0]
        p = mm_shift(t.T, t, 1.0 / m, mu)                     # P = C_t + mu I
        x = mm_shift(o.T, o, 1.0 / m, mu - 1.0)               # X = C_o + (mu - 1) I
        val = 0.0
        pxk = p                                               # P X^(k-1)
        s = p                                                 # S_k
        g = torch.zeros_like(p)                               # 3 + (K - 1) * 2 GEMMs of D^3 in all
        for k in range(1, order + 1):
            c = _series_coeff(k)
            val = val - c * _tr(pxk, x)                       # tr(P X^k) = <P X^(k-1), X'>
            g = g - c * s
            if k < order:
                pxk = mm_shift(pxk, x)                        # P X^k
                s = pxk + mm_shift(x, s)                      # S_(k+1)
        ctx.save_for_backward(o, g)
        return val

    @staticmethod
    def backward(ctx, gout):
        o, g = ctx.saved_tensors
        return None, mm_shift(o, g, 2.0 / o.shape[0]) * gout, None, None


class _TraceLogm(torch.autograd.Function):
    """tr(P log S) for symmetric positive definite S, with the Daleckii-Krein backward (methods.md §2.7).

    The divided difference Gamma_ij = (log s_i - log s_j)/(s_i - s_j) is evaluated as log1p(d)/(s_i - s_j) with
    d = (s_i - s_j)/s_j, and by its series 1/s_j (1 - d/2 + d^2/3) for |d| < 1e-4: exact to rounding for equal or
    nearly equal eigenvalues, where autograd through eigh divides by zero.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, p: torch.Tensor, min_eig: float) -> torch.Tensor:
        sym = 0.5 * (s + s.T)  # eigh reads one triangle; symmetrising makes the gradient the symmetric one
        sig, v = torch.linalg.eigh(sym)
        sig = sig.clamp_min(min_eig)
        logs = torch.log(sig)
        pv = v.T @ p @ v
        ctx.save_for_backward(v, sig, logs, pv)
        return (torch.diagonal(pv) * logs).sum()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        v, sig, logs, pv = ctx.saved_tensors
        si, sj = sig[:, None], sig[None, :]
        diff = si - sj
        d = diff / sj
        small = d.abs() < 1e-4
        safe_diff = torch.where(small, torch.ones_like(diff), diff)
        series = (1.0 - d / 2.0 + d * d / 3.0) / sj
        gamma = torch.where(small, series, torch.log1p(torch.where(small, 0.0, d)) / safe_diff)
        grad_s = v @ (pv * gamma) @ v.T
        grad_p = (v * logs) @ v.T
        return g * grad_s, g * grad_p, None


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("mce_uniformity", "torch")(mce_uniformity_ref)
_backend.register("mce_alignment", "torch")(mce_alignment_ref)
_backend.register("hsic_term", "torch")(hsic_term_ref)
_backend.register("matrix_ssl_loss", "torch")(matrix_ssl_loss_ref)


@_backend.register("matrix_ssl_loss", "triton")
def matrix_ssl_loss_triton(online1, online2, teacher1, teacher2, lam=1.0, mu=1.0, gamma=1.0, order=4, exact=False,
                           hsic_weight=0.0) -> torch.Tensor:
    """Triton provider on the cheaper side: m < D the reference's m x m Gram-side algebra with every product a Triton
    GEMM (backward through mm_shift's registered one), else the D x D GEMM chain with the closed-form G (module
    docstring). ``exact=True`` keeps the LU / eigh path of the reference (no Triton eigendecomposition)."""
    if exact:
        return matrix_ssl_loss_ref(online1, online2, teacher1, teacher2, lam, mu, gamma, order, exact, hsic_weight)
    with full_precision(online1):
        dt = torch.float32  # the Triton chain runs in fp32 (fp64 inputs too)
        def prep(z):  # row L2 then centring, both Triton kernels, in fp32
            return col_normalize_triton(row_normalize_triton(z.to(dt)), "center")

        o1, o2 = prep(online1), prep(online2)
        t1, t2 = prep(teacher1.detach()), prep(teacher2.detach())
        if gram_side(*o1.shape):
            loss = 0.5 * (_uniformity(t2, o1, lam, mu, order, False, mm_shift)
                          + _uniformity(t1, o2, lam, mu, order, False, mm_shift))
            loss = loss + 0.5 * gamma * (_alignment(t2, o1, mu, order, False, mm_shift)
                                         + _alignment(t1, o2, mu, order, False, mm_shift))
            if hsic_weight:  # ||T'O||_F^2 = <T T', O O'>
                m = o1.shape[0]
                h = sum((mm_shift(t, t.T) * mm_shift(o, o.T)).sum() for t, o in ((t2, o1), (t1, o2))) / (m * m)
                loss = loss - hsic_weight * (1.0 + gamma) / 2.0 * h
            return loss
        h = -2.0 * hsic_weight * (1.0 + gamma) / 2.0  # each uniformity call carries weight 1/2
        loss = 0.5 * (_UniformityTriton.apply(t2, o1, lam, mu, order, h) + _UniformityTriton.apply(t1, o2, lam, mu,
                                                                                                    order, h))
        return loss + 0.5 * gamma * (_AlignmentTriton.apply(t2, o1, mu, order) + _AlignmentTriton.apply(t1, o2, mu,
                                                                                                        order))


# ----------------------------------------------------------------------------------------------------------- public ops


def trace_logm(s: torch.Tensor, p: torch.Tensor | None = None, *, min_eig: float = 1e-12, check_finite: bool = False
               ) -> torch.Tensor:
    """Exact ``tr(P log S)`` (``tr log S`` when ``p`` is None) of a symmetric positive-definite S, eigenvalues
    clamped at ``min_eig``, with a degeneracy-safe backward. Reference op (torch); no kernel backend."""
    check_embeddings("s", s, min_rows=1, check_finite=check_finite)
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"s must be square, got shape {tuple(s.shape)}")
    if p is None:
        p = torch.eye(s.shape[0], dtype=s.dtype, device=s.device)
    elif p.shape != s.shape:
        raise ValueError(f"p must have the shape of s {tuple(s.shape)}, got {tuple(p.shape)}")
    check_number("min_eig", min_eig, low=0.0, low_open=True)
    return _TraceLogm.apply(s, p, min_eig)


def mce_uniformity(teacher: torch.Tensor, online: torch.Tensor, *, lam: float = 1.0, mu: float = 1.0, order: int = 4,
                   exact: bool = False, backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """Matrix-SSL uniformity ``-lam tr log(C_x + mu I)`` (order-K series, or exact with ``exact=True``).

    Args:
        teacher: (m, D) teacher projector outputs (treated as constant).
        online: (m, D) online predictor outputs.
        lam, mu, order: lambda, mu and the Taylor order K (README command: 1.0, 1.0, 4).
        exact: use log|det| instead of the series.
    """
    _check_mce(teacher, online, lam, mu, order, check_finite)
    return _backend.dispatch("mce_uniformity", backend, online.device)(teacher, online, lam, mu, order, exact)


def mce_alignment(teacher: torch.Tensor, online: torch.Tensor, *, mu: float = 1.0, order: int = 4,
                  exact: bool = False, backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """Matrix-SSL alignment ``-tr[(C_t + mu I) log(C_o + mu I)]`` (matrix cross-entropy without the +tr Q term)."""
    _check_mce(teacher, online, 1.0, mu, order, check_finite)
    return _backend.dispatch("mce_alignment", backend, online.device)(teacher, online, mu, order, exact)


def hsic_term(teacher: torch.Tensor, online: torch.Tensor, *, backend: str = "auto", check_finite: bool = False
              ) -> torch.Tensor:
    """``||C_x||_F^2``: the biased linear-kernel HSIC estimator (1/m^2) tr(T^T^' J O^O^' J) (methods.md §3.2)."""
    check_pair("teacher", teacher, "online", online, check_finite=check_finite)
    return _backend.dispatch("hsic_term", backend, online.device)(teacher, online)


def matrix_ssl_loss(online1: torch.Tensor, online2: torch.Tensor, teacher1: torch.Tensor, teacher2: torch.Tensor, *,
                    lam: float = 1.0, mu: float = 1.0, gamma: float = 1.0, order: int = 4, exact: bool = False,
                    hsic_weight: float = 0.0, backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """Matrix-SSL loss as implemented at yifanzhang-pro/Matrix-SSL HEAD b8164df (module docstring).

    Args:
        online1, online2: (m, D) online predictor outputs of views 1 and 2.
        teacher1, teacher2: (m, D) EMA-teacher projector outputs of views 1 and 2 (constants).
        lam, mu, gamma, order: lambda (uniformity weight), mu (shift inside the log), gamma (alignment weight),
            Taylor order K. The README command uses 1, 1, 1, 4.
        exact: exact matrix log instead of the series.
        hsic_weight: a; 0 for Matrix-SSL, 0.003 for Kernel-SSL (``kernel_ssl_loss``).
    """
    for name, x in (("online2", online2), ("teacher1", teacher1), ("teacher2", teacher2)):
        check_pair("online1", online1, name, x, check_finite=check_finite)
    _check_mce(teacher1, online1, lam, mu, order, False)
    check_number("gamma", gamma, low=0.0)
    check_number("hsic_weight", hsic_weight, low=0.0)
    fn = _backend.dispatch("matrix_ssl_loss", backend, online1.device)
    return fn(online1, online2, teacher1, teacher2, lam, mu, gamma, order, exact, hsic_weight)


def kernel_ssl_loss(online1: torch.Tensor, online2: torch.Tensor, teacher1: torch.Tensor, teacher2: torch.Tensor, *,
                    lam: float = 1.0, mu: float = 1.0, gamma: float = 1.0, order: int = 4, exact: bool = False,
                    hsic_weight: float = 0.003, backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """Kernel-SSL: Matrix-SSL plus ``-a (1+gamma)/2 (||C_x^21||_F^2 + ||C_x^12||_F^2)``, a = ``hsic_weight``
    (Matrix-SSL repository at bf80b2e with ``--HSIC``, ``--align_gamma`` default 0.003; methods.md §3)."""
    return matrix_ssl_loss(online1, online2, teacher1, teacher2, lam=lam, mu=mu, gamma=gamma, order=order,
                           exact=exact, hsic_weight=hsic_weight, backend=backend, check_finite=check_finite)
