"""Cosine objectives of BYOL, SimSiam and DirectPred (methods.md §6.1, §9, §10).

  BYOL       L = mean_i (2 - 2 cos(p1_i, sg z2_i)) + mean_i (2 - 2 cos(p2_i, sg z1_i))   (symmetrised: a sum)
  SimSiam    L = -1/2 [ mean_i cos(p1_i, sg z2_i) + mean_i cos(p2_i, sg z1_i) ]
  DirectPred uses BYOL's loss (luckmatters sums -2 cos over the views: BYOL's value minus the constant 4).

The targets (z: teacher outputs for BYOL/DirectPred, the other branch's projections for SimSiam) are detached here:
the stop-gradient is part of the objective. Distributed semantics: local per-sample means; DDP's average of equal-size
local means is the global mean, so the gradient is the global-batch gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_pair, full_precision

# ----------------------------------------------------------------------------------------------------------- references


def byol_loss_ref(p1, p2, z1, z2) -> torch.Tensor:
    with full_precision(p1) as dt:
        return (2.0 - 2.0 * _cos(p1, z2, dt)).mean() + (2.0 - 2.0 * _cos(p2, z1, dt)).mean()


def simsiam_loss_ref(p1, p2, z1, z2) -> torch.Tensor:
    with full_precision(p1) as dt:
        return -0.5 * (_cos(p1, z2, dt).mean() + _cos(p2, z1, dt).mean())


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _cos(p: torch.Tensor, z: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    return (F.normalize(p.to(dt), dim=1) * F.normalize(z.detach().to(dt), dim=1)).sum(1)


def _check4(p1, p2, z1, z2, check_finite):
    for name, x in (("p2", p2), ("z1", z1), ("z2", z2)):
        check_pair("p1", p1, name, x, min_rows=1, check_finite=check_finite)


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("byol_loss", "torch")(byol_loss_ref)
_backend.register("simsiam_loss", "torch")(simsiam_loss_ref)


# ----------------------------------------------------------------------------------------------------------- public ops


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, backend: str = "auto",
              check_finite: bool = False) -> torch.Tensor:
    """BYOL's symmetrised ``2 - 2 cos`` loss. p1, p2: (N, D) online predictions; z1, z2: (N, D) targets."""
    _check4(p1, p2, z1, z2, check_finite)
    return _backend.dispatch("byol_loss", backend, p1.device)(p1, p2, z1, z2)


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, backend: str = "auto",
                 check_finite: bool = False) -> torch.Tensor:
    """SimSiam's symmetrised negative cosine. p1, p2: (N, D) predictions; z1, z2: (N, D) projections."""
    _check4(p1, p2, z1, z2, check_finite)
    return _backend.dispatch("simsiam_loss", backend, p1.device)(p1, p2, z1, z2)
