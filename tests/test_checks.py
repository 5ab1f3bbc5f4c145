"""Bad input gets a clear TypeError/ValueError naming the argument, never a silent wrong number."""

import subprocess
import sys

import pytest
import torch
from fusedssl import kernels


def _z(n=8, d=4, dtype=torch.float32):
    return torch.randn(n, d, dtype=dtype)


PAIR_OPS = [
    lambda a, b, **kw: kernels.barlow_twins_loss(a, b, **kw),
    lambda a, b, **kw: kernels.vicreg_loss(a, b, **kw),
    lambda a, b, **kw: kernels.frossl_loss([a, b], **kw),
    lambda a, b, **kw: kernels.matrix_ssl_loss(a, b, a, b, **kw),
    lambda a, b, **kw: kernels.kernel_ssl_loss(a, b, b, a, **kw),
    lambda a, b, **kw: kernels.nt_xent_loss(a, b, **kw),
    lambda a, b, **kw: kernels.byol_loss(a, b, a, b, **kw),
    lambda a, b, **kw: kernels.simsiam_loss(a, b, b, a, **kw),
]


@pytest.mark.parametrize("op", PAIR_OPS)
def test_mismatched_views(op):
    with pytest.raises(ValueError, match=r"shape"):
        op(_z(8, 4), _z(8, 5))


@pytest.mark.parametrize("op", PAIR_OPS)
def test_wrong_rank(op):
    with pytest.raises(ValueError, match=r"2-D"):
        op(torch.randn(8), torch.randn(8))


