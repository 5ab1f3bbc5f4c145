"""``fusedssl bench kernels``: the covariance family (Barlow Twins, its HSIC variant, VICReg's covariance term) per
provider: the original code's formulation, the efficient eager reference, torch.compile of it, Triton, CUDA C++.

Each provider's FLOPs and bytes are those of its own algorithm, counted (bench/flops.py): the Triton provider works
on the N x N Gram side when N < D (about 6.5 N^2 D against the reference's 12 N^2 D at N 256, D 8192), the D x D
side otherwise. The rows give achieved TFLOP/s and GB/s and the roofline bound at this device's measured ceilings
(harness.objective_bench). The Triton provider is timed only on a GPU: in the CPU interpreter its timing means
nothing, and the run says so instead of writing a number.
"""

from __future__ import annotations

from . import harness, originals

GPU_GRID = [(256, 8192), (2048, 8192), (256, 2048), (4096, 512), (1024, 1024)]
CPU_GRID = [(128, 256), (256, 128)]
OPS = {"barlow_twins_loss": originals.barlow_twins, "barlow_twins_loss[hsic,tsai]": originals.barlow_twins_hsic_tsai,
       "vicreg_covariance": None}  # the original VICReg code has no covariance term on its own


def main(argv: list[str] | None = None) -> int:
    return harness.objective_bench(argv, prog="fusedssl bench kernels", description=__doc__.splitlines()[0],
                                   family="covariance", ops=OPS, gpu_grid=GPU_GRID, cpu_grid=CPU_GRID)
