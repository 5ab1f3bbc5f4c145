"""``fusedssl bench checkpoint``: the time and memory of writing and reading one real training checkpoint.

The state is what a run saves (checkpoint.run_state of the stages train.py builds) for a published recipe, by default
Barlow Twins with a ResNet-50 and the 8192-8192-8192 projector under LARS (about 1.4 GB with the momentum buffers).
The optimiser state is filled by one LARS step on random gradients, so the file has the size a run's has. Timed: save
(stream to a temporary file while hashing, fsync, rename, prune) and load (chunked hash check, then torch.load);
measured besides: the file size and the peak resident memory above the state itself during each, sampled every 5 ms
(the state is held once; a save or load that made a second copy shows it here). The folder is ``--dir``: put it on
the file system runs write to, since the disk decides the number. Rows go to bench/results/<device>/checkpoint.csv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from . import harness

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "published" / "barlow_imagenet_r50_1000ep.yaml"


def _trim() -> None:
    """Give freed heap back to the system (glibc), so a baseline is not lowered by memory an earlier copy left."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """The largest resident set size seen while the block runs (a 5 ms sampling thread)."""

    def __enter__(self):
        self.peak, self._stop = _rss(), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _stages(recipe: Path, extra: list[str]):
    from fusedssl.engine import config, dist, train

    cfg = config.load(str(recipe), ["data.source=synthetic", "data.synthetic_size=64", "data.batch_size=8",
                                    "data.image_size=32", "run.device=cpu", "run.compile=false", "log.progress=false",
                                    *extra])
    st = train.build_stages(cfg, dist.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    g = torch.Generator().manual_seed(0)
    for p in st.model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    st.opt.step()  # the momentum buffers exist now, as in any checkpoint after step 1
    st.opt.zero_grad(set_to_none=True)
    return cfg, st


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench checkpoint", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/checkpoint.csv inside)")
    p.add_argument("--dir", default=None, help="where the checkpoints are written (default: a temporary folder)")
    p.add_argument("--recipe", default=str(RECIPE), help="the recipe whose model and optimiser are saved")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    from fusedssl.engine import checkpoint, config, metrics

    cfg, st = _stages(Path(args.recipe), args.set)
    state = checkpoint.run_state(st, 1, metrics={}, config=config.to_dict(cfg), version=metrics.version())
    tensors = list(_tensors(state))
    state_bytes = sum(t.numel() * t.element_size() for t in tensors)
    work = Path(tempfile.mkdtemp(prefix="fusedssl-ckpt-", dir=args.dir))
    saves, loads, save_extra, load_extra = [], [], [], []
    try:
        for rep in range(args.reps):
            _trim()
            base = _rss()
            with _PeakRSS() as peak:
                t0 = time.perf_counter()
                path = checkpoint.save(work, rep + 1, state, keep=1)
                saves.append(time.perf_counter() - t0)
            save_extra.append(peak.peak - base)
            size = path.stat().st_size
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the load reads the disk, not the page cache
            os.close(fd)
            _trim()
            base = _rss()
            with _PeakRSS() as peak:
                t0 = time.perf_counter()
                loaded = checkpoint.load(path)
                loads.append(time.perf_counter() - t0)
            load_extra.append(peak.peak - base - state_bytes)  # the loaded state itself is the one expected copy
            del loaded
        disk = _raw_write(work / "raw", size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp = harness.env(torch.device("cpu"))
    meta = {"op": "checkpoint", "mode": cfg.model.backbone, "n": len(tensors), "d": cfg.model.projector,
            "dtype": "float32", **stamp}
    med = sorted(saves)[len(saves) // 2], sorted(loads)[len(loads) // 2]
    rows = [{**meta, "provider": "file", "metric": "bytes", "value": str(size), "unit": "B"},
            {**meta, "provider": "save", "metric": "p50", "value": f"{med[0]:.4g}", "unit": "s"},
            {**meta, "provider": "load", "metric": "p50", "value": f"{med[1]:.4g}", "unit": "s"},
            {**meta, "provider": "raw_write", "metric": "p50", "value": f"{disk:.4g}", "unit": "s"},
            {**meta, "provider": "save", "metric": "peak_rss_above_state", "value": str(max(save_extra)), "unit": "B"},
            {**meta, "provider": "load", "metric": "peak_rss_above_state", "value": str(max(load_extra)), "unit": "B"}]
    print(f"checkpoint of {cfg.model.backbone} + {cfg.model.projector} ({cfg.optim.name}): {size / 1e9:.2f} GB; "
          f"save {med[0]:.2f} s ({size / med[0] / 1e9:.2f} GB/s; raw write + fsync of as many bytes: {disk:.2f} s), "
          f"load {med[1]:.2f} s; peak memory above the state: "
          f"save {max(save_extra) / 1e6:.0f} MB, load {max(load_extra) / 1e6:.0f} MB")
    harness.finish(args.out, stamp, "checkpoint", rows)
    return 0


def _raw_write(path: Path, size: int, block: int = 1 << 24) -> float:
    """Seconds to write ``size`` bytes in 16 MiB blocks and fsync them: what the disk allows a save."""
    buf = os.urandom(block)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(0, size, block):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


if __name__ == "__main__":
    raise SystemExit(main())
