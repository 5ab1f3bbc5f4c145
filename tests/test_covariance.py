"""Barlow Twins, BT-HSIC and VICReg: originals, identities, closed-form gradients (methods.md §5, §7, §16.2)."""

import pytest
import torch
from conftest import FLOORS, assert_close, check_triton_case, randn
from fusedssl import kernels
from fusedssl.bench import originals
from fusedssl.kernels._gram import frob2_cross

SHAPES = [(2, 3), (16, 7), (7, 16), (33, 33), (5, 40)]  # N > D, N < D (Gram side), N = D, N = 2


@pytest.mark.parametrize("n,d", SHAPES)
def test_barlow_twins_equals_original_code(n, d):
    za, zb = randn(n, d), randn(n, d)
    assert_close(kernels.barlow_twins_loss(za, zb), originals.barlow_twins(za, zb), what="BT")
    assert_close(kernels.barlow_twins_loss(za, zb, lam=0.2), originals.barlow_twins(za, zb, lam=0.2), what="BT")


@pytest.mark.parametrize("n,d", SHAPES[1:])
def test_hsic_variant_equals_tsai_code(n, d):
    za, zb = randn(n, d), randn(n, d)
    ours = kernels.barlow_twins_loss(za, zb, lam=1 / 128, normalize="tsai", off_diagonal_target=-1.0)
    assert_close(ours, originals.barlow_twins_hsic_tsai(za, zb), what="HSIC")


@pytest.mark.parametrize("normalize", ["bn", "tsai"])
def test_hsic_identity(normalize):
    """HSIC-BT = BT + 2 lam (1'c1 - tr c) + lam D (D - 1), methods.md §5.2."""
    n, d, lam = 12, 9, 0.3
    za, zb = randn(n, d), randn(n, d)
    a = kernels.col_normalize(kernels.row_normalize(za), "std") if normalize == "tsai" else kernels.col_normalize(za)
    b = kernels.col_normalize(kernels.row_normalize(zb), "std") if normalize == "tsai" else kernels.col_normalize(zb)
    c = a.T @ b / n
    bt = kernels.barlow_twins_loss(za, zb, lam=lam, normalize=normalize)
    hsic = kernels.barlow_twins_loss(za, zb, lam=lam, normalize=normalize, off_diagonal_target=-1.0)
    assert_close(hsic, bt + 2 * lam * (c.sum() - c.trace()) + lam * d * (d - 1), what="identity")


@pytest.mark.parametrize("n,d", [(8, 5), (5, 8)])
def test_frobenius_either_side(n, d):
    """||a'b||_F = the N x N Gram form, both branches of frob2_cross against the dense D x D product."""
    a, b = randn(n, d), randn(n, d)
    assert_close(frob2_cross(a, b), (a.T @ b).pow(2).sum(), what="cross")
    assert_close(frob2_cross(a, a), (a.T @ a).pow(2).sum(), what="auto")


@pytest.mark.parametrize("target", [0.0, -1.0])
def test_barlow_gradient_closed_form(target):
    """dL/dza^ = zb^ G' / N with G = 2[lam C + (1 - lam) Diag(C) - I] (+ 2 lam off(11') for HSIC)."""
    n, d, lam = 10, 6, 0.05
    za, zb = randn(n, d, requires_grad=True), randn(n, d, requires_grad=True)
    loss = kernels.barlow_twins_loss(za, zb, lam=lam, normalize="none", off_diagonal_target=target)
    ga, gb = torch.autograd.grad(loss, (za, zb))
    c = za.detach().T @ zb.detach() / n
    eye = torch.eye(d, dtype=c.dtype)
    g = 2 * (lam * c + (1 - lam) * torch.diag(torch.diagonal(c)) - eye)
    if target == -1.0:
        g = g + 2 * lam * (torch.ones(d, d, dtype=c.dtype) - eye)
    assert_close(ga, zb.detach() @ g.T / n, what="dza")
    assert_close(gb, za.detach() @ g / n, what="dzb")


