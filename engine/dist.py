"""Process group setup and the autograd-aware collectives the objectives use (methods.md §13).

fusedssl's rule: for every objective the DDP-averaged parameter gradient equals the single-process gradient of the same
loss on the global batch. Objectives computed on all-gathered embeddings use ``gather``, whose backward all-reduces
(sums) the incoming gradient and keeps this rank's slice: every rank computes the same global loss, so the sum carries a
factor W that DDP's 1/W average cancels exactly. A plain all_gather/all_reduce outside autograd would leave the gradient
1/W too small (lightly#1977, barlowtwins#8); tests/test_distributed.py checks the equality for every method.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .config import ConfigError

log = logging.getLogger("fusedssl")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this run created the process group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def build(cfg, device: str = "auto") -> DistInfo:
    """Initialise the process group from torchrun's environment (or run single-process) and pick the device.

    Args:
        cfg: the ``dist`` config section.
        device: ``run.device`` (auto | cpu | cuda).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but no CUDA device is available: set run.device=cpu or auto")
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if cfg.backend == "nccl" and dev.type != "cuda":
        raise ConfigError("dist.backend=nccl needs CUDA devices; this run is on CPU: use dist.backend=gloo or auto")
    owns = world > 1 and not dist.is_initialized()
    if owns:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)


def wrap_ddp(net: torch.nn.Module, cfg, device: torch.device, *, accumulate_steps: int = 1) -> DDP:
    """The online network under DDP with the ``dist`` section's options: gradient buckets as views of the gradients,
    no buffer broadcast (BatchNorm statistics are global already), optional bf16/fp16 compression of the all-reduce.

    ``static_graph`` is used only without gradient accumulation: DDP's reducer with static_graph and ``no_sync``
    fails on the first backward (torch 2.11 to 2.14: pytorch#143580; its open fix, pytorch#187732, notes that once
    the assert is bypassed the gradients silently stop being all-reduced), so an accumulating run drops it and says so.
    """
    static = cfg.static_graph and accumulate_steps == 1
    if cfg.static_graph and not static:
        log.warning("dist.static_graph=true is not used with optim.accumulate_steps=%d (DDP's static graph and no_sync "
                    "do not work together in this torch)", accumulate_steps)
    # buffers are not synchronised per forward: BatchNorm statistics are global already (model.sync_batchnorm).
    # Newer torch names the switch forward_sync_buffers (and deprecates broadcast_buffers)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    ddp = DDP(net, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
              bucket_cap_mb=cfg.bucket_cap_mb, static_graph=static, **no_sync)
    if cfg.comm_hook != "none":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        hook = {"bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}[cfg.comm_hook]
        ddp.register_comm_hook(None, hook)
    return ddp


def is_ddp(net: torch.nn.Module) -> bool:
    return isinstance(net, DDP)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum of every rank's gradient w.r.t. the gathered tensor
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather rows (equal row counts on every rank), concatenated in rank order, with the gradient-preserving
    backward; identity when not distributed. Inputs that do not require grad are gathered without autograd."""
    if world_size() == 1:
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return _GatherWithGrad.apply(x)


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's output depends on this rank's input
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with the autograd-aware backward (the gradient is all-reduced too); identity on one process."""
    return x if world_size() == 1 else _AllReduceWithGrad.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, outside autograd (e.g. DirectPred's correlation, metrics at the log interval)."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


# ------------------------------------------------------------------------------------ fault reports

_HEARTBEAT = "fusedssl/last_step/"


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):  # no default group / private API moved
        return None


def heartbeat(step: int) -> None:
    """Record this rank's progress in the process group's key-value store (at the log interval)."""
    store = _store() if world_size() > 1 else None
    if store is not None:
        try:
            store.set(f"{_HEARTBEAT}{rank()}", str(step))
        except Exception:  # noqa: BLE001 - a heartbeat must never take the run down
            pass


def is_collective_failure(e: BaseException) -> bool:
    """A failed or timed-out collective (another rank died or hangs), as opposed to a bug in this rank."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in ("gloo", "nccl", "connection", "timed out",
                                                                   "timeout", "peer"))


def failure_message(e: BaseException, info: DistInfo, timeout_s: int, wait_s: float = 3.0) -> str:
    """Name the ranks that are gone: every surviving rank checks in to the key-value store (it lives on rank 0), waits
    ``wait_s`` for the others, and names those that never check in (dead or hung); best effort."""
    store = _store()
    gone, steps = None, {}
    if store is not None:
        try:
            store.set_timeout(datetime.timedelta(seconds=2))
            store.set(f"fusedssl/failed/{info.rank}", "1")
            others = [r for r in range(info.world) if r != info.rank]
            end = time.monotonic() + wait_s
            while time.monotonic() < end and not all(store.check([f"fusedssl/failed/{r}"]) for r in others):
                time.sleep(0.1)
            gone = [r for r in others if not store.check([f"fusedssl/failed/{r}"])]
            for r in range(info.world):
                steps[r] = int(store.get(f"{_HEARTBEAT}{r}")) if store.check([f"{_HEARTBEAT}{r}"]) else None
        except Exception:  # noqa: BLE001 - the store itself may be gone (rank 0 died)
            gone = None
    if gone:
        who = (f"rank(s) {', '.join(map(str, gone))} stopped responding (last logged steps: "
               f"{', '.join(f'rank {r}: {s}' for r, s in steps.items())})")
    elif gone is None:
        who = "could not tell which rank failed (the key-value store on rank 0 is unreachable: rank 0 may be down)"
    else:
        who = "every rank is still alive: a network or backend failure rather than a lost rank"
    return (f"rank {info.rank}: a collective failed or timed out (dist.timeout_s={timeout_s}); {who}. Check that "
            f"rank's log; resume with --resume auto. Cause: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


def setup_logging(info: DistInfo) -> logging.Logger:
    """Rank-tagged logging; ranks other than 0 log only warnings and errors."""
    logger = logging.getLogger("fusedssl")
    logger.handlers.clear()
    handler = logging.StreamHandler()
    tag = f"[rank {info.rank}] " if info.world > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if info.is_main else logging.WARNING)
    logger.propagate = False
    return logger


def barrier(info: DistInfo) -> None:
    """Every rank waits here for the others (a no-op on one process)."""
    if info.world > 1:
        dist.barrier(device_ids=[info.device.index] if info.device.type == "cuda" else None)


def teardown(info: DistInfo | None = None) -> None:
    """Destroy the process group if this run created it (a caller's own group is left alone)."""
    if (info is None or info.owns_group) and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
