"""Run guards for long runs: preemption signals and the non-finite policy (used by train.py's loop).

Preemption: SIGTERM (SLURM's preemption and time-limit signal) and SIGUSR1 (``#SBATCH --signal=USR1@N``) only set a
flag; the loop finishes the step it is in, writes a checkpoint and raises ``Preempted``, which the command line turns
into exit status ``EXIT_PREEMPTED`` (75, sysexits' EX_TEMPFAIL: "try again later") for a requeue script. Further
signals while the checkpoint is written just set the flag again (and the write is atomic anyway). Under DDP the ranks
agree on the stopping step with a MAX all-reduce of the flag every ``dist.signal_check_every`` steps, so no rank stops
alone (single process: checked every step, no collective).

Non-finite values: the loop keeps a device-side flag (loss, and for bf16/fp32 the global gradient norm) and reads it
only at the log interval and before writing a checkpoint (so a checkpoint never holds a poisoned state). Policies
(``guard.nonfinite``): ``stop`` raises with the step, rank and loss terms; ``rollback`` reloads the newest valid
checkpoint and multiplies the learning rate by ``guard.rollback_lr_factor`` (at most ``guard.max_rollbacks`` times);
``skip`` drops the optimiser step of any step whose values are non-finite, which needs a host sync every step.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import torch
import torch.distributed as torch_dist

from . import dist

log = logging.getLogger("fusedssl")

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class RunLock:
    """The run folder, created, checked writable and locked for this run (rank 0): a second run on the same folder
    would interleave its log and overwrite checkpoints, so it is refused, naming the run that holds the folder."""

    def __init__(self, run_dir: Path):
        import fcntl

        from .config import ConfigError

        self.path = Path(run_dir) / ".lock"
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a+")  # noqa: SIM115 - held for the run, closed in release()
        except OSError as e:
            raise ConfigError(f"run.out_dir/run.name: cannot create or write the run folder {str(run_dir)!r} "
                              f"({e.strerror}): choose a writable run.out_dir") from None
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.seek(0)
            holder = self._f.read().strip() or "another process"
            self._f.close()
            raise ConfigError(f"run folder {str(run_dir)!r} is in use by {holder}: give this run another run.name "
                              "(or wait for that one to end)") from None
        self._f.seek(0)
        self._f.truncate()
        self._f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._f.flush()

    def release(self) -> None:
        self._f.close()  # closing drops the lock


REQUEUE_MARKER = "REQUEUE"


def requeue_marker(run_dir: Path) -> Path:
    """<run>/REQUEUE: written by rank 0 after its preemption checkpoint, removed when the next segment starts. A job
    script requeues when it exists: torchrun's exit status cannot carry the decision (it exits 1 both when a worker
    exits 75 and when it is signalled itself)."""
    return Path(run_dir) / REQUEUE_MARKER


def request_requeue(run_dir: Path, step: int) -> None:
    tmp = requeue_marker(run_dir).with_suffix(".tmp")
    tmp.write_text(f"{step}\n")
    os.replace(tmp, requeue_marker(run_dir))


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint at ``step``."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint written, "
                         f"resume with --resume auto")
        self.step, self.signum = step, signum


class Preemption:
    """Signal flag with handlers installed for the duration of a ``with`` block (main thread only)."""

    def __init__(self, check_every: int, device: torch.device | None = None, pending: int = 0):
        self.check_every, self.device = check_every, device or torch.device("cpu")
        self.signum = pending  # a signal caught before the run started (see cli.py)
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if first:
            log.warning("received %s: finishing the current step, then checkpoint and exit",
                        signal.Signals(signum).name)

    def __enter__(self) -> Preemption:
        try:
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
            self._old.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def should_stop(self, step: int) -> bool:
        """Whether every rank should stop after ``step`` (0-based index of the step just finished)."""
        if dist.world_size() == 1:
            return bool(self.signum)
        if (step + 1) % self.check_every:
            return False
        flag = torch.tensor([self.signum], dtype=torch.int64, device=self.device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        self.signum = int(flag)  # a rank that got no signal stops with the others
        return bool(self.signum)


def nonfinite_anywhere(flag: torch.Tensor) -> bool:
    """Read the device-side non-finite flag, OR-ed over ranks (every rank takes the same decision)."""
    if dist.world_size() == 1:
        return bool(flag)
    f = flag.to(torch.int64).reshape(1).clone()
    torch_dist.all_reduce(f, op=torch_dist.ReduceOp.MAX)
    return bool(f)


def grads_finite(params) -> torch.Tensor:
    """Device-side bool: every gradient is finite (one fused norm over all gradients, no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())


class NonFinitePolicy:
    """``guard.nonfinite`` at a check point where the device flag says a loss or gradient was non-finite:
    ``rollback`` reloads the newest valid checkpoint (at most ``guard.max_rollbacks`` times), anything else raises
    with the step, rank and last values. The learning-rate factor is derived from the rollback count
    (``rollback_lr_factor`` to that power), which the checkpoint's metrics carry: nothing is written into the
    schedule."""

    def __init__(self, cfg, *, rank: int, method: str):
        self.mode, self.max, self.factor = cfg.nonfinite, cfg.max_rollbacks, cfg.rollback_lr_factor
        self.rank, self.method = rank, method

    def lr_factor(self, metrics: dict) -> float:
        return self.factor ** metrics.get("rollbacks", 0)

    def handle(self, step: int, loss, terms: dict, metrics: dict, rollback) -> tuple[int, dict]:
        """Returns (the step to continue from, the restored metrics) after a rollback, or raises.

        ``rollback()`` restores the newest valid checkpoint and returns (its path, step, metrics), or None if there
        is none."""
        rolled = metrics.get("rollbacks", 0)
        if self.mode == "rollback" and rolled < self.max:
            found = rollback()
            if found is not None:
                path, back, metrics = found
                metrics["rollbacks"] = rolled + 1
                log.warning("non-finite values at or before step %d: rolled back to %s (step %d), learning rate x %g "
                            "(rollback %d of at most %d)", step + 1, path, back, self.lr_factor(metrics), rolled + 1,
                            self.max)
                return back, metrics
        values = ", ".join(f"{k} {float(v):.4g}" for k, v in {"loss": loss, **terms}.items())
        if self.mode == "stop":
            why = "guard.nonfinite=stop"
        elif rolled >= self.max:
            why = f"guard.nonfinite=rollback: {rolled} rollbacks used (guard.max_rollbacks={self.max})"
        else:
            why = "guard.nonfinite=rollback: no checkpoint to roll back to"
        raise FloatingPointError(f"non-finite loss or gradients at or before step {step + 1} on rank {self.rank} "
                                 f"(method {self.method}; last values: {values}); {why}")
