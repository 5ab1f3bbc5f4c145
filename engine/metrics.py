"""Metrics stage: where a run's numbers go. One JSON line per log step in <run>/log.jsonl (loss/*, optim/*, perf/*,
data/*, probe/*), optionally the same records as TensorBoard scalars, a one-line progress bar on a terminal (rank 0),
and the log line. Only rank 0 writes; the loop hands over plain floats it has already read at the log interval.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from .config import ConfigError

log = logging.getLogger("fusedssl")


def version() -> str:
    """fusedssl's installed version (recorded in every checkpoint and run header)."""
    try:
        return metadata.version("fusedssl")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the process's peak RSS


class Logger:
    """The log sinks of one run (everything is a no-op on ranks other than 0)."""

    def __init__(self, run_dir: Path, *, is_main: bool, tensorboard: bool, progress: bool, total: int,
                 batch_size: int):
        self.is_main, self.total, self.batch_size = is_main, total, batch_size
        self.bar = is_main and progress and sys.stderr.isatty()
        self._file = open(run_dir / "log.jsonl", "a") if is_main else None  # noqa: SIM115 - closed in close()
        self._tb = None
        if is_main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("log.tensorboard=true needs the tensorboard package (pip install tensorboard)") from e
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._t_start: float | None = None
        self._first = 0

    def progress(self, step: int) -> None:
        """Redraw the bar after ``step`` (0-based) finished: images/s since the first step of this process, ETA."""
        if not self.bar:
            return
        now = time.perf_counter()
        if self._t_start is None:
            self._t_start, self._first = now, step
            return
        rate = (step - self._first) / max(now - self._t_start, 1e-9)
        print(f"\r{step + 1}/{self.total} {rate * self.batch_size:.0f} img/s ETA {(self.total - step - 1) / rate:.0f}s",
              end="", file=sys.stderr, flush=True)

    def record(self, rec: dict) -> None:
        """One log step: the log line, the JSON line and (if on) TensorBoard."""
        if not self.is_main:
            return
        if self.bar:
            print(file=sys.stderr)
        log.info("step %d/%d  epoch %.2f  loss %.4f  lr %.4g  %.0f img/s  ETA %.0fs", rec["step"], self.total,
                 rec["epoch"], rec["loss/total"], rec["optim/lr"], rec["perf/images_per_s"], rec["perf/eta_s"])
        self.event(rec)
        if self._tb:
            for k, v in rec.items():
                if k != "step":
                    self._tb.add_scalar(k, v, rec["step"])

    def event(self, rec: dict) -> None:
        """A JSON line outside the log interval (evaluations)."""
        if self._file:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()


def log_record(st, step: int, loss, terms: dict, *, seen: int, seconds: float, data_s: float, lr_scale: float,
               batch: int) -> dict:
    """The record of a log step, for the built stages ``st`` (train.Stages). The host reads the device here; each rank
    holds its share of the global loss, so the values logged are the ranks' mean."""
    from . import dist

    loss, terms = dist.all_reduce_mean(loss), {k: dist.all_reduce_mean(v) for k, v in terms.items()}
    step_s = seconds * batch / max(seen, 1)
    rec = {"step": step + 1, "epoch": (step + 1) / st.data.steps_per_epoch, "loss/total": float(loss),
           **{f"loss/{k}": float(v) for k, v in terms.items()}, "optim/lr": float(st.sched.lr[step]) * lr_scale,
           "perf/images_per_s": seen / seconds, "perf/step_ms": 1000 * step_s,
           "data/wait_ms": 1000 * data_s * batch / max(seen, 1), "perf/peak_memory_mb": peak_memory_mb(st.device),
           "perf/eta_s": step_s * (st.total - step - 1)}
    if st.teacher is not None:
        rec["optim/ema"] = float(st.sched.ema[step])
    if st.prec.scaler is not None:
        rec["optim/grad_scale"] = float(st.prec.scaler.get_scale())
    if st.probe is not None:
        rec.update(st.probe.read())
    return rec
