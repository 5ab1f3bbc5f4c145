"""Column and row normalisations used inside the objectives (methods.md §1.1).

Column modes (statistics over the batch, per feature j):
  * ``bn``     (z - mu) / sqrt(var_biased + eps), eps = 1e-5: BatchNorm1d(affine=False) in training mode (Barlow Twins).
  * ``std``    (z - mu) / std_unbiased, no eps: ``torch.std`` default (Tsai's BT-HSIC pipeline).
  * ``l2``     z / ||z_:,j||: ``F.normalize(z, dim=0)`` (FroSSL multiview).
  * ``center`` z - mu (VICReg, Matrix-SSL's J).
  * ``std_l2`` sqrt(D) * colL2(z - mu): FroSSL's legacy standardise-then-rescale (the std division cancels).
Row mode: z_i / max(||z_i||, 1e-12), i.e. ``F.normalize(z, dim=1)``.

The backward passes are autograd's; tests check them against the closed forms of §1.1 ([gradcheck]). Under SyncBN
semantics the column statistics must be global: callers pass the all-gathered batch (see engine/methods.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_choice, check_embeddings, check_number

COL_MODES = ("bn", "std", "l2", "center", "std_l2")
_DEFAULT_EPS = {"bn": 1e-5, "l2": 1e-12, "std_l2": 1e-12}


def col_normalize(z: torch.Tensor, mode: str = "bn", *, eps: float | None = None, backend: str = "auto",
                  check_finite: bool = True) -> torch.Tensor:
    """Normalise each column of ``z`` (N x D) over the batch.

    Args:
        z: (N, D) embeddings, N >= 2.
        mode: one of ``COL_MODES`` (module docstring).
        eps: ``bn``: added to the biased variance (default 1e-5); ``l2``/``std_l2``: norm clamp (default 1e-12).
        backend: "auto" | "torch" | "triton" | "cuda".
        check_finite: raise on NaN/Inf inputs (reads the tensor; turn off inside a training step).

    Returns:
        (N, D) tensor in ``z``'s dtype.
    """
    check_embeddings("z", z, check_finite=check_finite)
    check_choice("mode", mode, COL_MODES)
    if eps is not None:
        check_number("eps", eps, low=0.0)
    return _backend.dispatch("col_normalize", backend, z.device)(z, mode, eps)


@_backend.register("col_normalize", "torch")
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


def row_normalize(z: torch.Tensor, *, eps: float = 1e-12, backend: str = "auto", check_finite: bool = True
                  ) -> torch.Tensor:
    """L2-normalise each row of ``z`` (N x D): ``z_i / max(||z_i||, eps)``."""
    check_embeddings("z", z, min_rows=1, check_finite=check_finite)
    check_number("eps", eps, low=0.0, low_open=True)
    return _backend.dispatch("row_normalize", backend, z.device)(z, eps)


@_backend.register("row_normalize", "torch")
def row_normalize_ref(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Plain-PyTorch reference of ``row_normalize``."""
    return F.normalize(z, dim=1, eps=eps)
