"""The C++/CUDA extension fusedssl.kernels._C (csrc/), if it was built, and why it cannot run when it cannot.

setup.py builds it where nvcc and a CUDA build of torch are present (FUSEDSSL_BUILD_CUDA=1 forces it, 0 skips it) and
records its decision in kernels/_build.json; ``status()`` turns that record and the import result into the one line
``fusedssl`` prints at the start of every run, so a skipped or stale build shows up at once. Family files register
their "cuda" providers unconditionally, so ``available(op)`` lists what the code provides; ``_backend.resolve`` asks
``why_unavailable`` before dispatching, so a missing build or a CPU tensor raises BackendUnavailable with the reason and
the fix instead of an ImportError deep in a kernel call.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BUILD = ("pip install -r build-requirements.txt && pip install --no-build-isolation -e . (from the source tree; needs "
         "nvcc and a CUDA build of torch; FUSEDSSL_BUILD_CUDA=1 makes a failed build an error)")


def _build_record() -> dict:
    try:
        return json.loads((Path(__file__).with_name("_build.json")).read_text())
    except (OSError, ValueError):
        return {}


RECORD = _build_record()

try:
    from . import _C

    _IMPORT_ERROR = None
except ImportError as e:  # not built (CPU-only torch, no nvcc, FUSEDSSL_BUILD_CUDA=0) or built for another torch
    _C = None
    if RECORD.get("built") is False:
        _IMPORT_ERROR = f"not built at install: {RECORD.get('reason', 'no reason recorded')}"
    elif RECORD.get("torch") and RECORD["torch"] != torch.__version__:
        _IMPORT_ERROR = (f"built against torch {RECORD['torch']} but this is torch {torch.__version__}; rebuild "
                         f"it ({e})")
    else:
        _IMPORT_ERROR = str(e)


def status() -> tuple[bool, str]:
    """(built and importable, one line: for which GPUs and torch, or why not and how to build it)."""
    if _C is None:
        return False, f"fusedssl.kernels._C is not available ({_IMPORT_ERROR}); to build it: {BUILD}"
    arch = RECORD.get("arch", "unknown architectures")
    return True, f"fusedssl.kernels._C is built for {arch} against torch {RECORD.get('torch', torch.__version__)}"


def why_unavailable(device: torch.device) -> str | None:
    """None if the CUDA C++ kernels can run on ``device``, else the reason and the fix."""
    if _C is None:
        return f"the C++/CUDA extension fusedssl.kernels._C is unavailable ({_IMPORT_ERROR}); build it: {BUILD}"
    if device.type != "cuda":
        return f"the CUDA C++ kernels need CUDA tensors; the inputs are on {device.type}"
    return None


def ext():
    """The extension module (callers have passed ``why_unavailable``)."""
    return _C
