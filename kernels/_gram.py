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
  * CUDA C++ (csrc/covariance.cu): C from a cuBLAS GEMM in fp32, then one fused pass writes the loss and overwrites
    C with G in place; the backward is two cuBLAS GEMMs scaled by the incoming gradient on the device.
Both are custom ops with fakes (torch.compile traces them) and a registered backward.
"""

from __future__ import annotations

import torch

from . import _cuda, _triton
from ._triton import HAS_TRITON, dot_precision, interpreting, k_tile, tile, tl, triton

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


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _g_dtype(dtype: torch.dtype) -> torch.dtype:
    """G = dL/dC is stored in the operands' half precision (the backward GEMMs then run on tensor cores; the
    subtraction c - t happened in fp32 before that rounding), else in fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _check_extent(n: int, d: int) -> None:
    if n * d >= 2**31:  # the operand offsets are int32 (G's are int64)
        raise ValueError(f"cov_loss: an (N, D) = ({n}, {d}) operand has 2^31 elements or more; split the batch")


def cov_loss_fwd(a: torch.Tensor, b: torch.Tensor, scale: float, w_diag: float, t_diag: float, w_off: float,
                 t_off: float, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: (loss as a 0-d fp32 tensor, G as a D x D tensor in ``_g_dtype``). Inputs (N, D), any
    strides, one dtype. ``split``: programs per output tile along K (default ``_triton.split_k``: more than one only
    when the D x D tiles alone leave most SMs idle, as FroSSL's N x N side does: 16 tiles at N = 256)."""
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
            UPCAST=interpreting())
        if split > 1:
            _cov_split_epilogue_kernel[tiles](c, g, part, d, scale, w_diag, t_diag, w_off, t_off, BLOCK_I=bi,
                                              BLOCK_J=bi, SPLIT=split)
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
            TRANS_G=trans_g, PRECISION=precision, UPCAST=interpreting())
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
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():
        return _bwd_gemm(a, g, gout, 2.0 * scale, False), torch.zeros(n, d, dtype=b.dtype, device=b.device)
    return _bwd_gemm(b, g, gout, scale, True), _bwd_gemm(a, g, gout, scale, False)


def cov_loss(a: torch.Tensor, b: torch.Tensor, *, scale: float, w_diag: float, t_diag: float, w_off: float,
             t_off: float) -> torch.Tensor:
    """Fused ``sum_i w_d (c_ii - t_d)^2 + sum_{i!=j} w_o (c_ij - t_o)^2`` with ``c = scale * a'b`` (Triton).

    Pass the same tensor as ``a`` and ``b`` for an auto-covariance; the gradient then sums both GEMM outputs.
    """
    return _cov_loss_op(a, b, scale, w_diag, t_diag, w_off, t_off)[0]


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
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride():  # auto-covariance: both GEMM outputs summed
        return (a.float() @ (g + g.T) * s).to(a.dtype), b.new_zeros(b.shape)
    return (b.float() @ g.T * s).to(a.dtype), (a.float() @ g * s).to(b.dtype)


_cov_loss_bwd_cuda_op.register_fake(_cov_loss_bwd_fake)


def _cov_cuda_backward(ctx, gloss, _g_unused):
    a, b, g = ctx.saved_tensors
    da, db = _cov_loss_bwd_cuda_op(a, b, g, gloss, ctx.scale)
    return da, db, None, None, None, None, None


_cov_loss_cuda_op.register_autograd(_cov_cuda_backward, setup_context=_cov_setup)
