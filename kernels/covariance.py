"""Covariance objectives: Barlow Twins, its HSIC variant (Tsai et al.), and VICReg (methods.md §5, §7, §16.2).

Efficient formulation (what the reference computes; the Triton/CUDA providers fuse the same algebra):
  * Barlow Twins with a general off-diagonal target t (t = 0: Zbontar et al.; t = -1: the HSIC variant):
        L = sum_i (1 - c_ii)^2 + lam * [ sum_{i!=j} c_ij^2 - 2 t (1'c1 - tr c) + t^2 D (D-1) ]
    with c = Za'Zb / N. The diagonal needs only sum_n za_ni zb_ni (O(ND)), the sum of all entries only the per-sample
    row sums (1'c1 = (Za 1)'(Zb 1) / N), and ||c||_F^2 comes from whichever side is smaller:
        ||Za'Zb||_F^2 = <Za Za', Zb Zb'>       (N x N Grams when N < D)
    so D x D memory is never needed when N < D (e.g. N = 256, D = 8192).
  * VICReg: C = X~'X~ / (N-1) per view, ||C||_F^2 again from the smaller side, diag C = unbiased variances.

Providers (backends "triton" and "cuda"; methods.md §16.3 kernels 1-2): one covariance-loss primitive serves Barlow
Twins, the HSIC variant and VICReg's covariance term, ``L = sum_i w_d (c_ii - t_d)^2 + sum_{i!=j} w_o (c_ij - t_o)^2``
with c = s A'B (shared primitive: _gram.py, with csrc/covariance.cu). The Triton providers take the cheaper side for
the shape (``_gram.gram_side``): for N < D the N x N Gram loss, which applies BN or centring while loading the raw
views (Tsai's rowL2 + std is materialised by the reference ops first); otherwise the D x D loss with G = dL/dC in the
forward epilogue after normalize.py's Triton normalisation (fp32 statistics, closed-form backward). The CUDA
providers run the D x D side.

Distributed semantics (how engine/methods.py calls these; methods.md §13):
  * Barlow Twins / HSIC: computed on the all-gathered batch of both views, redundantly on every rank (equivalent to
    official BT with SyncBN statistics; exact global-batch gradients with a gradient-preserving gather).
  * VICReg: invariance on the local rows; variance and covariance on the all-gathered batch.
All losses are computed in float32 (float64 for float64 inputs) outside autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_choice, check_embeddings, check_number, check_pair, full_precision
from ._gram import GRAM_NONE, _cov_loss_cuda_op, _kernel_operand, cov_loss, frob2_cross, gram_loss, gram_side
from .normalize import MODE_ID, col_normalize_cuda, col_normalize_ref, col_normalize_triton, row_normalize_ref

BT_NORMALIZE = ("bn", "tsai", "none")


# ----------------------------------------------------------------------------------------------------------- references


def barlow_twins_loss_ref(za: torch.Tensor, zb: torch.Tensor, lam: float = 0.0051, normalize: str = "bn",
                          off_diagonal_target: float = 0.0) -> torch.Tensor:
    """Plain-PyTorch reference of ``barlow_twins_loss`` (module docstring gives the formulation)."""
    with full_precision(za) as dt:
        a = _bt_normalize(za.to(dt), normalize)
        b = _bt_normalize(zb.to(dt), normalize)
        n, d = a.shape
        diag = (a * b).sum(0) / n                       # c_ii
        frob2 = frob2_cross(a, b) / (n * n)             # ||c||_F^2
        off2 = frob2 - diag.pow(2).sum()
        loss = (1.0 - diag).pow(2).sum() + lam * off2
        t = float(off_diagonal_target)
        if t != 0.0:
            total = (a.sum(1) * b.sum(1)).sum() / n     # 1'c1 from per-sample row sums
            loss = loss + lam * (-2.0 * t * (total - diag.sum()) + t * t * d * (d - 1))
        return loss


def vicreg_loss_ref(za: torch.Tensor, zb: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                    cov_coeff: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Plain-PyTorch reference of ``vicreg_loss``."""
    inv = vicreg_invariance_ref(za, zb)
    var = 0.5 * (vicreg_variance_ref(za, eps) + vicreg_variance_ref(zb, eps))
    cov = vicreg_covariance_ref(za) + vicreg_covariance_ref(zb)
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov


