"""Shared test setup: fresh seeds, markers, float64 helpers.

Without a GPU, TRITON_INTERPRET=1 is set before any @triton.jit runs (before fusedssl.kernels is imported), so the
Triton kernels run on CPU in Triton's interpreter; with a GPU the kernels compile and run for real (the interpreter
would hide every GPU-only defect). Tolerance floors live only here (style.md §5); the reference tests below compare
float64 against float64 and use the float64 tolerance.
"""

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from fusedssl.bench.harness import TINY, free_port, tiny  # noqa: E402, F401 - shared with the soak runs
from fusedssl.bench.verify import FLOORS  # noqa: E402, F401 - the one floor table, shared with `fusedssl verify`

# FLOAT64 is the tolerance of float64-vs-float64 identity tests (different but exact formulations agree to rounding).
FLOAT64 = 1e-10
# Central finite differences in float64 (h = 1e-5) against an analytic gradient.
FINITE_DIFF = 1e-6
# float32 against float32 of the same function by another route (an exported network, a folded head, another order
# of the same sums): reassociation noise, about sqrt(terms) x 6e-8 at unit scale, so 1e-5 leaves 10x room over the
# 512-wide layers tested; a wrong weight or a missed normalisation is O(1).
FLOAT32_REROUTE = 1e-5
# float32 arithmetic against a float64 reference of a well-conditioned op, relative to the output's scale: the float32
# floor of the verify table.
FLOAT32_VS_FLOAT64 = FLOORS[torch.float32]
# One DDP step against one process on the same global batch, relative to the size of the update: float32
# reduction-order noise measured at 4.5e-5 of the update (one process, 1 vs 2 threads); a wrong gradient scale,
# per-rank BatchNorm statistics or other augmentations are of the order of the update itself.
DDP_FP32 = 1e-3
# The float32 Jacobi eigensolver (csrc/directpred.cu) against float64 eigh, relative to max |F|: it stops when the
# off-diagonal falls under JACOBI_TOL = 1e-5 of the scale, which bounds the residual F V - V diag(s) to about that
# (3e-5 with float32 accumulation over n = 256) and the eigenvalues to second order in it (2e-5 with the rounding of
# the diagonal); V'V drifts by about eps per rotation applied to a column, 30 sweeps x 256 columns x 6e-8 = 4.6e-4;
# the spectral map of already-close eigenvalues is evaluated in float32 (1e-6).
EIGH_FP32 = {"eigenvalues": 2e-5, "residual": 3e-5, "orthogonality": 5e-4, "spectral map": 1e-6}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("markers", "slow: longer than a few seconds; not in CI's default run")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def kernel_device():
    """Where kernel tests run: the GPU at full shapes when there is one, else the Triton interpreter on CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # A different seed per test (from its id) so the data is fresh random but each test is reproducible: crc32, not
    # hash(), whose salt changes per process (that made a rare bf16 tolerance miss unreproducible).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


def tiny_cfg(out_dir, method: str = "barlow", *extra: str, name: str | None = None):
    """The TINY recipe for ``method`` writing to ``out_dir``/``name`` (default: the method's name), then ``extra``."""
    from fusedssl.engine import config

    return config.load(None, tiny(method, f"run.out_dir={out_dir}", f"run.name={name or method}", *extra))


def wait_for(pred, timeout: float = 120.0, proc=None) -> bool:
    """Poll ``pred`` until it holds (True) or ``timeout`` seconds pass (False); once ``proc`` has exited, its last
    answer counts (a subprocess that is gone will not change what it left)."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return pred()
        time.sleep(0.05)
    return False


def randn(*shape, dtype=torch.float64, requires_grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(requires_grad)


def assert_close(a, b, tol=FLOAT64, what=""):
    """max |a - b| / max(1, max |b|) <= tol, elementwise over tensors (scaled like style.md §5)."""
    a, b = (x.detach().to(torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)
            for x in (a, b))
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max()) / scale
    assert err <= tol, f"{what} relative error {err:.3e} > {tol:.1e}"


def check_triton_case(case, dtype, device, layouts=("contiguous", "strided")):
    """The three-way rule of `fusedssl verify` for one case over the device's shape grid (full shapes on a GPU,
    interpreter-sized on CPU): value and every input gradient."""
    from fusedssl.bench import verify

    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    shapes = verify.FULL_SHAPES if device.type == "cuda" else verify.SMALL_SHAPES
    for n, d in shapes:
        for layout in layouts:
            for row in verify.check(case, "triton", n, d, dtype, layout, gen, device):
                assert row.ok, row


class EmulatedExtension:
    """What each GPU function of fusedssl.kernels._C computes, written with torch ops (fp32, like the kernels), with
    the same output layouts (contiguous): the CPU stand-in for the extension in tests of the "cuda" providers' Python
    side (monkeypatch ``fusedssl.kernels._cuda.ext`` to return it)."""

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
        return (y.T if rows else y).contiguous(), mean, r, beta

    @staticmethod
    def col_norm_bwd(g, z, mean, r, beta, center, rows):
        gx, x = ((t.T if rows else t).float() for t in (g, z))
        y = (x - mean) * r
        m = gx.mean(0) if center else 0.0
        dz = (r * (gx - m - beta * y * (gx * y).sum(0))).to(z.dtype)
        return (dz.T if rows else dz).contiguous()

    @staticmethod
    def cov_loss_epilogue_(c, w_diag, t_diag, w_off, t_off):
        eye = torch.eye(len(c), dtype=torch.bool)
        w = torch.where(eye, w_diag, w_off)
        e = c - torch.where(eye, t_diag, t_off)
        loss = (w * e * e).sum()
        c.copy_(2 * w * e)
        return loss
