"""What every Triton family file shares: availability, the interpreter switch, dot precision, tile sizes.

Triton kernels run on CUDA devices, or on CPU tensors under the interpreter (``TRITON_INTERPRET=1`` set before the
first ``@triton.jit`` runs; tests/conftest.py sets it). The interpreter mis-computes bf16/fp16 arithmetic, so kernels
upcast loaded tiles to fp32 there (``UPCAST``); on a GPU half-precision tiles go to the tensor cores as they are.
fp32 dots use "ieee" unless torch allows TF32 for matmuls on that GPU, so results compare across machines.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

try:
    import triton
    import triton.language as tl  # noqa: F401 - re-exported for the family files

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton ships with Linux CUDA builds of torch
    triton = None
    tl = None
    HAS_TRITON = False


# Set only by gpu_paths(): the wrappers then pick the launch configurations they would pick on a GPU although the
# tensors are on the CPU, so bench/aot.py can record every launch and compile it for a real target without a GPU.
_GPU_PATHS = False


@contextlib.contextmanager
def gpu_paths() -> Iterator[None]:
    """Make the Triton wrappers take their GPU branches on CPU tensors (launches must be intercepted: bench/aot.py)."""
    global _GPU_PATHS
    saved, _GPU_PATHS = _GPU_PATHS, True
    try:
        yield
    finally:
        _GPU_PATHS = saved


def _on_gpu(device: torch.device) -> bool:
    return device.type == "cuda" or _GPU_PATHS


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1" and not _GPU_PATHS


def why_unavailable(device: torch.device) -> str | None:
    """None if Triton kernels can run on ``device``, else the reason and the fix."""
    if not HAS_TRITON:
        return "triton is not installed (pip install triton; it ships with Linux CUDA builds of torch)"
    if _on_gpu(device) or (device.type == "cpu" and interpreting()):
        return None
    return (f"Triton kernels need a CUDA device; the inputs are on {device.type} (on CPU, set TRITON_INTERPRET=1 "
            "before importing fusedssl to run them in Triton's interpreter, slowly)")


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``t``'s (a library caller's tensors may live elsewhere)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def tf32_enabled() -> bool:
    """Whether torch lets fp32 matmuls on CUDA use TF32. Read through the per-backend ``fp32_precision`` switch:
    ``allow_tf32`` and ``get_float32_matmul_precision()`` raise once a user has set the newer API, and the newer
    switch reports the legacy settings too ("none" inherits the global ``torch.backends.fp32_precision``)."""
    matmul = torch.backends.cuda.matmul
    prec = getattr(matmul, "fp32_precision", None)
    if prec is None:  # a torch without the per-backend switch
        return bool(matmul.allow_tf32)
    if prec == "none":
        prec = getattr(torch.backends, "fp32_precision", "none")
    return prec == "tf32"


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """``input_precision`` of an fp32 ``tl.dot``: "tf32" only where torch allows TF32 for matmuls, else "ieee"."""
    if dtype == torch.float32 and _on_gpu(device) and tf32_enabled():
        return "tf32"
    return "ieee"


def tile(size: int, cap: int = 64) -> int:
    """A power-of-two tile <= cap covering small sizes without waste (tl.dot needs >= 16)."""
    return min(cap, max(16, triton.next_power_of_2(size)))


def k_tile(size: int, dtype: torch.dtype, precision: str) -> int:
    """The K tile of a ``tl.dot``: fp32 operands multiplied as IEEE FMAs keep their operand tiles in registers, and a
    64-deep tile then spills on sm_80 (32 does not: bench/aot.py); the tensor-core paths take 64."""
    if interpreting():  # no registers there, and its cost is per K step
        return tile(size)
    return tile(size, 32 if dtype == torch.float32 and precision == "ieee" else 64)


# Options every launch passes. FMA contraction on: the kernels were verified and compiled without spills with it, and
# it is Triton's default only up to 3.9 (3.9 warns when TRITON_DEFAULT_FP_FUSION is unset; 3.10 turns it off), so a
# newer Triton must not change their arithmetic or speed behind our back. The interpreter ignores launch options.
LAUNCH = {"enable_fp_fusion": True}


# SMs of the GPU the ahead-of-time compile check assumes (H100/H200) when the wrappers run on CPU tensors
AOT_SM_COUNT = 132


def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return AOT_SM_COUNT


def split_k(tiles: int, k_steps: int, device: torch.device) -> int:
    """How many programs share one output tile's K loop: 1 unless the tiles alone leave most SMs idle and the loop
    is long, then enough for about two programs per SM with at least 4 K steps each."""
    if interpreting():
        return 1
    sms = sm_count(device)
    if tiles >= sms:
        return 1
    return max(1, min(-(-2 * sms // tiles), k_steps // 4))
