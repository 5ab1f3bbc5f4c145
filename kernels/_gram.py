"""Shared primitive of the covariance-type objectives: the fused loss of a scaled cross-product C = s A'B.

    L = sum_i w_d (c_ii - t_d)^2 + sum_{i!=j} w_o (c_ij - t_o)^2,     c = s * A'B  (auto mode: A = B)
Barlow Twins and its HSIC variant, VICReg's covariance term (covariance.py), FroSSL's and log-Frobenius'
||z'z||_F^2 = 2 L with w = 1/2, t = 0 (frobenius.py), and Matrix-SSL's Frobenius terms (``frob2_cross``,
matrix_log.py) are all this form; each of those family files lists this file in its header.

  * Triton forward ``_cov_loss_fwd_kernel``: each program owns a D x D tile, accumulates A'B over K = N in fp32, and
    in the epilogue writes the tile's loss partial sum and G = dL/dC = 2 w (c - t) directly: C itself is never
    stored. G is stored in the operands' half precision for bf16/fp16 inputs (fp32 otherwise).
  * Triton backward ``_cov_loss_bwd_kernel``: a single-accumulator GEMM per (rows, columns) tile, launched once for
    dA = s B G' and once for dB = s A G (auto mode: once, 2 s A G), scaled by the incoming gradient read on the
    device (no host sync); bf16/fp16 operands with fp32 accumulation run on the tensor cores.
  * Triton N x N side (``gram_loss``, for N < D, where the D x D side costs D/N times more): with y = norm(z) the
    column normalisation applied while loading the raw z (statistics from one pass of normalize.py's kernel),
        ||c||_F^2 = s^2 <Ya Ya', Yb Yb'>,   c_kk = s sum_n ya_nk yb_nk,   1'c1 = s (Ya 1)'(Yb 1),
    so ``_gram_fwd_kernel`` computes only the upper-triangle tiles of both N x N Grams (the mirror is stored), the
    diagonal tiles add the column dots and row sums of the operands they load, and ``_gram_finish_kernel`` forms the
    loss. The backward dL/dYa = s (2 w_o s Gb Ya + Yb diag(h) - 2 w_o t_o (Yb 1) 1') is one GEMM per view with the
    last two terms in its epilogue, then the normalisation's closed-form backward; no normalised copy is written.
  * CUDA C++ (csrc/covariance.cu): C from a cuBLAS GEMM in fp32, then one fused pass writes the loss and overwrites
    C with G in place; the backward is two cuBLAS GEMMs scaled by the incoming gradient on the device.
All are custom ops with fakes (torch.compile traces them) and a registered backward.
"""

from __future__ import annotations

import torch

from . import _cuda, _triton
from ._triton import HAS_TRITON, dot_precision, interpreting, k_tile, tile, tl, triton
from .normalize import MODE_ID, col_norm_bwd, col_stats

# ------------------------------------------------------------------------------------------------------- Triton kernels


