"""Dataset trees: scan an ImageFolder tree, check every file once, and keep an index of the good ones.

DALI stops the whole pipeline at the first file it cannot decode, and it has no option to skip one. An 800-epoch
run must not die in epoch 312 on one truncated JPEG, so every file is decoded once, up front (``fusedssl data check
ROOT``), and training reads only the files the check accepted. The index also records each image's size, which the
file pipelines need to draw random-resized-crop boxes in pixels before anything is decoded (params.py).

Tree layout: ``ROOT/<class>/**/<file>``. Classes are the sorted sub-folder names; labels are their positions, so an
empty class folder keeps its label (a warning, not an error: the labels of the other classes must not shift).

A file is rejected, with the reason recorded, when it:
  * has zero bytes;
  * is not an image, or is an image format DALI cannot decode (GIF, ICO, ...);
  * fails a full decode (truncated or corrupt data);
  * has a side under ``min_side`` pixels, or more than ``max_pixels`` pixels (checked before decoding).
Grayscale, palette, alpha and CMYK images are accepted: both pipelines decode them to RGB (DALI's CPU and GPU decoders
and PIL's ``convert("RGB")`` were checked on each). Their counts are reported. Files without an image extension are
skipped and counted; hidden files and the index itself are ignored.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("fusedssl.data")

FORMAT = "fusedssl-index/1"
INDEX_NAME = "fusedssl_index.json"
# Extensions of the formats DALI's image decoders read (JPEG, PNG, BMP, TIFF, WebP, PNM, JPEG 2000).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pnm", ".ppm", ".pgm",
                  ".pbm", ".jp2", ".j2k"}
# Image files DALI cannot decode: checked like the others, so they are listed as rejected (not silently skipped).
_OTHER_IMAGE_SUFFIXES = {".gif", ".ico", ".heic", ".avif", ".psd"}
# Formats PIL reads but DALI does not: rejected, so the DALI pipeline never sees them.
_PIL_FORMATS_OK = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000", "MPO"}
# 32-bit integer and float samples: no agreed 8-bit reading (DALI and PIL differ), so such files are rejected. 16-bit
# files are kept: both pipelines read them as the top 8 bits (fallback.decode scales them, as DALI does).
_WIDE_MODES = {"I", "F"}
_CONVERTED_MODES = {"L": "grayscale", "LA": "grayscale+alpha", "P": "palette", "PA": "palette+alpha",
                    "RGBA": "alpha", "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale",
                    "1": "bilevel", "YCbCr": "YCbCr", "RGBX": "RGBX"}


class DatasetError(ValueError):
    """A dataset tree or index that training cannot use; the message names the path."""


@dataclass
class Index:
    """The good files of a tree with labels and decoded (oriented) sizes, plus what was rejected and why."""

    root: Path
    classes: list[str]
    files: list[str]                 # paths relative to root
    labels: np.ndarray               # (N,) int64
    sizes: np.ndarray                # (N, 2) int64: width, height after EXIF orientation
    modes: list[str]                 # PIL mode of each file
    bad: list[tuple[str, str]] = field(default_factory=list)      # (relative path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        modes = Counter(_CONVERTED_MODES.get(m, m) for m in self.modes if m != "RGB")
        reasons = Counter(r.split(":")[0] for _, r in self.bad)
        parts = [f"{len(self.files)} good images in {len(self.classes)} classes"]
        if self.bad:
            parts.append(f"{len(self.bad)} rejected ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})")
        if self.skipped:
            parts.append(f"{len(self.skipped)} non-image files skipped")
        if self.empty_classes:
            parts.append(f"{len(self.empty_classes)} empty class folders ({', '.join(self.empty_classes[:5])})")
        if modes:
            parts.append("decoded to RGB: " + ", ".join(f"{n} {m}" for m, n in modes.most_common()))
        return "; ".join(parts)

    def save(self, path: Path) -> None:
        now = datetime.datetime.now().isoformat(timespec="seconds")
        doc = {"format": FORMAT, "root": str(self.root), "checked": now,
               "classes": self.classes, "empty_classes": self.empty_classes,
               "files": [[f, int(y), int(w), int(h), m]
                         for f, y, (w, h), m in zip(self.files, self.labels, self.sizes, self.modes, strict=True)],
               "bad": [list(b) for b in self.bad], "skipped": [list(s) for s in self.skipped]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)  # a reader never sees half an index


def default_index_path(root: str | Path) -> Path:
    return Path(root) / INDEX_NAME


def scan(root: str | Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, str]], list[str]]:
    """(classes, [(relative path, label)], skipped non-image files, empty class folders) of an ImageFolder tree."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset root {str(root)!r} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset root {str(root)!r} is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"dataset root {str(root)!r} has no class sub-folders (expected ROOT/<class>/<image>)")
    files, skipped, empty = [], [], []
    for label, name in enumerate(classes):
        n = 0
        seen_dirs: set[str] = set()  # real paths: a symlink loop would list the same files again and again
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                skipped.append((os.path.relpath(dirpath, root), "a folder already scanned (symlink loop or alias)"))
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith(".") or fn == INDEX_NAME:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, fn), root)
                if Path(fn).suffix.lower() in IMAGE_SUFFIXES | _OTHER_IMAGE_SUFFIXES:
                    files.append((rel, label))
                    n += 1
                else:
                    skipped.append((rel, "not an image file name"))
        if n == 0:
            empty.append(name)
    if not files:
        raise DatasetError(f"dataset root {str(root)!r} has no image files in its {len(classes)} class folders")
    return classes, files, skipped, empty


