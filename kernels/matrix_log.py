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
    expansion in (mu - 1); tr(C_t C_o^j) = tr(K A^(j-1)) with A = O~O~'/m, B = T~O~'/m, K = B'B. With Y_i = B A^(i-1),
    <Y_i, Y_l> = tr(C_t C_o^(i+l-1)), so Y_1..Y_(floor(K/2)+1) give them all (2 GEMMs for K = 4, not 3). No D x D
    matrix is formed.
  * Exact log (``exact=True``): U = -lam log|det(C_x + mu I)| (LU; on the Gram side D log mu + log det(I + M/mu));
    A via eigh of C_o + mu I with a Daleckii-Krein backward whose divided differences are evaluated with log1p, so
    (near-)degenerate spectra give finite, exact gradients (autograd through eigh gives NaN there).

Triton (backend "triton", series only): one Triton GEMM, C = alpha A B + shift I (transposes read through strides),
whose epilogue can also reduce the tile's share of tr C, <C, E> and <C, C> from the fp32 accumulator (custom op
``fusedssl::mm_trace``; ``fusedssl::mm_shift`` without the reductions), so the series' traces are never a second
pass over a stored matrix: the launch forming X^j reduces tr X^j and <X^j, X'> = tr X^(j+1) (for a symmetric X,
<X^j, X^(j-1)> and <X^j, X^j>), the launch forming Y_i reduces <Y_i, Y_(i-1)> and ||Y_i||^2, the one forming
O~O~'/m also <., T~T~'/m> = ||C_x||_F^2. The D x D chain (m >= D): uniformity forms X, X^2, X^3 (the backward needs
X^(K-1)) and returns the closed-form G_U (+ 2h C_x for Kernel-SSL's HSIC term); alignment forms P, X and, by the
recurrence S_1 = P, S_(k+1) = P X^k + X S_k, G_A in 3 + 2(K-1) GEMMs; one GEMM per call maps G back to the rows.
For m < D the provider runs the m x m Gram-side algebra above, every product an mm_trace launch, the backward
through mm_trace's registered one (no D x D matrix; the GEMMs of the efficient reference, the traces fused).
Both ops have fakes and registered backwards, so torch.compile traces both sides.

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
    def _mm_shift_kernel(a_ptr, b_ptr, c_ptr, e_ptr, part_ptr, M, N, K, s_am, s_ak, s_bk, s_bn, s_em, s_en, alpha,
                         shift, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr, TRACES: tl.constexpr, HAS_E: tl.constexpr):
        """C = alpha * A @ B + shift * I (M x N, contiguous); A, B and E read through strides (transposes are free).

        TRACES: the epilogue also writes this tile's partial sums of tr C, <C, E> (HAS_E) and <C, C> to
        part[3 * tile + 0..2], from the fp32 tile in registers: the series' traces cost no second pass over C."""
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
        diag = offs_m[:, None] == offs_n[None, :]
        valid = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        c = alpha * acc + tl.where(diag, shift, 0.0)
        tl.store(c_ptr + offs_m[:, None] * N + offs_n[None, :], c, mask=valid)
        if TRACES:
            c = tl.where(valid, c, 0.0)
            part = part_ptr + 3 * (pid_m * tl.num_programs(1) + pid_n)
            tl.store(part, tl.sum(tl.sum(tl.where(diag, c, 0.0), axis=1), axis=0))
            if HAS_E:
                e = tl.load(e_ptr + offs_m[:, None] * s_em + offs_n[None, :] * s_en, mask=valid, other=0.0)
                tl.store(part + 1, tl.sum(tl.sum(c * e, axis=1), axis=0))
            else:
                tl.store(part + 1, 0.0)
            tl.store(part + 2, tl.sum(tl.sum(c * c, axis=1), axis=0))


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
        tr_ctco = _cross_traces(b, a, order, mm)      # tr(C_t C_o^j)
        tr_p = t.pow(2).sum() / m + mu * d            # tr P = tr C_t + mu D
        tr_pco = [tr_ctco[j] + mu * tr_co[j] for j in range(order)]
        traces = _shift_traces(tr_pco, tr_p, mu - 1.0, order)
    return -sum(_series_coeff(k + 1) * traces[k] for k in range(order))


def _cross_traces(b: torch.Tensor, a: torch.Tensor, order: int, mm=torch.matmul) -> list[torch.Tensor]:
    """[r_1, ..., r_order], r_j = tr(C_t C_o^j) = tr(K A^(j-1)) with K = B'B, A symmetric: with Y_i = B A^(i-1),
    <Y_i, Y_l> = r_(i+l-1), so Y_1..Y_(floor(K/2)+1) give every r_j as <Y_i, Y_(i-1)> or ||Y_i||^2."""
    ys, out = [b], [(b * b).sum()]
    while len(out) < order:
        ys.append(mm(ys[-1], a))
        out += [(ys[-1] * ys[-2]).sum(), (ys[-1] * ys[-1]).sum()]
    return out[:order]


def _check_mce(teacher, online, lam, mu, order, check_finite):
    check_pair("teacher", teacher, "online", online, check_finite=check_finite)
    check_number("lam", lam, low=0.0)
    check_number("mu", mu, low=0.0, low_open=True)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int (the Taylor order K), got {order!r}")


# -------------------------------------------------------------------------------- custom ops (torch.compile sees these)


def _mm_launch(a: torch.Tensor, b: torch.Tensor, alpha: float, shift: float, e: torch.Tensor | None,
               traces: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch _mm_shift_kernel: C, and with ``traces`` the (tiles, 3) partials of tr C, <C, e>, <C, C>."""
    if a.dtype != torch.float32 or b.dtype != torch.float32 or (e is not None and e.dtype != torch.float32):
        got = ", ".join(str(x.dtype) for x in (a, b, e) if x is not None)
        raise TypeError(f"mm_shift: the operands must be float32, got {got}")
    m, k = a.shape
    n = b.shape[1]
    if e is not None and e.shape != (m, n):
        raise ValueError(f"mm_trace: e must have the product's shape {(m, n)}, got {tuple(e.shape)}")
    c = torch.empty(m, n, dtype=torch.float32, device=a.device)
    precision = dot_precision(torch.float32, a.device)
    bm, bn, bk = tile(m), tile(n), k_tile(k, torch.float32, precision)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    part = torch.empty(grid[0] * grid[1], 3, dtype=torch.float32, device=a.device) if traces else None
    ee = e if e is not None else c  # never read without HAS_E
    with _triton.on_device(a):
        _mm_shift_kernel[grid](
            a, b, c, ee, part if traces else c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            ee.stride(0), ee.stride(1), alpha, shift, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION=precision,
            TRACES=traces, HAS_E=e is not None, **_triton.LAUNCH)
    return c, part


@torch.library.custom_op("fusedssl::mm_shift", mutates_args=())
def _mm_shift_op(a: torch.Tensor, b: torch.Tensor, alpha: float, shift: float) -> torch.Tensor:
    return _mm_launch(a, b, alpha, shift, None, False)[0]


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


@torch.library.custom_op("fusedssl::mm_trace", mutates_args=())
def _mm_trace_op(a: torch.Tensor, b: torch.Tensor, e: torch.Tensor | None, alpha: float, shift: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    c, part = _mm_launch(a, b, alpha, shift, e, True)
    return c, part.sum(dim=0)  # the tiles' partials in one fixed order: deterministic


@_mm_trace_op.register_fake
def _(a, b, e, alpha, shift):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.float32), a.new_empty((3,), dtype=torch.float32)


def _mm_trace_setup(ctx, inputs, output):
    a, b, e, alpha, _ = inputs
    ctx.save_for_backward(a, b, e, output[0])
    ctx.alpha = alpha


def _mm_trace_backward(ctx, gc, gtr):
    # every output is a function of C: dL/dC = gc + g_0 I + g_1 E + 2 g_2 C, then the GEMM's rule; dL/dE = g_1 C
    a, b, e, c = ctx.saved_tensors
    g = torch.zeros_like(c) if gc is None else gc.clone()
    if gtr is not None:
        g.diagonal().add_(gtr[0])
        if e is not None:
            g = g + gtr[1] * e
        g = g + 2.0 * gtr[2] * c
    ga = _mm_shift_op(g, b.T, ctx.alpha, 0.0) if ctx.needs_input_grad[0] else None
    gb = _mm_shift_op(a.T, g, ctx.alpha, 0.0) if ctx.needs_input_grad[1] else None
    ge = gtr[1] * c if ctx.needs_input_grad[2] and gtr is not None else None
    return ga, gb, ge, None, None


_mm_trace_op.register_autograd(_mm_trace_backward, setup_context=_mm_trace_setup)


def mm_trace(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, shift: float = 0.0, e: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``C = alpha * a @ b + shift * I`` with the traces its epilogue reduces: (C, tr C, <C, e>, <C, C>).
    ``e`` (the product's shape, any strides: pass ``x.T`` for <C, x'>) may be None (<C, e> is then 0)."""
    c, tr = _mm_trace_op(a, b, e, float(alpha), float(shift))
    return c, tr[0], tr[1], tr[2]


def _traced_powers(x: torch.Tensor, known: dict[int, torch.Tensor], count: int, order: int, symmetric: bool
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Powers x^1..x^count (mm_trace launches) and [tr x^1, ..., tr x^order], as many as the launches' epilogues
    reduce, the rest elementwise. ``known``: the traces the launch that formed x reduced ({1: tr x}, and {2: <x, x>}
    for a symmetric x). General x: the launch of x^j reduces tr x^j (its diagonal) and <x^j, x'> = tr x^(j+1).
    Symmetric x: it reduces <x^j, x^(j-1)> = tr x^(2j-1) and <x^j, x^j> = tr x^(2j), so ceil(order/2) powers give
    every trace."""
    pw, traces = [x], dict(known)
    for j in range(2, count + 1):
        c, diag, dot, self_dot = mm_trace(pw[-1], x, e=pw[-1] if symmetric else x.T)
        pw.append(c)
        traces.update({2 * j - 1: dot, 2 * j: self_dot} if symmetric else {j: diag, j + 1: dot})
    for k in range(2, order + 1):
        if k not in traces:  # tr x^k = <x^hi, (x^lo)'>, hi + lo = k, both stored
            hi, lo = (k + 1) // 2, k // 2
            traces[k] = _tr(pw[hi - 1], pw[lo - 1])
    return pw, [traces[k] for k in range(1, order + 1)]


def _uniformity_gram_triton(t: torch.Tensor, o: torch.Tensor, lam: float, mu: float, order: int) -> torch.Tensor:
    """U on the m x m side (m < D): tr C_x^j = tr M^j, M = O~T~'/m, traces from the GEMM epilogues; the backward is
    mm_trace's (the teacher side gets no GEMM)."""
    m, d = o.shape
    x, tr_x, _, _ = mm_trace(o, t.T, 1.0 / m)
    _, traces = _traced_powers(x, {1: tr_x}, (order + 1) // 2, order, symmetric=False)
    traces = _shift_traces(traces, float(d), mu - 1.0, order)
    return -lam * sum(_series_coeff(k + 1) * traces[k] for k in range(order))


def _alignment_gram_triton(t: torch.Tensor, o: torch.Tensor, mu: float, order: int, hsic: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """A on the m x m side (m < D): s_j = tr A^j from the symmetric chain of A = O~O~'/m, r_j = tr(C_t C_o^j) from
    Y_i = B A^(i-1), B = T~O~'/m, each launch of Y_i reducing <Y_i, Y_(i-1)> = r_(2i-2) and ||Y_i||^2 = r_(2i-1).
    With ``hsic`` also ||C_x||_F^2 = <A, T~T~'/m>, reduced by the launch that forms A (one extra GEMM, on the
    teacher: no gradient). Returns (A, ||C_x||_F^2 or 0)."""
    m, d = o.shape
    tt = mm_shift(t, t.T, 1.0 / m) if hsic else None
    a, tr_a, h, a_sq = mm_trace(o, o.T, 1.0 / m, e=tt)
    _, tr_co = _traced_powers(a, {1: tr_a, 2: a_sq}, (order + 1) // 2, order, symmetric=True)
    y, _, _, r1 = mm_trace(t, o.T, 1.0 / m)
    tr_ctco = [r1]
    while len(tr_ctco) < order:
        y_next, _, dot, self_dot = mm_trace(y, a, e=y)
        tr_ctco += [dot, self_dot]
        y = y_next
    tr_p = t.pow(2).sum() / m + mu * d               # tr P = tr C_t + mu D
    tr_pco = [tr_ctco[j] + mu * tr_co[j] for j in range(order)]
    traces = _shift_traces(tr_pco, tr_p, mu - 1.0, order)
    return -sum(_series_coeff(k + 1) * traces[k] for k in range(order)), h


class _UniformityTriton(torch.autograd.Function):
    """U + h ||C_x||_F^2 on prepared (t, o), D x D side, with the closed-form backward of methods.md §2.7 / §3.2:
    G = -lam sum_k (-1)^(k+1) (X^(k-1))' + 2 h C_x,  dO~ = (1/m) T~ G."""

    @staticmethod
    def forward(ctx, t, o, lam: float, mu: float, order: int, h: float):
        m = o.shape[0]
        x, tr_x, _, _ = mm_trace(t.T, o, 1.0 / m, mu - 1.0)   # X = C_x + (mu - 1) I
        # the powers G needs (X^(K-1)); their launches reduce every trace the value needs
        pw, traces = _traced_powers(x, {1: tr_x}, max((order + 1) // 2, order - 1), order, symmetric=False)
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
        x = mm_shift(o.T, o, 1.0 / m, mu - 1.0)               # X = C_o + (mu - 1) I, symmetric
        p, _, tr_pxk, _ = mm_trace(t.T, t, 1.0 / m, mu, e=x)  # P = C_t + mu I, and tr(P X) = <P, X>
        val = 0.0
        pxk = p                                               # P X^(k-1)
        s = p                                                 # S_k
        g = torch.zeros_like(p)                               # 3 + (K - 1) * 2 GEMMs of D^3 in all
        for k in range(1, order + 1):
            c = _series_coeff(k)
            val = val - c * tr_pxk                            # tr(P X^k)
            g = g - c * s
            if k < order:
                pxk, _, tr_pxk, _ = mm_trace(pxk, x, e=x)     # P X^k, and tr(P X^(k+1)) = <P X^k, X>
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
    """Triton provider on the cheaper side: m < D the m x m Gram-side algebra with every product a Triton GEMM whose
    epilogue reduces the traces (backward through mm_trace's registered one), else the D x D GEMM chain with the
    closed-form G (module docstring). ``exact=True`` keeps the LU / eigh path of the reference (no Triton
    eigendecomposition)."""
    if exact:
        return matrix_ssl_loss_ref(online1, online2, teacher1, teacher2, lam, mu, gamma, order, exact, hsic_weight)
    with full_precision(online1):
        dt = torch.float32  # the Triton chain runs in fp32 (fp64 inputs too)
        def prep(z):  # row L2 then centring, both Triton kernels, in fp32
            return col_normalize_triton(row_normalize_triton(z.to(dt)), "center")

        o1, o2 = prep(online1), prep(online2)
        t1, t2 = prep(teacher1.detach()), prep(teacher2.detach())
        if gram_side(*o1.shape):
            loss = 0.0
            for t, o in ((t2, o1), (t1, o2)):
                align, h = _alignment_gram_triton(t, o, mu, order, bool(hsic_weight))
                loss = loss + 0.5 * (_uniformity_gram_triton(t, o, lam, mu, order) + gamma * align)
                if hsic_weight:
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
