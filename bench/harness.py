"""Benchmark harness: timing discipline, environment stamp, long-format CSV.

Timing: warm-up calls are excluded; each repetition uses the next of several pre-generated input sets (rotating
inputs, so caches do not flatter and no input is all zeros); CUDA events around each call on a GPU, perf_counter
after a synchronise elsewhere; median with p20/p80. Every row carries the device, versions, git SHA and date, and
rows are appended to a long-format CSV (one measurement per row), replacing earlier rows with the same key.
"""

from __future__ import annotations

import csv
import datetime
import platform
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

FIELDS = ["op", "provider", "mode", "n", "d", "dtype", "metric", "value", "unit", "device", "torch", "triton",
          "fusedssl", "git", "date"]
KEY = ("op", "provider", "mode", "n", "d", "dtype", "metric", "device", "torch", "triton", "fusedssl", "git")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def env(device: torch.device) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "none"

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        sha = "none"
    return {"device": device_name(device), "torch": torch.__version__, "triton": version("triton"),
            "fusedssl": version("fusedssl"), "git": sha, "date": datetime.date.today().isoformat()}


def time_fn(fn: Callable[[object], object], *, device: torch.device, prepare: Callable[[int], object] | None = None,
            warmup: int = 3, reps: int = 10) -> tuple[float, float, float]:
    """(p20, p50, p80) milliseconds of ``fn(prepare(i))`` (``fn(i)`` without ``prepare``), i = the repetition.

    ``prepare`` runs outside the timed region (e.g. the forward pass whose backward is being timed).
    """
    prepare = prepare or (lambda i: i)
    for i in range(warmup):
        fn(prepare(i))
    times = []
    for i in range(reps):
        x = prepare(warmup + i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append(1000 * (time.perf_counter() - t0))
    q = torch.tensor(times).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    return q[0], q[1], q[2]


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows; a row with the same KEY as an existing one replaces it (re-runs do not duplicate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new_keys = {tuple(str(r[k]) for k in KEY) for r in rows}
    kept = [r for r in old if tuple(r[k] for k in KEY) not in new_keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(kept + rows)


def ms_rows(meta: dict, p20: float, p50: float, p80: float) -> list[dict]:
    """The three rows (p20, p50, p80, in ms) of one timed measurement described by ``meta`` (the other FIELDS)."""
    return [{**meta, "metric": m, "value": f"{v:.6g}", "unit": "ms"} for m, v in (("p20", p20), ("p50", p50),
                                                                                  ("p80", p80))]


def finish(out: str | Path, stamp: dict, name: str, rows: list[dict], notes: list[str] = ()) -> Path:
    """Append ``rows`` to ``<out>/<device>/<name>.csv``, print the notes and where the rows went; returns the path."""
    path = Path(out) / stamp["device"].replace(" ", "_") / f"{name}.csv"
    append_csv(path, rows)
    for note in notes:
        print("note:", note)
    print(f"wrote {len(rows)} rows to {path}")
    return path


# ------------------------------------------------------------------------------------ tiny runs (tests, soak runs)

# The smallest recipe that runs every training stage in seconds on a CPU; the tests and the soak runs train it and add
# what they vary.
TINY = ["data.source=synthetic", "data.synthetic_size=64", "data.batch_size=16", "data.image_size=16",
        "model.projector=32-16", "evaluate.knn=false", "log.every=1", "log.progress=false"]


def tiny(method: str = "barlow", *extra: str) -> list[str]:
    """TINY for ``method``, with the predictor head it needs (read from the method registry: a hidden layer for
    BYOL-like heads, DirectPred's linear 16 x 16 map without bias), then ``extra``."""
    from fusedssl.engine import methods

    cls = methods.METHODS[method]
    head = []
    if cls.predictor:
        head = (["model.predictor=16", "model.predictor_bias=false"] if issubclass(cls, methods.DirectPred)
                else ["model.predictor=32-16"])
    return [*TINY, f"method.name={method}", *head, *extra]


def free_port() -> int:
    """A TCP port free on this host now (for a rendezvous of local processes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