@pytest.mark.parametrize("n,d", [(6, 4), (4, 9)])
def test_barlow_gradcheck(n, d):
    za, zb = randn(n, d, requires_grad=True), randn(n, d, requires_grad=True)
    for kw in ({}, {"normalize": "tsai", "off_diagonal_target": -1.0, "lam": 0.1}):
        assert torch.autograd.gradcheck(lambda a, b, kw=kw: kernels.barlow_twins_loss(a, b, backend="torch", **kw),
                                        (za, zb))


@pytest.mark.parametrize("n,d", SHAPES[1:])
def test_vicreg_equals_original_code(n, d):
    za, zb = randn(n, d), randn(n, d)
    assert_close(kernels.vicreg_loss(za, zb), originals.vicreg(za, zb), what="VICReg")
    parts = (25 * kernels.vicreg_invariance(za, zb)
             + 12.5 * (kernels.vicreg_variance(za) + kernels.vicreg_variance(zb))
             + kernels.vicreg_covariance(za) + kernels.vicreg_covariance(zb))
    assert_close(parts, originals.vicreg(za, zb), what="terms")


def test_vicreg_gradient_closed_form():
    """dx = 2 x~ G / (N - 1) + 2 mu_s (x - y) / (N D), G = (2 nu / D) off(C) - (mu_v / 4D) Diag(1[s<1]/s)."""
    n, d, mu_s, mu_v, nu = 9, 5, 25.0, 25.0, 1.0
    x = (0.3 * randn(n, d)).requires_grad_(True)  # small variance so the hinge is active for most columns
    y = randn(n, d)
    (gx,) = torch.autograd.grad(kernels.vicreg_loss(x, y), x)
    xt = x.detach() - x.detach().mean(0)
    c = xt.T @ xt / (n - 1)
    s = torch.sqrt(torch.diagonal(c) + 1e-4)
    off = c - torch.diag(torch.diagonal(c))
    g = (2 * nu / d) * off - (mu_v / (4 * d)) * torch.diag((s < 1).double() / s)
    expected = 2 * xt @ g / (n - 1) + 2 * mu_s * (x.detach() - y) / (n * d)
    assert_close(gx, expected, what="VICReg dx")


@pytest.mark.parametrize("n,d", [(6, 4), (4, 7)])
def test_vicreg_gradcheck(n, d):
    za, zb = randn(n, d, requires_grad=True), (0.2 * randn(n, d)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: kernels.vicreg_loss(a, b, backend="torch"), (za, zb))


def test_against_lightly():
    """An independent implementation (lightly) agrees on Barlow Twins and VICReg."""
    loss_mod = pytest.importorskip("lightly.loss")
    za, zb = randn(32, 16), randn(32, 16)
    lt = loss_mod.BarlowTwinsLoss(lambda_param=0.0051)(za, zb)
    assert_close(kernels.barlow_twins_loss(za, zb, lam=0.0051), lt, what="BT vs lightly")
    lv = loss_mod.VICRegLoss()(za, zb)
    assert_close(kernels.vicreg_loss(za, zb), lv, what="VICReg vs lightly")


def test_half_precision_inputs_compute_in_float32():
    za, zb = randn(64, 32, dtype=torch.float32), randn(64, 32, dtype=torch.float32)
    ref = kernels.barlow_twins_loss(za.double(), zb.double())
    out = kernels.barlow_twins_loss(za.bfloat16(), zb.bfloat16())
    assert out.dtype == torch.float32
    # bf16 inputs carry ~3 significant digits; the loss itself is accumulated in fp32.
    assert_close(out, ref, tol=FLOORS[torch.bfloat16], what="bf16 inputs")


# -------------------------------------------------------------------------------------------------------- Triton kernel

from fusedssl.bench import verify  # noqa: E402
from fusedssl.kernels._gram import _cov_loss_bwd_op, _cov_loss_op, cov_loss  # noqa: E402

