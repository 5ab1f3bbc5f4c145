"""In-memory augmentation: per-sample, per-view random augmentation of a uint8 batch already on the device.

Used for the tensor sources (the bundled digits, synthetic images), where the whole dataset sits on the device.
Batched plain tensor ops, per sample and per view (methods.md §12.2): random resized crop and horizontal flip as one
affine resampling, colour jitter (brightness, contrast, saturation, hue as a chroma rotation in YIQ) with probability,
random grayscale, Gaussian blur with a per-sample sigma, solarisation, normalisation, channels-last output. Jitter is
applied in a fixed order (torchvision permutes it per sample). File datasets use the DALI or PIL pipelines instead
(dali.py, fallback.py), which draw their parameters in params.py.

Random numbers are drawn for the global batch and sliced per rank (``Draws``), so views do not depend on the world size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fusedssl.kernels import LUMA, TO_YIQ  # noqa: F401  (shared with the file pipelines)


@dataclass(frozen=True)
class ViewRecipe:
    size: int
    crop_scale: tuple[float, float]
    flip_p: float
    jitter: tuple[float, float, float, float]
    jitter_p: float
    gray_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    solarize_p: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Draws:
    """Per-sample random numbers drawn for the whole global batch, sliced to this rank's rows.

    Every draw is ``torch.rand(total)[start:start + n]``, so sample i of the global batch gets the same augmentation
    whatever the world size: W ranks together produce exactly the views of one process (DDP == single process).
    """

    def __init__(self, g: torch.Generator, device, total: int, start: int, n: int):
        self.g, self.device, self.total, self.start, self.n = g, device, total, start, n

    def rand(self) -> torch.Tensor:
        return torch.rand(self.total, generator=self.g, device=self.device)[self.start:self.start + self.n]

    def uniform(self, lo: float, hi: float) -> torch.Tensor:
        return self.rand() * (hi - lo) + lo


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


def _crop_flip(x: torch.Tensor, r: ViewRecipe, d: Draws) -> torch.Tensor:
    """Random resized crop (area in crop_scale, aspect in [3/4, 4/3]) and flip, as one bilinear affine resampling."""
    n, dev = x.shape[0], x.device
    area = d.uniform(*r.crop_scale)
    log_ratio = d.uniform(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)   # crop width/height as fractions of the image
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (d.rand() * 2 - 1) * (1 - w)
    cy = (d.rand() * 2 - 1) * (1 - h)
    flip = torch.where(d.rand() < r.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], r.size, r.size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jitter(x: torch.Tensor, r: ViewRecipe, d: Draws) -> torch.Tensor:
    dev = x.device
    b, c, s, hue = r.jitter
    apply = d.rand() < r.jitter_p
    y = x * d.uniform(1 - b, 1 + b).view(-1, 1, 1, 1)
    y = y.clamp(0, 1)
    m = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - m) * d.uniform(1 - c, 1 + c).view(-1, 1, 1, 1) + m).clamp(0, 1)
    gr = _gray(y)
    y = ((y - gr) * d.uniform(1 - s, 1 + s).view(-1, 1, 1, 1) + gr).clamp(0, 1)
    # Hue: rotate the chroma (I, Q) plane of YIQ by 2*pi*h.
    angle = d.uniform(-hue, hue) * 2 * math.pi
    yiq = torch.einsum("ij,njhw->nihw", _constant(_flat(TO_YIQ), (3, 3), y.dtype, dev), y)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    y = torch.einsum("ij,njhw->nihw", _constant(_flat(FROM_YIQ), (3, 3), y.dtype, dev), yiq).clamp(0, 1)
    return _where(apply, y, x)


def blur_window(size: int) -> int:
    """Odd Gaussian window of about 10 % of the output side (23 px at 224, as in BYOL's recipe)."""
    return max(3, 2 * (size // 20) + 1)


def _blur(x: torch.Tensor, r: ViewRecipe, d: Draws) -> torch.Tensor:
    """Separable Gaussian blur, per-sample sigma; samples not drawn get a delta kernel."""
    n, ch, hh, ww = x.shape
    dev = x.device
    apply = d.rand() < r.blur_p
    sigma = d.uniform(*r.blur_sigma)
    k = blur_window(r.size)
    pos = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    ker = torch.exp(-pos.view(1, -1) ** 2 / (2 * sigma.view(-1, 1) ** 2))
    ker = ker / ker.sum(1, keepdim=True)
    delta = (pos == 0).to(x.dtype).expand(n, k)
    ker = torch.where(apply.view(-1, 1), ker, delta).repeat_interleave(ch, 0)  # (n*ch, k)
    y = x.reshape(1, n * ch, hh, ww)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), ker.view(n * ch, 1, 1, k), groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), ker.view(n * ch, 1, k, 1), groups=n * ch)
    return y.view(n, ch, hh, ww)


def augment(images: torch.Tensor, r: ViewRecipe, g: torch.Generator, channels_last: bool = True,
            rows: tuple[int, int] | None = None) -> torch.Tensor:
    """One augmented view of a uint8 (N, C, H, W) batch -> normalised float32 (N, 3, size, size).

    ``rows = (total, start)``: the batch is rows start..start+N of a global batch of ``total`` (see ``Draws``).
    """
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    total, start = rows or (x.shape[0], 0)
    d = Draws(g, x.device, total, start, x.shape[0])
    x = _crop_flip(x, r, d)
    x = _jitter(x, r, d)
    gray = d.rand() < r.gray_p
    x = _where(gray, _gray(x).expand(-1, 3, -1, -1), x)
    x = _blur(x, r, d)
    sol = d.rand() < r.solarize_p
    x = _where(sol, torch.where(x >= 0.5, 1.0 - x, x), x)
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
