"""What every Triton family file shares: availability, the interpreter switch, dot precision, tile sizes.

Triton kernels run on CUDA devices, or on CPU tensors under the interpreter (``TRITON_INTERPRET=1`` set before the
first ``@triton.jit`` runs; tests/conftest.py sets it). The interpreter mis-computes bf16/fp16 arithmetic, so kernels
upcast loaded tiles to fp32 there (``UPCAST``); on a GPU half-precision tiles go to the tensor cores as they are.
fp32 dots use "ieee" unless torch allows TF32 for matmuls on that GPU, so results compare across machines.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl  # noqa: F401 - re-exported for the family files

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships with Linux CUDA builds of torch
    triton = None
    tl = None
    HAS_TRITON = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def why_unavailable(device: torch.device) -> str | None:
    """None if Triton kernels can run on ``device``, else the reason and the fix."""
    if not HAS_TRITON:
        return "triton is not installed (pip install triton; it ships with Linux CUDA builds of torch)"
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    return (f"Triton kernels need a CUDA device; the inputs are on {device.type} (on CPU, set TRITON_INTERPRET=1 "
            "before importing fusedssl to run them in Triton's interpreter, slowly)")


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def tile(size: int, cap: int = 64) -> int:
    """A power-of-two tile <= cap covering small sizes without waste (tl.dot needs >= 16)."""
    return min(cap, max(16, triton.next_power_of_2(size)))