TRITON_CASES = [c for c in verify.CASES if c.op in ("barlow_twins_loss", "vicreg_covariance")]  # this family


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_triton_three_way(case, dtype, kernel_device):
    """Value and every input gradient within 2x PyTorch's own low-precision error + the dtype floor (style.md §5)."""
    check_triton_case(case, dtype, kernel_device)


def test_triton_cov_loss_general_weights_against_dense_formula(kernel_device):
    n, d = 37, 21
    a = torch.randn(n, d, device=kernel_device, requires_grad=True)
    b = torch.randn(n, d, device=kernel_device, requires_grad=True)
    loss = cov_loss(a, b, scale=0.5, w_diag=0.7, t_diag=0.3, w_off=1.9, t_off=-0.4)
    ga, gb = torch.autograd.grad(loss, (a, b))
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    c = 0.5 * a64.T @ b64
    eye = torch.eye(d, dtype=torch.bool, device=kernel_device)
    ref = (0.7 * (c - 0.3) ** 2)[eye].sum() + (1.9 * (c + 0.4) ** 2)[~eye].sum()
    ra, rb = torch.autograd.grad(ref, (a64, b64))
    assert_close(loss.cpu(), ref.cpu(), tol=FLOORS[torch.float32], what="loss")
    assert_close(ga.cpu(), ra.cpu(), tol=FLOORS[torch.float32], what="dA")
    assert_close(gb.cpu(), rb.cpu(), tol=FLOORS[torch.float32], what="dB")


