"""The data stage for file datasets: index -> plan -> DALI or PIL pipeline -> normalised channels-last views.

``views(step)`` has the contract of the in-memory stage: step-addressed, so resume is exact with nothing to save but
the step. The pipelines stream steps in order; asking for any other step (a resume, a rollback) restarts the pipeline
at that step, which costs one pipeline start and changes nothing in the result.

With DALI decoding on the CPU, the photometric steps (colour jitter, grayscale, blur, solarisation) and the
normalisation run by default in one fused C++ kernel after DALI's decode, crop and resize (``data.photometric``:
kernel), which is what makes DALI faster than the PIL fallback on a CPU; ``dali`` keeps them in DALI operators.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from fusedssl import kernels

from . import dali, fallback, folder
from .params import Plan, ViewParams, ViewRecipe

log = logging.getLogger("fusedssl.data")


def resolve_index(cfg, rank: int, wait_s: float = 600.0) -> tuple[folder.Index, str]:
    """The index of ``data.root``: read it, or (``data.check=auto``) check the tree first when there is none. Only
    rank 0 checks; the others wait for its index at most ``wait_s`` (the collective timeout), never forever."""
    if not Path(cfg.root).is_dir():
        why = "it does not exist" if not Path(cfg.root).exists() else "it is a file"
        raise folder.DatasetError(f"data.root={cfg.root!r} is not a folder ({why})")
    path = Path(cfg.index) if cfg.index else folder.default_index_path(cfg.root)
    if not path.exists():
        if cfg.check == "require":
            raise folder.DatasetError(
                f"data.root={cfg.root!r} has no dataset index at {str(path)!r} and data.check=require: run "
                f"`fusedssl data check {cfg.root}` first (it decodes every file once and lists the bad ones)")
        if rank == 0:
            log.info("data: no index at %s; checking every file of %s first (data.check=auto)", path, cfg.root)
            folder.check(cfg.root, out=path, workers=cfg.workers, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
        else:  # rank 0 checks; the others wait for its index (a collective could time out on a large tree)
            end = time.monotonic() + wait_s
            while not path.exists():
                if time.monotonic() > end:
                    raise folder.DatasetError(
                        f"rank {rank} waited {wait_s:.0f} s for rank 0's dataset index at {str(path)!r}: rank 0 is "
                        f"still checking {cfg.root!r}, or this rank cannot see the file (node-local data). Run "
                        f"`fusedssl data check {cfg.root}` before training (on every node for node-local copies) "
                        "and set data.check=require")
                time.sleep(1.0)
    idx = folder.load(path, cfg.root)
    log.info("data: %s (index %s)", idx.summary(), path)
    return idx, str(path)


def choose_loader(cfg, device: torch.device) -> str:
    if cfg.loader == "dali" and not dali.available():
        raise folder.DatasetError("data.loader=dali but NVIDIA DALI is not installed: pip install "
                                  "nvidia-dali-cuda130 (or fusedssl[dali]), or set data.loader=torch")
    if cfg.loader == "auto":
        if dali.available():
            return "dali"
        if device.type == "cuda":  # a few hundred images/s per rank: it would starve the GPU several times over
            raise folder.DatasetError("data.loader=auto on a GPU run found no NVIDIA DALI: install it (pip install "
                                      "nvidia-dali-cuda130) for GPU decoding, or set data.loader=torch to train with "
                                      "the PIL loader knowingly")
        log.warning("data: NVIDIA DALI is not installed; using the PIL loader (pip install nvidia-dali-cuda130)")
        return "torch"
    return cfg.loader


def choose_photometric(cfg, dali_device: str, device: torch.device) -> str:
    """Where the photometric steps run: "kernel" (the fused C++ kernel, CPU decoding) or "dali" (DALI operators).
    ``auto`` takes the kernel only for a CPU run: on a GPU run it would send float32 views over PCIe, four times the
    bytes of the uint8 views that DALI's operators leave for the GPU to normalise."""
    why = kernels.why_not("photometric_augment", "cuda", torch.device("cpu"))  # the extension's CPU kernel
    if cfg.photometric == "kernel":
        if why:
            raise folder.DatasetError(f"data.photometric=kernel: {why}; or set data.photometric=dali")
        if dali_device == "mixed":
            raise folder.DatasetError("data.photometric=kernel runs on the CPU after CPU decoding, but "
                                      "data.dali_device is mixed (GPU decoding): set data.photometric=dali (or auto)")
        return "kernel"
    if cfg.photometric == "auto":
        return "kernel" if dali_device == "cpu" and device.type == "cpu" and why is None else "dali"
    return "dali"


