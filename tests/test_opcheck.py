"""Every fusedssl:: custom op passes torch.library.opcheck (schema, fake-tensor shapes and strides, autograd
registration, aot_autograd with dynamic shapes) on contiguous, transposed and strided inputs, in fp32 and bf16.

The fakes are what torch.compile traces with: a fake whose strides differ from the real op's output makes Inductor
read the wrong elements (or trip its stride asserts). The Triton ops run in the interpreter here; the "cuda" ops run
with the extension replaced by conftest.EmulatedExtension, which allocates its outputs as the real kernels do. A new
custom op without an entry in SAMPLES fails ``test_every_custom_op_has_samples``.
"""

import pytest
import torch
from conftest import EmulatedExtension
from fusedssl.kernels import _cuda, _gram, matrix_log, normalize

N, D = 10, 12
LAYOUTS = ("contiguous", "transposed", "strided")
DTYPES = (torch.float32, torch.bfloat16)


def _matrix(n: int, d: int, layout: str, dtype: torch.dtype, grad: bool = False) -> torch.Tensor:
    if layout == "transposed":  # an (n, d) view of a (d, n) tensor: strides (1, n)
        x = torch.randn(d, n).T
    elif layout == "strided":  # every other column of a wider tensor
        x = torch.randn(n, 2 * d)[:, ::2]
    else:
        x = torch.randn(n, d)
    x = x.to(dtype) if dtype != torch.float32 else x
    assert x.shape == (n, d)
    return x.requires_grad_(grad)


def _cov_loss(op):
    def samples(layout, dtype):
        yield op, (_matrix(N, D, layout, dtype, True), _matrix(N, D, layout, dtype, True), 0.1, 1.0, 1.0, 0.02, 0.0)
        z = _matrix(N, D, layout, dtype, True)  # the auto-covariance (a is b): the single-GEMM backward
        yield op, (z, z, 0.5, 0.0, 0.0, 0.1, 0.0)
    return samples


def _cov_loss_bwd(op):
    def samples(layout, dtype):
        g = torch.randn(D, D)
        a, b = _matrix(N, D, layout, dtype), _matrix(N, D, layout, dtype)
        yield op, (a, b, g, torch.tensor(1.5), 0.1)
        yield op, (a, a, g + g.T, torch.tensor(0.5), 0.1)
    return samples


def _col_norm(op):
    def samples(layout, dtype):
        for mode in range(5):
            for rows in (False, True):
                yield op, (_matrix(N, D, layout, dtype, True), mode, 1e-5, rows)
    return samples


def _col_norm_bwd(fwd, op):
    def samples(layout, dtype):
        for mode in range(5):
            for rows in (False, True):
                z = _matrix(N, D, layout, dtype)
                _, mean, r, beta = fwd(z, mode, 1e-5, rows)
                yield op, (_matrix(N, D, layout, dtype), z, mean, r, beta, mode != 3, rows)
    return samples


def _gram_loss(layout, dtype):
    for mode, t_off in ((_gram.GRAM_NONE, 0.0), (1, -0.5)):  # raw inputs; "bn" on load with the row-sum terms
        a, b = _matrix(N, D + 5, layout, dtype, True), _matrix(N, D + 5, layout, dtype, True)
        yield _gram._gram_loss_op, (a, b, mode, 1e-5, 0.1, 1.0, 1.0, 0.02, t_off, False)
    z = _matrix(N, D + 5, layout, dtype, True)  # the auto-covariance: one Gram, empty Gb and B statistics
    yield _gram._gram_loss_op, (z, z, 0, 0.0, 0.5, 0.0, 0.0, 0.1, 0.0, True)


def _gram_loss_bwd(layout, dtype):
    for op, args in _gram_loss(layout, dtype):
        a, b, mode, *_, t_off, auto = args
        saved = [t.detach() for t in op(*args)[1:]]
        yield _gram._gram_loss_bwd_op, (a.detach(), b.detach(), saved, torch.tensor(1.5), mode, 0.1, 0.02, t_off,
                                        auto)


def _mm_shift(layout, dtype):
    if dtype != torch.float32:  # the Matrix-SSL chain is fp32 by design; other dtypes are refused (tested below)
        return
    yield matrix_log._mm_shift_op, (_matrix(N, D, layout, dtype), _matrix(D, 7, layout, dtype), 0.5, 0.1)


def _mm_trace(layout, dtype):
    if dtype != torch.float32:
        return
    a, b = _matrix(N, D, layout, dtype, True), _matrix(D, 7, layout, dtype, True)
    yield matrix_log._mm_trace_op, (a, b, _matrix(N, 7, layout, dtype, True), 0.5, 0.1)
    yield matrix_log._mm_trace_op, (a, b, None, 0.5, 0.1)  # no E: <C, E> is 0


SAMPLES = {
    "cov_loss": _cov_loss(_gram._cov_loss_op),
    "cov_loss_bwd": _cov_loss_bwd(_gram._cov_loss_bwd_op),
    "cov_loss_cuda": _cov_loss(_gram._cov_loss_cuda_op),
    "cov_loss_bwd_cuda": _cov_loss_bwd(_gram._cov_loss_bwd_cuda_op),
    "col_norm": _col_norm(normalize._col_norm_op),
    "col_norm_bwd": _col_norm_bwd(normalize._col_norm_op, normalize._col_norm_bwd_op),
    "col_norm_cuda": _col_norm(normalize._col_norm_cuda_op),
    "col_norm_bwd_cuda": _col_norm_bwd(normalize._col_norm_cuda_op, normalize._col_norm_bwd_cuda_op),
    "gram_loss": _gram_loss,
    "gram_loss_bwd": _gram_loss_bwd,
    "mm_shift": _mm_shift,
    "mm_trace": _mm_trace,
}


def test_every_custom_op_has_samples():
    registered = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fusedssl::")}
    assert registered == set(SAMPLES), f"custom ops without opcheck samples: {sorted(registered - set(SAMPLES))}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name, layout, dtype, monkeypatch):
    if name.endswith("_cuda"):
        monkeypatch.setattr(_cuda, "ext", lambda: EmulatedExtension)
    checked = 0
    for op, args in SAMPLES[name](layout, dtype):
        torch.library.opcheck(op, args)
        checked += 1
    assert checked or (name in ("mm_shift", "mm_trace") and dtype != torch.float32)


def test_mm_shift_refuses_non_fp32_operands():
    with pytest.raises(TypeError, match="mm_shift: the operands must be float32"):
        matrix_log.mm_shift(torch.randn(4, 4, dtype=torch.bfloat16), torch.randn(4, 4))
