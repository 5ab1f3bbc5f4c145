"""fusedssl.bench: benchmarks of the kernels (``fusedssl bench kernels``); results in bench/results/<device>/."""
