"""The CUDA C++ extension (csrc/, issue #4): built by setup.py where nvcc and a CUDA torch exist (CI's machine has
both, no GPU: compile and import only), torch-free kernel files, argument checks that name the tensor."""

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def test_kernel_files_are_torch_free_and_bindings_is_the_only_torch_file():
    cus = sorted(CSRC.glob("*.cu"))
    assert {p.stem for p in cus} >= {"normalize", "optim"}
    for path in [*cus, CSRC / "kernels.h"]:
        includes = re.findall(r'#include\s+[<"]([^>"]+)[>"]', path.read_text())
        assert not [i for i in includes if i.startswith(("torch", "ATen", "c10", "pybind11"))], (path.name, includes)
    assert "torch/extension.h" in (CSRC / "checks.h").read_text()
    assert "PYBIND11_MODULE" in (CSRC / "bindings.cpp").read_text()


def _buildable() -> str | None:
    if os.environ.get("FUSEDSSL_BUILD_CUDA", "auto").strip().lower() in ("0", "false", "no", "off"):
        return "FUSEDSSL_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return "CPU-only torch"
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        return "no nvcc"
    return None


def test_extension_was_built_and_checks_its_arguments():
    why = _buildable()
    if why:
        pytest.skip(f"the extension is not built here ({why})")
    from fusedssl.kernels import _cuda

    assert _cuda.ext() is not None, f"setup.py should have built fusedssl.kernels._C: {_cuda._IMPORT_ERROR}"
    c = _cuda.ext()
    assert {"col_norm", "col_norm_bwd", "lars_step_", "ema_"} <= set(dir(c))
    with pytest.raises(RuntimeError, match="z: expected a CUDA tensor, got one on cpu"):
        c.col_norm(torch.zeros(4, 3), 1, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"params\[0\]: expected a contiguous float32 CUDA tensor"):
        c.lars_step_([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [True], 0.1, 0.9, 0.0, 0.001)
    with pytest.raises(RuntimeError, match="teacher and online must have the same length"):
        c.ema_([torch.zeros(3)], [], 0.99)