def check_file(path: str | Path, min_side: int, max_pixels: int) -> tuple[str | None, int, int, str]:
    """(reason it is bad or None, width, height, mode): a full decode with PIL, sizes after EXIF orientation."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "zero bytes", 0, 0, ""
        with Image.open(path) as im:
            w, h, mode, fmt = im.width, im.height, im.mode, im.format
            if fmt not in _PIL_FORMATS_OK:
                return f"unsupported format: {fmt} (DALI cannot decode it)", w, h, mode
            if mode in _WIDE_MODES:
                return f"unsupported: {mode} samples (32-bit integer or float; convert the file to 8-bit)", w, h, mode
            if w < min_side or h < min_side:
                return f"too small: {w}x{h} (data check min_side={min_side})", w, h, mode
            if w * h > max_pixels:
                return f"too large: {w}x{h} (data check max_pixels={max_pixels})", w, h, mode
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation: 5-8 swap width and height
            im.load()  # the full decode: truncated or corrupt data raises here
    except UnidentifiedImageError:
        return "not an image: no image format recognised", 0, 0, ""
    except Image.DecompressionBombError as e:  # more than twice PIL's pixel limit: refused before decoding
        return f"too large: {e}", 0, 0, ""
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated/corrupt data
        return f"corrupt: {e}", 0, 0, ""
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return None, w, h, mode


def _check_one(args):
    root, rel, min_side, max_pixels = args
    return check_file(Path(root) / rel, min_side, max_pixels)


def check(root: str | Path, *, out: str | Path | None = None, workers: int = 0, min_side: int = 16,
          max_pixels: int = 89_478_485) -> Index:
    """Decode every file of the tree once, write the index (default ROOT/fusedssl_index.json) and return it.

    ``max_pixels`` defaults to PIL's decompression-bomb limit. ``workers`` > 1 decodes in that many processes.
    """
    root = Path(root).resolve() if Path(root).exists() else Path(root)
    classes, cands, skipped, empty = scan(root)
    jobs = [(str(root), rel, min_side, max_pixels) for rel, _ in cands]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_check_one, jobs, chunksize=max(1, min(256, len(jobs) // (8 * workers))))
    else:
        results = [_check_one(j) for j in jobs]
    good, bad = [], []
    for (rel, label), (reason, w, h, mode) in zip(cands, results, strict=True):
        if reason is None:
            good.append((rel, label, w, h, mode))
        else:
            bad.append((rel, reason))
    for rel, reason in bad:
        log.warning("data check: rejected %s: %s", rel, reason)
    for name in empty:
        log.warning("data check: class folder %r has no images (its label is kept)", name)
    if not good:
        raise DatasetError(f"dataset root {str(root)!r}: none of its {len(cands)} image files decodes "
                           f"(first: {bad[0][0]}: {bad[0][1]})")
    idx = Index(root, classes, [g[0] for g in good], np.array([g[1] for g in good], dtype=np.int64),
                np.array([[g[2], g[3]] for g in good], dtype=np.int64), [g[4] for g in good], bad, skipped, empty)
    path = Path(out) if out else default_index_path(root)
    try:
        idx.save(path)
    except OSError as e:
        raise DatasetError(f"cannot write the dataset index {str(path)!r} ({e.strerror}): "
                           "give a writable path (data.index, or --out of fusedssl data check)") from e
    log.info("data check: %s; index written to %s", idx.summary(), path)
    return idx


def load(path: str | Path, root: str | Path) -> Index:
    """Read an index written by ``check``; ``root`` is the tree it must describe (it may have moved since)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"dataset index {str(path)!r} does not exist: run `fusedssl data check {root}`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"dataset index {str(path)!r} is unreadable ({e}): rerun `fusedssl data check {root}`") \
            from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DatasetError(f"{str(path)!r} is not a fusedssl dataset index (format {FORMAT}): "
                           f"rerun `fusedssl data check {root}`")
    rows = doc["files"]
    if not rows:
        raise DatasetError(f"dataset index {str(path)!r} lists no good files")
    return Index(Path(root), doc["classes"], [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64),
                 np.array([[r[2], r[3]] for r in rows], dtype=np.int64), [r[4] for r in rows],
                 [tuple(b) for b in doc.get("bad", [])], [tuple(s) for s in doc.get("skipped", [])],
                 doc.get("empty_classes", []))


