#!/usr/bin/env bash
# The GPU record in one short run, from a bare checkout on a GPU machine that has torch, triton, numpy and pyyaml but
# no network (nothing is downloaded or installed from an index):
#   bench/gpu_suite.sh OUTDIR [--budget-s S] [--smoke] [--dry-run] [further `fusedssl bench all` options]
# 1. installs fusedssl from this checkout without dependencies and without building (pip --no-deps; where pip cannot,
#    a folder that maps the package names onto the checkout goes on PYTHONPATH instead),
# 2. builds the C++/CUDA extension for this machine's GPU only (one architecture, all cores: about a minute),
# 3. runs `fusedssl bench all` with the budget (default 330 s after the build), stage by stage in order of value,
#    rebuilding OUTDIR/record.tar.gz after every finished stage next to tables.md, stages.csv and the plots.
# With --dry-run nothing is installed or built: the stages and their estimates are listed against the budget.
# A Triton cache made ahead of time for the same triton version (`fusedssl bench aot --arch 90 --cache DIR`) is used
# when bench/triton_cache exists, so cold compiles stay out of the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bench/gpu_suite.sh OUTDIR [--budget-s S] [--smoke] [--dry-run] [fusedssl bench all options]" >&2
  exit 2
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
py=${PYTHON:-python3}
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
log="$out/suite.log"
: > "$log"
say() { echo "gpu_suite: $*" | tee -a "$log" >&2; }

if [ "$dry" = 1 ]; then
  say "dry run: no install, no build"
  if ! "$py" -c "import fusedssl.bench.suite" 2>/dev/null; then
    shim=$(mktemp -d)
    mkdir -p "$shim/fusedssl" && ln -s "$PWD/kernels" "$shim/fusedssl/kernels" && ln -s "$PWD/engine" \
      "$shim/fusedssl/engine" && ln -s "$PWD/bench" "$shim/fusedssl/bench"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  fi
  exec "$py" -m fusedssl.engine.cli bench all --archive "$out" "$@"
fi

t0=$(date +%s)
if FUSEDSSL_BUILD_CUDA=0 "$py" -m pip install --no-deps --no-build-isolation --no-index -e . >> "$log" 2>&1; then
  say "installed fusedssl from this checkout (no dependencies, nothing downloaded)"
else
  shim=$(mktemp -d)  # the package names over the checkout, for a python whose pip cannot do an editable install
  mkdir -p "$shim/fusedssl" && ln -s "$PWD/kernels" "$shim/fusedssl/kernels" && ln -s "$PWD/engine" \
    "$shim/fusedssl/engine" && ln -s "$PWD/bench" "$shim/fusedssl/bench"
  export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
  say "pip could not install the checkout (see suite.log); using the package folders on PYTHONPATH"
fi
arch=$("$py" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
if MAX_JOBS=$(nproc) FUSEDSSL_BUILD_CUDA=1 FUSEDSSL_CUDA_ARCH="$arch" "$py" setup.py build_ext --inplace \
    > "$out/build.log" 2>&1; then
  say "built fusedssl.kernels._C for sm_${arch/./} in $(( $(date +%s) - t0 )) s"
else
  tail -30 "$out/build.log" >&2
  say "the extension did not build (build.log); the suite runs without the cuda backend"
fi
if [ -d bench/triton_cache ]; then
  export TRITON_CACHE_DIR="$PWD/bench/triton_cache"
  say "Triton cache: bench/triton_cache"
fi
"$py" -m fusedssl.engine.cli bench all --archive "$out" "$@" 2>&1 | tee -a "$log"
