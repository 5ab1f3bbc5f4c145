"""The ahead-of-time compile gate (bench/aot.py): every Triton launch the wrappers make at the published shapes, and
every csrc/ kernel, compiled for sm_90 and sm_80 without a GPU; no compile error, no spill or stack frame at a
published shape, shared memory within the per-block limit, half-precision GEMMs on tensor cores, every kernel
exercised. The interpreter (which the rest of the suite runs) compiles nothing, so only this test sees these defects.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ARCHS = (90, 80)


def test_every_gpu_kernel_compiles_for_hopper_and_ampere_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {arch: subprocess.Popen([sys.executable, "-m", "fusedssl.bench.aot", "--arch", str(arch), "--json",
                                     str(tmp_path / f"sm{arch}.json")], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
             for arch in ARCHS}  # one process per architecture: they run side by side on the CI's cores
    failures = []
    for arch, p in procs.items():
        out, _ = p.communicate(timeout=1200)
        report = tmp_path / f"sm{arch}.json"
        assert report.exists(), f"sm_{arch}: the compile check did not finish:\n{out[-4000:]}"
        data = json.loads(report.read_text())
        kernels = {r["kernel"] for r in data["results"]}
        assert {"_cov_loss_fwd_kernel", "_cov_loss_bwd_kernel", "_mm_shift_kernel", "_col_stats_kernel",
                "_col_norm_bwd_kernel", "_gram_fwd_kernel", "_gram_finish_kernel", "_gram_bwd_kernel"
                } <= kernels, kernels
        failures += data["failures"]
        assert p.returncode == (1 if data["failures"] else 0), out[-4000:]
    assert not failures, "\n".join(failures)
