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
    with pytest.raises(RuntimeError, match=r"params\[0\]: expected a contiguous float32 CUDA tensor"):
        c.lars_step_([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], [True], 0.1, 0.9, 0.0, 0.001)
    with pytest.raises(RuntimeError, match="teacher and online must have the same length"):
        c.ema_([torch.zeros(3)], [], 0.99)


# ---- the Python side of the "cuda" providers, on CPU: the extension replaced by a torch emulation of its contract
# (csrc/kernels.h). What this checks: the custom ops, their autograd wiring, the (y, mean, r, beta) contract of the
# closed-form backward, the in-place C -> G epilogue and the dual-GEMM backward, against the float64 reference. What it
# cannot check: the CUDA code itself (verify and tests/test_lars.py do on a GPU).


class _Emulated:
    """What each function of fusedssl.kernels._C computes, written with torch ops (fp32, like the kernels)."""

    @staticmethod
    def col_norm(z, mode, eps, rows):
        x = (z.T if rows else z).float()
        n, d = x.shape
        if mode == 3:
            mean, ss = torch.zeros(d), x.pow(2).sum(0)
        else:
            mean = x.mean(0)
            ss = (x - mean).pow(2).sum(0)
        beta = torch.zeros(d)
        r = torch.ones(d)
        if mode == 1:
            r, beta = torch.rsqrt(ss / n + eps), torch.full((d,), 1.0 / n)
        elif mode == 2:
            r, beta = torch.rsqrt(ss / (n - 1)), torch.full((d,), 1.0 / (n - 1))
        elif mode >= 3:
            norm = ss.sqrt()
            r = 1.0 / norm.clamp_min(eps)
            beta = torch.where(norm <= eps, 0.0, 1.0)
            if mode == 4:
                r, beta = r * d**0.5, beta / d
        y = ((x - mean) * r).to(z.dtype)
        return (y.T.contiguous() if rows else y), mean, r, beta

    @staticmethod
    def col_norm_bwd(g, z, mean, r, beta, center, rows):
        gx, x = ((t.T if rows else t).float() for t in (g, z))
        y = (x - mean) * r
        m = gx.mean(0) if center else 0.0
        dz = (r * (gx - m - beta * y * (gx * y).sum(0))).to(z.dtype)
        return dz.T.contiguous() if rows else dz

    @staticmethod
    def cov_loss_epilogue_(c, w_diag, t_diag, w_off, t_off):
        eye = torch.eye(len(c), dtype=torch.bool)
        w = torch.where(eye, w_diag, w_off)
        e = c - torch.where(eye, t_diag, t_off)
        loss = (w * e * e).sum()
        c.copy_(2 * w * e)
        return loss


@pytest.mark.parametrize("name", ["barlow", "hsic", "vicreg_cov", "row_l2", "col_std_l2", "frossl", "frossl_legacy",
                                  "log_frobenius"])
def test_cuda_providers_python_side_against_the_reference(monkeypatch, name):
    from conftest import assert_close
    from fusedssl.kernels import _cuda, covariance, frobenius, normalize

    monkeypatch.setattr(_cuda, "ext", lambda: _Emulated)
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
