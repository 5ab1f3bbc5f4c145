"""DirectPred / DirectCopy predictor setting (methods.md §6.2)."""

import pytest
import torch
from conftest import EIGH_FP32, assert_close, randn
from fusedssl import kernels
from fusedssl.bench import originals, verify
from fusedssl.kernels import directpred


def test_correlation_ema():
    f1, f2 = randn(10, 4), randn(10, 4)
    c1 = kernels.correlation_ema(f1, None, rho=0.3)
    assert_close(c1, f1.T @ f1 / 10, what="first step = B_f")
    c2 = kernels.correlation_ema(f2, c1, rho=0.3)
    assert_close(c2, 0.3 * c1 + 0.7 * f2.T @ f2 / 10, what="EMA")


def test_directpred_weight_equals_reference_code():
    f = randn(50, 6)
    corr = f.T @ f / 50
    for eps, convert in ((0.01, 2.0), (0.1, 1.0), (0.0, 3.0)):
        w = kernels.predictor_weight(corr, eps=eps, convert=convert)
        assert_close(w, originals.directpred_weight(corr, eps=eps, convert=convert), what="W_p")


def test_batched_eigh_candidate_gives_the_reference_weight():
    """bench directpred's eager-batched provider (eigh of a batch of one, then the same spectral map) sets the W_p of
    the reference, so its timing compares like with like."""
    f = randn(40, 12)
    corr = f.T @ f / 40
    s, u = torch.linalg.eigh(corr[None])
    assert_close(directpred.spectral_map(s[0], u[0], 0.05, 2.0), kernels.predictor_weight(corr, eps=0.05),
                 what="W_p")


def test_directpred_spectrum():
    """W_p shares F^'s eigenvectors; its eigenvalues are sqrt(s/max s) + eps (clamped at 1e-4)."""
    q, _ = torch.linalg.qr(randn(4, 4))
    s = torch.tensor([4.0, 1.0, 0.25, -0.5], dtype=torch.float64)
    corr = q @ torch.diag(s) @ q.T
    w = kernels.predictor_weight(corr, eps=0.01)
    got = torch.linalg.eigvalsh(w).sort().values
    expected = torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64) + 0.01
    assert_close(got, expected.sort().values, what="spectrum")


def test_directcopy_and_zero_correlation():
    corr = randn(3, 3)
    corr = corr @ corr.T
    expected = corr + 0.05 * torch.eye(3, dtype=corr.dtype)
    assert_close(kernels.predictor_weight(corr, mode="directcopy", eps=0.05), expected)
    w = kernels.predictor_weight(torch.zeros(3, 3, dtype=torch.float64), eps=0.01)
    assert torch.isfinite(w).all()
    assert_close(w, 0.01 * torch.eye(3, dtype=torch.float64), what="all-zero F^ gives eps I")


def test_basis_argument_and_return():
    corr = randn(5, 5)
    corr = corr @ corr.T
    w, u = kernels.predictor_weight(corr, return_basis=True)
    assert_close(w, kernels.predictor_weight(corr), what="W_p with return_basis")
    assert_close(u.T @ corr @ u, torch.diag(torch.linalg.eigvalsh(corr)), tol=1e-9, what="basis diagonalises F^")
    assert kernels.predictor_weight(corr, mode="directcopy", return_basis=True)[1] is None
    with pytest.raises(ValueError, match=r"basis must be \(5, 5\)"):
        kernels.predictor_weight(corr, basis=torch.eye(4, dtype=corr.dtype))


# ---- backend "cuda" (csrc/directpred.cu). The extension runs the same Jacobi schedule on CPU tensors (serially, with
# the kernel's own phase functions), so the kernel's arithmetic and the provider's Python side are checked here
# against float64 eigh without a GPU; the GPU run of the kernel itself is `fusedssl verify` / the gpu test below.


def _ext():
    from fusedssl.kernels import _cuda

    if _cuda.ext() is None:  # CI builds it (FUSEDSSL_BUILD_CUDA=1) and test_cuda_build fails if it did not
        pytest.skip(f"the extension is not built: {_cuda._IMPORT_ERROR}")
    return _cuda.ext()


