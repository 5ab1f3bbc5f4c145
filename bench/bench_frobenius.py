"""``fusedssl bench frobenius``: FroSSL (multiview and the two-view legacy variant) and the log-Frobenius regulariser
per provider: the original code's formulation, the efficient eager reference, torch.compile of it, Triton, CUDA C++.

FLOPs and bytes per provider's own algorithm (bench/flops.py): ||Z'Z||_F^2 on the cheaper side, the symmetric
N x N Gram (half its tiles) when N < D. Rows, roofline and the GPU-only Triton timing as in bench_covariance.
"""

from __future__ import annotations

from . import harness, originals

GPU_GRID = [(256, 2048), (2048, 1024), (1024, 8192)]
CPU_GRID = [(128, 256), (256, 128)]
OPS = {"frossl_loss": lambda a, b: originals.frossl_multiview([a, b]), "frossl_loss[legacy]": originals.frossl_legacy,
       "log_frobenius": None}


def main(argv: list[str] | None = None) -> int:
    return harness.objective_bench(argv, prog="fusedssl bench frobenius", description=__doc__.splitlines()[0],
                                   family="frobenius", ops=OPS, gpu_grid=GPU_GRID, cpu_grid=CPU_GRID)
