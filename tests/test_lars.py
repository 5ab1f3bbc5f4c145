"""Multi-tensor LARS and EMA (kernels/lars.py): the foreach reference against the per-tensor definition in float64,
and the CUDA C++ provider against the reference where a GPU is present."""

import pytest
import torch
from conftest import assert_close
from fusedssl import kernels
from fusedssl.kernels import verify


def _definition(p, g, b, lr, m, wd, eta, adapt):
    """One tensor at a time, written out (You et al. 2017 as the SSL recipes use it)."""
    g = g + wd * p if adapt else g
    if adapt and float(p.norm()) > 0 and float(g.norm()) > 0:
        g = eta * p.norm() / g.norm() * g
    b = m * b + g
    return p - lr * b, b


@pytest.mark.parametrize("adapt", [True, False])
def test_lars_reference_matches_the_definition(adapt):
    shapes = [(8, 3, 3, 3), (17,), (5, 4), (1,)]
    ps = [torch.randn(s, dtype=torch.float64) for s in shapes]
    ps[1].zero_()  # a zero tensor: trust ratio 1 (the guard), not 0/0
    gs = [torch.randn(s, dtype=torch.float64) for s in shapes]
    bs = [torch.randn(s, dtype=torch.float64) for s in shapes]
    want = [_definition(p, g, b, 0.3, 0.9, 1e-2, 0.02, adapt) for p, g, b in zip(ps, gs, bs, strict=True)]
    kernels.lars_step_(ps, gs, bs, lr=0.3, momentum=0.9, weight_decay=1e-2, eta=0.02, adapt=adapt)
    for (p_want, b_want), p, b in zip(want, ps, bs, strict=True):
        assert_close(p, p_want)
        assert_close(b, b_want)


def test_ema_reference_matches_the_definition():
    t = [torch.randn(4, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    o = [torch.randn(4, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    want = [0.99 * a + 0.01 * b for a, b in zip(t, o, strict=True)]
    kernels.ema_(t, o, 0.99)
    for got, w in zip(t, want, strict=True):
        assert_close(got, w)


def test_bad_lists_are_named():
    p = [torch.zeros(3), torch.zeros(2)]
    with pytest.raises(ValueError, match="grads has 1 tensors, params has 2"):
        kernels.lars_step_(p, [torch.zeros(3)], [torch.zeros(3), torch.zeros(2)], lr=1, momentum=0, weight_decay=0,
                           eta=1)
    with pytest.raises(ValueError, match=r"online\[1\] is torch.float32 \(3,\)"):
        kernels.ema_(p, [torch.zeros(3), torch.zeros(3)], 0.9)
    with pytest.raises(kernels.BackendUnavailable, match="backend='cuda' cannot run ema_"):
        kernels.ema_([torch.zeros(3)], [torch.zeros(3)], 0.9, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(verify.OPTIM_CASES))
def test_cuda_optimiser_kernels_match_the_reference(op):
    for row in verify.check_optim(op, "cuda", torch.Generator().manual_seed(0), torch.device("cuda")):
        assert row.ok, row


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in verify.CASES if c.op in ("col_normalize", "row_normalize")],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_normalisation_three_way(case, dtype):
    gen = torch.Generator().manual_seed(1)
    for n, d in verify.FULL_SHAPES:
        for layout in ("contiguous", "strided"):
            for row in verify.check(case, "cuda", n, d, dtype, layout, gen, torch.device("cuda")):
                assert row.ok, row