def _psd(n, rank, rows=None):
    rows = rows or 4 * n
    f = randn(rows, rank) @ randn(rank, n)
    return f.T @ f / rows


def _spectral(s, eps=0.01):
    return ((s.clamp_min(0) / s.max().clamp_min(torch.finfo(s.dtype).tiny)).sqrt() + eps).clamp_min(1e-4)


@pytest.mark.parametrize("n,rank,blocks", [(2, 2, 1), (8, 8, 1), (64, 64, 1), (64, 3, 1), (128, 128, 1),
                                           (256, 256, 1), (2, 2, 4), (8, 8, 4), (64, 3, 4), (130, 130, 4)])
def test_jacobi_schedule_against_float64_eigh(n, rank, blocks):
    """blocks > 1: the multi-block kernel's data flow (two copies of the packed matrix, every block rotated or copied
    from one into the other each round)."""
    f = _psd(n, rank)
    s, v, p, info = _ext().jacobi_eigh(f.float(), torch.eye(n), 30, directpred.JACOBI_TOL, 0.01, 2.0, blocks)
    assert info.tolist()[1] == 1, f"not converged in 30 sweeps: {info.tolist()}"
    s, v = s.double(), v.double()
    scale = float(f.abs().max())
    assert_close(s.sort().values / scale, torch.linalg.eigvalsh(f) / scale, tol=EIGH_FP32["eigenvalues"],
                 what="eigenvalues")
    assert_close((f @ v - v * s) / scale, torch.zeros_like(f), tol=EIGH_FP32["residual"],
                 what="residual F V - V diag(s)")
    assert_close(v.T @ v, torch.eye(n, dtype=torch.float64), tol=EIGH_FP32["orthogonality"], what="V'V")
    assert_close(p, _spectral(s), tol=EIGH_FP32["spectral map"], what="spectral map")


@pytest.mark.parametrize("n,rank", [(6, 6), (48, 48), (96, 7)])
def test_jacobi_multi_block_data_flow_gives_the_one_block_result_exactly(n, rank):
    """Both kernels apply the same rotations in the same arithmetic; the multi-block one reads each round from one
    copy of the packed matrix and writes every 2x2 block, identity blocks copied, into the other. An entry that no
    block wrote (or wrote twice) would leave a stale value behind and change the result. Warm start included."""
    ext = _ext()
    f = _psd(n, rank).float()
    q, _ = torch.linalg.qr(randn(n, n))
    for a, v0 in ((f, torch.eye(n)), ((q.T @ f.double() @ q).float(), q.float())):
        one = ext.jacobi_eigh(a, v0, 30, 1e-5, 0.01, 2.0, 1)
        multi = ext.jacobi_eigh(a, v0, 30, 1e-5, 0.01, 2.0, 64)
        assert one[3][0] >= 2 and one[3][1] == 1, one[3]
        for x, y, what in zip(one, multi, ("s", "v", "p", "info"), strict=True):
            assert torch.equal(x, y), what


def test_jacobi_degenerate_and_zero_spectra():
    ext = _ext()
    s, v, p, info = ext.jacobi_eigh(torch.eye(6), torch.eye(6), 30, 1e-5, 0.01, 2.0)
    assert info.tolist() == [0, 1] and torch.equal(v, torch.eye(6)) and torch.equal(s, torch.ones(6))
    s, v, p, info = ext.jacobi_eigh(torch.zeros(4, 4), torch.eye(4), 30, 1e-5, 0.05, 2.0)
    assert info.tolist() == [0, 1] and torch.equal(p, torch.full((4,), 0.05))
    q, _ = torch.linalg.qr(randn(8, 8))
    f = q @ torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.5, 0.5, 0.0, 0.0, -0.25], dtype=torch.float64)) @ q.T
    s, v, p, info = ext.jacobi_eigh(f.float(), torch.eye(8), 30, 1e-5, 0.01, 2.0)
    w = (v.double() * p.double()) @ v.double().T
    assert info.tolist()[1] == 1
    # verify's rule and floor: rounding F^ to fp32 alone moves a null eigenvalue by ~1e-7, hence its p by ~2e-4
    ref = kernels.predictor_weight(f, eps=0.01)
    err_torch = float((kernels.predictor_weight(f.float(), eps=0.01).double() - ref).abs().max())
    assert_close(w, ref, tol=2 * err_torch + verify.predictor_floor(f), what="W_p of a repeated/negative spectrum")