@pytest.mark.parametrize("op", PAIR_OPS)
def test_non_finite(op):
    a = _z()
    a[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite"):
        op(a, _z(), check_finite=True)
    a[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite"):
        op(_z(), a, check_finite=True)


@pytest.mark.parametrize("op", PAIR_OPS[:6])
def test_single_sample(op):
    with pytest.raises(ValueError, match=r"N=1|at least 2"):
        op(_z(1, 4), _z(1, 4))


@pytest.mark.parametrize("op", PAIR_OPS)
def test_unsupported_dtype(op):
    with pytest.raises(TypeError, match=r"dtype"):
        op(torch.ones(8, 4, dtype=torch.int64), torch.ones(8, 4, dtype=torch.int64))


@pytest.mark.parametrize("op", PAIR_OPS)
def test_not_a_tensor(op):
    with pytest.raises(TypeError, match=r"torch.Tensor"):
        op([[1.0, 2.0]], _z())


def test_argument_named_in_message():
    with pytest.raises(ValueError, match=r"^zb "):
        kernels.barlow_twins_loss(_z(), torch.full((8, 4), float("nan")), check_finite=True)
    with pytest.raises(ValueError, match=r"lam must be >= 0"):
        kernels.barlow_twins_loss(_z(), _z(), lam=-1.0)
    with pytest.raises(ValueError, match=r"normalize='batch'"):
        kernels.barlow_twins_loss(_z(), _z(), normalize="batch")
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        kernels.nt_xent_loss(_z(), _z(), temperature=0.0)
    with pytest.raises(ValueError, match=r"mu must be > 0"):
        kernels.mce_uniformity(_z(), _z(), mu=0.0)
    with pytest.raises(ValueError, match=r"order must be a positive int"):
        kernels.matrix_ssl_loss(_z(), _z(), _z(), _z(), order=0)
    with pytest.raises(ValueError, match=r"legacy"):
        kernels.frossl_loss([_z(), _z(), _z()], variant="legacy")
    with pytest.raises(ValueError, match=r"views has 1 view"):
        kernels.frossl_loss([_z()])
    with pytest.raises(TypeError, match=r"views must be a list"):
        kernels.frossl_loss(_z())
    with pytest.raises(ValueError, match=r"corr must be square"):
        kernels.predictor_weight(_z())


def test_backend_errors():
    with pytest.raises(ValueError, match=r"backend='tpu'"):
        kernels.barlow_twins_loss(_z(), _z(), backend="tpu")
    with pytest.raises(kernels.BackendUnavailable, match=r"has no Triton kernel"):
        kernels.nt_xent_loss(_z(), _z(), backend="triton")
    with pytest.raises(kernels.BackendUnavailable, match=r"has no kernel for this op"):
        kernels.vicreg_loss(_z(), _z(), backend="cuda")
    # an op the extension has, on CPU tensors (or without the build): the reason and, unbuilt, how to build
    with pytest.raises(kernels.BackendUnavailable, match=r"need CUDA tensors|FUSEDSSL_BUILD_CUDA=1"):
        kernels.barlow_twins_loss(_z(), _z(), backend="cuda")
    assert kernels.available("barlow_twins_loss") == ["torch", "triton", "cuda"]
    assert kernels.available("nt_xent_loss") == ["torch"]


def test_triton_without_gpu_or_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(kernels.BackendUnavailable, match=r"need a CUDA device.*TRITON_INTERPRET=1"):
        kernels.barlow_twins_loss(_z(), _z(), backend="triton")


def test_auto_picks_only_what_the_gpu_record_measured_faster(monkeypatch):
    """auto on a GPU reads the committed preferences (kernels/preferences.json), per GPU model; an op or a GPU model
    without a measurement stays on torch, and so does every CPU tensor."""
    from fusedssl.kernels import _backend

    cuda = torch.device("cuda")
    assert _backend.resolve("barlow_twins_loss", "auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(_backend, "_PREFERENCE", {})
    assert _backend.resolve("barlow_twins_loss", "auto", cuda) == "torch"
    monkeypatch.setattr(_backend, "_PREFERENCE", {"nvidia h200": {"barlow_twins_loss": "triton"}})
    monkeypatch.setattr(_backend, "why_unavailable", lambda device: None)  # as if the GPU were here
    monkeypatch.setattr(_backend, "gpu_model", lambda device: "nvidia h200")
    assert _backend.resolve("barlow_twins_loss", "auto", cuda) == "triton"
    assert _backend.resolve("vicreg_covariance", "auto", cuda) == "torch"
    monkeypatch.setattr(_backend, "gpu_model", lambda device: "nvidia a100-sxm4-80gb")
    assert _backend.resolve("barlow_twins_loss", "auto", cuda) == "torch"


def test_resolve_all_gives_every_op_one_backend_and_names_what_cannot_run():
    ops = ("vicreg_invariance", "vicreg_variance", "vicreg_covariance", "lars_step_", "ema_")
    cpu = torch.device("cpu")
    assert set(kernels.resolve_all(ops, "torch", cpu).values()) == {"torch"}
    got = kernels.resolve_all(ops, "triton", cpu)  # the interpreter runs Triton on CPU tensors in the tests
    assert got == {"vicreg_invariance": "torch", "vicreg_variance": "torch", "vicreg_covariance": "triton",
                   "lars_step_": "torch", "ema_": "torch"}
    with pytest.raises(kernels.BackendUnavailable, match=r"backend='cuda' cannot run vicreg_covariance"):
        kernels.resolve_all(ops, "cuda", cpu)


def test_check_finite_is_off_unless_asked_for():
    """Off by default: the scan reads the tensor and, on a GPU, stalls the host on every call."""
    a = _z()
    a[0, 0] = float("nan")
    assert torch.isnan(kernels.barlow_twins_loss(a, _z()))
    assert torch.isnan(kernels.barlow_twins_loss(a, _z(), check_finite=False))


def test_triton_precision_follows_both_tf32_apis_without_raising():
    """torch raises on the legacy ``allow_tf32`` read once the newer ``fp32_precision`` API is used; the Triton
    wrappers' precision choice must read either API (fresh processes: the switches are global)."""
    code = ("import torch; from fusedssl.kernels import _triton as t; d = torch.device('cuda'); "
            "a = t.dot_precision(torch.float32, d); {set}; "
            "print(a, t.dot_precision(torch.float32, d), t.dot_precision(torch.bfloat16, d))")
    for setting in ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "torch.backends.fp32_precision = 'tf32'",
                    "torch.set_float32_matmul_precision('high')", "torch.backends.cuda.matmul.allow_tf32 = True"):
        out = subprocess.run([sys.executable, "-c", code.format(set=setting)], capture_output=True, text=True)
        assert out.returncode == 0, (setting, out.stderr[-2000:])
        assert out.stdout.split() == ["ieee", "tf32", "ieee"], (setting, out.stdout)
