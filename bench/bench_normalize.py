"""``fusedssl bench normalize``: the column normalisations (BN, std, L2, centring, sqrt(D) L2) and the row L2
normalisation per provider: the original code's formulation (Barlow Twins' BatchNorm1d without affine), the eager
reference, torch.compile of it, Triton, CUDA C++; forward and backward (fed ones).

No matrix products: these are bandwidth-bound, so the row that matters is GB/s against the measured copy bandwidth
(``of_roofline``). Bytes per provider's own algorithm (bench/flops.py): eager moves every intermediate, the kernels
read z twice (statistics, then normalise) and write y once.
"""

from __future__ import annotations

from . import harness, originals

GPU_GRID = [(256, 8192), (2048, 8192), (4096, 2048)]
CPU_GRID = [(256, 512), (1024, 256)]
OPS = {"col_normalize[bn]": originals.bn, "col_normalize[std]": None, "col_normalize[l2]": None,
       "col_normalize[center]": None, "col_normalize[std_l2]": None, "row_normalize": None}


def main(argv: list[str] | None = None) -> int:
    return harness.objective_bench(argv, prog="fusedssl bench normalize", description=__doc__.splitlines()[0],
                                   family="normalize", ops=OPS, gpu_grid=GPU_GRID, cpu_grid=CPU_GRID)