def test_jacobi_warm_start_needs_fewer_sweeps():
    """Training-like F^: an EMA of batch correlations of one feature distribution. Started from the previous
    eigenvectors, the next solve needs fewer sweeps than from the identity, and gives the same W_p."""
    ext = _ext()
    mix = randn(24, 64)

    def batch():
        f = randn(256, 24) @ mix
        return f.T @ f / 256

    f1 = batch()
    _, u, _, _ = ext.jacobi_eigh(f1.float(), torch.eye(64), 30, 1e-5, 0.01, 2.0)
    f2 = 0.3 * f1 + 0.7 * batch()
    cold = ext.jacobi_eigh(f2.float(), torch.eye(64), 30, 1e-5, 0.01, 2.0)
    u0 = u.double()
    warm = ext.jacobi_eigh((u0.T @ f2 @ u0).float(), u, 30, 1e-5, 0.01, 2.0)
    assert cold[3][1] == 1 and warm[3][1] == 1
    assert warm[3][0] < cold[3][0], (warm[3].tolist(), cold[3].tolist())
    for _s, v, p, _ in (cold, warm):
        assert_close((v.double() * p.double()) @ v.double().T, kernels.predictor_weight(f2, eps=0.01), tol=1e-4,
                     what="W_p")


@pytest.mark.parametrize("solver", [None, *directpred.SOLVERS])
@pytest.mark.parametrize("d,rank", [(7, 7), (33, 4), (64, 64)])
def test_cuda_provider_on_cpu(monkeypatch, d, rank, solver):
    """The "cuda" provider (padding of odd D, U0' F U0, Newton-Schulz re-orthonormalisation, reconstruction) through
    verify's own check, cold and warm, by each Jacobi kernel, with the extension's host schedule standing in for the
    GPU."""
    from fusedssl.kernels import _cuda

    _ext()
    monkeypatch.setattr(_cuda, "why_unavailable", lambda device: None)
    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    rows = verify.check_predictor("cuda", d, rank, gen, torch.device("cpu"), solver)
    assert [r.layout for r in rows] == ["cold", "warm"]
    assert {r.backend for r in rows} == {"cuda" if solver is None else f"cuda[{solver}]"}
    for row in rows:
        assert row.ok, row


def test_jacobi_argument_errors():
    ext = _ext()
    with pytest.raises(RuntimeError, match=r"a: expected an even size n in \[2, 512\]"):
        ext.jacobi_eigh(torch.eye(5), torch.eye(5), 30, 1e-5, 0.01, 2.0)
    with pytest.raises(RuntimeError, match=r"a: expected an even size n in \[2, 512\]"):
        ext.jacobi_eigh(torch.eye(514), torch.eye(514), 30, 1e-5, 0.01, 2.0)
    with pytest.raises(RuntimeError, match="a: expected contiguous float32, got Double"):
        ext.jacobi_eigh(torch.eye(4, dtype=torch.float64), torch.eye(4), 30, 1e-5, 0.01, 2.0)
    with pytest.raises(RuntimeError, match="v0: expected the shape of a"):
        ext.jacobi_eigh(torch.eye(4), torch.eye(6), 30, 1e-5, 0.01, 2.0)
    with pytest.raises(RuntimeError, match="max_sweeps: expected 1..100, got 0"):
        ext.jacobi_eigh(torch.eye(4), torch.eye(4), 0, 1e-5, 0.01, 2.0)
    with pytest.raises(RuntimeError, match=r"blocks: expected 0 or 1 \(one block\) or > 1"):
        ext.jacobi_eigh(torch.eye(4), torch.eye(4), 30, 1e-5, 0.01, 2.0, -2)
    with pytest.raises(ValueError, match="solver='two-block' is not one of"):
        directpred.jacobi_solve(torch.eye(4), None, solver="two-block")


