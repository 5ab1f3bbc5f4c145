"""Checkpoint stage: one dict with the complete run state, written atomically, newest valid one found on resume.

A checkpoint holds model, teacher, method state (DirectPred's F^), optimiser, step, RNG states, the resolved config,
metrics and the code version. The write goes to a temporary file in the same folder, is flushed and fsynced, then
renamed over the final name, so a crash mid-write never leaves a truncated ``step_*.pt``; a SHA-256 of the payload is
stored beside it and checked on load, and ``latest`` skips any checkpoint that fails to load or verify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("fusedssl")


def _path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


class _HashingWriter:
    """A write-only file that hashes what passes through it: torch.save streams into the file while the SHA-256 is
    computed, so a 1.4 GB checkpoint is never held a second time in memory and never read back to be hashed."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def save(folder: str | Path, step: int, state: dict, keep: int) -> Path:
    """Atomically write ``state`` as step_<step>.pt and prune to the newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = _path(folder, step)
    tmp = final.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            torch.save(state, w)
            digest = w.sha.hexdigest()
            f.flush()
            os.fsync(f.fileno())
        sha_tmp = final.with_suffix(".sha256.tmp")
        sha_tmp.write_text(digest + "\n")
        os.replace(tmp, final)
        os.replace(sha_tmp, final.with_suffix(".sha256"))
    except OSError as e:  # full disk, quota, lost mount: keep what was there, say what happened
        tmp.unlink(missing_ok=True)
        final.with_suffix(".sha256.tmp").unlink(missing_ok=True)
        previous = sorted(p for p in folder.glob("step_*.pt") if p != final)
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "there is no earlier checkpoint"
        raise OSError(e.errno, f"could not write checkpoint {final} ({e.strerror or e}); {kept}") from e
    _prune(folder, keep)
    return final


def _prune(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints and their checksums. Also removed: what a process killed mid-save or
    mid-prune left (a partial step_*.pt.tmp, a checksum whose checkpoint is gone), which nothing else would ever
    delete; a killed save of a large model leaves gigabytes."""
    kept = {p.stem for p in sorted(folder.glob("step_*.pt"))[-keep:]}
    for old in [*folder.glob("step_*.pt"), *folder.glob("step_*.sha256")]:
        if old.stem not in kept:
            old.unlink(missing_ok=True)
    for tmp in folder.glob("step_*.tmp"):
        tmp.unlink(missing_ok=True)


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha.update(block)
    return sha.hexdigest()


def load(path: str | Path, verify: bool = True) -> dict:
    """Load one checkpoint onto the CPU, checking its SHA-256 (``verify``); raises ValueError naming the file if it is
    missing, truncated or corrupt. The hash is read in chunks and torch.load reads the file itself, so the state is
    the only copy in memory (a 1.4 GB checkpoint is not also held as bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    sha = path.with_suffix(".sha256")
    if verify and sha.is_file() and _sha256(path) != sha.read_text().strip():
        raise ValueError(f"checkpoint {str(path)!r} does not match its checksum (truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {e}") from None


def agreed_latest(folder: str | Path, *, rank: int, world: int) -> tuple[Path, dict] | None:
    """``latest`` decided once for every rank: rank 0 finds and verifies the newest valid checkpoint and broadcasts
    its path; the other ranks read that file without re-hashing it. A rank that cannot read it (a run folder on a
    node-local disk) stops with the folders named, instead of resuming at a different step than rank 0 and hanging at
    the first collective."""
    if world == 1:
        return latest(folder)
    import torch.distributed as td

    found = latest(folder) if rank == 0 else None
    choice = [str(found[0]) if found else None]
    td.broadcast_object_list(choice, src=0)
    if rank == 0 or choice[0] is None:
        return found
    try:
        return Path(choice[0]), load(choice[0], verify=False)
    except ValueError as e:
        raise ValueError(f"rank {rank} cannot resume from the checkpoint rank 0 chose ({e}): every rank must see "
                         f"rank 0's checkpoint folder {str(folder)!r}; put run.out_dir on a file system all nodes "
                         "share") from None


def latest(folder: str | Path) -> tuple[Path, dict] | None:
    """Newest checkpoint in ``folder`` that loads and verifies (older ones are tried when the newest is bad)."""
    for path in sorted(Path(folder).glob("step_*.pt"), reverse=True):
        try:
            return path, load(path)
        except ValueError as e:
            log.warning("skipping %s", e)
    return None


# ---- the run state of a training run (train.py): what a checkpoint holds and how it is put back


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_compatible(saved: dict, cfg, path: str | Path, error=ValueError) -> None:
    """Refuse a checkpoint whose architecture keys differ from ``cfg``'s, naming the key and both values."""
    from .config import ARCH_KEYS, from_dict, get

    old = from_dict(saved)
    for key in ARCH_KEYS:
        if get(old, key) != get(cfg, key):
            raise error(f"checkpoint {path} was trained with {key}={get(old, key)!r}, this run has {get(cfg, key)!r}")


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _changed_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def run_state(st, step: int, *, metrics: dict, config: dict, version: str) -> dict:
    """Everything an exact resume needs, for the built stages ``st`` (train.Stages) after ``step`` steps."""
    return {"step": step, "model": st.model.state_dict(), "method": st.method.state_dict(),
            "teacher": st.teacher.state_dict() if st.teacher is not None else None,
            "optimizer": st.opt.state_dict(), "scaler": st.prec.scaler.state_dict() if st.prec.scaler else None,
            "probe": st.probe.state() if st.probe is not None else None, "metrics": metrics, "config": config,
            "resolved": dataclasses.asdict(st.resolved), "rng": rng_state(st.device), "version": version}


def restore(st, state: dict, *, cfg, path: str | Path) -> tuple[int, dict]:
    """Put ``state`` (as ``load`` read it: on the CPU) back into the stages, every tensor onto the run's device;
    returns (step, metrics). Raises ConfigError for a checkpoint of another architecture or without the probe."""
    from .config import ConfigError, from_dict, to_dict

    missing = {"step", "model", "method", "optimizer", "config", "metrics", "rng"} - set(state)
    if missing:
        raise ConfigError(f"{path} is not a fusedssl training checkpoint (it has no {', '.join(sorted(missing))}): "
                          "resume from a file a fusedssl run wrote")
    check_compatible(state["config"], cfg, path, error=ConfigError)
    changed = _changed_keys(to_dict(from_dict(state["config"])), to_dict(cfg))
    # where the run writes and what it logs leave its numbers unchanged
    changed = [k for k in changed if not k.startswith(("checkpoint.", "log.", "run.name", "run.out_dir"))]
    if changed:
        log.warning("resuming %s with a recipe that differs in %s: the run continues with this recipe's values, so it "
                    "no longer matches an uninterrupted run of either", path, ", ".join(changed))
    st.model.load_state_dict(state["model"])
    if st.teacher is not None:
        st.teacher.load_state_dict(state["teacher"])
    st.method.load_state_dict(state["method"], st.device)
    st.opt.load_state_dict(state["optimizer"])  # moves the momentum buffers to each parameter's device
    if st.prec.scaler is not None and state.get("scaler"):
        st.prec.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], st.device)
    if st.probe is not None:
        if state.get("probe") is None:
            raise ConfigError(f"evaluate.online_probe=true, but checkpoint {path} was written without the online "
                              "probe: resume with evaluate.online_probe=false")
        st.probe.load(state["probe"])
    return state["step"], state["metrics"]