def vicreg_invariance_ref(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    with full_precision(za) as dt:
        return F.mse_loss(za.to(dt), zb.to(dt))


def vicreg_variance_ref(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    with full_precision(z) as dt:
        std = torch.sqrt(z.to(dt).var(dim=0) + eps)
        return F.relu(1.0 - std).mean()


def vicreg_covariance_ref(z: torch.Tensor) -> torch.Tensor:
    with full_precision(z) as dt:
        x = col_normalize_ref(z.to(dt), "center")
        n, d = x.shape
        var = x.pow(2).sum(0) / (n - 1)                  # diag C
        frob2 = frob2_cross(x, x) / (n - 1) ** 2         # ||C||_F^2 from the smaller side
        return (frob2 - var.pow(2).sum()) / d


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _bt_normalize(z: torch.Tensor, normalize: str, norm=col_normalize_ref) -> torch.Tensor:
    """``norm``: the column-normalisation provider for the "bn" mode (reference, Triton or CUDA)."""
    if normalize == "bn":
        return norm(z, "bn")
    if normalize == "tsai":
        # reference ops even on the Triton path: the unbiased std has no eps, and at tiny column spreads (N = 2) the
        # kernel's closed-form backward left gradient errors up to 0.44 where autograd's stays at 1e-4
        return col_normalize_ref(row_normalize_ref(z.to(torch.float64 if z.dtype == torch.float64 else torch.float32)),
                                 "std")
    return z


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("barlow_twins_loss", "torch")(barlow_twins_loss_ref)
_backend.register("vicreg_loss", "torch")(vicreg_loss_ref)
_backend.register("vicreg_invariance", "torch")(vicreg_invariance_ref)
_backend.register("vicreg_variance", "torch")(vicreg_variance_ref)
_backend.register("vicreg_covariance", "torch")(vicreg_covariance_ref)


@_backend.register("barlow_twins_loss", "triton")
def barlow_twins_loss_triton(za: torch.Tensor, zb: torch.Tensor, lam: float = 0.0051, normalize: str = "bn",
                             off_diagonal_target: float = 0.0) -> torch.Tensor:
    """Triton provider, on the cheaper side for the shape (``_gram.gram_side``). N x N side: the raw views go to the
    fused Gram loss, which normalises them while loading ("bn"); D x D side: the Triton column normalisation (fp32
    statistics, output in the input's half precision), then the fused covariance loss (G written in the forward)."""
    with full_precision(za):
        n, d = za.shape
        kw = dict(scale=1.0 / n, w_diag=1.0, t_diag=1.0, w_off=lam, t_off=float(off_diagonal_target))
        if gram_side(n, d):
            if normalize == "tsai":  # two normalisations in a row: materialised by the reference ops (_bt_normalize)
                a, b = (_kernel_operand(_bt_normalize(z, normalize), za, zb) for z in (za, zb))
                return gram_loss(a, b, mode=GRAM_NONE, eps=0.0, **kw)
            mode = MODE_ID["bn"] if normalize == "bn" else GRAM_NONE
            return gram_loss(_kernel_operand(za, za, zb), _kernel_operand(zb, za, zb), mode=mode, eps=1e-5, **kw)
        a = _kernel_operand(_bt_normalize(za, normalize, col_normalize_triton), za, zb)
        b = _kernel_operand(_bt_normalize(zb, normalize, col_normalize_triton), za, zb)
        return cov_loss(a, b, **kw)


@_backend.register("barlow_twins_loss", "cuda")
def barlow_twins_loss_cuda(za: torch.Tensor, zb: torch.Tensor, lam: float = 0.0051, normalize: str = "bn",
                           off_diagonal_target: float = 0.0) -> torch.Tensor:
    """CUDA C++ provider: the CUDA column normalisation, a cuBLAS GEMM for C, the fused loss + G epilogue."""
    with full_precision(za):
        a = _bt_normalize(za, normalize, col_normalize_cuda)
        b = _bt_normalize(zb, normalize, col_normalize_cuda)
        return _cov_loss_cuda_op(a, b, 1.0 / a.shape[0], 1.0, 1.0, lam, float(off_diagonal_target))[0]


@_backend.register("vicreg_covariance", "triton")
def vicreg_covariance_triton(z: torch.Tensor) -> torch.Tensor:
    """Triton provider: N x N side, the fused Gram loss centring the raw z while loading it; D x D side, the Triton
    centring kernel, then the fused auto-covariance loss. Diagonal weight 0 on both."""
    with full_precision(z):
        n, d = z.shape
        kw = dict(scale=1.0 / (n - 1), w_diag=0.0, t_diag=0.0, w_off=1.0 / d, t_off=0.0)
        if gram_side(n, d):
            x = _kernel_operand(z, z)
            return gram_loss(x, x, mode=MODE_ID["center"], eps=0.0, **kw)
        x = _kernel_operand(col_normalize_triton(z, "center"), z)
        return cov_loss(x, x, **kw)


@_backend.register("vicreg_covariance", "cuda")
def vicreg_covariance_cuda(z: torch.Tensor) -> torch.Tensor:
    """CUDA C++ provider: the CUDA centring kernel, then the auto-covariance GEMM and the fused epilogue."""
    with full_precision(z):
        x = col_normalize_cuda(z, "center")
        n, d = x.shape
        return _cov_loss_cuda_op(x, x, 1.0 / (n - 1), 0.0, 0.0, 1.0 / d, 0.0)[0]


# ----------------------------------------------------------------------------------------------------------- public ops


def barlow_twins_loss(za: torch.Tensor, zb: torch.Tensor, *, lam: float = 0.0051, normalize: str = "bn",
                      off_diagonal_target: float = 0.0, backend: str = "auto", check_finite: bool = False
                      ) -> torch.Tensor:
    """Barlow Twins redundancy-reduction loss, with the HSIC variant as ``off_diagonal_target=-1``.

    ``L = sum_i (1 - c_ii)^2 + lam * sum_{i != j} (c_ij - t)^2``,  ``c = Za^ ' Zb^ / N`` (methods.md §5).

    Args:
        za, zb: (N, D) projector outputs of the two views (raw; normalised here).
        lam: off-diagonal weight. Official BT code: 0.0051; Tsai's HSIC runs: 1/128.
        normalize: ``"bn"``: per-column (z - mean)/sqrt(biased var + 1e-5), as BT's affine-free BatchNorm;
            ``"tsai"``: row L2 then per-column unbiased standardisation (Barlow-Twins-HSIC repository);
            ``"none"``: use the inputs as they are.
        off_diagonal_target: t; 0 for Barlow Twins, -1 for the HSIC variant.
        backend: "auto" | "torch" | "triton" | "cuda".
        check_finite: raise on NaN/Inf inputs (off by default: the check reads the tensors and syncs a GPU).

    Returns:
        Scalar loss, float32 (float64 for float64 inputs). Computed on the batch passed in: pass the all-gathered
        batch under DDP (engine/methods.py does) to get the global-batch value and gradient.
    """
    check_pair("za", za, "zb", zb, check_finite=check_finite)
    check_number("lam", lam, low=0.0)
    check_choice("normalize", normalize, BT_NORMALIZE)
    check_number("off_diagonal_target", off_diagonal_target)
    return _backend.dispatch("barlow_twins_loss", backend, za.device)(za, zb, lam, normalize, off_diagonal_target)


def vicreg_loss(za: torch.Tensor, zb: torch.Tensor, *, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, eps: float = 1e-4, backend: str = "auto", check_finite: bool = False
                ) -> torch.Tensor:
    """VICReg: ``sim * MSE(za, zb) + std * (v(za) + v(zb)) / 2 + cov * (c(za) + c(zb))`` (methods.md §7).

    ``v(z) = mean_j relu(1 - sqrt(Var_unbiased(z_j) + eps))`` and ``c(z) = (1/D) sum_{i != j} C_ij^2`` with
    ``C = z~' z~ / (N - 1)``. Under DDP the invariance term is local and v, c use the all-gathered batch; use
    ``vicreg_invariance`` / ``vicreg_variance`` / ``vicreg_covariance`` to split them (engine/methods.py does).

    Args:
        za, zb: (N, D) projector outputs of the two views.
        sim_coeff, std_coeff, cov_coeff: term weights (official: 25, 25, 1).
        eps: added to the variance before the square root (official: 1e-4).
    """
    check_pair("za", za, "zb", zb, check_finite=check_finite)
    for name, v in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
        check_number(name, v, low=0.0)
    check_number("eps", eps, low=0.0)
    return _backend.dispatch("vicreg_loss", backend, za.device)(za, zb, sim_coeff, std_coeff, cov_coeff, eps)


def vicreg_invariance(za: torch.Tensor, zb: torch.Tensor, *, backend: str = "auto", check_finite: bool = False
                      ) -> torch.Tensor:
    """VICReg invariance term: mean squared error over all N * D entries."""
    check_pair("za", za, "zb", zb, min_rows=1, check_finite=check_finite)
    return _backend.dispatch("vicreg_invariance", backend, za.device)(za, zb)


def vicreg_variance(z: torch.Tensor, *, eps: float = 1e-4, backend: str = "auto", check_finite: bool = False
                    ) -> torch.Tensor:
    """VICReg variance hinge of one view: ``mean_j relu(1 - sqrt(Var_unbiased(z_j) + eps))``."""
    check_embeddings("z", z, check_finite=check_finite)
    check_number("eps", eps, low=0.0)
    return _backend.dispatch("vicreg_variance", backend, z.device)(z, eps)


def vicreg_covariance(z: torch.Tensor, *, backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """VICReg covariance term of one view: ``(1/D) sum_{i != j} C_ij^2``, ``C = z~' z~ / (N - 1)``."""
    check_embeddings("z", z, check_finite=check_finite)
    return _backend.dispatch("vicreg_covariance", backend, z.device)(z)
