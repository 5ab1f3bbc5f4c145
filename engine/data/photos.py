"""The second bundled real data set: grey crops of the photographs that ship inside installed packages, labelled by
the photograph they were cut from (``data.source=photos``).

Digits alone would let a recipe be tuned to one data set; this one is natural texture and structure (a cat, coffee,
coins, bricks, gravel, a retina, the Hubble deep field, ...), needs no download and is built the same way on every
machine. Train and held-out crops never share a pixel: each photograph, resized so its shorter side is ``SIDE``
pixels, is cut into a ``GRID`` x ``GRID`` grid of cells, a seeded ``test_fraction`` of the cells of every photograph
is held out, and every crop (a random square of 50-100 % of the cell's side, resized to ``STORED`` pixels) lies
inside one cell. The crops are grey (the digits recipes, which have no colour augmentation, apply unchanged, and a
class cannot be told by its colour alone). Classes are the photographs found, sorted by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .params import rng

SIDE = 192       # shorter side of every photograph before it is cut into cells
GRID = 4         # cells per side
CROPS = 16       # crops per cell: 13 training cells x 16 x 20 photographs = 4,160 crops, sized like the digits
STORED = 32      # stored crop side (views are cut from it at data.image_size)
MEAN, STD = (0.42, 0.42, 0.42), (0.22, 0.22, 0.22)  # pixel statistics of the training crops (seed 0), per channel

# scikit-image's bundled photographs (its synthetic test patterns, tiny images and stereo pairs' twin are left out)
SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
           "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
           "page.png", "retina.jpg", "rocket.jpg", "text.png")


def sources() -> dict[str, Path]:
    """Name -> file of every bundled photograph found: scikit-image's, scikit-learn's and matplotlib's."""
    from .folder import photo_sources

    found = dict(photo_sources())
    try:
        import skimage
    except ImportError as e:
        raise ImportError("data.source=photos needs scikit-image (pip install scikit-image): it bundles the "
                          "photographs") from e
    root = Path(skimage.__file__).parent / "data"
    for file in SKIMAGE:
        if (root / file).exists():
            found[file.rsplit(".", 1)[0]] = root / file
    return dict(sorted(found.items()))


def _grey(path: Path) -> np.ndarray:
    """The photograph as float32 luminance in [0, 255], shorter side ``SIDE``."""
    from PIL import Image

    with Image.open(path) as im:
        g = im.convert("L")
        w, h = g.size
        s = SIDE / min(w, h)
        g = g.resize((max(SIDE, round(w * s)), max(SIDE, round(h * s))), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(g, dtype=np.float32)


def split_cells(seed: int, label: int, test_fraction: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train cells, held-out cells) of photograph ``label`` as (row, column) pairs: a seeded permutation of the
    grid, the first ``round(GRID^2 x test_fraction)`` (at least one) held out."""
    n_test = max(1, round(GRID * GRID * test_fraction))
    if n_test >= GRID * GRID:
        raise ValueError(f"data.test_fraction={test_fraction} leaves no training cell of the {GRID}x{GRID} grid")
    cells = [(int(i) // GRID, int(i) % GRID) for i in rng(seed, "split", label).permutation(GRID * GRID)]
    return cells[n_test:], cells[:n_test]


def crop_boxes(h: int, w: int, cells: list[tuple[int, int]], g: np.random.Generator) -> list[tuple[int, int, int]]:
    """``CROPS`` squares (top, left, side) per cell of an h x w photograph, each inside its cell."""
    ch, cw = h // GRID, w // GRID
    boxes = []
    for r, c in cells:
        for _ in range(CROPS):
            side = int(g.integers(max(1, min(ch, cw) // 2), min(ch, cw) + 1))
            boxes.append((r * ch + int(g.integers(0, ch - side + 1)), c * cw + int(g.integers(0, cw - side + 1)),
                          side))
    return boxes


def _crops(photo: np.ndarray, boxes: list[tuple[int, int, int]]) -> np.ndarray:
    """The boxes resized (area-averaged when shrinking) to ``STORED`` pixels: (n, STORED, STORED) uint8."""
    import torch.nn.functional as F

    t = torch.from_numpy(photo)
    out = [F.interpolate(t[y:y + s, x:x + s][None, None], size=(STORED, STORED),
                         mode="area" if s >= STORED else "bilinear")[0, 0] for y, x, s in boxes]
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8).numpy()


def load(test_fraction: float, seed: int):
    """(train, test) Splits of grey crops, (N, 1, STORED, STORED) uint8, labels = index of the photograph."""
    from . import Split

    names = sources()
    if len(names) < 2:
        raise FileNotFoundError("data.source=photos found fewer than two bundled photographs")
    parts = {"train": ([], []), "test": ([], [])}
    for label, path in enumerate(names.values()):
        train_cells, test_cells = split_cells(seed, label, test_fraction)
        g = rng(seed, "crops", label)
        photo = _grey(path)
        for split, chosen in (("test", test_cells), ("train", train_cells)):
            x = _crops(photo, crop_boxes(*photo.shape, chosen, g))
            parts[split][0].append(x)
            parts[split][1].append(np.full(len(x), label, dtype=np.int64))
    out = []
    for split in ("train", "test"):
        x, y = (np.concatenate(p) for p in parts[split])
        out.append(Split(torch.from_numpy(x[:, None]), torch.from_numpy(y)))
    return tuple(out)
