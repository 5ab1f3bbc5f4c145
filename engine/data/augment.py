"""In-memory augmentation: a uint8 batch already on the device, augmented per sample with drawn parameters.

Used for the tensor sources (the bundled digits, synthetic images), where the whole dataset sits on the device.
Batched plain tensor ops, per sample and per view (methods.md §12.2), applying the ``ViewParams`` that params.py drew
(the one source of random decisions, shared with the file pipelines): random resized crop and horizontal flip as one
affine resampling of the crop box, colour jitter (brightness, contrast, saturation, hue as a chroma rotation in YIQ),
grayscale, Gaussian blur with a per-sample sigma, solarisation, normalisation, channels-last output. Jitter is applied
in a fixed order (torchvision permutes it per sample), the order the file pipelines use.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from fusedssl.kernels import LUMA, TO_YIQ  # noqa: F401  (shared with the file pipelines)

from .params import ViewParams, ViewRecipe


@functools.lru_cache(maxsize=32)
def _constant(values: tuple, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant on ``device``, made once: building it per call (``torch.tensor(..., device=cuda)``) is a
    blocking host-to-device copy, several per view per step."""
    return torch.tensor(values, dtype=torch.float64).to(dtype).view(shape).to(device)


def _flat(m) -> tuple:
    return tuple(float(v) for row in m for v in row)


# YIQ's inverse, computed once on the host (torch.linalg.inv on a GPU reads its info flag back: a sync per view)
FROM_YIQ = torch.linalg.inv(torch.tensor(TO_YIQ, dtype=torch.float64)).tolist()


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * _constant(tuple(LUMA), (1, 3, 1, 1), x.dtype, x.device)).sum(1, keepdim=True)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


# The columns of a view's parameters on the device, packed so they travel in one copy.
_COLS = ("left", "top", "w", "h", "flip", "brightness", "contrast", "saturation", "hue", "gray", "blur", "sigma",
         "solarize")


def _on_device(p: ViewParams, device: torch.device) -> dict[str, torch.Tensor]:
    """The drawn parameters as float32 columns on ``device``: one host-to-device copy (asynchronous on a GPU)."""
    cols = [p.box[:, 0], p.box[:, 1], p.box[:, 2], p.box[:, 3], p.flip, p.brightness, p.contrast, p.saturation,
            p.hue, p.gray, p.blur, p.sigma, p.solarize]
    host = torch.from_numpy(np.stack(cols, 1).astype(np.float32))
    if device.type == "cuda":
        host = host.pin_memory()
    t = host.to(device, non_blocking=True)
    return {name: t[:, i] for i, name in enumerate(_COLS)}


def _crop_flip(x: torch.Tensor, size: int, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Resize the crop box (in pixels, sub-pixel allowed) to size x size, flipped where drawn, as one bilinear affine
    resampling."""
    n, _, H, W = x.shape
    sign = 1.0 - 2.0 * d["flip"]
    # theta maps the output's normalised coordinates [-1, 1] onto the box's in the input (align_corners=False).
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = d["w"] / W * sign
    theta[:, 0, 2] = (2 * d["left"] + d["w"]) / W - 1
    theta[:, 1, 1] = d["h"] / H
    theta[:, 1, 2] = (2 * d["top"] + d["h"]) / H - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _jitter(x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in this order, where any factor differs from the identity."""
    dev = x.device
    apply = (d["brightness"] != 1) | (d["contrast"] != 1) | (d["saturation"] != 1) | (d["hue"] != 0)
    y = (x * d["brightness"].view(-1, 1, 1, 1)).clamp(0, 1)
    m = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - m) * d["contrast"].view(-1, 1, 1, 1) + m).clamp(0, 1)
    gr = _gray(y)
    y = ((y - gr) * d["saturation"].view(-1, 1, 1, 1) + gr).clamp(0, 1)
    # Hue: rotate the chroma (I, Q) plane of YIQ by 2*pi*h.
    angle = d["hue"] * 2 * math.pi
    yiq = torch.einsum("ij,njhw->nihw", _constant(_flat(TO_YIQ), (3, 3), y.dtype, dev), y)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    y = torch.einsum("ij,njhw->nihw", _constant(_flat(FROM_YIQ), (3, 3), y.dtype, dev), yiq).clamp(0, 1)
    return _where(apply, y, x)


def blur_window(size: int) -> int:
    """Odd Gaussian window of about 10 % of the output side (23 px at 224, as in BYOL's recipe)."""
    return max(3, 2 * (size // 20) + 1)


def _blur(x: torch.Tensor, size: int, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Separable Gaussian blur, per-sample sigma; samples not drawn get a delta kernel."""
    n, ch, hh, ww = x.shape
    dev = x.device
    k = blur_window(size)
    pos = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    ker = torch.exp(-pos.view(1, -1) ** 2 / (2 * d["sigma"].view(-1, 1) ** 2))
    ker = ker / ker.sum(1, keepdim=True)
    delta = (pos == 0).to(x.dtype).expand(n, k)
    ker = torch.where(d["blur"].view(-1, 1) > 0, ker, delta).repeat_interleave(ch, 0)  # (n*ch, k)
    y = x.reshape(1, n * ch, hh, ww)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker.view(n * ch, 1, 1, k), groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker.view(n * ch, 1, k, 1), groups=n * ch)
    return y.view(n, ch, hh, ww)


def augment(images: torch.Tensor, r: ViewRecipe, p: ViewParams, channels_last: bool = True) -> torch.Tensor:
    """One view of a uint8 (N, C, H, W) batch with its drawn parameters ``p`` -> normalised float32 (N, 3, size,
    size). ``p`` is from ``params.draw`` for images of H x W (its boxes are in the batch's pixels)."""
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if len(p.flip) != x.shape[0]:
        raise ValueError(f"augment: parameters for {len(p.flip)} samples, images for {x.shape[0]}")
    d = _on_device(p, x.device)
    x = _crop_flip(x, r.size, d)
    x = _jitter(x, d)
    x = _where(d["gray"] > 0, _gray(x).expand(-1, 3, -1, -1), x)
    x = _blur(x, r.size, d)
    x = _where(d["solarize"] > 0, torch.where(x >= 0.5, 1.0 - x, x), x)
    x = normalize(x, r.mean, r.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = _constant(tuple(mean), (1, 3, 1, 1), x.dtype, x.device)
    return (x - m) / _constant(tuple(std), (1, 3, 1, 1), x.dtype, x.device)


def eval_view(images: torch.Tensor, size: int, mean, std, channels_last: bool = True) -> torch.Tensor:
    """Deterministic evaluation view: resize to ``size`` and normalise."""
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
