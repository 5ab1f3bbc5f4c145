"""Input validation shared by every public op: one place, messages that name the argument, expected and got.

Checks run once at the Python op boundary (the references and later kernels trust their inputs). The finiteness check
reads the whole tensor and, on a GPU, synchronises the host; public ops therefore take ``check_finite``, off by
default: a training loop detects non-finite values itself from a device-side flag, and a call that wants the check
(a test, an interactive session, ``fusedssl verify``'s input checks) asks for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_embeddings(name: str, x: object, *, min_rows: int = 2, check_finite: bool = True) -> torch.Tensor:
    """Validate one N x D embedding matrix and return it.

    Raises:
        TypeError: ``x`` is not a tensor, or its dtype is not a floating type fusedssl supports.
        ValueError: ``x`` is not 2-D, has fewer than ``min_rows`` rows or no columns, or holds NaN/Inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype}; expected one of float16, bfloat16, float32, float64 "
            "(cast integer or complex data before calling)"
        )
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples x D features), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has N={x.shape[0]} rows; this objective needs N >= {min_rows}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has D=0 columns")
    if check_finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")
    return x


def check_pair(name_a: str, a: object, name_b: str, b: object, *, min_rows: int = 2, check_finite: bool = True) -> None:
    """Validate two views of the same batch: each valid, same shape, same device."""
    check_embeddings(name_a, a, min_rows=min_rows, check_finite=check_finite)
    check_embeddings(name_b, b, min_rows=min_rows, check_finite=check_finite)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must be two views of the same batch with equal shapes, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; put both on one device")


def check_views(name: str, views: object, *, min_views: int = 2, min_rows: int = 2, check_finite: bool = True) -> list:
    """Validate a sequence of V views with equal shapes; returns them as a list."""
    if isinstance(views, torch.Tensor) or not isinstance(views, Sequence):
        raise TypeError(f"{name} must be a list or tuple of (N, D) tensors, got {type(views).__name__}")
    views = list(views)
    if len(views) < min_views:
        raise ValueError(f"{name} has {len(views)} view(s); this objective needs at least {min_views}")
    for i, v in enumerate(views):
        check_embeddings(f"{name}[{i}]", v, min_rows=min_rows, check_finite=check_finite)
        if v.shape != views[0].shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(v.shape)} but {name}[0] has {tuple(views[0].shape)}")
        if v.device != views[0].device:
            raise ValueError(f"{name}[{i}] is on {v.device} but {name}[0] is on {views[0].device}")
    return views


def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """Validate a real scalar hyper-parameter inside [low, high] (``low_open``: strictly above low)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}")
    return value  # type: ignore[return-value]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Losses accumulate in float32 at least (methods.md §16.6): half inputs are upcast, float64 stays float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def full_precision(x: torch.Tensor) -> Iterator[torch.dtype]:
    """Run a reference loss outside autocast, in ``compute_dtype(x)``: the loss math must not inherit bf16 GEMMs."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield compute_dtype(x)
