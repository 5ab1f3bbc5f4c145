"""PIL fallback loader: the same views as the DALI pipeline, decoded and augmented by PIL in DataLoader workers.

Used where DALI is not installed or ``data.loader=torch`` asks for it. Each worker builds whole steps: it decodes the
rank's files once and cuts every view from the decoded image with the parameters of params.py. The operations are the
ones torchvision's transforms apply to PIL images (resize of the crop box with PIL's antialiased bilinear filter,
ImageEnhance brightness/contrast/colour, ITU-R 601 luma grayscale, PIL Gaussian blur with radius = sigma,
ImageOps.solarize at 128), except the hue, which is DALI's YIQ chroma rotation. With the same parameters, the two
pipelines agree to about 1 grey level per pixel on average (tests/test_data.py), so the fallback is the DALI recipe.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import threading

import numpy as np
import torch
from fusedssl import kernels

from .folder import read_bytes
from .params import Plan, ViewParams


def _rotate_hue(im, turns: float):
    """Hue as a rotation of the chroma plane of YIQ by ``turns`` of a circle, as DALI's ``fn.hsv`` does it (same
    sign: tested against it) and the fused kernel too. torchvision shifts the H of HSV instead: same idea, other
    details."""
    from PIL import Image

    m = kernels.colour_matrix(np.ones(1), np.array([turns]))[0].reshape(3, 3)
    y = np.asarray(im, dtype=np.float32) @ m.T
    return Image.fromarray(np.clip(y + 0.5, 0, 255).astype(np.uint8))


def _augment(im, p: ViewParams, k: int, size: int):
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    left, top, w, h = (int(v) for v in p.box[k])
    x = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if p.flip[k]:
        x = x.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance, f in ((ImageEnhance.Brightness, p.brightness[k]), (ImageEnhance.Contrast, p.contrast[k]),
                       (ImageEnhance.Color, p.saturation[k])):
        if f != 1.0:
            x = enhance(x).enhance(float(f))
    if p.hue[k] != 0.0:
        x = _rotate_hue(x, float(p.hue[k]))
    if p.gray[k]:
        x = x.convert("L").convert("RGB")
    if p.blur[k]:
        x = x.filter(ImageFilter.GaussianBlur(radius=float(p.sigma[k])))
    if p.solarize[k]:
        x = ImageOps.solarize(x, 128)
    return np.asarray(x)


def decode(data: np.ndarray):
    """Encoded bytes -> RGB PIL image with its EXIF orientation applied (as the index's sizes and DALI assume)."""
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data.tobytes()))
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):  # PIL's RGB conversion clips 16-bit samples at 255; DALI keeps the top 8 bits
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    return im.convert("RGB")


class StepBatches(torch.utils.data.Dataset):
    """``dataset[step]`` -> the rank's views at ``step``: a list of uint8 (n, size, size, 3) tensors."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def __len__(self) -> int:  # steps are unbounded; the sampler decides which are read
        return 2**62

    def __getitem__(self, step: int) -> list[torch.Tensor]:
        plan = self.plan
        params = plan.params(step)
        out = [np.empty((plan.per_rank, r.size, r.size, 3), np.uint8) for r in plan.recipes]
        for k, i in enumerate(plan.rows(step)):
            im = decode(read_bytes(plan.index.root, plan.index.files[i], plan.index_path))
            for v, (p, r) in enumerate(zip(params, plan.recipes, strict=True)):
                out[v][k] = _augment(im, p, k, r.size)
        return [torch.from_numpy(o) for o in out]


def _worker_context():
    """forkserver, not fork: a forked worker inherits any DALI pipeline the parent holds or has not yet collected, and a
    DALI pipeline finalised in the child waits forever on threads that do not exist there (seen as a hung test). The
    server imports this module (and torch, PIL) once, so each worker starts by a cheap fork of it."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, f"{__package__}._forkserver", "PIL.Image", "PIL.ImageEnhance",
                                "PIL.ImageFilter", "PIL.ImageOps"])
    return ctx


def guard_stop_signals(trainer: int, *_worker_id) -> None:
    """In a data worker process: SIGTERM and SIGUSR1 from anyone but the training process ``trainer`` are the
    training process's to handle, and are left to it. torchrun and SLURM signal the whole process group (or job step);
    a worker that died of that would crash the run before its preemption checkpoint. SIGTERM from the trainer itself
    (multiprocessing's shutdown of its daemonic workers) still ends the worker: a thread waits for the signals
    (blocked everywhere else) and reads who sent them.

    The worker also ends when the trainer dies without shutting it down (SIGKILL, OOM kill). A worker's parent is
    the forkserver, not the trainer, so DataLoader's own parent check never fires; and the forkserver lives while any
    worker holds its liveness pipe, so without this watch a killed trainer leaves its workers and server behind for
    good, each holding a copy of the dataset state."""
    stop = {signal.SIGTERM, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before any other thread starts: they inherit the mask
    for sig in stop:  # the server ignores them (_forkserver.py); here they are waited for instead
        signal.signal(sig, signal.SIG_DFL)

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo(stop)
            if info.si_signo == signal.SIGTERM and info.si_pid == trainer:
                os._exit(0)

    threading.Thread(target=wait, name="fusedssl-signals", daemon=True).start()
    threading.Thread(target=_exit_with, args=(trainer,), name="fusedssl-trainer-watch", daemon=True).start()


def _exit_with(pid: int) -> None:
    """End this process as soon as process ``pid`` has exited (a pidfd where the kernel has them, else a 1 s poll)."""
    import select
    import time

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass
            time.sleep(1.0)
    select.select([fd], [], [])  # readable once the process has exited
    os._exit(0)


def loader(plan: Plan, start: int, *, workers: int, prefetch: int, pin_memory: bool):
    """An iterator over the steps ``start, start + 1, ...`` (workers keep the order of the steps)."""
    kw = {"prefetch_factor": prefetch, "persistent_workers": False,
          "worker_init_fn": functools.partial(guard_stop_signals, os.getpid()),
          "multiprocessing_context": _worker_context()} if workers else {}
    return iter(torch.utils.data.DataLoader(StepBatches(plan), batch_size=None, sampler=range(start, 2**62),
                                            num_workers=workers, pin_memory=pin_memory, **kw))
