"""fusedssl.kernels: the public objectives and primitives of fusedssl, each with ``backend="auto"|"torch"|...``.

This list is the only set of names ``fusedssl.engine`` uses. Every op validates its inputs once, then dispatches to the
backend registered for it (``_backend.py``); ``<op>_ref`` is the plain-PyTorch reference that backend "torch" runs.

Objective per method (the spec is ../shared/docs/methods.md of the project):
  Barlow Twins, BT-HSIC  barlow_twins_loss (off_diagonal_target 0 / -1; normalize "bn" / "tsai")
  VICReg                 vicreg_loss (= vicreg_invariance + vicreg_variance + vicreg_covariance)
  FroSSL                 frossl_loss (variant "multiview" / "legacy"), log_frobenius
  Matrix-SSL             matrix_ssl_loss (= mce_uniformity + mce_alignment), exact variant with exact=True
  Kernel-SSL             kernel_ssl_loss (Matrix-SSL + hsic_term)
  SimCLR                 nt_xent_loss
  BYOL, SimSiam          byol_loss, simsiam_loss
  DirectPred, DirectCopy correlation_ema + predictor_weight (mode "directpred" / "directcopy")
and the CPU data pipeline's fused photometric augmentation: photometric_augment (its parameters: PhotoParams from
photo_params, with colour_matrix, gaussian_taps, LUMA and TO_YIQ, which the pipelines share with it).
"""

from ._backend import BACKENDS, BackendUnavailable, available, resolve_all, why_not
from ._cuda import status as extension_status
from ._triton import tf32_enabled
from .contrastive import nt_xent_loss, nt_xent_loss_ref
from .cosine import byol_loss, byol_loss_ref, simsiam_loss, simsiam_loss_ref
from .covariance import (
    barlow_twins_loss,
    barlow_twins_loss_ref,
    vicreg_covariance,
    vicreg_invariance,
    vicreg_loss,
    vicreg_loss_ref,
    vicreg_variance,
)
from .directpred import correlation_ema, predictor_weight
from .frobenius import frossl_loss, frossl_loss_ref, log_frobenius
from .lars import ema_, lars_step_
from .matrix_log import (
    hsic_term,
    kernel_ssl_loss,
    matrix_ssl_loss,
    matrix_ssl_loss_ref,
    mce_alignment,
    mce_uniformity,
    trace_logm,
)
from .normalize import COL_MODES, col_normalize, row_normalize
from .photometric import (
    LUMA,
    TO_YIQ,
    PhotoParams,
    colour_matrix,
    gaussian_taps,
    photo_params,
    photometric_augment,
    photometric_augment_ref,
)

__all__ = [
    "BACKENDS", "BackendUnavailable", "available", "resolve_all", "why_not", "extension_status", "tf32_enabled",
    "barlow_twins_loss", "barlow_twins_loss_ref", "vicreg_loss", "vicreg_loss_ref", "vicreg_invariance",
    "vicreg_variance", "vicreg_covariance",
    "frossl_loss", "frossl_loss_ref", "log_frobenius",
    "matrix_ssl_loss", "matrix_ssl_loss_ref", "kernel_ssl_loss", "mce_uniformity", "mce_alignment", "hsic_term",
    "trace_logm",
    "nt_xent_loss", "nt_xent_loss_ref",
    "byol_loss", "byol_loss_ref", "simsiam_loss", "simsiam_loss_ref",
    "correlation_ema", "predictor_weight",
    "col_normalize", "row_normalize", "COL_MODES",
    "lars_step_", "ema_",
    "photometric_augment", "photometric_augment_ref", "PhotoParams", "photo_params", "colour_matrix", "gaussian_taps",
    "LUMA", "TO_YIQ",
]