def read_bytes(root: Path, rel: str, index_path: str) -> np.ndarray:
    """A file's encoded bytes; a file that vanished since the check is named, with the fix."""
    try:
        return np.fromfile(root / rel, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{str(root / rel)!r} is listed in the dataset index {index_path!r} but no longer "
                           f"exists: rerun `fusedssl data check {root}`") from None


def photo_sources() -> dict[str, Path]:
    """Real photographs that ship inside installed dependencies (scikit-learn and matplotlib, both mlxtend's)."""
    import matplotlib
    import sklearn.datasets

    sk = Path(sklearn.datasets.__file__).parent / "images"
    mpl = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    found = {"china": sk / "china.jpg", "flower": sk / "flower.jpg", "grace_hopper": mpl / "grace_hopper.jpg"}
    return {k: v for k, v in found.items() if v.exists()}


def write_photo_tree(root: str | Path, per_class: int, *, seed: int = 0, sides: tuple[int, int] = (96, 320),
                     quality: int = 90) -> Path:
    """An ImageFolder tree of JPEGs cut from the bundled real photographs: one class per photograph, each image a
    random crop (10-60 % of the area, aspect 3/4-4/3) resized to a random side in ``sides`` and maybe flipped.

    For tests and ``fusedssl bench data`` on a machine with no dataset (no download)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name, src in sorted(photo_sources().items()):
        with Image.open(src) as im:
            photo = im.convert("RGB")
        (root / name).mkdir(parents=True, exist_ok=True)
        W, H = photo.size
        for i in range(per_class):
            area = W * H * rng.uniform(0.1, 0.6)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = min(W, round(np.sqrt(area * ratio))), min(H, round(np.sqrt(area / ratio)))
            x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            long_side = int(rng.integers(sides[0], sides[1] + 1))
            scale = long_side / max(w, h)
            crop = photo.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR,
                                box=(x0, y0, x0 + w, y0 + h))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(root / name / f"{name}_{i:05d}.jpg", quality=quality)
    return root
