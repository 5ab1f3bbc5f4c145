"""Multi-tensor optimiser updates: LARS (You et al. 2017, as the SSL recipes use it) and the EMA teacher update.

``lars_step_(params, grads, bufs, ...)`` updates a group of fp32 tensors in place:
    g' = g + wd p;  trust = eta ||p|| / ||g'|| where both norms are > 0, else 1;  buf = m buf + trust g';  p -= lr buf
with ``adapt=False`` (biases and norm parameters) meaning no weight decay and trust 1 (plain momentum SGD).
``ema_(teacher, online, tau)`` does teacher += (1 - tau)(online - teacher) for every tensor.

Backends: "torch" is the foreach reference (a few multi-tensor launches, no per-parameter host sync: the trust ratios
are computed on the device for all tensors at once); "cuda" (csrc/optim.cu) does all tensors of a group in one norm
pass and one update pass (LARS) or one pass (EMA), chunk-parallel. ``auto`` keeps the reference until
bench/results/ shows the CUDA kernel faster on a GPU.
"""

from __future__ import annotations

import torch

from . import _backend

# ----------------------------------------------------------------------------------------------------------- references


@torch.no_grad()
def lars_step_ref(params, grads, bufs, lr, momentum, weight_decay, eta, adapt):
    """Foreach reference of ``lars_step_``."""
    if adapt and weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if adapt:
        wn = torch.stack(torch._foreach_norm(params))
        gn = torch.stack(torch._foreach_norm(grads))
        trust = torch.where((wn > 0) & (gn > 0), eta * wn / gn, torch.ones_like(wn))
        grads = torch._foreach_mul(grads, list(trust.unbind()))
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)


@torch.no_grad()
def ema_ref(teacher, online, tau):
    """Foreach reference of ``ema_``."""
    torch._foreach_lerp_(teacher, online, 1.0 - tau)


# ------------------------------------------------------------------------------------------------ launchers and helpers


def _device(tensors: list[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def _check_lists(**lists: list[torch.Tensor]) -> None:
    names = list(lists)
    first = lists[names[0]]
    for name in names:
        ts = lists[name]
        if not isinstance(ts, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in ts):
            raise TypeError(f"{name} must be a list of tensors")
        if len(ts) != len(first):
            raise ValueError(f"{name} has {len(ts)} tensors, {names[0]} has {len(first)}")
        for i, (t, ref) in enumerate(zip(ts, first, strict=True)):
            if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
                raise ValueError(f"{name}[{i}] is {t.dtype} {tuple(t.shape)} on {t.device}; {names[0]}[{i}] is "
                                 f"{ref.dtype} {tuple(ref.shape)} on {ref.device}")
            if t.device != first[0].device:  # one multi-tensor launch serves the list: one device
                raise ValueError(f"{name}[{i}] is on {t.device} but {names[0]}[0] is on {first[0].device}; a "
                                 "multi-tensor update needs all tensors on one device")


# ------------------------------------------------------------------------------------------ providers (one per backend)


_backend.register("lars_step_", "torch")(lars_step_ref)
_backend.register("ema_", "torch")(ema_ref)


@_backend.register("lars_step_", "cuda")
@torch.no_grad()
def lars_step_cuda(params, grads, bufs, lr, momentum, weight_decay, eta, adapt):
    """CUDA C++ provider of ``lars_step_`` (csrc/optim.cu): fp32 dense tensors (contiguous or channels-last), the
    gradient and buffer with their parameter's strides; deterministic (no atomics)."""
    from . import _cuda

    _cuda.ext().lars_step_(list(params), list(grads), list(bufs), [adapt] * len(params), float(lr), float(momentum),
                           float(weight_decay) if adapt else 0.0, float(eta))


@_backend.register("ema_", "cuda")
@torch.no_grad()
def ema_cuda(teacher, online, tau):
    """CUDA C++ provider of ``ema_`` (csrc/optim.cu): fp32 dense tensors (contiguous or channels-last)."""
    from . import _cuda

    _cuda.ext().ema_(list(teacher), list(online), float(tau))


# ----------------------------------------------------------------------------------------------------------- public ops


def lars_step_(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], *, lr: float,
               momentum: float, weight_decay: float, eta: float, adapt: bool = True, backend: str = "auto") -> None:
    """One LARS step over a parameter group, in place (module docstring)."""
    _check_lists(params=params, grads=grads, bufs=bufs)
    if params:
        _backend.dispatch("lars_step_", backend, _device(params))(params, grads, bufs, lr, momentum, weight_decay,
                                                                  eta, adapt)


def ema_(teacher: list[torch.Tensor], online: list[torch.Tensor], tau: float, *, backend: str = "auto") -> None:
    """teacher += (1 - tau)(online - teacher) for every tensor, in place."""
    _check_lists(teacher=teacher, online=online)
    if teacher:
        _backend.dispatch("ema_", backend, _device(teacher))(teacher, online, tau)