if HAS_TRITON:

    @triton.jit
    def _cov_epilogue(acc, offs_i, offs_j, g_ptr, part_ptr, part_idx, D, scale, w_diag, t_diag, w_off, t_off):
        """Loss partial of one C tile and its G = dL/dC, from the fp32 accumulator of A'B."""
        c = acc * scale
        valid = (offs_i[:, None] < D) & (offs_j[None, :] < D)
        diag = offs_i[:, None] == offs_j[None, :]
        # (c - t) in fp32 before any rounding: bf16 resolves 1 - c_ii only to 0.004 (methods.md §16.6)
        diff = tl.where(diag, c - t_diag, c - t_off)
        w = tl.where(diag, w_diag, w_off)
        loss = tl.where(valid, w * diff * diff, 0.0)
        g = (2.0 * w * diff).to(g_ptr.dtype.element_ty)
        tl.store(g_ptr + offs_i[:, None].to(tl.int64) * D + offs_j[None, :], g, mask=valid)
        tl.store(part_ptr + part_idx, tl.sum(tl.sum(loss, axis=1), axis=0))

    @triton.jit
    def _cov_loss_fwd_kernel(a_ptr, b_ptr, g_ptr, part_ptr, c_ptr, N, D, K_SPLIT, stride_an, stride_ad, stride_bn,
                             stride_bd, scale, w_diag, t_diag, w_off, t_off,
                             BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
                             SPLIT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # SPLIT > 1: program_id(2) takes rows [s K_SPLIT, (s + 1) K_SPLIT) of the K = N sum and stores its partial
        # C tile to c_ptr; _cov_split_epilogue_kernel adds the partials in a fixed order (deterministic)
        pid_i = tl.program_id(0)
        pid_j = tl.program_id(1)
        offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
        k_lo = tl.program_id(2) * K_SPLIT
        k_hi = tl.minimum(N, k_lo + K_SPLIT)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            # A' tile (BLOCK_I x BLOCK_K) loaded transposed through the strides; B tile (BLOCK_K x BLOCK_J)
            a = tl.load(a_ptr + offs_k[None, :] * stride_an + offs_i[:, None] * stride_ad,
                        mask=(offs_k[None, :] < k_hi) & (offs_i[:, None] < D), other=0.0)
            b = tl.load(b_ptr + offs_k[:, None] * stride_bn + offs_j[None, :] * stride_bd,
                        mask=(offs_k[:, None] < k_hi) & (offs_j[None, :] < D), other=0.0)
            if UPCAST:  # the interpreter mis-computes half-precision arithmetic
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if SPLIT == 1:
            _cov_epilogue(acc, offs_i, offs_j, g_ptr, part_ptr, pid_i * tl.num_programs(1) + pid_j, D, scale,
                          w_diag, t_diag, w_off, t_off)
        else:
            tile = (offs_i[:, None] < D) & (offs_j[None, :] < D)
            tl.store(c_ptr + tl.program_id(2).to(tl.int64) * D * D + offs_i[:, None] * D + offs_j[None, :], acc,
                     mask=tile)

    @triton.jit
    def _cov_split_epilogue_kernel(c_ptr, g_ptr, part_ptr, D, scale, w_diag, t_diag, w_off, t_off,
                                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, SPLIT: tl.constexpr):
        pid_i = tl.program_id(0)
        pid_j = tl.program_id(1)
        offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
        tile = (offs_i[:, None] < D) & (offs_j[None, :] < D)
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
        for s in range(SPLIT):
            acc += tl.load(c_ptr + s * D * D + offs_i[:, None] * D + offs_j[None, :], mask=tile, other=0.0)
        _cov_epilogue(acc, offs_i, offs_j, g_ptr, part_ptr, pid_i * tl.num_programs(1) + pid_j, D, scale, w_diag,
                      t_diag, w_off, t_off)

    @triton.jit
    def _cov_loss_bwd_kernel(x_ptr, g_ptr, gout_ptr, out_ptr, N, D, stride_xn, stride_xd, scale,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                             TRANS_G: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # out = scale * gout * X G (TRANS_G: X G'), one (rows, columns) tile per program and ONE accumulator: the
        # backward of c = s A'B is dA = s B G' and dB = s A G, launched as two such GEMMs (one dual-output loop held
        # two accumulators and spilled heavily on sm_90). G is stored in the operands' dtype, so half-precision
        # inputs multiply on the tensor cores (fp32 accumulation).
        pid_m = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xn + offs_k[None, :] * stride_xd,
                        mask=(offs_m[:, None] < N) & (offs_k[None, :] < D), other=0.0)
            gmask = (offs_k[:, None] < D) & (offs_c[None, :] < D)
            if TRANS_G:  # G'[k, c] = G[c, k]; int64 row offsets: D x D passes 2^31 elements at D >= 46,341
                g = tl.load(g_ptr + offs_c[None, :].to(tl.int64) * D + offs_k[:, None], mask=gmask, other=0.0)
            else:
                g = tl.load(g_ptr + offs_k[:, None].to(tl.int64) * D + offs_c[None, :], mask=gmask, other=0.0)
            if UPCAST:  # the interpreter mis-computes half-precision arithmetic
                x = x.to(tl.float32)
                g = g.to(tl.float32)
            acc = tl.dot(x, g, acc, input_precision=PRECISION)
        s = scale * tl.load(gout_ptr)  # the upstream gradient, read on the device: no host sync
        out = (offs_m[:, None] < N) & (offs_c[None, :] < D)
        tl.store(out_ptr + offs_m[:, None] * D + offs_c[None, :], (acc * s).to(out_ptr.dtype.element_ty), mask=out)

    # ---- the N x N (Gram) side, for N < D: ||A'B||_F^2 = <A A', B B'>, diag(A'B) from column dots

    @triton.jit
    def _tri_tile(pid, T):
        """(ti, tj), ti <= tj, of the pid-th tile of a T x T upper triangle, row by row."""
        ti = 0
        for t in range(1, T):
            ti += (pid >= t * T - (t * (t - 1)) // 2).to(tl.int32)
        return ti, ti + pid - (ti * T - (ti * (ti - 1)) // 2)

    @triton.jit
    def _normed_tile(z_ptr, m_ptr, r_ptr, offs_n, offs_k, s_n, s_k, N, k_hi, NORM: tl.constexpr,
                     TRANS: tl.constexpr):
        """A (rows, k) tile of y = (z - m) r (TRANS: the (k, rows) tile), in fp32, zero outside the matrix."""
        if TRANS:
            mask = (offs_k[:, None] < k_hi) & (offs_n[None, :] < N)
            z = tl.load(z_ptr + offs_k[:, None] * s_k + offs_n[None, :] * s_n, mask=mask, other=0.0).to(tl.float32)
            if NORM:
                m = tl.load(m_ptr + offs_k, mask=offs_k < k_hi, other=0.0)
                r = tl.load(r_ptr + offs_k, mask=offs_k < k_hi, other=0.0)
                z = tl.where(mask, (z - m[:, None]) * r[:, None], 0.0)
        else:
            mask = (offs_n[:, None] < N) & (offs_k[None, :] < k_hi)
            z = tl.load(z_ptr + offs_n[:, None] * s_n + offs_k[None, :] * s_k, mask=mask, other=0.0).to(tl.float32)
            if NORM:
                m = tl.load(m_ptr + offs_k, mask=offs_k < k_hi, other=0.0)
                r = tl.load(r_ptr + offs_k, mask=offs_k < k_hi, other=0.0)
                z = tl.where(mask, (z - m[None, :]) * r[None, :], 0.0)
        return z

    @triton.jit
    def _gram_epilogue(acc_a, acc_b, offs_i, offs_j, ti, tj, ga_ptr, gb_ptr, part_ptr, pid, N, AUTO: tl.constexpr):
        """<Ga, Gb> partial of one upper tile (off-diagonal tiles count twice) and both Grams stored, with the
        mirror tile, in the G dtype (the backward's operand)."""
        valid = (offs_i[:, None] < N) & (offs_j[None, :] < N)
        w = tl.where(ti == tj, 1.0, 2.0)
        if AUTO:
            prod = acc_a * acc_a
        else:
            prod = acc_a * acc_b
        tl.store(part_ptr + pid, w * tl.sum(tl.sum(tl.where(valid, prod, 0.0), axis=1), axis=0))
        # the diagonal tile is stored once: its mirror store would race with it over slightly different roundings.
        # ti is compared as a tile: Triton 3.9's interpreter turns `block & (scalar != scalar)` into an int32 mask and
        # rejects it (a branch instead made the two-Gram forward spill on sm_90)
        mirror = valid & ((offs_i[:, None] * 0 + ti) != tj)
        rows = offs_i[:, None].to(tl.int64) * N + offs_j[None, :]
        cols = offs_j[None, :].to(tl.int64) * N + offs_i[:, None]
        tl.store(ga_ptr + rows, acc_a.to(ga_ptr.dtype.element_ty), mask=valid)
        tl.store(ga_ptr + cols, acc_a.to(ga_ptr.dtype.element_ty), mask=mirror)
        if not AUTO:
            tl.store(gb_ptr + rows, acc_b.to(gb_ptr.dtype.element_ty), mask=valid)
            tl.store(gb_ptr + cols, acc_b.to(gb_ptr.dtype.element_ty), mask=mirror)

    @triton.jit
    def _partial_tile(gp_ptr, split, pid, tiles, BLOCK_N: tl.constexpr, AUTO: tl.constexpr):
        """The (BLOCK_N, BLOCK_N) pointers of split ``split``'s partial of upper tile ``pid`` (then the B Gram's, unless
        AUTO): packed by tile, so only the computed upper tiles take memory. Rows and columns past N hold the zeros
        the masked operand loads gave, so neither side masks."""
        idx = (split * tiles + pid).to(tl.int64)
        if not AUTO:
            idx = 2 * idx
        loc = tl.arange(0, BLOCK_N)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        return gp_ptr + idx * BLOCK_N * BLOCK_N + loc

    @triton.jit
    def _gram_fwd_kernel(a_ptr, b_ptr, ma_ptr, ra_ptr, mb_ptr, rb_ptr, ga_ptr, gb_ptr, part_ptr, cd_ptr, rs_ptr,
                         gp_ptr, N, D, T, K_SPLIT, s_an, s_ad, s_bn, s_bd,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, AUTO: tl.constexpr,
                         NORM: tl.constexpr, ROWSUM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # one upper-triangle tile (ti <= tj) of Ga = A A' and Gb = B B' per program, K = D split over program_id(1);
        # A and B are the raw inputs, normalised while loading (NORM) with the column statistics (m, r). Diagonal
        # tiles also write their rows' column dots sum_n a_nk b_nk (cd: one row per row tile, K disjoint between
        # splits) and, for a non-zero off-diagonal target, the row sums of both (rs: one row per split)
        pid = tl.program_id(0)
        ti, tj = _tri_tile(pid, T)
        offs_i = ti * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_j = tj * BLOCK_N + tl.arange(0, BLOCK_N)
        acc_a = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        rsa = tl.zeros((BLOCK_N,), dtype=tl.float32)
        rsb = tl.zeros((BLOCK_N,), dtype=tl.float32)
        k_lo = tl.program_id(1) * K_SPLIT
        k_hi = tl.minimum(D, k_lo + K_SPLIT)
        # operand tiles in the inputs' dtype once normalised (fp32 in the interpreter, which mis-computes half
        # precision): four fp32 tiles beside two accumulators spilled on sm_90
        dt = tl.float32 if UPCAST else a_ptr.dtype.element_ty
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            ai = _normed_tile(a_ptr, ma_ptr, ra_ptr, offs_i, offs_k, s_an, s_ad, N, k_hi, NORM, False).to(dt)
            aj = _normed_tile(a_ptr, ma_ptr, ra_ptr, offs_j, offs_k, s_an, s_ad, N, k_hi, NORM, True).to(dt)
            if AUTO:
                bi = ai
            else:
                bi = _normed_tile(b_ptr, mb_ptr, rb_ptr, offs_i, offs_k, s_bn, s_bd, N, k_hi, NORM, False).to(dt)
                bj = _normed_tile(b_ptr, mb_ptr, rb_ptr, offs_j, offs_k, s_bn, s_bd, N, k_hi, NORM, True).to(dt)
            if ti == tj:  # the column dots and row sums of this tile's rows, from the operands the GEMM multiplies
                af, bf = ai.to(tl.float32), bi.to(tl.float32)
                tl.store(cd_ptr + ti.to(tl.int64) * D + offs_k, tl.sum(af * bf, axis=0), mask=offs_k < k_hi)
                if ROWSUM:
                    rsa += tl.sum(af, axis=1)
                    rsb += tl.sum(bf, axis=1)
            acc_a = tl.dot(ai, aj, acc_a, input_precision=PRECISION)
            if not AUTO:
                acc_b = tl.dot(bi, bj, acc_b, input_precision=PRECISION)
        if ROWSUM:
            if ti == tj:
                rmask = offs_i < N
                tl.store(rs_ptr + tl.program_id(1) * 2 * N + offs_i, rsa, mask=rmask)
                tl.store(rs_ptr + tl.program_id(1) * 2 * N + N + offs_i, rsb, mask=rmask)
        if SPLIT == 1:
            _gram_epilogue(acc_a, acc_b, offs_i, offs_j, ti, tj, ga_ptr, gb_ptr, part_ptr, pid, N, AUTO)
        else:  # partial tiles, added in a fixed order by _gram_split_epilogue_kernel (deterministic)
            base = _partial_tile(gp_ptr, tl.program_id(1), pid, tl.num_programs(0), BLOCK_N, AUTO)
            tl.store(base, acc_a)
            if not AUTO:
                tl.store(base + BLOCK_N * BLOCK_N, acc_b)

    @triton.jit
    def _gram_split_epilogue_kernel(gp_ptr, ga_ptr, gb_ptr, part_ptr, N, T, BLOCK_N: tl.constexpr,
                                    SPLIT: tl.constexpr, AUTO: tl.constexpr):
        pid = tl.program_id(0)
        ti, tj = _tri_tile(pid, T)
        offs_i = ti * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_j = tj * BLOCK_N + tl.arange(0, BLOCK_N)
        acc_a = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
        for s in range(SPLIT):
            base = _partial_tile(gp_ptr, s, pid, tl.num_programs(0), BLOCK_N, AUTO)
            acc_a += tl.load(base)
            if not AUTO:
                acc_b += tl.load(base + BLOCK_N * BLOCK_N)
        _gram_epilogue(acc_a, acc_b, offs_i, offs_j, ti, tj, ga_ptr, gb_ptr, part_ptr, pid, N, AUTO)

    @triton.jit
    def _gram_finish_kernel(part_ptr, cd_ptr, rs_ptr, loss_ptr, h_ptr, rsum_ptr, N, D, T, N_PARTS, SPLITS, scale,
                            w_diag, t_diag, w_off, t_off, const, BLOCK: tl.constexpr, ROWSUM: tl.constexpr):
        # one program: the loss from the tile partials of <Ga, Gb>, the diagonal c_kk = s sum_n a_nk b_nk and the
        # row sums; writes h_k = dL/dc_kk without the part <Ga, Gb> already carries, and the reduced row sums
        #   L = w_o (s^2 <Ga, Gb> - 2 t_o s ra'rb) + const + sum_k [w_d (c_kk - t_d)^2 - w_o (c_kk - t_o)^2]
        # with const = w_o t_o^2 D^2 (from the host). rsum is written (zeros without ROWSUM): the backward reads it
        offs = tl.arange(0, BLOCK)
        frob = tl.zeros((BLOCK,), dtype=tl.float32)
        for p0 in range(0, N_PARTS, BLOCK):
            frob += tl.load(part_ptr + p0 + offs, mask=p0 + offs < N_PARTS, other=0.0)
        diag = tl.zeros((BLOCK,), dtype=tl.float32)
        for k0 in range(0, D, BLOCK):
            kmask = k0 + offs < D
            c = tl.zeros((BLOCK,), dtype=tl.float32)
            for t in range(T):
                c += tl.load(cd_ptr + t * D + k0 + offs, mask=kmask, other=0.0)
            c = c * scale
            h = 2.0 * w_diag * (c - t_diag) - 2.0 * w_off * (c - t_off)
            tl.store(h_ptr + k0 + offs, h, mask=kmask)
            diag += tl.where(kmask, w_diag * (c - t_diag) * (c - t_diag) - w_off * (c - t_off) * (c - t_off), 0.0)
        cross = tl.zeros((BLOCK,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK):
            nmask = n0 + offs < N
            ra = tl.zeros((BLOCK,), dtype=tl.float32)
            rb = tl.zeros((BLOCK,), dtype=tl.float32)
            if ROWSUM:
                for s in range(SPLITS):
                    ra += tl.load(rs_ptr + s * 2 * N + n0 + offs, mask=nmask, other=0.0)
                    rb += tl.load(rs_ptr + s * 2 * N + N + n0 + offs, mask=nmask, other=0.0)
            tl.store(rsum_ptr + n0 + offs, ra, mask=nmask)
            tl.store(rsum_ptr + N + n0 + offs, rb, mask=nmask)
            cross += ra * rb
        loss = (w_off * (scale * scale * tl.sum(frob, axis=0) - 2.0 * t_off * scale * tl.sum(cross, axis=0))
                + const + tl.sum(diag, axis=0))
        tl.store(loss_ptr, loss)

    @triton.jit
    def _gram_bwd_kernel(g_ptr, x_ptr, mx_ptr, rx_ptr, y_ptr, my_ptr, ry_ptr, h_ptr, rs_ptr, gout_ptr, out_ptr,
                         N, D, s_xn, s_xd, s_yn, s_yd, alpha, beta, scale,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr,
                         ROWSUM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # dL/dy_X = scale * gout * (alpha G X + Y diag(h) + beta rs_Y 1'), X and Y normalised while loading: for
        # dA, G = Gb, X = A, Y = B; for dB the other way round. One (rows, columns) tile per program, K = N
        pid_m = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        cmask = offs_c < D
        if NORM:  # this tile's columns' statistics, loaded once
            mx = tl.load(mx_ptr + offs_c, mask=cmask, other=0.0)
            rx = tl.load(rx_ptr + offs_c, mask=cmask, other=0.0)
        for k0 in range(0, N, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            g = tl.load(g_ptr + offs_m[:, None].to(tl.int64) * N + offs_k[None, :],
                        mask=(offs_m[:, None] < N) & (offs_k[None, :] < N), other=0.0)
            xmask = (offs_k[:, None] < N) & cmask[None, :]
            x = tl.load(x_ptr + offs_k[:, None] * s_xn + offs_c[None, :] * s_xd, mask=xmask, other=0.0)
            if NORM:
                x = tl.where(xmask, (x.to(tl.float32) - mx[None, :]) * rx[None, :], 0.0)
            if UPCAST:  # the interpreter mis-computes half-precision arithmetic
                acc = tl.dot(g.to(tl.float32), x.to(tl.float32), acc, input_precision=PRECISION)
            else:
                acc = tl.dot(g, x.to(g_ptr.dtype.element_ty), acc, input_precision=PRECISION)
        out = (offs_m[:, None] < N) & cmask[None, :]
        y = tl.load(y_ptr + offs_m[:, None] * s_yn + offs_c[None, :] * s_yd, mask=out, other=0.0).to(tl.float32)
        if NORM:
            my = tl.load(my_ptr + offs_c, mask=cmask, other=0.0)
            ry = tl.load(ry_ptr + offs_c, mask=cmask, other=0.0)
            y = (y - my[None, :]) * ry[None, :]
        h = tl.load(h_ptr + offs_c, mask=cmask, other=0.0)
        res = alpha * acc + y * h[None, :]
        if ROWSUM:
            rs = tl.load(rs_ptr + offs_m, mask=offs_m < N, other=0.0)
            res += beta * rs[:, None]
        s = scale * tl.load(gout_ptr)  # the upstream gradient, read on the device: no host sync
        tl.store(out_ptr + offs_m[:, None] * D + offs_c[None, :], (res * s).to(out_ptr.dtype.element_ty), mask=out)


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _g_dtype(dtype: torch.dtype) -> torch.dtype:
    """G = dL/dC is stored in the operands' half precision (the backward GEMMs then run on tensor cores; the
    subtraction c - t happened in fp32 before that rounding), else in fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _check_extent(n: int, d: int) -> None:
    if n * d >= 2**31:  # the operand offsets are int32 (G's are int64)
        raise ValueError(f"cov_loss: an (N, D) = ({n}, {d}) operand has 2^31 elements or more; split the batch")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are one tensor (an auto-covariance): the same storage, strides and shape."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.shape == b.shape


def cov_loss_fwd(a: torch.Tensor, b: torch.Tensor, scale: float, w_diag: float, t_diag: float, w_off: float,
                 t_off: float, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: (loss as a 0-d fp32 tensor, G as a D x D tensor in ``_g_dtype``). Inputs (N, D), any
    strides, one dtype. ``split``: programs per output tile along K (default ``_triton.split_k``: more than one only
    when the D x D tiles alone leave most SMs idle and K = N is long: 16 tiles at D = 256, N = 4096)."""
    if a.dtype != b.dtype:
        raise TypeError(f"cov_loss_fwd: a is {a.dtype} but b is {b.dtype}; the GEMM operands must share a dtype")
    n, d = a.shape
    _check_extent(n, d)
    precision = dot_precision(a.dtype, a.device)
    bi, bk = tile(d), k_tile(n, a.dtype, precision)
    tiles = (triton.cdiv(d, bi), triton.cdiv(d, bi))
    split = split or _triton.split_k(tiles[0] * tiles[1], triton.cdiv(n, bk), a.device)
    k_split = triton.cdiv(triton.cdiv(n, bk), split) * bk
    split = triton.cdiv(n, k_split)  # no empty splits
    g = torch.empty(d, d, dtype=_g_dtype(a.dtype), device=a.device)
    part = torch.empty(tiles[0] * tiles[1], dtype=torch.float32, device=a.device)
    c = torch.empty((split, d, d) if split > 1 else (1,), dtype=torch.float32, device=a.device)
    with _triton.on_device(a):
        _cov_loss_fwd_kernel[(*tiles, split)](
            a, b, g, part, c, n, d, k_split, a.stride(0), a.stride(1), b.stride(0), b.stride(1), scale, w_diag,
            t_diag, w_off, t_off, BLOCK_I=bi, BLOCK_J=bi, BLOCK_K=bk, SPLIT=split, PRECISION=precision,
            UPCAST=interpreting(), **_triton.LAUNCH)
        if split > 1:
            _cov_split_epilogue_kernel[tiles](c, g, part, d, scale, w_diag, t_diag, w_off, t_off, BLOCK_I=bi,
                                              BLOCK_J=bi, SPLIT=split, **_triton.LAUNCH)
    return part.sum(), g


def _bwd_gemm(x: torch.Tensor, g: torch.Tensor, gout: torch.Tensor, scale: float, trans_g: bool) -> torch.Tensor:
    """scale * gout * x @ (g' if trans_g else g), (N, D) in x's dtype."""
    n, d = x.shape
    precision = dot_precision(x.dtype, x.device)
    bm, bc, bk = tile(n), tile(d), k_tile(d, x.dtype, precision)
    out = torch.empty(n, d, dtype=x.dtype, device=x.device)
    if g.dtype != x.dtype:  # fp32 G with half operands (a caller's own G): one operand dtype for tl.dot
        g = g.to(x.dtype) if x.dtype in (torch.float16, torch.bfloat16) else g.float()
    with _triton.on_device(x):
        _cov_loss_bwd_kernel[(triton.cdiv(n, bm), triton.cdiv(d, bc))](
            x, g, gout, out, n, d, x.stride(0), x.stride(1), scale, BLOCK_M=bm, BLOCK_C=bc, BLOCK_K=bk,
            TRANS_G=trans_g, PRECISION=precision, UPCAST=interpreting(), **_triton.LAUNCH)
    return out


def cov_loss_bwd(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, gout: torch.Tensor, scale: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward GEMMs: dA = s*gout*B G', dB = s*gout*A G, in the inputs' dtypes.

    When ``a`` and ``b`` are the same tensor (an auto-covariance, G symmetric) the total 2 s gout A G is computed once
    and returned as dA with dB = 0 (autograd sums the two for the shared input).
    """
    n, d = a.shape
    _check_extent(n, d)
    g = g.contiguous()  # the kernel addresses G as a dense row-major D x D matrix
    gout = gout.to(device=a.device, dtype=torch.float32).reshape(1)
    if _same(a, b):
        return _bwd_gemm(a, g, gout, 2.0 * scale, False), torch.zeros(n, d, dtype=b.dtype, device=b.device)
    return _bwd_gemm(b, g, gout, scale, True), _bwd_gemm(a, g, gout, scale, False)


def cov_loss(a: torch.Tensor, b: torch.Tensor, *, scale: float, w_diag: float, t_diag: float, w_off: float,
             t_off: float) -> torch.Tensor:
    """Fused ``sum_i w_d (c_ii - t_d)^2 + sum_{i!=j} w_o (c_ij - t_o)^2`` with ``c = scale * a'b`` (Triton).

    Pass the same tensor as ``a`` and ``b`` for an auto-covariance; the gradient then sums both GEMM outputs.
    """
    return _cov_loss_op(a, b, scale, w_diag, t_diag, w_off, t_off)[0]


# N x N side: the statistics pass, then one fused Gram launch (plus the fixed-order sum of split-K partials) and a
# one-program finish; the backward is one GEMM per view whose epilogue adds the diagonal and row-sum terms, then the
# closed-form normalisation backward. The closed form needs each column's sums of dL/dy over all N rows, which no
# single GEMM tile holds, so that pass reads dL/dy once more rather than recomputing the GEMM.

GRAM_NONE = -1  # mode: the inputs are used as they are (normalize.py's mode ids otherwise)


def gram_side(n: int, d: int) -> bool:
    """Whether the N x N side is the cheaper algorithm for an (N, D) covariance loss: forward + backward cost about
    6 N^2 D there (half the Gram tiles, by symmetry) against 6 N D^2 on the D x D side."""
    return n < d


def _finish_block(*sizes: int) -> int:
    return 1024 if not interpreting() else min(1024, max(16, triton.next_power_of_2(max(sizes))))


def _gram_warps(auto: bool, dtype: torch.dtype, precision: str, rowsum: bool) -> int:
    """Warps of a forward Gram program, from ptxas on sm_90 and sm_80 (bench/aot.py): one half-precision Gram fits
    4; two accumulators with four operand tiles took 199 registers on 4 warps, so 8; IEEE fp32 FMAs hold the operand
    tiles in registers too: one or two 64-row Grams take 16 warps (one Gram on 8 spilled 8 B on sm_90 with Triton
    3.9, at FroSSL 256 x 2048), and with the row sums 32-row tiles on 8 (every 64-row configuration of that spilled on
    one of the two architectures)."""
    if dtype in (torch.bfloat16, torch.float16) or precision != "ieee" or interpreting():
        return 4 if auto else 8
    return 8 if rowsum else 16


def gram_loss_fwd(a: torch.Tensor, b: torch.Tensor, mode: int, eps: float, scale: float, w_diag: float,
                  t_diag: float, w_off: float, t_off: float, split: int | None = None, auto: bool | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """Launch the N x N forward of ``sum_i w_d (c_ii - t_d)^2 + sum_{i!=j} w_o (c_ij - t_o)^2``, c = s y(A)' y(B),
    with y the column normalisation ``mode`` (or none) applied while loading. Returns (loss, Ga, Gb, h, rsum, the
    statistics (mean, r, beta) of A and of B): what the backward reads. Auto mode (``auto``, by default whether
    ``b`` is ``a``): one Gram, and Gb and B's statistics are empty."""
    if a.dtype != b.dtype:
        raise TypeError(f"gram_loss_fwd: a is {a.dtype} but b is {b.dtype}; the GEMM operands must share a dtype")
    auto = _same(a, b) if auto is None else auto
    n, d = a.shape
    _check_extent(n, d)
    def empty():  # outputs may not alias each other: one placeholder each
        return tuple(a.new_empty(0, dtype=torch.float32) for _ in range(3))

    stats_a = col_stats(a, mode, eps) if mode != GRAM_NONE else empty()
    stats_b = col_stats(b, mode, eps) if mode != GRAM_NONE and not auto else empty()
    sa = stats_a if mode != GRAM_NONE else (a.new_empty(1, dtype=torch.float32),) * 3  # pointers never read
    sb = stats_a if auto else stats_b if mode != GRAM_NONE else sa
    precision = dot_precision(a.dtype, a.device)
    rowsum = t_off != 0.0
    ieee32 = precision == "ieee" and a.dtype not in (torch.bfloat16, torch.float16) and not interpreting()
    bn, bk = tile(n), k_tile(d, a.dtype, precision)
    if ieee32:
        bk = min(bk, 16)  # fp32 FMA operand tiles of K 32 spilled beside the row sums on sm_90 (bench/aot.py)
        bn = min(bn, 32) if rowsum and not auto else bn  # and two 64-row Grams with the row sums spilled on any warps
    elif a.dtype == torch.float32 and not auto:
        bk = min(bk, 32)  # four TF32 operand tiles of K 64 over 3 stages: 196 KiB of shared memory, over sm_80's 163
    t = triton.cdiv(n, bn)
    tiles = t * (t + 1) // 2
    split = split or _triton.split_k(tiles, triton.cdiv(d, bk), a.device)
    k_split = triton.cdiv(triton.cdiv(d, bk), split) * bk
    split = triton.cdiv(d, k_split)  # no empty splits
    f32 = dict(dtype=torch.float32, device=a.device)
    ga = torch.empty(n, n, dtype=_g_dtype(a.dtype), device=a.device)
    gb = a.new_empty(0, dtype=ga.dtype) if auto else torch.empty_like(ga)
    part, cd = torch.empty(tiles, **f32), torch.empty(t, d, **f32)
    rs = torch.empty((split, 2, n) if rowsum else (1,), **f32)
    gp = torch.empty((split, tiles, 1 if auto else 2, bn, bn) if split > 1 else (1,), **f32)
    loss, h, rsum = torch.empty((), **f32), torch.empty(d, **f32), torch.empty(2, n, **f32)
    with _triton.on_device(a):
        _gram_fwd_kernel[(tiles, split)](
            a, b, sa[0], sa[1], sb[0], sb[1], ga, gb if not auto else ga, part, cd, rs, gp, n, d, t, k_split,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), BLOCK_N=bn, BLOCK_K=bk, SPLIT=split, AUTO=auto,
            NORM=mode != GRAM_NONE, ROWSUM=rowsum, PRECISION=precision, UPCAST=interpreting(),
            num_warps=_gram_warps(auto, a.dtype, precision, rowsum), **_triton.LAUNCH)
        if split > 1:
            _gram_split_epilogue_kernel[(tiles,)](gp, ga, gb if not auto else ga, part, n, t, BLOCK_N=bn,
                                                  SPLIT=split, AUTO=auto, **_triton.LAUNCH)
        _gram_finish_kernel[(1,)](part, cd, rs, loss, h, rsum, n, d, t, tiles, split, scale, w_diag, t_diag, w_off,
                                  t_off, w_off * t_off * t_off * float(d) * float(d),
                                  BLOCK=_finish_block(n, d, tiles), ROWSUM=rowsum, **_triton.LAUNCH)
    return (loss, ga, gb, h, rsum, *stats_a, *stats_b)


def _gram_bwd(g, x, sx, y, sy, h, rs, gout, alpha, beta, scale, norm, rowsum, out_dtype):
    n, d = x.shape
    precision = dot_precision(x.dtype, x.device)
    bm, bc, bk = tile(n), tile(d), k_tile(n, x.dtype, precision)
    # IEEE fp32 FMAs hold both operand tiles in registers next to the normalised load: at K 32 and 4 warps that
    # spilled 556 B on sm_90 (bench/aot.py); K 16 over 8 warps takes 128 registers
    ieee32 = x.dtype != torch.bfloat16 and x.dtype != torch.float16 and precision == "ieee"
    bk, warps = (min(bk, 16), 8) if ieee32 and not interpreting() else (bk, 4)
    out = torch.empty(n, d, dtype=out_dtype, device=x.device)
    with _triton.on_device(x):
        _gram_bwd_kernel[(triton.cdiv(n, bm), triton.cdiv(d, bc))](
            g, x, sx[0], sx[1], y, sy[0], sy[1], h, rs, gout, out, n, d, x.stride(0), x.stride(1), y.stride(0),
            y.stride(1), alpha, beta, scale, BLOCK_M=bm, BLOCK_C=bc, BLOCK_K=bk, NORM=norm, ROWSUM=rowsum,
            PRECISION=precision, UPCAST=interpreting(), num_warps=warps, **_triton.LAUNCH)
    return out


def gram_loss_bwd(a: torch.Tensor, b: torch.Tensor, saved: tuple[torch.Tensor, ...], gout: torch.Tensor, mode: int,
                  scale: float, w_off: float, t_off: float, auto: bool | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the N x N backward: (dA, dB) in the inputs' dtypes from the forward's ``saved`` tensors (Ga, Gb, h,
    rsum, statistics of A and B). dA/dy_A = s gout (2 w_o s Gb y_A + y_B diag(h) - 2 w_o t_o rb 1'), dB likewise;
    then the normalisation's closed-form backward. Auto mode: the summed gradient as dA, dB = 0."""
    ga, gb, h, rsum, ma, ra, ba, mb, rb, bb = saved
    auto = _same(a, b) if auto is None else auto
    norm = mode != GRAM_NONE
    gout = gout.to(device=a.device, dtype=torch.float32).reshape(1)
    alpha, beta = 2.0 * w_off * scale, -2.0 * w_off * t_off
    dummy = (a.new_empty(1, dtype=torch.float32),) * 2
    st_a = (ma, ra) if norm else dummy
    st_b = st_a if auto else (mb, rb) if norm else dummy
    out_dtype = torch.float32 if norm else a.dtype
    rowsum = t_off != 0.0

    def grad(x, sx, y, sy, g, rs_y, s, stats):
        gy = _gram_bwd(g, x, sx, y, sy, h, rs_y, gout, alpha, beta, s, norm, rowsum, out_dtype)
        return col_norm_bwd(gy, x, *stats, center=mode != MODE_ID["l2"]) if norm else gy

    if auto:
        da = grad(a, st_a, a, st_a, ga, rsum[1], 2.0 * scale, (ma, ra, ba))
        return da, torch.zeros(b.shape, dtype=b.dtype, device=b.device)
    return (grad(a, st_a, b, st_b, gb, rsum[1], scale, (ma, ra, ba)),
            grad(b, st_b, a, st_a, ga, rsum[0], scale, (mb, rb, bb)))


def gram_loss(a: torch.Tensor, b: torch.Tensor, *, mode: int, eps: float, scale: float, w_diag: float,
              t_diag: float, w_off: float, t_off: float) -> torch.Tensor:
    """The covariance loss of ``cov_loss`` computed on the N x N side, with the column normalisation ``mode``
    (normalize.py's ids, or GRAM_NONE) fused into the GEMMs' loads: pass the raw inputs. Same tensor twice: the
    auto-covariance (decided by identity, which tracing preserves, so the fake's shapes agree with the kernel's)."""
    return _gram_loss_op(a, b, mode, eps, scale, w_diag, t_diag, w_off, t_off, a is b)[0]


def _operand_dtype(*inputs: torch.Tensor) -> torch.dtype:
    """The dtype the GEMM operands take: the inputs' half precision when they all share it (tensor cores), else
    fp32 (fp64 inputs run in fp32; views of different dtypes meet in fp32, since tl.dot needs equal operand dtypes)."""
    dts = {x.dtype for x in inputs}
    half = dts.pop() if len(dts) == 1 else None
    return half if half in (torch.float16, torch.bfloat16) else torch.float32


def _kernel_operand(z: torch.Tensor, *like: torch.Tensor) -> torch.Tensor:
    """``z`` (a normalised view) in the operand dtype of the inputs ``like``."""
    return z.to(_operand_dtype(*like))


def frob2_cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a' b||_F^2 for a, b of shape (N, D), evaluated on the D x D or the N x N side, whichever is smaller."""
    n, d = a.shape
    if d <= n:
        return (a.T @ b).pow(2).sum()
    if b is a:
        return (a @ a.T).pow(2).sum()
    return ((a @ a.T) * (b @ b.T)).sum()


# -------------------------------------------------------------------------------- custom ops (torch.compile sees these)


# torch.library registration: custom ops with fakes (so torch.compile traces them) and the hand-written backward.


@torch.library.custom_op("fusedssl::cov_loss", mutates_args=())
def _cov_loss_op(a: torch.Tensor, b: torch.Tensor, scale: float, w_diag: float, t_diag: float, w_off: float,
                 t_off: float) -> tuple[torch.Tensor, torch.Tensor]:
    return cov_loss_fwd(a, b, scale, w_diag, t_diag, w_off, t_off)


@_cov_loss_op.register_fake
def _cov_loss_fake(a, b, scale, w_diag, t_diag, w_off, t_off):
    d = a.shape[1]
    return a.new_empty((), dtype=torch.float32), a.new_empty((d, d), dtype=_g_dtype(a.dtype))


@torch.library.custom_op("fusedssl::cov_loss_bwd", mutates_args=())
def _cov_loss_bwd_op(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, gout: torch.Tensor, scale: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    return cov_loss_bwd(a, b, g, gout, scale)


@_cov_loss_bwd_op.register_fake
def _cov_loss_bwd_fake(a, b, g, gout, scale):
    # contiguous, as both real ops allocate (empty_like would copy the strides of a transposed input)
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _cov_setup(ctx, inputs, output):
    a, b, scale = inputs[0], inputs[1], inputs[2]
    ctx.save_for_backward(a, b, output[1])
    ctx.scale = scale


def _cov_backward(ctx, gloss, _g_unused):
    a, b, g = ctx.saved_tensors
    da, db = _cov_loss_bwd_op(a, b, g, gloss, ctx.scale)
    return da, db, None, None, None, None, None


_cov_loss_op.register_autograd(_cov_backward, setup_context=_cov_setup)


# The N x N side (gram_loss): the saved statistics and Grams are outputs, so the backward op receives them.


@torch.library.custom_op("fusedssl::gram_loss", mutates_args=())
def _gram_loss_op(a: torch.Tensor, b: torch.Tensor, mode: int, eps: float, scale: float, w_diag: float,
                  t_diag: float, w_off: float, t_off: float, auto: bool) -> list[torch.Tensor]:
    return list(gram_loss_fwd(a, b, mode, eps, scale, w_diag, t_diag, w_off, t_off, auto=auto))


@_gram_loss_op.register_fake
def _gram_loss_fake(a, b, mode, eps, scale, w_diag, t_diag, w_off, t_off, auto):
    n, d = a.shape
    f32 = dict(dtype=torch.float32)
    ga = a.new_empty((n, n), dtype=_g_dtype(a.dtype))
    gb = a.new_empty((0,) if auto else (n, n), dtype=ga.dtype)
    st = d if mode != GRAM_NONE else 0
    stb = 0 if auto else st
    return [a.new_empty((), **f32), ga, gb, a.new_empty(d, **f32), a.new_empty((2, n), **f32),
            *(a.new_empty(st, **f32) for _ in range(3)), *(a.new_empty(stb, **f32) for _ in range(3))]


@torch.library.custom_op("fusedssl::gram_loss_bwd", mutates_args=())
def _gram_loss_bwd_op(a: torch.Tensor, b: torch.Tensor, saved: list[torch.Tensor], gout: torch.Tensor, mode: int,
                      scale: float, w_off: float, t_off: float, auto: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return gram_loss_bwd(a, b, tuple(saved), gout, mode, scale, w_off, t_off, auto=auto)


@_gram_loss_bwd_op.register_fake
def _gram_loss_bwd_fake(a, b, saved, gout, mode, scale, w_off, t_off, auto):
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _gram_setup(ctx, inputs, output):
    a, b, mode, _, scale, _, _, w_off, t_off, auto = inputs
    ctx.save_for_backward(a, b, *output[1:])
    ctx.mode, ctx.scale, ctx.w_off, ctx.t_off, ctx.auto = mode, scale, w_off, t_off, auto


def _gram_backward(ctx, grads):
    a, b, *saved = ctx.saved_tensors  # grads: one per output; only the loss's reaches the inputs
    da, db = _gram_loss_bwd_op(a, b, saved, grads[0], ctx.mode, ctx.scale, ctx.w_off, ctx.t_off, ctx.auto)
    return da, db, None, None, None, None, None, None, None, None


_gram_loss_op.register_autograd(_gram_backward, setup_context=_gram_setup)


# CUDA C++ (csrc/covariance.cu): C from a cuBLAS GEMM in fp32, then one fused pass writes the loss and overwrites C
# with G in place; the backward is two cuBLAS GEMMs scaled by the incoming gradient on the device (no host sync).


@torch.library.custom_op("fusedssl::cov_loss_cuda", mutates_args=())
def _cov_loss_cuda_op(a: torch.Tensor, b: torch.Tensor, scale: float, w_diag: float, t_diag: float, w_off: float,
                      t_off: float) -> tuple[torch.Tensor, torch.Tensor]:
    cg = torch.mm(a.T.float(), b.float()).mul_(scale)
    loss = _cuda.ext().cov_loss_epilogue_(cg, w_diag, t_diag, w_off, t_off)
    return loss, cg  # cg now holds G = dL/dC


@_cov_loss_cuda_op.register_fake
def _cov_loss_cuda_fake(a, b, scale, w_diag, t_diag, w_off, t_off):
    d = a.shape[1]  # G is the fp32 C from the GEMM, overwritten in place
    return a.new_empty((), dtype=torch.float32), a.new_empty((d, d), dtype=torch.float32)


@torch.library.custom_op("fusedssl::cov_loss_bwd_cuda", mutates_args=())
def _cov_loss_bwd_cuda_op(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, gout: torch.Tensor, scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    s = gout.to(torch.float32) * scale
    if _same(a, b):  # auto-covariance: both GEMM outputs summed
        return (a.float() @ (g + g.T) * s).to(a.dtype), b.new_zeros(b.shape)
    return (b.float() @ g.T * s).to(a.dtype), (a.float() @ g * s).to(b.dtype)


_cov_loss_bwd_cuda_op.register_fake(_cov_loss_bwd_fake)


def _cov_cuda_backward(ctx, gloss, _g_unused):
    a, b, g = ctx.saved_tensors
    da, db = _cov_loss_bwd_cuda_op(a, b, g, gloss, ctx.scale)
    return da, db, None, None, None, None, None


_cov_loss_cuda_op.register_autograd(_cov_cuda_backward, setup_context=_cov_setup)
