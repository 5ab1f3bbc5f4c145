"""DirectPred / DirectCopy: set the linear predictor directly from the EMA correlation of its inputs (methods.md §6).

  every step   B_f = f' f / rows  (f: the detached online projector outputs of all views stacked, NOT centred)
               F^ <- rho F^ + (1 - rho) B_f        (first step: F^ = B_f; rho = 0.3 in the README command)
  every freq   DirectPred: F^ = U diag(s) U',  s+_j = max(s_j, 0) / max_k s_k,
                           p_j = max((s+_j)^(1/c) + eps, 1e-4)   (c = 2: square root; eps = 0.01)
                           W_p = U diag(p) U'
               DirectCopy: W_p = F^ + eps I (no eigendecomposition; no normalisation of F^, as in luckmatters HEAD)

No gradient flows through any of this. The reference uses ``torch.linalg.eigh`` (luckmatters used the removed
``torch.eig``; for a symmetric F^ the real parts agree). Distributed semantics: engine/methods.py all-reduces (mean)
B_f before the EMA so every rank sets an identical W_p, as DDP's replicated parameters require.

Backend "cuda" (csrc/directpred.cu) replaces eigh by a Jacobi eigensolver warm-started from the previous call's
eigenvectors (``basis``): A = U0' F^ U0 is nearly diagonal when F^ moved little, so fewer sweeps finish it, and nothing
is read back to the host. Two kernels run the same schedule: one thread block ("one-block"), or every SM with a
grid-wide barrier per round ("multi-block"); the GPU record's winner at each D serves it (``jacobi_solver``), one-block
where nothing was measured. torch's eigh, batched or not, checks its convergence on the host: it synchronises.
"""

from __future__ import annotations

import torch

from . import _backend, _cuda
from ._checks import check_choice, check_embeddings, check_number, compute_dtype

MODES = ("directpred", "directcopy")
# Jacobi stops rotating (p, q) once |a_pq| <= tol sqrt(a_pp a_qq). Leaving such an a_pq moves W_p by at most
# tol |p_p - p_q| sqrt(a_pp a_qq) / |a_pp - a_qq| <= tol / 2 (p = sqrt(s / max s)), far below fp32 eigh's own error
# (~1e-5 at D = 256), while it saves sweeps on rank-deficient F^ (10 -> 6 at D = 256, rank 20).
JACOBI_TOL = 1e-5
JACOBI_MAX_SWEEPS = 30
SOLVERS = ("one-block", "multi-block")


# ----------------------------------------------------------------------------------------------------------- references


def correlation_ema_ref(f: torch.Tensor, corr: torch.Tensor | None, rho: float = 0.3) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(device_type=f.device.type, enabled=False):
        f = f.detach().to(compute_dtype(f))
        bf = f.T @ f / f.shape[0]
        return bf if corr is None else rho * corr.to(bf.dtype) + (1.0 - rho) * bf


