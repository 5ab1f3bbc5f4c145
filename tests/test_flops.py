"""The fused providers use the cheapest algorithm for the shape: at the published shapes their matrix-product FLOPs,
counted from the launches they make (bench/flops.py), do not exceed the efficient reference's by more than 10 %; the
normalisations, which have none, move no more bytes than the eager reference."""

import pytest
import torch
from fusedssl.bench import aot, flops

PUBLISHED = [(op, n, d) for ops, shapes in aot.PUBLISHED for op in ops if op in flops.objectives("torch")
             for n, d in shapes]


@pytest.mark.parametrize("op,n,d", PUBLISHED, ids=[f"{op}-{n}x{d}" for op, n, d in PUBLISHED])
def test_fused_provider_does_no_more_matrix_work_than_the_efficient_reference(op, n, d):
    ref = flops.objective_cost(op, "torch", n, d, torch.float32)
    dtype = torch.float32 if "ssl" in op else torch.bfloat16  # the Matrix-SSL chain runs in fp32 by design
    fused = flops.objective_cost(op, "triton", n, d, dtype)
    assert fused.launches > 0
    if op.startswith(("col_normalize", "row_normalize")):  # no products: the memory traffic is the cost
        assert ref.flops == fused.flops == 0 and 0 < fused.bytes <= ref.bytes, (ref, fused)
        return
    assert ref.flops > 0
    assert fused.flops <= 1.1 * ref.flops, (f"{op} at {n}x{d}: the Triton provider does {fused.flops / 1e9:.2f} "
                                            f"GFLOP against the reference's {ref.flops / 1e9:.2f}")


def test_counts_equal_the_algorithms_by_hand():
    """The counter against the FLOPs written out for Barlow Twins at N 256 x D 8192 (N < D): the reference forms
    both N x N Grams (2 x 2N^2D) and autograd takes two GEMMs per Gram (8 N^2 D); the fused forward computes the 10
    upper tiles of the 4 x 4 tile grid of each Gram (2 x 2N^2D x 10/16) and the backward one GEMM per view (4 N^2 D).
    At N 4096 x D 512 both work on the D x D side: 2 N D^2 forward, two GEMMs of 2 N D^2 backward."""
    n, d = 256, 8192
    assert flops.objective_cost("barlow_twins_loss", "torch", n, d, torch.float32).flops == 12 * n * n * d
    fused = flops.objective_cost("barlow_twins_loss", "triton", n, d, torch.bfloat16)
    assert fused.flops == 2 * 2 * n * n * d * 10 // 16 + 4 * n * n * d
    n, d = 4096, 512
    assert flops.objective_cost("barlow_twins_loss", "torch", n, d, torch.float32).flops == 6 * n * d * d
    assert flops.objective_cost("barlow_twins_loss", "triton", n, d, torch.bfloat16).flops == 6 * n * d * d


def test_a_dot_kernel_without_a_formula_is_an_error(monkeypatch):
    monkeypatch.delitem(flops.DOT_FLOPS, "_gram_bwd_kernel")
    with pytest.raises(KeyError, match="_gram_bwd_kernel has a tl.dot but no DOT_FLOPS formula"):
        flops.objective_cost("vicreg_covariance", "triton", 64, 128, torch.bfloat16)


def test_every_dot_kernel_has_a_formula():
    import importlib
    import pkgutil

    import fusedssl.kernels as pkg

    dots = set()
    for mod in pkgutil.iter_modules(pkg.__path__):
        for v in vars(importlib.import_module(f"fusedssl.kernels.{mod.name}")).values():
            fn = getattr(v, "fn", None)
            if callable(fn) and getattr(fn, "__name__", "").endswith("_kernel") and flops.has_dot(v):
                dots.add(fn.__name__)
    assert {"_gram_fwd_kernel", "_mm_shift_kernel"} <= dots and dots <= set(flops.DOT_FLOPS), sorted(dots)


def test_bench_flops_writes_both_providers_at_every_published_shape(tmp_path, capsys):
    import csv

    from fusedssl.engine import cli

    assert cli.main(["bench", "flops", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("counted/flops.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 2 * 2 * len(PUBLISHED)  # (eager, triton) x (flops, bytes)
    assert "matrix_ssl_loss" in capsys.readouterr().out
