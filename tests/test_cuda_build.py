"""The CUDA C++ extension (csrc/): built by setup.py where nvcc and a CUDA torch exist (CI's machine has
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
    for path in [*cus, CSRC / "kernels.h", CSRC / "reduce.cuh"]:
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
    with pytest.raises(RuntimeError, match=r"params\[0\]: expected a float32 CUDA tensor"):
        c.lars_step_([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [True], 0.1, 0.9, 0.0, 0.001)
    with pytest.raises(RuntimeError, match="teacher and online must have the same length"):
        c.ema_([torch.zeros(3)], [], 0.99)


# ---- the Python side of the "cuda" providers, on CPU: the extension replaced by conftest.EmulatedExtension, a torch
# emulation of its contract (csrc/kernels.h). What this checks: the custom ops, their autograd wiring, the (y, mean, r,
# beta) contract of the closed-form backward, the in-place C -> G epilogue and the dual-GEMM backward, against the
# float64 reference. What it cannot check: the CUDA code itself (verify and tests/test_lars.py do on a GPU).


@pytest.mark.parametrize("name", ["barlow", "hsic", "vicreg_cov", "row_l2", "col_std_l2", "frossl", "frossl_legacy",
                                  "log_frobenius"])
def test_cuda_providers_python_side_against_the_reference(monkeypatch, name):
    from conftest import EmulatedExtension, assert_close
    from fusedssl.kernels import _cuda, covariance, frobenius, normalize

    monkeypatch.setattr(_cuda, "ext", lambda: EmulatedExtension)
    calls = {
        "barlow": (lambda a, b: covariance.barlow_twins_loss_cuda(a, b, 0.02),
                   lambda a, b: covariance.barlow_twins_loss_ref(a, b, 0.02)),
        "hsic": (lambda a, b: covariance.barlow_twins_loss_cuda(a, b, 1 / 128, "tsai", -1.0),
                 lambda a, b: covariance.barlow_twins_loss_ref(a, b, 1 / 128, "tsai", -1.0)),
        "vicreg_cov": (lambda a, b: covariance.vicreg_covariance_cuda(a) + covariance.vicreg_covariance_cuda(b),
                       lambda a, b: covariance.vicreg_covariance_ref(a) + covariance.vicreg_covariance_ref(b)),
        "row_l2": (lambda a, b: (normalize.row_normalize_cuda(a) * b).sum(),
                   lambda a, b: (normalize.row_normalize_ref(a) * b).sum()),
        "col_std_l2": (lambda a, b: (normalize.col_normalize_cuda(a, "std_l2") * b).sum(),
                       lambda a, b: (normalize.col_normalize_ref(a, "std_l2") * b).sum()),
        "frossl": (lambda a, b: frobenius.frossl_loss_cuda([a, b]), lambda a, b: frobenius.frossl_loss_ref([a, b])),
        "frossl_legacy": (lambda a, b: frobenius.frossl_loss_cuda([a, b], 1.0, "legacy"),
                          lambda a, b: frobenius.frossl_loss_ref([a, b], 1.0, "legacy")),
        "log_frobenius": (lambda a, b: frobenius.log_frobenius_cuda(a + b),
                          lambda a, b: frobenius.log_frobenius_ref(a + b)),
    }
    fn, ref = calls[name]
    for n, d in ((8, 5), (6, 12)):
        a = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
        b = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
        want = ref(a, b)
        ga, gb = torch.autograd.grad(want, (a, b))
        got = fn(a, b)
        ha, hb = torch.autograd.grad(got, (a, b))
        assert_close(got, want, 1e-4, name)
        assert_close(ha, ga, 1e-4, name)
        assert_close(hb, gb, 1e-4, name)
