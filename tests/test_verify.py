"""`fusedssl verify`: the CLI runs the three-way checks, prints the table and exits non-zero on a failure."""

import pytest
import torch
from fusedssl import kernels
from fusedssl.engine import cli
from fusedssl.kernels import verify


def test_cli_runs_and_passes(capsys):
    assert cli.main(["verify", "--op", "vicreg_covariance", "--dtype", "float32", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "vicreg_covariance" in out and "seed 7" in out
    assert "20 checks, 20 passed, 0 failed" in out  # 5 shapes x 2 layouts x (value + 1 gradient)
    assert "skipped  vicreg_covariance: no cuda kernel" in out


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
    assert kernel_ops <= {c.op for c in verify.CASES}, kernel_ops - {c.op for c in verify.CASES}
    assert torch.float32 in verify.FLOORS
