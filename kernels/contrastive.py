"""SimCLR's NT-Xent (normalised temperature-scaled cross-entropy; methods.md §8).

For 2N row-L2 embeddings, S = Z^Z^'/tau with the self-similarity masked; anchor i's loss is
-S_i,p(i) + log sum_{k != i} exp S_ik. fusedssl returns the mean over the anchors; the official TF code returns
loss_a + loss_b, i.e. 2x this value (scale the learning rate, not the loss, if reproducing it).

Distributed semantics: local anchors against all-gathered keys. Pass the gathered keys (``keys_a``/``keys_b``) and
the index of this rank's first row in them (``offset``); the value is this rank's anchor mean, the global loss is the
mean over ranks, and with a gradient-preserving gather the DDP gradient equals the global-batch gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _backend
from ._checks import check_number, check_pair, full_precision

# ----------------------------------------------------------------------------------------------------------- references


def nt_xent_loss_ref(za: torch.Tensor, zb: torch.Tensor, temperature: float = 0.1, keys_a: torch.Tensor | None = None,
                     keys_b: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    with full_precision(za) as dt:
        a, b = F.normalize(za.to(dt), dim=1), F.normalize(zb.to(dt), dim=1)
        ka = a if keys_a is None else F.normalize(keys_a.to(dt), dim=1)
        kb = b if keys_b is None else F.normalize(keys_b.to(dt), dim=1)
        n, m = a.shape[0], ka.shape[0]
        logits = torch.cat([a, b]) @ torch.cat([ka, kb]).T / temperature        # (2N, 2M)
        idx = torch.arange(n, device=a.device) + offset
        rows = torch.arange(2 * n, device=a.device)
        self_col = torch.cat([idx, idx + m])
        pos_col = torch.cat([idx + m, idx])
        # the -inf is made on the device (torch.tensor(..., device=cuda) would be a blocking host-to-device copy)
        logits = logits.index_put((rows, self_col), logits.new_full((), float("-inf")))
        return F.cross_entropy(logits, pos_col)


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("nt_xent_loss", "torch")(nt_xent_loss_ref)


# ----------------------------------------------------------------------------------------------------------- public ops


def nt_xent_loss(za: torch.Tensor, zb: torch.Tensor, *, temperature: float = 0.1, keys_a: torch.Tensor | None = None,
                 keys_b: torch.Tensor | None = None, offset: int = 0, backend: str = "auto",
                 check_finite: bool = False) -> torch.Tensor:
    """NT-Xent loss, mean over the 2N local anchors.

    Args:
        za, zb: (N, D) projections of the two views (anchors; raw, normalised here).
        temperature: tau (SimCLR ImageNet: 0.1; CIFAR: 0.5).
        keys_a, keys_b: (M, D) keys of both views, M >= N (the all-gathered batch); default: za, zb themselves.
        offset: row of za[0] inside keys_a (this rank's slice start), so that za[i]'s positive is keys_b[offset + i].
    """
    check_pair("za", za, "zb", zb, min_rows=1, check_finite=check_finite)
    check_number("temperature", temperature, low=0.0, low_open=True)
    if (keys_a is None) != (keys_b is None):
        raise ValueError("keys_a and keys_b must be given together")
    if keys_a is not None:
        check_pair("keys_a", keys_a, "keys_b", keys_b, min_rows=1, check_finite=check_finite)
        if keys_a.shape[1] != za.shape[1]:
            raise ValueError(f"keys_a has D={keys_a.shape[1]} but za has D={za.shape[1]}")
        if not isinstance(offset, int) or offset < 0 or offset + za.shape[0] > keys_a.shape[0]:
            raise ValueError(f"offset={offset!r} puts za's {za.shape[0]} rows outside keys_a's {keys_a.shape[0]}")
    elif offset != 0:
        raise ValueError("offset is only meaningful with keys_a/keys_b")
    if (keys_a is None and za.shape[0] < 2) or (keys_a is not None and keys_a.shape[0] < 2):
        raise ValueError("NT-Xent needs at least 2 samples in the batch (one positive, one negative per anchor)")
    fn = _backend.dispatch("nt_xent_loss", backend, za.device)
    return fn(za, zb, temperature, keys_a, keys_b, offset)
