"""Column and row normalisations used inside the objectives (methods.md §1.1).

Column modes (statistics over the batch, per feature j):
  * ``bn``     (z - mu) / sqrt(var_biased + eps), eps = 1e-5: BatchNorm1d(affine=False) in training mode (Barlow Twins).
  * ``std``    (z - mu) / std_unbiased, no eps: ``torch.std`` default (Tsai's BT-HSIC pipeline).
  * ``l2``     z / ||z_:,j||: ``F.normalize(z, dim=0)`` (FroSSL multiview).
  * ``center`` z - mu (VICReg, Matrix-SSL's J).
  * ``std_l2`` sqrt(D) * colL2(z - mu): FroSSL's legacy standardise-then-rescale (the std division cancels).
Row mode: z_i / max(||z_i||, 1e-12), i.e. ``F.normalize(z, dim=1)``.

The reference backward passes are autograd's; tests check them against the closed forms of §1.1 ([gradcheck]).
Under SyncBN semantics the column statistics must be global: callers pass the all-gathered batch (engine/methods.py).

Triton (backend "triton", methods.md §16.3 kernel 1): every mode is y = (z - c m) * r per column, with c = 1 for the
centring modes, m the column mean and r a per-column scale, and every backward has the closed form
    dz = r * (g - c mean(g) - beta y sum(g y)),  beta = 1/N (bn), 1/(N-1) (std), 1 (l2), 1/D (std_l2), 0 (center)
(beta = 0 also where an l2 norm is clamped at eps). ``_col_stats_kernel`` owns a block of columns and makes two
passes over Z (shifted sums: the first row is subtracted before squaring, so var is not a difference of large
numbers), then writes y; ``_col_norm_bwd_kernel`` makes one pass for sum(g) and sum(g y) and one to write dz,
recomputing y in fp32 from z and the saved per-column (mean, r, beta), as BatchNorm saves mean and 1/std.
``row_normalize`` has its own pair, ``_row_stats_kernel`` / ``_row_norm_bwd_kernel``: a few rows per program, loads
along the row (the column kernel on the transposed view gave N / 64 programs with strided loads), and the same
(y, mean = 0, r, beta) contract. Statistics and arithmetic are fp32 for every input dtype (fp64 inputs compute in
fp32).
Registered as the custom ops ``fusedssl::col_norm`` / ``fusedssl::col_norm_bwd`` with fakes (torch.compile traces
them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend, _cuda, _triton
from ._checks import check_choice, check_embeddings, check_number
from ._triton import HAS_TRITON, interpreting, tl, triton

COL_MODES = ("bn", "std", "l2", "center", "std_l2")
_DEFAULT_EPS = {"bn": 1e-5, "l2": 1e-12, "std_l2": 1e-12}

MODE_ID = {"center": 0, "bn": 1, "std": 2, "l2": 3, "std_l2": 4}


# ----------------------------------------------------------------------------------------------------------- references


def col_normalize_ref(z: torch.Tensor, mode: str = "bn", eps: float | None = None) -> torch.Tensor:
    """Plain-PyTorch reference of ``col_normalize`` (no validation)."""
    eps = _DEFAULT_EPS.get(mode, 0.0) if eps is None else eps
    if mode == "l2":
        return F.normalize(z, dim=0, eps=eps)
    zc = z - z.mean(dim=0, keepdim=True)
    if mode == "center":
        return zc
    if mode == "bn":
        return zc * torch.rsqrt(zc.pow(2).mean(dim=0, keepdim=True) + eps)
    if mode == "std":
        return zc / zc.std(dim=0, keepdim=True)
    if mode == "std_l2":
        return z.shape[1] ** 0.5 * F.normalize(zc, dim=0, eps=eps)
    raise ValueError(f"mode={mode!r} is not one of {COL_MODES}")


def row_normalize_ref(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Plain-PyTorch reference of ``row_normalize``."""
    return F.normalize(z, dim=1, eps=eps)


# ------------------------------------------------------------------------------------------------------- Triton kernels


