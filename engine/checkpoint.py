"""Checkpoint stage: one dict with the complete state, written atomically, newest valid one found on resume.

A checkpoint holds model, teacher, method state (DirectPred's F^), optimiser, step, RNG states, the resolved config,
metrics and the code version. The write goes to a temporary file in the same folder, is flushed and fsynced, then
renamed over the final name, so a crash mid-write never leaves a truncated ``step_*.pt``; a SHA-256 of the payload is
stored beside it and checked on load, and ``latest`` skips any checkpoint that fails to load or verify.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("fusedssl")


def _path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pt"


def save(folder: str | Path, step: int, state: dict, keep: int) -> Path:
    """Atomically write ``state`` as step_<step>.pt and prune to the newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    final = _path(folder, step)
    tmp = final.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
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
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return final


def load(path: str | Path) -> dict:
    """Load and verify one checkpoint; raises ValueError naming the file if it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    payload = path.read_bytes()
    sha = path.with_suffix(".sha256")
    if sha.is_file() and hashlib.sha256(payload).hexdigest() != sha.read_text().strip():
        raise ValueError(f"checkpoint {str(path)!r} does not match its checksum (truncated or corrupt)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {e}") from None


def latest(folder: str | Path) -> tuple[Path, dict] | None:
    """Newest checkpoint in ``folder`` that loads and verifies (older ones are tried when the newest is bad)."""
    for path in sorted(Path(folder).glob("step_*.pt"), reverse=True):
        try:
            return path, load(path)
        except ValueError as e:
            log.warning("skipping %s", e)
    return None
