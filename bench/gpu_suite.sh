#!/usr/bin/env bash
# The GPU record in one command: build the CUDA extension for this machine's GPU, then `fusedssl bench all` (ceilings,
# verify --full, kernel/data/step benchmarks, tables and plots) into bench/results/<device>/<date>/.
# Extra arguments go to `fusedssl bench all` (e.g. --long, --skip data).
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$(python -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
FUSEDSSL_BUILD_CUDA=1 FUSEDSSL_CUDA_ARCH="$arch" python setup.py build_ext --inplace > bench/build.log 2>&1 \
    || { tail -30 bench/build.log; exit 1; }
python -m fusedssl.engine.cli bench all "$@"