class FileViews:
    """Step-addressed views of a checked file dataset for this rank (see the module note)."""

    train = None  # the kNN monitor needs an in-memory labelled split; file datasets are evaluated by fusedssl eval
    test = None

    def __init__(self, plan: Plan, cfg, device: torch.device, channels_last: bool, *, loader: str,
                 dali_device: str = "cpu", photometric: str = "dali"):
        """``cfg``: the ``data`` section; ``loader``, ``dali_device`` and ``photometric``: its choices resolved
        (``build`` resolves them)."""
        self.plan, self.loader, self.device, self.channels_last = plan, loader, device, channels_last
        self.steps_per_epoch = plan.steps_per_epoch
        self.mean, self.std = tuple(cfg.mean), tuple(cfg.std)
        mean_t, std_t = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (cfg.mean, cfg.std))
        self._scale, self._shift = 1.0 / (255.0 * std_t), -mean_t / std_t  # (x / 255 - mean) / std on uint8 x
        self.photometric = photometric if loader == "dali" else "pil"
        self._opts = {"workers": cfg.workers, "prefetch": cfg.prefetch, "dali_device": dali_device,
                      "roi_decode": cfg.roi_decode, "hw_decoder_load": cfg.hw_decoder_load,
                      "read_workers": cfg.read_workers}
        self._it, self._pipe, self._next = None, None, None

    def describe(self) -> str:
        o = self._opts
        if self.loader == "dali":
            dec = (f"GPU decode (hw_decoder_load={o['hw_decoder_load']})" if o["dali_device"] == "mixed"
                   else "CPU decode")
            where = "the fused kernel" if self.photometric == "kernel" else "DALI"
            return (f"DALI, {dec}, {'ROI' if o['roi_decode'] else 'full'} decode, {o['workers']} threads, "
                    f"{o['read_workers']} read workers; photometric steps in {where}")
        return f"PIL fallback, {o['workers']} DataLoader workers"

    def _start(self, step: int) -> None:
        self.close()
        o = self._opts
        if self.loader == "dali":
            device_id = (self.device.index or 0) if o["dali_device"] == "mixed" else None
            self._pipe = dali.pipeline(self.plan, step, device_id=device_id, threads=max(1, o["workers"]),
                                       prefetch=o["prefetch"], roi_decode=o["roi_decode"],
                                       hw_decoder_load=o["hw_decoder_load"], read_workers=o["read_workers"],
                                       seed=self.plan.seed,
                                       graph="geometry" if self.photometric == "kernel" else None)
        else:
            self._it = fallback.loader(self.plan, step, workers=o["workers"], prefetch=o["prefetch"],
                                       pin_memory=self.device.type == "cuda")
        self._next = step

    def _pipeline_out(self, step: int) -> list[torch.Tensor]:
        if step != self._next:
            self._start(step)
        self._next = step + 1
        if self.loader == "dali":
            return [_from_dali(t, self.device) for t in self._pipe.run()]
        return next(self._it)  # pinned by the DataLoader on a GPU run

    def _fused(self, step: int, mean, std) -> list[torch.Tensor]:
        """The geometric views of ``step`` from DALI through the fused photometric kernel: float NHWC."""
        geometry = self._pipeline_out(step)
        return [kernels.photometric_augment(x, _kernel_params(p), mean, std, backend="cuda")
                for x, p in zip(geometry, self.plan.params(step), strict=True)]

    @property
    def num_classes(self) -> int:
        return len(self.plan.index.classes)

    def labels(self, step: int) -> torch.Tensor:
        """This rank's labels at ``step`` (the online probe's targets), from the index."""
        return _to_device(torch.from_numpy(self.plan.index.labels[self.plan.rows(step)]), self.device)

    def views(self, step: int) -> list[torch.Tensor]:
        if self.photometric == "kernel":
            out = [_to_device(x, self.device).permute(0, 3, 1, 2) for x in self._fused(step, self.mean, self.std)]
        else:
            # uint8 NHWC memory is channels-last NCHW; in place after the float copy: half the time of (x - m) / s
            out = [_to_device(x, self.device).permute(0, 3, 1, 2).float().mul_(self._scale).add_(self._shift)
                   for x in self._pipeline_out(step)]
        return out if self.channels_last else [x.contiguous() for x in out]

    def close(self) -> None:
        self._pipe, self._it = None, None  # DALI pipelines and DataLoader workers shut down when released


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the run's device. To a GPU through pinned memory, so the copy is asynchronous: from pageable
    memory it would first synchronise the host with the stream."""
    if device.type != "cuda":
        return x
    return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)


def _from_dali(tl, device: torch.device) -> torch.Tensor:
    """Copy a DALI output out of DALI's memory (DALI owns it and overwrites it at the next ``run()``): on the GPU for
    mixed decoding, else into host memory, pinned when the run is on a GPU."""
    from nvidia.dali.backend import TensorListGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray

    t = tl.as_tensor()
    if isinstance(tl, TensorListGPU):
        out = torch.empty(t.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    out = torch.empty(t.shape(), dtype=torch.uint8, pin_memory=device.type == "cuda")
    feed_ndarray(t, out)
    return out


def _same_index_on_every_rank(idx: folder.Index, path: str, rank: int, world: int) -> None:
    """Node-local copies of a tree are indexed separately: they must list the same files in the same order, or the
    ranks would draw different global batches (a silent error). Refused with the index named."""
    import hashlib

    import torch.distributed as td

    if world == 1 or not td.is_initialized():  # (a rank's stage built alone, as the tests do, has no one to ask)
        return

    digest = hashlib.sha256("\n".join(map(str, idx.files)).encode() + idx.labels.tobytes()).hexdigest()
    seen = [None] * world
    td.all_gather_object(seen, digest)
    if len(set(seen)) > 1:
        odd = [r for r, d in enumerate(seen) if d != seen[0]]
        raise folder.DatasetError(f"rank(s) {odd} read a dataset index {path!r} that lists other files than rank 0's "
                                  "(node-local copies that differ): check one tree and copy its index to every node")


def build(cfg, recipes: list[ViewRecipe], *, seed: int, rank: int, world: int, device: torch.device,
          channels_last: bool, wait_s: float = 600.0) -> FileViews:
    idx, path = resolve_index(cfg, rank, wait_s)
    _same_index_on_every_rank(idx, path, rank, world)
    plan = Plan.of_index(idx, recipes, cfg.batch_size, seed, rank, world, path)
    loader = choose_loader(cfg, device)
    dali_device = cfg.dali_device
    if dali_device == "auto":
        dali_device = "mixed" if device.type == "cuda" else "cpu"
    if dali_device == "mixed" and device.type != "cuda":
        raise folder.DatasetError("data.dali_device=mixed decodes on the GPU, but the run's device is "
                                  f"{device.type}: set data.dali_device=cpu (or auto)")
    photometric = choose_photometric(cfg, dali_device, device) if loader == "dali" else "dali"
    stage = FileViews(plan, cfg, device, channels_last, loader=loader, dali_device=dali_device,
                      photometric=photometric)
    log.info("data: %s; %d steps per epoch", stage.describe(), plan.steps_per_epoch)
    return stage


def _kernel_params(p: ViewParams) -> kernels.PhotoParams:
    """The fused kernel's per-sample arguments from a view's drawn parameters."""
    return kernels.photo_params(p.brightness, p.contrast, p.saturation, p.hue, p.gray, p.blur, p.sigma, p.solarize)