def predictor_weight_ref(corr: torch.Tensor, mode: str = "directpred", eps: float = 0.01, convert: float = 2.0,
                         basis: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad(), torch.autocast(device_type=corr.device.type, enabled=False):
        corr = corr.to(compute_dtype(corr))
        eye = torch.eye(corr.shape[0], dtype=corr.dtype, device=corr.device)
        if mode == "directcopy":
            return corr + eps * eye, None
        s, u = torch.linalg.eigh(0.5 * (corr + corr.T))
        return spectral_map(s, u, eps, convert), u


def spectral_map(s: torch.Tensor, u: torch.Tensor, eps: float = 0.01, convert: float = 2.0) -> torch.Tensor:
    """DirectPred's W_p = U diag(p) U' from F^'s eigenpairs (s, U): p_j = max((max(s_j, 0) / max s)^(1/c) + eps,
    1e-4)."""
    # max s can be <= 0 only for an all-zero F^; the clamp keeps p finite (every p_j is then eps).
    s_plus = s.clamp_min(0.0) / s.max().clamp_min(torch.finfo(s.dtype).tiny)
    p = (s_plus.pow(1.0 / convert) + eps).clamp_min(1e-4)
    return (u * p) @ u.T


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _orthonormalize(u: torch.Tensor) -> torch.Tensor:
    """One Newton-Schulz step towards the nearest orthogonal matrix: U (3I - U'U) / 2. Each Jacobi solve leaves
    ||U'U - I|| ~ 1e-4 in fp32 (thousands of rotations per entry), which a warm start would otherwise accumulate;
    the step squares that error, for two D x D GEMMs, once per solve (on the output, which is the next basis).
    In fp64: an fp32 GEMM follows torch's TF32 switch, and TF32's 10-bit products would add ~1e-3 instead."""
    u = u.double()
    return (1.5 * u - 0.5 * (u @ (u.T @ u))).float()


def jacobi_solver(d: int, device: torch.device) -> str:
    """The Jacobi kernel that serves a D x D update on ``device``: the GPU record's faster one at the measured D
    nearest to ``d`` (preferences.json "directpred_solver", written by ``fusedssl bench render --prefer``), else
    "one-block"."""
    measured = _backend.tuned("directpred_solver", device)
    if not measured:
        return "one-block"
    nearest = min(measured, key=lambda k: (abs(int(k) - d), int(k)))
    return measured[nearest] if measured[nearest] in SOLVERS else "one-block"


def jacobi_solve(corr: torch.Tensor, basis: torch.Tensor | None, eps: float = 0.01, convert: float = 2.0,
                 solver: str = "one-block") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eigensolve of the cuda provider: (eigenvalues, orthonormalised eigenvectors, spectral map p, info), D-sized,
    unsorted; info = (sweeps that rotated, converged) stays on the device (bench/bench_directpred.py reads it).
    ``solver``: one of SOLVERS (the same rotations either way; CPU tensors run the host schedule for both)."""
    check_choice("solver", solver, SOLVERS)
    with torch.no_grad(), torch.autocast(device_type=corr.device.type, enabled=False):
        d = corr.shape[0]
        n = d + d % 2
        f = corr.float()
        # basis is the previous call's output, orthonormalised there; the kernel symmetrises a as it loads it
        u0 = basis.float() if basis is not None else torch.eye(d, dtype=torch.float32, device=f.device)
        a = torch.zeros(n, n, dtype=torch.float32, device=f.device)
        u064 = u0.double()
        a[:d, :d] = u064.T @ f.double() @ u064  # fp64: see _orthonormalize
        v0 = torch.eye(n, dtype=torch.float32, device=f.device)
        v0[:d, :d] = u0
        # multi-block: as many blocks as the GPU holds at once (the extension caps the request)
        blocks = 1 << 20 if solver == "multi-block" else 1
        s, v, p, info = _cuda.ext().jacobi_eigh(a, v0, JACOBI_MAX_SWEEPS, JACOBI_TOL, float(eps), float(convert),
                                                blocks)
        return s[:d], _orthonormalize(v[:d, :d]), p[:d], info


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("correlation_ema", "torch")(correlation_ema_ref)
_backend.register("predictor_weight", "torch")(predictor_weight_ref)


@_backend.register("predictor_weight", "cuda")
def predictor_weight_cuda(corr: torch.Tensor, mode: str = "directpred", eps: float = 0.01, convert: float = 2.0,
                          basis: torch.Tensor | None = None, solver: str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """csrc/directpred.cu through fusedssl.kernels._C.jacobi_eigh, in fp32 (float64 inputs are computed in fp32 too),
    by ``solver`` (one of SOLVERS; None: ``jacobi_solver``'s choice for this D and GPU).

    Odd D is padded to even with a zero row and column: their pairs never rotate (a_pq = 0), so the padding stays an
    isolated zero eigenvalue with eigenvector e_D and is cropped. The extension also runs on CPU tensors (the same
    schedule on the host), which is how the tests reach this function without a GPU."""
    if mode == "directcopy":  # no eigendecomposition: one elementwise op, the reference is already that
        return predictor_weight_ref(corr, mode, eps, convert)
    _s, u, p, _info = jacobi_solve(corr, basis, eps, convert, solver or jacobi_solver(corr.shape[0], corr.device))
    u64 = u.double()  # D <= 512: fp64 costs nothing here and, unlike fp32, never runs as TF32
    return ((u64 * p.double()) @ u64.T).float(), u


# ----------------------------------------------------------------------------------------------------------- public ops


def correlation_ema(f: torch.Tensor, corr: torch.Tensor | None, *, rho: float = 0.3, check_finite: bool = False
                    ) -> torch.Tensor:
    """One EMA step of the uncentred correlation ``F^ <- rho F^ + (1 - rho) f'f/rows``; ``corr=None`` starts it.

    Args:
        f: (rows, D) predictor inputs (all views stacked); detached here.
        corr: (D, D) running F^, or None on the first step.
        rho: EMA weight of the old value (``dyn_lambda``).
    Returns:
        The new (D, D) F^ in float32 (float64 for float64 inputs).
    """
    check_embeddings("f", f, min_rows=1, check_finite=check_finite)
    check_number("rho", rho, low=0.0, high=1.0)
    if corr is not None and corr.shape != (f.shape[1], f.shape[1]):
        raise ValueError(f"corr must be ({f.shape[1]}, {f.shape[1]}) for f of shape {tuple(f.shape)}, "
                         f"got {tuple(corr.shape)}")
    return _backend.dispatch("correlation_ema", "auto", f.device)(f, corr, rho)


def predictor_weight(corr: torch.Tensor, *, mode: str = "directpred", eps: float = 0.01, convert: float = 2.0,
                     basis: torch.Tensor | None = None, return_basis: bool = False, backend: str = "auto",
                     check_finite: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """The (D, D) predictor weight W_p set from the running correlation ``corr`` (module docstring).

    Args:
        corr: (D, D) symmetric F^.
        mode: ``"directpred"`` (eigh + spectral map) or ``"directcopy"`` (F^ + eps I).
        eps: the boost added to every eigenvalue (``dyn_eps``).
        convert: c in p = s^(1/c) (``dyn_convert``; 2 = square root).
        basis: (D, D) eigenvectors returned by the previous call (``return_basis=True``), the warm start of backend
            "cuda"; the torch reference recomputes them and ignores it. None starts from the identity.
        return_basis: also return the eigenvectors of ``corr`` (None for directcopy), to pass as the next ``basis``.
    """
    check_embeddings("corr", corr, min_rows=1, check_finite=check_finite)
    if corr.shape[0] != corr.shape[1]:
        raise ValueError(f"corr must be square (D, D), got {tuple(corr.shape)}")
    check_choice("mode", mode, MODES)
    check_number("eps", eps, low=0.0)
    check_number("convert", convert, low=0.0, low_open=True)
    if basis is not None and (basis.shape != corr.shape or basis.device != corr.device):
        raise ValueError(f"basis must be {tuple(corr.shape)} on {corr.device} like corr, got {tuple(basis.shape)} "
                         f"on {basis.device}")
    w, u = _backend.dispatch("predictor_weight", backend, corr.device)(corr, mode, eps, convert, basis)
    return (w, u) if return_basis else w