if HAS_TRITON:

    @triton.jit
    def _col_stats_kernel(z_ptr, y_ptr, mean_ptr, r_ptr, beta_ptr, N, D, s_zn, s_zd, s_yn, s_yd, eps, sqrt_d,
                          MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          WRITE_Y: tl.constexpr):
        # WRITE_Y = False: the statistics alone, for a GEMM that normalises z while loading it (_gram.py)
        offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        # shift by the first row: sums of (z - z_0) keep var = E[x^2] - E[x]^2 well conditioned. The l2 mode needs
        # sum z^2 itself, which adding the shift back would cancel catastrophically: no shift there
        if MODE == 3:
            z0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        else:
            z0 = tl.load(z_ptr + offs_d * s_zd, mask=dmask, other=0.0).to(tl.float32)
        s1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        s2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask = (offs_n[:, None] < N) & dmask[None, :]
            z = tl.load(z_ptr + offs_n[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            x = tl.where(mask, z.to(tl.float32) - z0[None, :], 0.0)
            s1 += tl.sum(x, axis=0)
            s2 += tl.sum(x * x, axis=0)
        if MODE == 3:  # l2: no centring, z0 = 0, so s2 = ||z||^2
            ss = s2
            mean = tl.zeros((BLOCK_D,), dtype=tl.float32)
        else:
            mean = z0 + s1 / N
            ss = tl.maximum(s2 - s1 * s1 / N, 0.0)  # sum of squared deviations
        ss = tl.where(dmask, ss, 1.0)  # padding columns: keep 1/sqrt finite
        beta = tl.zeros((BLOCK_D,), dtype=tl.float32)
        if MODE == 0:
            r = tl.full((BLOCK_D,), 1.0, dtype=tl.float32)
        elif MODE == 1:
            r = 1.0 / tl.sqrt(ss / N + eps)
            beta += 1.0 / N
        elif MODE == 2:
            r = 1.0 / tl.sqrt(ss / (N - 1))
            beta += 1.0 / (N - 1)
        else:
            norm = tl.sqrt(ss)
            clamped = norm <= eps
            r = 1.0 / tl.maximum(norm, eps)
            if MODE == 4:
                r = r * sqrt_d
                beta = tl.where(clamped, 0.0, 1.0 / (sqrt_d * sqrt_d))
            else:
                beta = tl.where(clamped, 0.0, 1.0)
        tl.store(mean_ptr + offs_d, mean, mask=dmask)
        tl.store(r_ptr + offs_d, r, mask=dmask)
        tl.store(beta_ptr + offs_d, beta, mask=dmask)
        if WRITE_Y:
            for n0 in range(0, N, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                mask = (offs_n[:, None] < N) & dmask[None, :]
                z = tl.load(z_ptr + offs_n[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
                y = (z.to(tl.float32) - mean[None, :]) * r[None, :]
                tl.store(y_ptr + offs_n[:, None] * s_yn + offs_d[None, :] * s_yd, y.to(y_ptr.dtype.element_ty),
                         mask=mask)

    @triton.jit
    def _col_norm_bwd_kernel(g_ptr, z_ptr, mean_ptr, r_ptr, beta_ptr, dz_ptr, N, D, s_gn, s_gd, s_zn, s_zd, s_dn,
                             s_dd, CENTER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # y is recomputed in fp32 from z and the saved statistics: a half-precision y would leave a residual in
        # the cancellation g - mean(g) - beta y sum(g y) (large when r is large, e.g. N = 2)
        offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        mean = tl.load(mean_ptr + offs_d, mask=dmask, other=0.0)
        r = tl.load(r_ptr + offs_d, mask=dmask, other=0.0)
        sg = tl.zeros((BLOCK_D,), dtype=tl.float32)
        sgy = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask = (offs_n[:, None] < N) & dmask[None, :]
            g = tl.load(g_ptr + offs_n[:, None] * s_gn + offs_d[None, :] * s_gd, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_n[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            y = tl.where(mask, (z.to(tl.float32) - mean[None, :]) * r[None, :], 0.0)
            sg += tl.sum(g, axis=0)
            sgy += tl.sum(g * y, axis=0)
        k = tl.load(beta_ptr + offs_d, mask=dmask, other=0.0) * sgy
        m = sg / N if CENTER else tl.zeros((BLOCK_D,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask = (offs_n[:, None] < N) & dmask[None, :]
            g = tl.load(g_ptr + offs_n[:, None] * s_gn + offs_d[None, :] * s_gd, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + offs_n[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            y = tl.where(mask, (z.to(tl.float32) - mean[None, :]) * r[None, :], 0.0)
            dz = r[None, :] * (g - m[None, :] - k[None, :] * y)
            tl.store(dz_ptr + offs_n[:, None] * s_dn + offs_d[None, :] * s_dd, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask)


    @triton.jit
    def _row_stats_kernel(z_ptr, y_ptr, r_ptr, beta_ptr, N, D, s_zn, s_zd, s_yn, s_yd, eps,
                          BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        # row l2: BLOCK_R rows per program, the feature loop along each row (contiguous loads for a row-major z);
        # the column kernel on the transposed view gave only N / 64 programs with strided loads
        offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = offs_r < N
        ss = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (offs_d[None, :] < D)
            z = tl.load(z_ptr + offs_r[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            z = z.to(tl.float32)
            ss += tl.sum(z * z, axis=1)
        norm = tl.sqrt(ss)
        r = 1.0 / tl.maximum(norm, eps)
        tl.store(r_ptr + offs_r, r, mask=rmask)
        tl.store(beta_ptr + offs_r, tl.where(norm <= eps, 0.0, 1.0), mask=rmask)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (offs_d[None, :] < D)
            z = tl.load(z_ptr + offs_r[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            y = z.to(tl.float32) * r[:, None]
            tl.store(y_ptr + offs_r[:, None] * s_yn + offs_d[None, :] * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _row_norm_bwd_kernel(g_ptr, z_ptr, r_ptr, beta_ptr, dz_ptr, N, D, s_gn, s_gd, s_zn, s_zd, s_dn, s_dd,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        # dz = r (g - beta y sum(g y)) per row, y = z r recomputed in fp32
        offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = offs_r < N
        r = tl.load(r_ptr + offs_r, mask=rmask, other=0.0)
        sgy = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (offs_d[None, :] < D)
            g = tl.load(g_ptr + offs_r[:, None] * s_gn + offs_d[None, :] * s_gd, mask=mask, other=0.0)
            z = tl.load(z_ptr + offs_r[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            sgy += tl.sum(g.to(tl.float32) * z.to(tl.float32) * r[:, None], axis=1)
        k = tl.load(beta_ptr + offs_r, mask=rmask, other=0.0) * sgy
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (offs_d[None, :] < D)
            g = tl.load(g_ptr + offs_r[:, None] * s_gn + offs_d[None, :] * s_gd, mask=mask, other=0.0)
            z = tl.load(z_ptr + offs_r[:, None] * s_zn + offs_d[None, :] * s_zd, mask=mask, other=0.0)
            y = z.to(tl.float32) * r[:, None]
            dz = r[:, None] * (g.to(tl.float32) - k[:, None] * y)
            tl.store(dz_ptr + offs_r[:, None] * s_dn + offs_d[None, :] * s_dd, dz.to(dz_ptr.dtype.element_ty),
                     mask=mask)


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _row_blocks(n: int, d: int) -> tuple[int, int]:
    # one row per program up to a few per SM (N = 256 gives 256 programs); wide feature chunks for long loads
    if interpreting():
        return min(64, triton.next_power_of_2(n)), min(256, triton.next_power_of_2(d))
    return (1 if n <= 4096 else 4), min(1024, triton.next_power_of_2(d))


def _blocks(n: int, d: int) -> tuple[int, int]:
    # interpreter: few large programs (it costs per program); GPU: 64 columns x 32 rows keeps registers modest
    if interpreting():
        return min(256, triton.next_power_of_2(n)), min(256, triton.next_power_of_2(d))
    return 32, 64


def _as_rows(x: torch.Tensor, rows: bool) -> tuple[int, int, int, int]:
    """(N, D, stride_n, stride_d) of the matrix whose columns are normalised (the transpose for row mode)."""
    n, d = x.shape
    return (d, n, x.stride(1), x.stride(0)) if rows else (n, d, x.stride(0), x.stride(1))


def col_stats(z: torch.Tensor, mode: int, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the column statistics alone: (mean, r, beta), fp32 D-vectors of the (y = (z - c mean) r, beta)
    contract, for a kernel that applies them while loading z (z: fp32 or half precision, any strides)."""
    n, d = z.shape
    mean = torch.empty(d, dtype=torch.float32, device=z.device)
    r, beta = torch.empty_like(mean), torch.empty_like(mean)
    bn, bd = _blocks(n, d)
    with _triton.on_device(z):
        _col_stats_kernel[(triton.cdiv(d, bd),)](z, z, mean, r, beta, n, d, z.stride(0), z.stride(1), 0, 0, eps,
                                                 float(d) ** 0.5, MODE=mode, BLOCK_N=bn, BLOCK_D=bd, WRITE_Y=False,
                                                 **_triton.LAUNCH)
    return mean, r, beta


def col_norm_bwd(g: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, r: torch.Tensor, beta: torch.Tensor,
                 center: bool, rows: bool = False) -> torch.Tensor:
    """Launch the closed-form normalisation backward: dz in z's dtype from g = dL/dy and the saved statistics (y is
    recomputed from z; fp64 runs in fp32). ``rows``: z is normalised along its rows (``_as_rows``)."""
    zz = z if z.dtype != torch.float64 else z.to(torch.float32)
    dz = torch.empty(zz.shape, dtype=zz.dtype, device=z.device)
    n, d, s_gn, s_gd = _as_rows(g, rows)
    _, _, s_zn, s_zd = _as_rows(zz, rows)
    _, _, s_dn, s_dd = _as_rows(dz, rows)
    with _triton.on_device(z):
        if rows and not center:  # the l2 mode of row_normalize
            br, bd = _row_blocks(d, n)
            _row_norm_bwd_kernel[(triton.cdiv(d, br),)](g, zz, r, beta, dz, d, n, g.stride(0), g.stride(1),
                                                        zz.stride(0), zz.stride(1), dz.stride(0), dz.stride(1),
                                                        BLOCK_R=br, BLOCK_D=bd, **_triton.LAUNCH)
        else:
            bn, bd = _blocks(n, d)
            _col_norm_bwd_kernel[(triton.cdiv(d, bd),)](g, zz, mean, r, beta, dz, n, d, s_gn, s_gd, s_zn, s_zd,
                                                        s_dn, s_dd, CENTER=center, BLOCK_N=bn, BLOCK_D=bd,
                                                        **_triton.LAUNCH)
    return dz.to(z.dtype)


# -------------------------------------------------------------------------------- custom ops (torch.compile sees these)


@torch.library.custom_op("fusedssl::col_norm", mutates_args=())
def _col_norm_op(z: torch.Tensor, mode: int, eps: float, rows: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dt = z.dtype if z.dtype in (torch.float16, torch.bfloat16) else torch.float32
    zz = z if z.dtype != torch.float64 else z.to(torch.float32)
    y = torch.empty(z.shape, dtype=dt, device=z.device)
    n, d, s_zn, s_zd = _as_rows(zz, rows)
    _, _, s_yn, s_yd = _as_rows(y, rows)
    mean = torch.empty(d, dtype=torch.float32, device=z.device)
    r, beta = torch.empty_like(mean), torch.empty_like(mean)
    with _triton.on_device(z):
        if rows and mode == MODE_ID["l2"]:  # row_normalize: a row kernel ("d" here is the number of rows)
            mean.zero_()
            br, bd = _row_blocks(d, n)
            _row_stats_kernel[(triton.cdiv(d, br),)](zz, y, r, beta, d, n, zz.stride(0), zz.stride(1), y.stride(0),
                                                     y.stride(1), eps, BLOCK_R=br, BLOCK_D=bd, **_triton.LAUNCH)
        else:
            bn, bd = _blocks(n, d)
            _col_stats_kernel[(triton.cdiv(d, bd),)](zz, y, mean, r, beta, n, d, s_zn, s_zd, s_yn, s_yd, eps,
                                                     float(d) ** 0.5, MODE=mode, BLOCK_N=bn, BLOCK_D=bd, WRITE_Y=True,
                                                     **_triton.LAUNCH)
    return y, mean, r, beta


@_col_norm_op.register_fake
def _col_norm_fake(z, mode, eps, rows):
    dt = z.dtype if z.dtype in (torch.float16, torch.bfloat16) else torch.float32
    d = z.shape[0] if rows else z.shape[1]
    return (z.new_empty(z.shape, dtype=dt), *(z.new_empty(d, dtype=torch.float32) for _ in range(3)))


@torch.library.custom_op("fusedssl::col_norm_bwd", mutates_args=())
def _col_norm_bwd_op(g: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, r: torch.Tensor, beta: torch.Tensor,
                     center: bool, rows: bool) -> torch.Tensor:
    return col_norm_bwd(g, z, mean, r, beta, center, rows)


@_col_norm_bwd_op.register_fake
def _col_norm_bwd_fake(g, z, mean, r, beta, center, rows):
    return z.new_empty(z.shape)  # contiguous, as both real ops allocate


def _col_norm_setup(ctx, inputs, output):
    z, mode, _, rows = inputs
    _, mean, r, beta = output
    ctx.save_for_backward(z, mean, r, beta)
    ctx.center, ctx.rows = mode != MODE_ID["l2"], rows


def _col_norm_backward(bwd_op):
    """The autograd backward of a col_norm op: its closed-form bwd op on the saved (z, mean, r, beta)."""

    def backward(ctx, gy, *_unused):
        z, mean, r, beta = ctx.saved_tensors
        return bwd_op(gy, z, mean, r, beta, ctx.center, ctx.rows), None, None, None

    return backward


_col_norm_op.register_autograd(_col_norm_backward(_col_norm_bwd_op), setup_context=_col_norm_setup)


# The CUDA C++ ops (csrc/normalize.cu): the same statistics, closed-form backward and (y, mean, r, beta) contract.


@torch.library.custom_op("fusedssl::col_norm_cuda", mutates_args=())
def _col_norm_cuda_op(z: torch.Tensor, mode: int, eps: float, rows: bool
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    zz = z if z.dtype != torch.float64 else z.to(torch.float32)
    return tuple(_cuda.ext().col_norm(zz, mode, eps, rows))


_col_norm_cuda_op.register_fake(_col_norm_fake)  # same shapes and dtypes as fusedssl::col_norm


@torch.library.custom_op("fusedssl::col_norm_bwd_cuda", mutates_args=())
def _col_norm_bwd_cuda_op(g: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, r: torch.Tensor, beta: torch.Tensor,
                          center: bool, rows: bool) -> torch.Tensor:
    zz = z if z.dtype != torch.float64 else z.to(torch.float32)
    return _cuda.ext().col_norm_bwd(g.to(zz.dtype), zz, mean, r, beta, center, rows).to(z.dtype)


_col_norm_bwd_cuda_op.register_fake(_col_norm_bwd_fake)


_col_norm_cuda_op.register_autograd(_col_norm_backward(_col_norm_bwd_cuda_op), setup_context=_col_norm_setup)


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("col_normalize", "torch")(col_normalize_ref)
_backend.register("row_normalize", "torch")(row_normalize_ref)


def _providers(backend: str, op):
    """The ``col_normalize`` and ``row_normalize`` providers of ``backend`` over its column-statistics op (Triton:
    fusedssl::col_norm; CUDA C++: fusedssl::col_norm_cuda, csrc/normalize.cu): fp32 statistics, output in the input's
    dtype (fp64 -> fp32); rows are the l2 column kernel on the transposed view."""

    @_backend.register("col_normalize", backend)
    def col(z: torch.Tensor, mode: str = "bn", eps: float | None = None) -> torch.Tensor:
        eps = _DEFAULT_EPS.get(mode, 0.0) if eps is None else eps
        return op(z, MODE_ID[mode], float(eps), False)[0]

    @_backend.register("row_normalize", backend)
    def row(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
        return op(z, MODE_ID["l2"], float(eps), True)[0]

    return col, row


col_normalize_triton, row_normalize_triton = _providers("triton", _col_norm_op)
col_normalize_cuda, row_normalize_cuda = _providers("cuda", _col_norm_cuda_op)


# ----------------------------------------------------------------------------------------------------------- public ops


def col_normalize(z: torch.Tensor, mode: str = "bn", *, eps: float | None = None, backend: str = "auto",
                  check_finite: bool = False) -> torch.Tensor:
    """Normalise each column of ``z`` (N x D) over the batch.

    Args:
        z: (N, D) embeddings, N >= 2.
        mode: one of ``COL_MODES`` (module docstring).
        eps: ``bn``: added to the biased variance (default 1e-5); ``l2``/``std_l2``: norm clamp (default 1e-12).
        backend: "auto" | "torch" | "triton" | "cuda".
        check_finite: raise on NaN/Inf inputs (off by default: the check reads the tensor and syncs a GPU).

    Returns:
        (N, D) tensor in ``z``'s dtype.
    """
    check_embeddings("z", z, check_finite=check_finite)
    check_choice("mode", mode, COL_MODES)
    if eps is not None:
        check_number("eps", eps, low=0.0)
    return _backend.dispatch("col_normalize", backend, z.device)(z, mode, eps)


def row_normalize(z: torch.Tensor, *, eps: float = 1e-12, backend: str = "auto", check_finite: bool = False
                  ) -> torch.Tensor:
    """L2-normalise each row of ``z`` (N x D): ``z_i / max(||z_i||, eps)``."""
    check_embeddings("z", z, min_rows=1, check_finite=check_finite)
    check_number("eps", eps, low=0.0, low_open=True)
    return _backend.dispatch("row_normalize", backend, z.device)(z, eps)