def test_custom_ops_pass_opcheck(kernel_device):
    a, b = torch.randn(24, 10, device=kernel_device), torch.randn(24, 10, device=kernel_device)
    torch.library.opcheck(_cov_loss_op, (a, b, 0.1, 1.0, 1.0, 0.02, 0.0),
                          test_utils=("test_schema", "test_faketensor"))
    g = torch.randn(10, 10, device=kernel_device)
    torch.library.opcheck(_cov_loss_bwd_op, (a, b, g, torch.tensor(1.5, device=kernel_device), 0.1),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_the_kernel(kernel_device):
    za, zb = torch.randn(16, 12, device=kernel_device), torch.randn(16, 12, device=kernel_device)
    fn = torch.compile(lambda a, b: kernels.barlow_twins_loss(a, b, backend="triton", check_finite=False),
                       backend="aot_eager", fullgraph=True)
    assert_close(fn(za, zb).cpu(), kernels.barlow_twins_loss(za, zb, backend="torch").cpu(),
                 tol=FLOORS[torch.float32], what="compiled")


def test_verify_catches_a_wrong_kernel(monkeypatch, kernel_device):
    """The verification is not vacuous: a kernel whose gradient is 50% off fails it (its value still passes)."""
    from fusedssl.kernels import _backend

    good = _backend._REGISTRY["vicreg_covariance"]["triton"]

    class _Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return 1.5 * g

    monkeypatch.setitem(_backend._REGISTRY["vicreg_covariance"], "triton", lambda z: good(_Scaled.apply(z)))
    case = next(c for c in verify.CASES if c.name == "vicreg_covariance")
    rows = verify.check(case, "triton", 64, 16, torch.float32, "contiguous", torch.Generator().manual_seed(0),
                        kernel_device)
    assert [r.ok for r in rows] == [True, False]


def test_triton_views_of_different_dtypes_meet_in_fp32(kernel_device):
    """tl.dot needs one operand dtype: mixed views are computed in fp32 (value and gradients), and the kernel op
    itself refuses mixed operands with a message naming both dtypes (the interpreter would silently upcast)."""
    za = torch.randn(20, 12, device=kernel_device, dtype=torch.bfloat16, requires_grad=True)
    zb = torch.randn(20, 12, device=kernel_device, dtype=torch.float32, requires_grad=True)
    got = kernels.barlow_twins_loss(za, zb, backend="triton")
    gga, ggb = torch.autograd.grad(got, (za, zb))
    ra, rb = za.detach().double().requires_grad_(), zb.detach().double().requires_grad_()
    ref = kernels.barlow_twins_loss(ra, rb, backend="torch")
    assert_close(got.cpu(), ref.detach().cpu(), tol=FLOORS[torch.bfloat16], what="mixed value")  # za normalised in bf16
    for g, r in zip((gga, ggb), torch.autograd.grad(ref, (ra, rb)), strict=True):
        assert_close(g.cpu(), r.cpu(), tol=FLOORS[torch.bfloat16], what="mixed grad")
    with pytest.raises(TypeError, match=r"a is torch.bfloat16 but b is torch.float32"):
        cov_loss(za.detach(), zb.detach(), scale=1.0, w_diag=1.0, t_diag=1.0, w_off=0.1, t_off=0.0)


def test_split_k_forward_equals_the_single_program_forward(kernel_device):
    """A small D x D side with a long K (FroSSL's N x N side) splits K over programs and adds the partial tiles in a
    fixed order; loss and G equal the unsplit forward, including a split that leaves the last part short."""
    from fusedssl.kernels._gram import cov_loss_fwd

    a = torch.randn(150, 20, device=kernel_device)
    b = torch.randn(150, 20, device=kernel_device)
    ref_loss, ref_g = cov_loss_fwd(a, b, 0.1, 1.0, 1.0, 0.02, -0.5, split=1)
    for split in (2, 3):
        loss, g = cov_loss_fwd(a, b, 0.1, 1.0, 1.0, 0.02, -0.5, split=split)
        assert_close(loss.cpu(), ref_loss.cpu(), tol=FLOORS[torch.float32], what=f"loss, split {split}")
        assert_close(g.cpu(), ref_g.cpu(), tol=FLOORS[torch.float32], what=f"G, split {split}")


# ---------------------------------------------------------------------------------------------- the N x N (Gram) side

from fusedssl.kernels._gram import GRAM_NONE, gram_loss, gram_loss_fwd  # noqa: E402
from fusedssl.kernels.normalize import MODE_ID, col_normalize_ref  # noqa: E402

GRAM_MODES = ["none", "bn", "center", "std", "l2", "std_l2"]
GRAM_EPS = {"bn": 1e-5, "l2": 1e-12, "std_l2": 1e-12}


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "column-major":
        return x.T.contiguous().T
    if layout == "strided":
        return torch.cat([x, torch.zeros_like(x)], dim=1)[:, : x.shape[1]]  # row stride 2D, column stride 1
    return x


def _gram_dense_ref(a, b, mode, scale, w_diag, t_diag, w_off, t_off):
    """The covariance loss in float64 on the D x D side, normalised by the reference op: what gram_loss must equal."""
    norm = (lambda z: z) if mode == "none" else (lambda z: col_normalize_ref(z, mode, GRAM_EPS.get(mode, 0.0)))
    c = scale * norm(a).T @ norm(b)
    eye = torch.eye(c.shape[0], dtype=torch.bool, device=c.device)
    return (w_diag * (c - t_diag) ** 2)[eye].sum() + (w_off * (c - t_off) ** 2)[~eye].sum()


def _check_gram(n, d, mode, auto, t_off, device, layout="contiguous", dtype=torch.float32):
    kw = dict(scale=0.7 / n, w_diag=0.9, t_diag=0.4, w_off=1.3, t_off=t_off)
    a = _layout(torch.randn(n, d, device=device) + 0.5, layout).to(dtype).requires_grad_()
    b = a if auto else _layout(torch.randn(n, d, device=device), layout).to(dtype).requires_grad_()
    loss = gram_loss(a, b, mode=MODE_ID[mode] if mode != "none" else GRAM_NONE, eps=GRAM_EPS.get(mode, 0.0), **kw)
    grads = torch.autograd.grad(loss, (a,) if auto else (a, b))
    a64 = a.detach().double().requires_grad_()
    b64 = a64 if auto else b.detach().double().requires_grad_()
    ref = _gram_dense_ref(a64, b64, mode, **kw)
    refs = torch.autograd.grad(ref, (a64,) if auto else (a64, b64))
    tol = FLOORS[dtype]
    what = f"{n}x{d} {mode} {'auto' if auto else 'cross'} t_off={t_off} {layout} {dtype}"
    assert_close(loss.cpu(), ref.cpu(), tol=tol, what=f"loss, {what}")
    for g, r, name in zip(grads, refs, "ab", strict=False):
        assert g.dtype == dtype and g.shape == (n, d)
        assert_close(g.cpu(), r.cpu(), tol=tol, what=f"d{name}, {what}")


@pytest.mark.parametrize("mode", GRAM_MODES)
@pytest.mark.parametrize("auto", [False, True], ids=["cross", "auto"])
def test_gram_loss_every_normalisation_against_dense_formula(mode, auto, kernel_device):
    """The N x N side with the normalisation applied on load equals the float64 D x D formula, forward and backward,
    with a non-zero off-diagonal target (the row-sum terms) and two row tiles (one off-diagonal tile)."""
    _check_gram(70, 90, mode, auto, -0.4, kernel_device)


@pytest.mark.parametrize("n,d", [(2, 7), (5, 13), (33, 50), (130, 200)])
@pytest.mark.parametrize("t_off", [0.0, 0.6])
def test_gram_loss_shapes_against_dense_formula(n, d, t_off, kernel_device):
    """N = 2 up to three row tiles (three diagonal and three mirrored off-diagonal tiles), both target branches."""
    _check_gram(n, d, "bn", False, t_off, kernel_device)


@pytest.mark.parametrize("layout", ["column-major", "strided"])
def test_gram_loss_reads_any_strides(layout, kernel_device):
    _check_gram(24, 40, "bn", False, 0.0, kernel_device, layout)
    _check_gram(24, 40, "center", True, 0.0, kernel_device, layout)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gram_loss_half_precision(dtype, kernel_device):
    """Half-precision operands (tensor cores on a GPU), fp32 accumulation: within the dtype's floor of float64 on the
    same rounded inputs."""
    _check_gram(40, 72, "bn", False, 0.0, kernel_device, dtype=dtype)
    _check_gram(40, 72, "none", True, 0.0, kernel_device, dtype=dtype)


@pytest.mark.parametrize("auto", [False, True], ids=["cross", "auto"])
def test_gram_split_k_equals_the_single_program_forward(auto, kernel_device):
    """K = D split over programs, partial tiles (packed, one Gram's in auto mode) added in a fixed order: loss, the
    Grams, h and the row sums equal the unsplit forward, including a split that leaves the last part short and
    a last row tile that N does not fill."""
    a = torch.randn(130, 200, device=kernel_device)
    b = a if auto else torch.randn(130, 200, device=kernel_device)
    args = (a, b, MODE_ID["bn"], 1e-5, 1 / 130, 1.0, 1.0, 0.02, -0.5)
    ref = gram_loss_fwd(*args, split=1)
    for split in (2, 3):
        got = gram_loss_fwd(*args, split=split)
        for i, (g, r) in enumerate(zip(got[:5], ref[:5], strict=True)):
            assert g.shape == r.shape, f"output {i}, split {split}: shape {tuple(g.shape)} != {tuple(r.shape)}"
            if r.numel():  # auto mode: no second Gram
                assert_close(g.cpu(), r.cpu(), tol=FLOORS[torch.float32], what=f"output {i}, split {split}")


@pytest.mark.parametrize("n,d", [(8, 24), (24, 8)], ids=["gram side", "covariance side"])
def test_providers_take_the_cheaper_side_and_agree(n, d, kernel_device, monkeypatch):
    """Each covariance-family Triton provider runs the Gram kernels when N < D and the D x D kernels otherwise, and
    both equal the torch reference in value and gradient."""
    from fusedssl.kernels import _gram as gram_mod

    ran = []
    for name in ("gram_loss_fwd", "cov_loss_fwd"):
        real = getattr(gram_mod, name)
        monkeypatch.setattr(gram_mod, name, lambda *a, _real=real, _name=name, **k: ran.append(_name) or _real(*a, **k))
    za = torch.randn(n, d, device=kernel_device, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(n, d, device=kernel_device, dtype=torch.float64, requires_grad=True)
    ops = [("barlow_twins_loss", lambda a, b, be: kernels.barlow_twins_loss(a.float(), b.float(), backend=be)),
           ("hsic", lambda a, b, be: kernels.barlow_twins_loss(a.float(), b.float(), lam=0.1, normalize="tsai",
                                                              off_diagonal_target=-1.0, backend=be)),
           ("vicreg_covariance", lambda a, b, be: kernels.vicreg_covariance(a.float(), backend=be)),
           ("frossl_loss", lambda a, b, be: kernels.frossl_loss([a.float(), b.float()], backend=be))]
    for name, fn in ops:
        ran.clear()
        got = fn(za, zb, "triton")
        assert ran and set(ran) == {"gram_loss_fwd" if n < d else "cov_loss_fwd"}, (name, ran)
        ref = fn(za, zb, "torch")
        assert_close(got.cpu(), ref.cpu(), tol=FLOORS[torch.float32], what=f"{name} value")
        for g, r in zip(torch.autograd.grad(got, (za, zb), allow_unused=True),
                        torch.autograd.grad(ref, (za, zb), allow_unused=True), strict=True):
            if r is not None:
                assert_close(g.cpu(), r.cpu(), tol=FLOORS[torch.float32], what=f"{name} grad")


def test_torch_compile_traces_the_gram_kernels(kernel_device):
    za, zb = torch.randn(8, 24, device=kernel_device), torch.randn(8, 24, device=kernel_device)
    for fn in (lambda a, b: kernels.barlow_twins_loss(a, b, backend="triton", check_finite=False),
               lambda a, b: kernels.vicreg_covariance(a, backend="triton", check_finite=False)):
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        a, b = za.clone().requires_grad_(), zb.clone().requires_grad_()
        got = compiled(a, b)
        ga = torch.autograd.grad(got, a)[0]
        ra, rb = za.clone().requires_grad_(), zb.clone().requires_grad_()
        ref = fn(ra, rb)
        assert_close(got.cpu(), ref.detach().cpu(), tol=FLOORS[torch.float32], what="compiled")
        assert_close(ga.cpu(), torch.autograd.grad(ref, ra)[0].cpu(), tol=FLOORS[torch.float32], what="compiled grad")


@pytest.mark.parametrize("d", [1, 3, 4, 8, 33, 64, 260])
@pytest.mark.parametrize("aligned", [True, False])
def test_cuda_covariance_epilogue_row_function_against_float64(d, aligned):
    """csrc/covariance.cu's epilogue (C -> G = 2w(C - t) in place, L = sum w (C - t)^2), its row function run on the
    host by the extension: float4 rows where d % 4 == 0 and the base is 16-byte aligned, scalar rows otherwise (an
    offset base), the diagonal found from the row index, the unrolled tail, non-zero targets."""
    from fusedssl.kernels import _cuda

    if _cuda.ext() is None:  # CI builds it and tests/test_cuda_build.py fails if it did not
        pytest.skip(f"the extension is not built: {_cuda._IMPORT_ERROR}")
    c64 = randn(d, d)
    buf = torch.zeros(d * d + 1, dtype=torch.float32)
    c = (buf[:-1] if aligned else buf[1:]).view(d, d)  # buf[1:] starts 4 bytes past a 16-byte boundary
    c.copy_(c64)
    w_diag, t_diag, w_off, t_off = 1.0, 0.5, 0.0051, -0.25
    loss = _cuda.ext().cov_loss_epilogue_(c, w_diag, t_diag, w_off, t_off)
    eye = torch.eye(d, dtype=torch.bool)
    e = c64.float().double() - torch.where(eye, t_diag, t_off).double()
    w = torch.where(eye, w_diag, w_off).double()
    assert_close(c, 2 * w * e, tol=FLOORS[torch.float32], what="G")
    assert_close(loss, (w * e * e).sum(), tol=FLOORS[torch.float32], what="loss")
