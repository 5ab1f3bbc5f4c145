"""The CUDA C++ extension fusedssl.kernels._C (csrc/), if it was built, and why it cannot run when it cannot.

setup.py builds it where nvcc and a CUDA build of torch are present (FUSEDSSL_BUILD_CUDA=1 forces it, 0 skips it).
Family files register their "cuda" providers unconditionally, so ``available(op)`` lists what the code provides;
``_backend.resolve`` asks ``why_unavailable`` before dispatching, so a missing build or a CPU tensor raises
BackendUnavailable with the reason and the fix instead of an ImportError deep in a kernel call.
"""

from __future__ import annotations

import torch

try:
    from . import _C

    _IMPORT_ERROR = None
except ImportError as e:  # not built (CPU-only torch, no nvcc, FUSEDSSL_BUILD_CUDA=0) or built for another torch
    _C = None
    _IMPORT_ERROR = str(e)

BUILD = "FUSEDSSL_BUILD_CUDA=1 pip install --no-build-isolation -e . (needs nvcc and a CUDA build of torch)"


def why_unavailable(device: torch.device) -> str | None:
    """None if the CUDA C++ kernels can run on ``device``, else the reason and the fix."""
    if _C is None:
        return f"the CUDA C++ extension fusedssl.kernels._C is not built ({_IMPORT_ERROR}); build it: {BUILD}"
    if device.type != "cuda":
        return f"the CUDA C++ kernels need CUDA tensors; the inputs are on {device.type}"
    return None


def ext():
    """The extension module (callers have passed ``why_unavailable``)."""
    return _C
