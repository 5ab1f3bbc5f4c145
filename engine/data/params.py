"""The data stage's one sampler and one source of random decisions: sample order and per-sample augmentation
parameters, drawn on the host before anything is decoded.

Every source takes its random decisions from here: the in-memory sources (augment.py applies the parameters on the
device), the DALI pipeline (dali.py) and the PIL fallback (fallback.py), instead of their own random operators, and
the evaluation's augmented copies. Every generator is ``rng(seed, stream, *keys)``: one named stream per use, so a
draw added to one use cannot shift another. Three properties follow, none of which DALI's random operators give:
  * exact resume: the parameters of step s are a pure function of (seed, step, view), so a resumed run applies the
    same augmentations with no pipeline state to save;
  * DDP == one process: parameters are drawn for the global batch and sliced to the rank's rows;
  * the two pipelines apply the same parameters, so their outputs can be compared sample by sample (tests).

Random resized crop, for decoded files, follows torchvision's rule in whole pixels: up to 10 draws of (area fraction
in ``scale``, log aspect ratio in [log 3/4, log 4/3]); the first box that fits wins; otherwise the central crop clamped
to the ratio range. The in-memory sources resample tensors, so their boxes are sub-pixel: one draw of (area, ratio),
each side clamped to the image, at a uniform continuous position. At 28 px that is worth 2 to 6 points of the demo's
kNN accuracy over whole-pixel boxes (docs/training.md gives the runs).
Colour jitter factors are drawn for every sample and set to the identity where the jitter is not applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .folder import Index

_RATIO = (3 / 4, 4 / 3)

# The streams of random numbers: "split" the held-out digits (and photograph p's held-out cells, keys: p),
# "synthetic" the synthetic images, "order" epoch e's permutation (keys: e), "view" the augmentation of view v at
# step s (keys: s, v), "eval" the evaluation's augmented copy c of batch b of a split (keys: split, c, b), "crops"
# the crops cut from photograph p (keys: p).
STREAMS = {"split": 1, "synthetic": 2, "order": 3, "view": 4, "eval": 5, "crops": 6}


def rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """The generator of ``stream`` at ``keys`` for the run's ``seed`` (all non-negative integers)."""
    return np.random.default_rng([seed, STREAMS[stream], *keys])


@dataclass(frozen=True)
class ViewRecipe:
    """How one view is augmented: the probabilities and ranges its parameters are drawn from (``draw``)."""

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


@dataclass
class ViewParams:
    """Parameters of one view for a batch: every field has the batch as its first dimension."""

    box: np.ndarray        # (n, 4) left, top, width, height of the crop: int64 pixels (files), float64 (tensors)
    flip: np.ndarray       # (n,) bool: horizontal flip
    brightness: np.ndarray  # (n,) float32 factors (1 = identity)
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray        # (n,) float32, fraction of a turn in [-h, h] (0 = identity)
    gray: np.ndarray       # (n,) bool
    blur: np.ndarray       # (n,) bool
    sigma: np.ndarray      # (n,) float32 Gaussian sigma in output pixels (drawn for every sample)
    solarize: np.ndarray   # (n,) bool

    def rows(self, start: int, n: int) -> ViewParams:
        return ViewParams(**{k: v[start:start + n] for k, v in self.__dict__.items()})


def crop_boxes(rng: np.random.Generator, sizes: np.ndarray, scale: tuple[float, float], attempts: int = 10
               ) -> np.ndarray:
    """Random-resized-crop boxes (left, top, width, height) for images of ``sizes`` (n, 2) = (width, height)."""
    n = len(sizes)
    W, H = sizes[:, 0:1].astype(np.float64), sizes[:, 1:2].astype(np.float64)
    area = W * H * rng.uniform(scale[0], scale[1], (n, attempts))
    ratio = np.exp(rng.uniform(math.log(_RATIO[0]), math.log(_RATIO[1]), (n, attempts)))
    w = np.round(np.sqrt(area * ratio))
    h = np.round(np.sqrt(area / ratio))
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    u = rng.random((n, 2))  # the box position, drawn whether or not an attempt fits (a fixed number of draws)
    first = fits.argmax(1)
    ok = fits[np.arange(n), first]
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    W, H = W[:, 0], H[:, 0]
    # Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = W / H
    fw = np.where(in_ratio > _RATIO[1], np.round(H * _RATIO[1]), W)
    fh = np.where(in_ratio < _RATIO[0], np.round(W / _RATIO[0]), H)
    w, h = np.where(ok, w, fw), np.where(ok, h, fh)
    left = np.where(ok, np.floor(u[:, 0] * (W - w + 1)), np.floor((W - w) / 2))
    top = np.where(ok, np.floor(u[:, 1] * (H - h + 1)), np.floor((H - h) / 2))
    return np.stack([left, top, w, h], 1).astype(np.int64)


