"""`fusedssl verify`: the CLI runs the three-way checks, prints the table and exits non-zero on a failure."""

import pytest
import torch
from fusedssl import kernels
from fusedssl.bench import verify
from fusedssl.engine import cli


def test_cli_runs_and_passes(capsys):
    assert cli.main(["verify", "--op", "vicreg_covariance", "--dtype", "float32", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "vicreg_covariance" in out and "seed 7" in out
    assert "20 checks, 20 passed, 0 failed" in out  # 5 shapes x 2 layouts x (value + 1 gradient)
    assert "skipped  vicreg_covariance: backend='cuda' cannot run vicreg_covariance" in out


def test_cli_exit_code_on_failure(monkeypatch, capsys):
    from fusedssl.kernels import _backend

    good = _backend._REGISTRY["barlow_twins_loss"]["triton"]
    monkeypatch.setitem(_backend._REGISTRY["barlow_twins_loss"], "triton", lambda *a: 1.1 * good(*a))
    assert cli.main(["verify", "--op", "barlow_twins_loss", "--dtype", "float32", "--seed", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_rejects_unknown_op():
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--op", "no_such_loss"])
    assert e.value.code == 2


def test_every_registered_kernel_has_a_verify_case():
    for op in ("barlow_twins_loss", "vicreg_covariance", "vicreg_loss", "frossl_loss", "matrix_ssl_loss",
               "nt_xent_loss", "byol_loss", "simsiam_loss"):
        assert any(c.op == op for c in verify.CASES), op
    kernel_ops = {op for op in kernels._backend._REGISTRY if set(kernels.available(op)) - {"torch"}}
    # check_predictor and check_photometric verify the two ops that have no Case row
    covered = {c.op for c in verify.CASES} | set(verify.OPTIM_CASES) | {"predictor_weight", "photometric_augment"}
    assert kernel_ops <= covered, kernel_ops - covered
    assert torch.float32 in verify.FLOORS


def test_cuda_kernels_are_covered_and_skipped_with_the_reason_here(capsys):
    """verify lists the CUDA C++ kernels; without a GPU (or without the built extension) it skips them, saying why."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the cuda rows run (tests/test_lars.py and verify itself check them)")
    assert cli.main(["verify", "--op", "row_normalize", "--op", "lars_step_", "--op", "ema_", "--backend", "cuda",
                     "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for op in ("row_normalize", "lars_step_", "ema_"):
        assert f"skipped  {op}: backend='cuda' cannot run {op}: " in out
    assert ("need CUDA tensors" in out) or ("is unavailable" in out and "build-requirements.txt" in out)


def test_a_torch_reference_that_overflows_holds_the_kernel_to_the_floor(monkeypatch):
    """BatchNorm at N = 2 with a near-constant column: torch's fp16 backward overflows (inf * 0 = NaN), so the
    three-way rule's bound was NaN and a correct kernel failed; the kernel must be held to the floor instead."""
    case = next(c for c in verify.CASES if c.name == "col_normalize[bn]")
    base = torch.tensor([[0.3, -1.2, 0.7], [0.3 + 1e-4, 0.8, -0.5]], dtype=torch.float64)
    monkeypatch.setattr(verify, "_inputs", lambda *a: [base])
    lp = verify._run(case, "torch", [base.half()], torch.tensor(1.0, dtype=torch.float64))
    assert not torch.isfinite(lp[1]).all()  # the premise: torch's own fp16 gradient is not finite here
    rows = verify.check(case, "torch", 2, 3, torch.float16, "contiguous", torch.Generator().manual_seed(0),
                        torch.device("cpu"))
    assert all(r.tol == r.tol for r in rows), rows  # a bound, never NaN
    grad = next(r for r in rows if r.quantity == "grad[0]")
    assert grad.tol == verify.FLOORS[torch.float16] and not grad.ok  # torch's own NaN gradient is no pass either