@pytest.mark.gpu
@pytest.mark.parametrize("d", [150, 156])
def test_cuda_predictor_at_the_dynamic_shared_memory_threshold_in_a_fresh_process(d):
    """D = 149..156 needs 44.9-49 KB of dynamic shared memory, just over the default 48 KB minus the kernel's static
    4.2 KB: the opt-in must be set for these sizes too, and first (a fresh process: no larger size set it before)."""
    import subprocess
    import sys

    code = (f"import torch; from fusedssl import kernels; f = torch.randn(512, {d}, device='cuda'); "
            f"c = f.T @ f / 512; w = kernels.predictor_weight(c, backend='cuda'); r = kernels.predictor_weight("
            f"c.double(), backend='torch'); print(float((w.double() - r).abs().max()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert float(out.stdout.split()[-1]) < 1e-2, out.stdout


@pytest.mark.gpu
def test_cuda_predictor_on_gpu_matches_reference_and_never_syncs():
    gen = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    for solver in directpred.SOLVERS:
        for d, rank in verify.PREDICTOR_FULL_SHAPES:
            for row in verify.check_predictor("cuda", d, rank, gen, torch.device("cuda"), solver):
                assert row.ok, row
    corr = _psd(256, 256).float().cuda()
    for solver in directpred.SOLVERS:
        w, u = directpred.predictor_weight_cuda(corr, basis=None, solver=solver)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host synchronisation in the update raises
        try:
            directpred.predictor_weight_cuda(corr, basis=u, solver=solver)
            kernels.predictor_weight(corr, basis=u, return_basis=True, backend="cuda", check_finite=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8, 338, 512])
def test_multi_block_kernel_matches_one_block_on_gpu(n):
    """The same rotations on the device: eigenvalues and W_p of both kernels agree (the floor's sum order differs)."""
    ext = _ext()
    f = _psd(n, n).float().cuda()
    eye = torch.eye(n, device="cuda")
    one = ext.jacobi_eigh(f, eye, 30, directpred.JACOBI_TOL, 0.01, 2.0, 1)
    multi = ext.jacobi_eigh(f, eye, 30, directpred.JACOBI_TOL, 0.01, 2.0, 1 << 20)
    assert one[3].tolist()[1] == multi[3].tolist()[1] == 1
    ref = torch.linalg.eigvalsh(f.double().cpu())
    for s, *_ in (one, multi):
        assert_close(s.double().cpu().sort().values / ref.abs().max(), ref / ref.abs().max(),
                     tol=EIGH_FP32["eigenvalues"], what="eigenvalues")
    w1, w2 = ((v.double() * p.double()) @ v.double().T for _, v, p, _ in (one, multi))
    assert_close(w2.cpu(), w1.cpu(), tol=1e-3, what="W_p multi-block vs one-block")


def _directpred_method():
    from types import SimpleNamespace

    from fusedssl.engine import methods

    params = SimpleNamespace(rho=0.3, freq=1, eps=0.01, convert=2.0)
    model = SimpleNamespace(predictor=[torch.nn.Linear(6, 6, bias=False)])
    cls = methods.METHODS["directpred"]
    return cls(params, {op: "torch" for op in cls.ops}), model


def _outputs(scale=1.0):
    from fusedssl.engine.methods import Outputs

    z = [scale * torch.randn(8, 6) for _ in range(2)]
    return Outputs(z=z, p=[torch.randn(8, 6) for _ in range(2)], t=[torch.randn(8, 6) for _ in range(2)])


def test_directpred_state_of_a_dropped_step_is_forgotten():
    """The skip policy drops a non-finite step after its forward ran: its F^ update must not survive."""
    method, model = _directpred_method()
    method(_outputs())
    method.after_step(model, 0)
    good = method.corr.clone()
    method(_outputs(float("nan")))
    method.drop_step()
    method(_outputs())
    method.after_step(model, 1)
    assert torch.isfinite(method.corr).all() and torch.isfinite(model.predictor[0].weight).all()
    assert not torch.equal(method.corr, good)


def test_directpred_state_is_restored_onto_the_run_device():
    """Checkpoints load onto the CPU; F^ and the basis must land on the run's device (meta stands in for a GPU)."""
    method, model = _directpred_method()
    method(_outputs())
    method.after_step(model, 0)
    state = method.state_dict()
    restored, _ = _directpred_method()
    restored.load_state_dict(state, torch.device("meta"))
    assert restored.corr.device.type == "meta" and restored.basis.device.type == "meta"