def subpixel_boxes(rng: np.random.Generator, sizes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Sub-pixel random-resized-crop boxes (left, top, width, height), float64, for resampled tensors: area fraction
    in ``scale`` and log aspect ratio in [log 3/4, log 4/3] drawn once, each side clamped to the image."""
    n = len(sizes)
    W, H = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    area = rng.uniform(scale[0], scale[1], n)
    ratio = np.exp(rng.uniform(math.log(_RATIO[0]), math.log(_RATIO[1]), n))
    w = np.minimum(np.sqrt(area * ratio), 1.0) * W
    h = np.minimum(np.sqrt(area / ratio), 1.0) * H
    u = rng.random((n, 2))
    return np.stack([u[:, 0] * (W - w), u[:, 1] * (H - h), w, h], 1)


def draw(recipe: ViewRecipe, sizes: np.ndarray, rng: np.random.Generator, subpixel: bool = False) -> ViewParams:
    """Parameters of one view for a batch of images with ``sizes`` (n, 2), from ``rng`` (see ``rng()``);
    ``subpixel``: crop boxes for resampled tensors (``subpixel_boxes``) instead of whole pixels (``crop_boxes``)."""
    n = len(sizes)
    box = (subpixel_boxes if subpixel else crop_boxes)(rng, sizes, recipe.crop_scale)
    flip = rng.random(n) < recipe.flip_p
    jit = rng.random(n) < recipe.jitter_p
    b, c, s, h = recipe.jitter
    factors = [rng.uniform(1 - x, 1 + x, n) for x in (b, c, s)] + [rng.uniform(-h, h, n)]
    bright, contrast, sat, hue = (np.where(jit, f, ident).astype(np.float32)
                                  for f, ident in zip(factors, (1.0, 1.0, 1.0, 0.0), strict=True))
    gray = rng.random(n) < recipe.gray_p
    blur = rng.random(n) < recipe.blur_p
    sigma = rng.uniform(*recipe.blur_sigma, n).astype(np.float32)
    solarize = rng.random(n) < recipe.solarize_p
    return ViewParams(box, flip, bright, contrast, sat, hue, gray, blur, sigma, solarize)


class Plan:
    """What this rank reads and how it augments it at every step: a pure function of (seed, step).

    Epoch e visits the images (an in-memory source's, or the good files of a file index) in a permutation drawn from
    the "order" stream; the last partial global batch is dropped, so every epoch has exactly ``n // batch`` steps and
    every rank the same number of samples. Rank r of W takes rows r*B/W .. (r+1)*B/W of each global batch (disjoint
    shards that together form the batch).
    """

    def __init__(self, sizes: np.ndarray, recipes: list[ViewRecipe], batch: int, seed: int, rank: int, world: int,
                 *, what: str, subpixel: bool = False):
        """``sizes`` (n, 2): width and height of every image; ``what`` names them in errors; ``subpixel``: the
        images are tensors resampled on the device (sub-pixel crop boxes)."""
        if batch % world:
            raise ValueError(f"data.batch_size={batch} is not divisible by the world size {world}")
        if batch > len(sizes):
            raise ValueError(f"data.batch_size={batch} exceeds the {len(sizes)} {what}")
        self.sizes, self.recipes, self.batch, self.seed = np.asarray(sizes), recipes, batch, seed
        self.rank, self.world, self.subpixel = rank, world, subpixel
        self.per_rank = batch // world
        self.steps_per_epoch = len(sizes) // batch
        self.index, self.index_path = None, ""
        self._epoch, self._order = -1, None

    @classmethod
    def of_index(cls, index: Index, recipes: list[ViewRecipe], batch: int, seed: int, rank: int, world: int,
                 index_path: str) -> Plan:
        """The plan of a file dataset: the readers take the files from ``plan.index``."""
        plan = cls(index.sizes, recipes, batch, seed, rank, world, what=f"good images of {index.root}")
        plan.index, plan.index_path = index, index_path
        return plan

    def global_rows(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._order = rng(self.seed, "order", epoch).permutation(len(self.sizes))
            self._epoch = epoch
        return self._order[i * self.batch:(i + 1) * self.batch]

    def rows(self, step: int) -> np.ndarray:
        """This rank's file numbers (rows of the index) at ``step``."""
        start = self.rank * self.per_rank
        return self.global_rows(step)[start:start + self.per_rank]

    def params(self, step: int) -> list[ViewParams]:
        """Every view's parameters for this rank's rows at ``step`` (drawn for the global batch, then sliced)."""
        sizes = self.sizes[self.global_rows(step)]
        start = self.rank * self.per_rank
        return [draw(r, sizes, rng(self.seed, "view", step, v), self.subpixel).rows(start, self.per_rank)
                for v, r in enumerate(self.recipes)]
