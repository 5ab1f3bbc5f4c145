"""Multi-tensor LARS and EMA (kernels/lars.py): the foreach reference against the per-tensor definition in float64,
and the CUDA C++ provider against the reference where a GPU is present."""

import pytest
import torch
from conftest import assert_close
from fusedssl import kernels
from fusedssl.bench import verify


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


def test_a_list_spanning_devices_is_refused_by_name():
    """One multi-tensor launch serves a whole list: a tensor on another device is named, never launched on."""
    meta = [torch.zeros(3), torch.zeros(2, device="meta")]
    with pytest.raises(ValueError, match=r"params\[1\] is on meta but params\[0\] is on cpu"):
        kernels.lars_step_(meta, [t.clone() for t in meta], [t.clone() for t in meta], lr=1, momentum=0,
                           weight_decay=0, eta=1)


def _conv_params(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 3, 7, 7), (64,), (128, 64, 3, 3), (256, 128, 3, 3), (128,), (1000, 512)]
    ts = [[torch.randn(s, generator=g).cuda() for s in shapes] for _ in range(3)]
    for lst in ts:  # conv weights channels-last, as the engine's model and its gradients and buffers are
        for i, t in enumerate(lst):
            if t.dim() == 4:
                lst[i] = t.contiguous(memory_format=torch.channels_last)
    return ts


@pytest.mark.gpu
def test_cuda_lars_is_bitwise_deterministic_and_takes_channels_last():
    """Two seeded LARS steps give bitwise-identical parameters (no float atomics: DDP replicas must not drift) and
    match the foreach reference on channels-last conv weights."""
    runs = []
    for _ in range(2):
        p, g, b = _conv_params(0)
        for _step in range(2):
            for adapt in (True, False):
                idx = [i for i, t in enumerate(p) if (t.dim() > 1) == adapt]
                kernels.lars_step_([p[i] for i in idx], [g[i] for i in idx], [b[i] for i in idx], lr=0.3,
                                   momentum=0.9, weight_decay=1e-4, eta=0.02, adapt=adapt, backend="cuda")
        runs.append(p)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    p, g, b = _conv_params(0)
    q, h, c = (t.clone() for t in p), (t.clone() for t in g), (t.clone() for t in b)
    q, h, c = list(q), list(h), list(c)
    kernels.lars_step_(p, g, b, lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02, backend="cuda")
    kernels.lars_step_(q, h, c, lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02, backend="torch")
    for x, y in zip(p, q, strict=True):
        assert_close(x.cpu(), y.cpu(), tol=verify.FLOORS[torch.float32])


@pytest.mark.gpu
@pytest.mark.parametrize("tau", [0.996, 0.99999])
def test_cuda_ema_near_one_and_channels_last(tau):
    """The step weight 1 - tau is formed in double: in fp32 it is 0.14% off at tau = 0.99999. A zero teacher moving
    towards ones shows the weight itself (no cancellation), on channels-last conv weights."""
    t, o, _ = _conv_params(1)
    t, o = [x.zero_() for x in t], [x.fill_(1.0) for x in o]
    kernels.ema_(t, o, tau, backend="cuda")
    for got in t:
        assert float((got.double() - (1 - tau)).abs().max()) <= verify.FLOORS[torch.float32] * (1 - tau)
