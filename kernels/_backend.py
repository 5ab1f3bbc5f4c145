"""Backend registry: which implementation serves each public op.

Every public op in ``fusedssl.kernels`` takes ``backend="auto" | "torch" | "triton" | "cuda"``. Family files register
their implementations here by (op, backend) at import time; the public function validates its inputs once and then
calls ``dispatch``. ``"torch"`` is always the plain-PyTorch reference ``<op>_ref``, so "kernels off" is simply
``backend="torch"``. ``"auto"`` picks ``"torch"`` for CPU tensors and, for CUDA tensors, the backend that the
committed GPU record measured fastest on that GPU model (``preferences.json``, written by ``fusedssl bench render``
from a record under bench/results/; "torch" for every op and GPU that has no measurement). Asking for a backend that
cannot run the op raises ``BackendUnavailable`` with the reason and the fix; nothing falls back silently.

A provider may bring its own availability check (``register(..., why_not=)``): the photometric augmentation's
compiled provider is a CPU kernel in the same extension, so the "cuda" rule (CUDA tensors) does not apply to it, and
``register(..., cpu_auto=True)`` makes it "auto"'s choice for CPU tensors where it can run.

``resolve_all`` is what a training run calls, once: it maps every op the run uses to the backend that will serve it,
with the one fallback rule (a run that asks for "triton" or "cuda" runs the ops that backend has no kernel for on
"torch", and says so), and the engine logs the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from . import _cuda
from ._triton import why_unavailable

BACKENDS: tuple[str, ...] = ("torch", "triton", "cuda")

_REGISTRY: dict[str, dict[str, Callable]] = {}
_CHECKS: dict[tuple[str, str], Callable[[torch.device], str | None]] = {}  # (op, backend) -> its own why-not
_CPU_AUTO: dict[str, str] = {}  # op -> the backend "auto" takes for CPU tensors where it can run (else "torch")


def _load_preferences() -> dict[str, dict[str, dict[str, str]]]:
    """preferences.json, the committed GPU record's choices: "fastest" {GPU model: {op: fastest backend}} and the
    per-shape choices inside one provider (e.g. "directpred_solver" {GPU model: {D: kernel}}); an unmeasured kernel
    is never chosen."""
    try:
        data = json.loads((Path(__file__).with_name("preferences.json")).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


_CHOICES: dict[str, dict[str, dict[str, str]]] = _load_preferences()
_PREFERENCE: dict[str, dict[str, str]] = _CHOICES.get("fastest", {})

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


def register(op: str, backend: str, *, why_not: Callable[[torch.device], str | None] | None = None,
             cpu_auto: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the ``backend`` implementation of the public op ``op``. ``why_not(device)``
    replaces the backend's own availability rule for this provider; ``cpu_auto``: "auto" takes it on the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"register: backend={backend!r} is not one of {BACKENDS}")

    def wrap(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = fn
        if why_not is not None:
            _CHECKS[(op, backend)] = why_not
        if cpu_auto:
            _CPU_AUTO[op] = backend
        return fn

    return wrap


def gpu_model(device: torch.device) -> str:
    """The key of ``device`` in preferences.json: its marketing name, lower case ("nvidia h200")."""
    return torch.cuda.get_device_name(device).lower()


def tuned(choice: str, device: torch.device) -> dict[str, str]:
    """The committed GPU record's per-shape choices named ``choice`` for ``device``'s GPU model ({} when unmeasured or
    not a GPU)."""
    if device.type != "cuda":
        return {}
    return _CHOICES.get(choice, {}).get(gpu_model(device), {})


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
            cpu = _CPU_AUTO.get(op, "torch")  # the interpreter is for verification, never an automatic choice
            return cpu if why_not(op, cpu, device) is None else "torch"
        if not _PREFERENCE:
            return "torch"
        best = _PREFERENCE.get(gpu_model(device), {}).get(op, "torch")
        return best if best in impls and why_not(op, best, device) is None else "torch"
    if backend not in impls:
        raise BackendUnavailable(f"backend={backend!r} cannot run {op}: {_WHY_MISSING[backend]}. Use backend='torch'.")
    reason = why_not(op, backend, device)
    if reason:
        raise BackendUnavailable(f"backend={backend!r} cannot run {op}: {reason}")
    return backend


def why_not(op: str, backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device`` (None if it can): the provider's own check, else the
    backend's (no Triton or no GPU for "triton"; no extension or no CUDA tensors for "cuda")."""
    if backend in _REGISTRY.get(op, {}) and (op, backend) in _CHECKS:
        return _CHECKS[(op, backend)](device)
    if backend != "torch" and backend not in _REGISTRY.get(op, {}):
        return _WHY_MISSING[backend]
    return {"torch": lambda d: None, "triton": why_unavailable, "cuda": _cuda.why_unavailable}[backend](device)


def resolve_all(ops: list[str] | tuple[str, ...], requested: str, device: torch.device) -> dict[str, str]:
    """The backend that serves each of ``ops`` for a run configured with ``requested`` on ``device``.

    "auto" and "torch" resolve per op as ``resolve`` does. "triton" and "cuda" give every op that backend where it has
    a kernel (raising BackendUnavailable when the backend cannot run here, e.g. no GPU or no built extension) and
    "torch" to the ops it has no kernel for: the O(N D) terms (invariance, variance, cosine) and families without a
    kernel. The caller logs the mapping, so what ran where is never a guess.
    """
    out = {}
    for op in ops:
        has = requested in ("auto", "torch") or requested in _REGISTRY.get(op, {})
        out[op] = resolve(op, requested if has else "torch", device)
    return out


def dispatch(op: str, backend: str, device: torch.device) -> Callable:
    """The callable implementing ``op`` for ``backend`` on ``device``."""
    return _REGISTRY[op][resolve(op, backend, device)]
