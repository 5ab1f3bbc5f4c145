"""Backend registry: which implementation serves each public op.

Every public op in ``fusedssl.kernels`` takes ``backend="auto" | "torch" | "triton" | "cuda"``. Family files register
their implementations here by (op, backend) at import time; the public function validates its inputs once and then
calls ``dispatch``. ``"torch"`` is always the plain-PyTorch reference ``<op>_ref``, so "kernels off" is simply
``backend="torch"``. ``"auto"`` picks ``"torch"`` for CPU tensors and, for CUDA tensors, the first registered entry of
the op's measured preference list (``prefer``; "torch" while no benchmark has shown a kernel to be faster). Asking for
a backend that cannot run the op raises ``BackendUnavailable`` with the reason and the fix; nothing falls back
silently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import _cuda
from ._triton import why_unavailable

BACKENDS: tuple[str, ...] = ("torch", "triton", "cuda")

_REGISTRY: dict[str, dict[str, Callable]] = {}
# Per-op order tried by backend="auto" on CUDA devices, declared by the family file from the measurements in
# bench/results/. An op without a measured win stays on "torch": an unmeasured kernel is never chosen automatically.
_PREFERENCE: dict[str, tuple[str, ...]] = {}

# Why a backend may be missing for an op, keyed by backend: shown in BackendUnavailable messages.
_WHY_MISSING = {
    "triton": "this op has no Triton kernel",
    "cuda": (
        "the C++/CUDA extension fusedssl.kernels._C has no kernel for this op (csrc/ serves the normalisations, the "
        "covariance/Frobenius objectives, DirectPred's eigensolver, LARS and EMA)"
    ),
}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this op here; the message says why and how to fix it."""


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the ``backend`` implementation of the public op ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"register: backend={backend!r} is not one of {BACKENDS}")

    def wrap(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = fn
        return fn

    return wrap


def prefer(op: str, order: tuple[str, ...]) -> None:
    """Declare the backends ``auto`` tries for ``op`` on CUDA, fastest first (from bench/results/)."""
    _PREFERENCE[op] = tuple(order)


def available(op: str) -> list[str]:
    """Backends that have an implementation of ``op`` in this installation."""
    return [b for b in BACKENDS if b in _REGISTRY.get(op, {})]


def resolve(op: str, backend: str, device: torch.device) -> str:
    """Return the concrete backend name that serves ``op`` for tensors on ``device``."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise ValueError(f"backend={backend!r} is not one of 'auto', " + ", ".join(repr(b) for b in BACKENDS))
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"no op named {op!r} is registered")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"  # the interpreter is for verification, never an automatic choice
        return next((b for b in _PREFERENCE.get(op, ()) if b in impls), "torch")
    if backend not in impls:
        raise BackendUnavailable(f"backend={backend!r} cannot run {op}: {_WHY_MISSING[backend]}. Use backend='torch'.")
    if backend == "cuda":
        reason = _cuda.why_unavailable(device)
        if reason:
            raise BackendUnavailable(f"backend='cuda' cannot run {op}: {reason}")
    if backend == "triton":
        reason = why_unavailable(device)
        if reason:
            raise BackendUnavailable(f"backend='triton' cannot run {op}: {reason}")
    return backend


def dispatch(op: str, backend: str, device: torch.device) -> Callable:
    """The callable implementing ``op`` for ``backend`` on ``device``."""
    return _REGISTRY[op][resolve(op, backend, device)]
