"""FroSSL objectives (methods.md §4): Frobenius-norm entropy regulariser plus an invariance term, no eigendecomposition.

With S2(K^) = -log ||K / tr K||_F^2 the matrix Renyi-2 entropy, FroSSL minimises -S2 per view plus an MSE invariance:

  multiview (solo-learn fork HEAD 4942ce5, any V >= 2; ``variant="multiview"``):
      Z^_v = colL2(Z_v)   (so tr(Z^'Z^) = D),   Z- = mean_v Z^_v
      L = sum_v [ log ||Z^_v' Z^_v||_F^2 - 2 log D + (V w / N) ||Z^_v - Z-||_F^2 ]
  legacy two-view (``frossl_loss_func`` at HEAD, "kept for the original paper"; ``variant="legacy"``):
      Z^_v = sqrt(D) colL2(Z_v - mean)   (so tr(Z^'Z^) = D^2)
      L = w/(N D) ||Z^_a - Z^_b||_F^2 + sum_v [ log ||Z^_v' Z^_v||_F^2 - 4 log D ]

The constants make the value equal the code's (the trace normalisation is a constant because the column norms are fixed;
the code takes it with ``.item()``, which fusedssl never does). ||Z'Z||_F = ||ZZ'||_F: the reference forms whichever of
D x D or N x N is smaller, so the cost is 2 N D min(N, D) per view.

Triton (backend "triton"): ||X'X||_F^2 is the covariance-loss primitive of _gram.py with weight 1/2 on every entry
and target 0 (its hand-written backward is d||K||^2/dX), on the cheaper side: for N < D the symmetric N x N Gram loss
(half the Gram tiles), else the D x D loss. The column normalisation is normalize.py's Triton kernel; the O(ND)
invariance term stays in torch.
CUDA C++ (backend "cuda"): the same identity through csrc/covariance.cu's epilogue after a cuBLAS GEMM.

Distributed semantics: per GPU (the loss of the local batch; DDP averages, so the gradient is that of the mean of the
per-GPU losses: the per-GPU batch is part of the recipe). engine/methods.py can gather instead (``gather: true``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import _backend
from ._checks import check_choice, check_embeddings, check_number, check_views, full_precision
from ._gram import GRAM_NONE, _cov_loss_cuda_op, _kernel_operand, cov_loss, frob2_cross, gram_loss, gram_side
from .normalize import col_normalize_cuda, col_normalize_ref, col_normalize_triton

FROSSL_VARIANTS = ("multiview", "legacy")


# ----------------------------------------------------------------------------------------------------------- references


def frossl_loss_ref(views: Sequence[torch.Tensor], invariance_weight: float = 1.0, variant: str = "multiview"
                    ) -> torch.Tensor:
    """Plain-PyTorch reference of ``frossl_loss`` (the module note gives both variants)."""
    with full_precision(views[0]) as dt:
        return _frossl(views, invariance_weight, variant, lambda z: frob2_cross(z, z),
                       lambda z, mode: col_normalize_ref(z.to(dt), mode))


def log_frobenius_ref(z: torch.Tensor) -> torch.Tensor:
    with full_precision(z) as dt:
        z = z.to(dt)
        return torch.log(frob2_cross(z, z))


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _frossl(views: Sequence[torch.Tensor], invariance_weight: float, variant: str, frob2, norm) -> torch.Tensor:
    """The FroSSL loss composed from ``frob2(z)`` = ||z'z||_F^2 and ``norm(z, mode)``, the column normalisation: the
    reference and every provider call this with their own implementations of the two."""
    n, d = views[0].shape
    v = len(views)
    if variant == "legacy":
        za, zb = (norm(z, "std_l2") for z in views)
        inv = invariance_weight * (za - zb).pow(2).sum() / (n * d)
        reg = sum(torch.log(frob2(z)) - 4.0 * math.log(d) for z in (za, zb))
        return inv + reg
    zs = [norm(z, "l2") for z in views]
    mean = torch.stack(zs).mean(0)
    loss = 0.0
    for z in zs:
        loss = loss + torch.log(frob2(z)) - 2.0 * math.log(d)
        loss = loss + (v * invariance_weight / n) * (z - mean).pow(2).sum()
    return loss


def _frob2_triton(z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """||z'z||_F^2 through the covariance kernels, on the cheaper side: N < D the symmetric Gram loss (half the
    tiles of z z'), else the D x D covariance loss."""
    x = _kernel_operand(z, like)
    kw = dict(scale=1.0, w_diag=0.5, t_diag=0.0, w_off=0.5, t_off=0.0)
    if gram_side(*x.shape):
        return 2.0 * gram_loss(x, x, mode=GRAM_NONE, eps=0.0, **kw)
    return 2.0 * cov_loss(x, x, **kw)


def _frob2_cuda(z: torch.Tensor) -> torch.Tensor:
    """||z'z||_F^2 through the CUDA covariance epilogue (weight 1/2, target 0) on the smaller side."""
    x = z if z.shape[1] <= z.shape[0] else z.T
    return 2.0 * _cov_loss_cuda_op(x, x, 1.0, 0.5, 0.0, 0.5, 0.0)[0]


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("frossl_loss", "torch")(frossl_loss_ref)
_backend.register("log_frobenius", "torch")(log_frobenius_ref)


@_backend.register("frossl_loss", "triton")
def frossl_loss_triton(views: Sequence[torch.Tensor], invariance_weight: float = 1.0, variant: str = "multiview"
                       ) -> torch.Tensor:
    """Triton provider: column normalisation and Frobenius norms in Triton kernels, the O(ND) rest in torch."""
    with full_precision(views[0]) as dt:  # fp32 normalised views: the invariance term
        return _frossl(views, invariance_weight, variant, lambda z: _frob2_triton(z, views[0]),
                       lambda z, mode: col_normalize_triton(z.to(dt), mode))


@_backend.register("frossl_loss", "cuda")
def frossl_loss_cuda(views: Sequence[torch.Tensor], invariance_weight: float = 1.0, variant: str = "multiview"
                     ) -> torch.Tensor:
    """CUDA C++ provider: the CUDA column normalisation and Frobenius norms (csrc/), the O(ND) rest in torch."""
    with full_precision(views[0]) as dt:
        return _frossl(views, invariance_weight, variant, _frob2_cuda,
                       lambda z, mode: col_normalize_cuda(z.to(dt), mode))


@_backend.register("log_frobenius", "triton")
def log_frobenius_triton(z: torch.Tensor) -> torch.Tensor:
    with full_precision(z) as dt:
        return torch.log(_frob2_triton(z.to(dt), z))


@_backend.register("log_frobenius", "cuda")
def log_frobenius_cuda(z: torch.Tensor) -> torch.Tensor:
    with full_precision(z) as dt:
        return torch.log(_frob2_cuda(z.to(dt)))


# ----------------------------------------------------------------------------------------------------------- public ops


def frossl_loss(views: Sequence[torch.Tensor], *, invariance_weight: float = 1.0, variant: str = "multiview",
                backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """FroSSL loss over V views (module docstring gives both variants).

    Args:
        views: V >= 2 projector outputs, each (N, D); ``variant="legacy"`` takes exactly two.
        invariance_weight: w (solo-learn recipes: 1.0; STL-10 1.4; ImageNet-1k 2.0).
        variant: ``"multiview"`` (current code) or ``"legacy"`` (paper-era two-view).
    """
    views = check_views("views", views, check_finite=check_finite)
    check_number("invariance_weight", invariance_weight, low=0.0)
    check_choice("variant", variant, FROSSL_VARIANTS)
    if variant == "legacy" and len(views) != 2:
        raise ValueError(f"variant='legacy' is the two-view loss; got {len(views)} views (use variant='multiview')")
    return _backend.dispatch("frossl_loss", backend, views[0].device)(views, invariance_weight, variant)


def log_frobenius(z: torch.Tensor, *, backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """``log ||z' z||_F^2`` of an (N, D) matrix, via the N x N Gram when N < D (= -S2 + 2 log tr(z'z))."""
    check_embeddings("z", z, min_rows=1, check_finite=check_finite)
    return _backend.dispatch("log_frobenius", backend, z.device)(z)
