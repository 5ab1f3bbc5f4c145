"""Offline evaluation: labelled data sets (the bundled digits or photos split as the run split them, or two ImageFolder
trees), the feature cache, loading a trained network from a checkpoint or a run folder, and the ``fusedssl eval``
runs with their results beside the checkpoint.

Every feature set is cached under ``<checkpoint folder>/eval_cache/`` keyed by the checkpoint's SHA-256, the weights
(backbone or teacher), the data set and the view, so a second evaluation reads features instead of running the net.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as data_stage
from ..data import params
from .metrics import ProbeSettings, extract, few_shot_bank, knn_accuracy, linear_probe

log = logging.getLogger("fusedssl")


# ------------------------------------------------------------------------------------------- labelled data sets


_SPLITS = {"train": 0, "val": 1}  # the key of each split in the "eval" stream of params.rng


class LabelledSet:
    """A labelled train/val pair the evaluation reads: ``batches(split, copy)`` yields normalised views.

    ``copy = -1`` is the deterministic evaluation view; ``copy >= 0`` the copy-th augmented pass (random resized crop
    with the run's crop scale, flip with its flip probability), drawn from the "eval" stream of the run's seed at
    (split, copy, batch) so a cache entry is exact."""

    name: str
    key: str                       # identifies the data for the feature cache
    classes: list[str]
    train_y: torch.Tensor
    val_y: torch.Tensor

    def batches(self, split: str, copy: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError


class BundledSet(LabelledSet):
    """A bundled real set (the run's ``data.source``: digits or photos; digits for any other source) split as the run
    split it (same seed: the held-out images were never trained on)."""

    def __init__(self, data_cfg, seed: int, batch: int = 512):
        self.cfg, self.seed, self.batch = data_cfg, seed, batch
        name = data_cfg.source if data_cfg.source in data_stage.BUNDLED else "digits"
        self.train, self.val = data_stage.BUNDLED[name](data_cfg.test_fraction, seed)
        self.name = name
        self.classes = ([str(i) for i in range(10)] if name == "digits"
                        else list(data_stage.photos.sources()))
        self.train_y, self.val_y = self.train.labels, self.val.labels
        self.key = f"{name}{len(self.classes)}-seed{seed}-test{data_cfg.test_fraction}-size{data_cfg.image_size}"

    def batches(self, split: str, copy: int) -> Iterator[torch.Tensor]:
        c = self.cfg
        images = (self.train if split == "train" else self.val).images
        recipe = data_stage.ViewRecipe(c.image_size, c.crop_scale, c.flip_p, (0.0, 0.0, 0.0, 0.0), 0.0, 0.0, 0.0,
                                       c.blur_sigma, 0.0, c.mean, c.std)
        sizes = np.array([images.shape[-1:-3:-1]] * self.batch, dtype=np.int64)  # (width, height) of each image
        for b, i in enumerate(range(0, len(images), self.batch)):
            x = images[i:i + self.batch]
            if copy < 0:
                yield data_stage.eval_view(x, c.image_size, c.mean, c.std, channels_last=False)
            else:
                p = params.draw(recipe, sizes[:len(x)], params.rng(self.seed, "eval", _SPLITS[split], copy, b),
                                subpixel=True)
                yield data_stage.augment(x, recipe, p, channels_last=False)


class FolderSet(LabelledSet):
    """ImageFolder trees (checked by ``fusedssl data check``; checked here first if they have no index).

    Evaluation view: resize the shorter side to size / 0.875, centre crop ``size`` (the 256/224 protocol). Validation
    classes are matched to the training classes by folder name; a validation class the training tree lacks is an
    error naming it."""

    def __init__(self, train_root: str, val_root: str, data_cfg, *, seed: int, workers: int = 2, batch: int = 256):
        from ..data import folder

        self.cfg, self.seed, self.workers, self.batch = data_cfg, seed, workers, batch
        self.tr, self.va = (_index_of(r, data_cfg) for r in (train_root, val_root))
        missing = sorted(set(self.va.classes) - set(self.tr.classes))
        used = {self.va.classes[i] for i in np.unique(self.va.labels)}
        if missing and used & set(missing):
            raise folder.DatasetError(
                f"validation tree {val_root!r} has classes absent from the training tree {train_root!r}: "
                f"{', '.join(sorted(used & set(missing))[:10])}")
        remap = np.array([self.tr.classes.index(c) if c in self.tr.classes else -1 for c in self.va.classes])
        self.name, self.classes = f"folder:{train_root}|{val_root}", list(self.tr.classes)
        self.train_y = torch.from_numpy(self.tr.labels)
        self.val_y = torch.from_numpy(remap[self.va.labels])
        h = hashlib.sha256(json.dumps([self.tr.files, self.va.files]).encode()).hexdigest()[:16]
        self.key = f"folder-{h}-size{data_cfg.image_size}"

    def batches(self, split: str, copy: int) -> Iterator[torch.Tensor]:
        idx = self.tr if split == "train" else self.va
        ds = _FolderViews(idx, self.cfg, copy, self.batch, (self.seed, _SPLITS[split]))
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers)
        yield from loader


def _index_of(root: str, data_cfg):
    from ..data import folder

    path = folder.default_index_path(root)
    if not Path(root).is_dir():
        raise folder.DatasetError(f"dataset tree {root!r} is not a folder")
    if path.exists():
        return folder.load(path, root)
    return folder.check(root, out=path, workers=max(1, data_cfg.workers), min_side=data_cfg.min_side,
                        max_pixels=data_cfg.max_pixels)


class _FolderViews(torch.utils.data.Dataset):
    def __init__(self, idx, cfg, copy: int, batch: int, seed_split: tuple[int, int]):
        self.idx, self.cfg, self.copy, self.batch, self.seed_split = idx, cfg, copy, batch, seed_split

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch)

    def __getitem__(self, b: int) -> torch.Tensor:
        from PIL import Image

        from ..data import fallback, folder

        c, size = self.cfg, self.cfg.image_size
        rows = range(b * self.batch, min(len(self.idx), (b + 1) * self.batch))
        if self.copy >= 0:
            seed, split = self.seed_split
            rng = params.rng(seed, "eval", split, self.copy, b)
            boxes = params.crop_boxes(rng, self.idx.sizes[list(rows)], c.crop_scale)
            flips = rng.random(len(rows)) < c.flip_p
        out = np.empty((len(rows), size, size, 3), np.uint8)
        for k, i in enumerate(rows):
            im = fallback.decode(folder.read_bytes(self.idx.root, self.idx.files[i], "the evaluation index"))
            if self.copy < 0:
                w, h = im.size
                s = round(size / 0.875) / min(w, h)
                im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
                left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                im = im.crop((left, top, left + size, top + size))
            else:
                left, top, w, h = (int(v) for v in boxes[k])
                im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
                if flips[k]:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
            out[k] = np.asarray(im)
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0
        return data_stage.normalize(x, c.mean, c.std)


# --------------------------------------------------------------------------------------------- feature cache


def cached_features(backbone: nn.Module, lset: LabelledSet, split: str, copy: int, *, model_key: str,
                    cache_dir: Path | None, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Raw features of one split/view, read from the cache when this model, data and view were extracted before."""
    name = hashlib.sha256(f"{model_key}|{lset.key}|{split}|{copy}".encode()).hexdigest()[:24]
    path = cache_dir / f"{name}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is recomputed, never trusted
            log.warning("eval: feature cache %s is unreadable; extracting again", path)
    f = extract(backbone, lset.batches(split, copy), device, channels_last)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(f, tmp)
        tmp.replace(path)
    return f


# ----------------------------------------------------------------------------- trained networks, offline runs


@dataclass
class Trained:
    """A network to evaluate: from a checkpoint, or the recipe's network at its random initialisation."""

    cfg: object                    # config.Config
    model: nn.Module               # model.SSLModel
    teacher: nn.Module | None
    path: Path | None              # the checkpoint file (None: random initialisation)
    key: str                       # identifies the weights for the feature cache
    step: int
    metrics: dict

    def backbone(self, weights: str) -> nn.Module:
        if weights == "teacher":
            if self.teacher is None:
                raise ValueError(f"--weights teacher: method {self.cfg.method.name} has no EMA teacher")
            return self.teacher.backbone
        return self.model.backbone

    @property
    def results_path(self) -> Path:
        if self.path is None:
            return Path(self.cfg.run.out_dir) / self.cfg.run.name / "random_init.eval.json"
        return self.path.with_suffix(".eval.json")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the newest valid one in a run folder or its checkpoints/ folder."""
    from .. import checkpoint

    p = Path(path)
    if p.is_dir():
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        found = checkpoint.latest(folder)
        if found is None:
            raise ValueError(f"no valid checkpoint (step_*.pt) in {str(folder)!r}")
        return found[0]
    if not p.exists():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    return p


def load_network(path: str | Path | None, *, recipe: str | None = None, overrides: tuple[str, ...] = (),
                 device: torch.device | None = None) -> Trained:
    """Load a training checkpoint (``path``) or build a recipe's network at its random initialisation (path None).

    With both, the recipe states what the checkpoint must be: a different method or architecture is an error naming
    the key and both values. A missing, truncated or non-fusedssl file, or weights that do not fit the architecture
    the checkpoint's own config describes, are errors naming the file.
    """
    from .. import checkpoint, config
    from .. import model as model_stage

    device = device or torch.device("cpu")
    want = config.load(recipe, list(overrides)) if recipe else None
    if path is None:
        if want is None:
            raise ValueError("give a checkpoint, or --random-init with --config RECIPE")
        torch.manual_seed(want.run.seed)  # what train.py does before building: the same initial weights
        model = model_stage.build(want.model, predictor_required=bool(config.widths(want.model.predictor)))
        digest = hashlib.sha256(json.dumps(config.to_dict(want), sort_keys=True).encode()).hexdigest()[:16]
        return Trained(want, model.to(device), None, None, f"random-{digest}", 0, {})
    file = resolve_checkpoint(path)
    state = checkpoint.load(file)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{str(file)!r} is not a fusedssl training checkpoint (it has no 'model' and 'config' "
                         "entries)")
    try:
        cfg = config.from_dict(state["config"])
    except config.ConfigError as e:
        raise ValueError(f"checkpoint {str(file)!r} holds a config this version cannot read: {e}") from None
    if want is not None:  # the same check training's resume makes
        checkpoint.check_compatible(state["config"], want, repr(str(file)))
    model = model_stage.build(cfg.model, predictor_required=bool(config.widths(cfg.model.predictor)))
    _load_weights(model, state["model"], file, "model")
    teacher = None
    if state.get("teacher") is not None:
        teacher = model_stage.EMATeacher(model)
        _load_weights(teacher, state["teacher"], file, "teacher")
        teacher = teacher.to(device)
    sha = file.with_suffix(".sha256")
    key = sha.read_text().strip()[:16] if sha.exists() else hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return Trained(cfg, model.to(device), teacher, file, key, int(state.get("step", 0)), state.get("metrics", {}))


def _load_weights(module: nn.Module, weights: dict, file: Path, what: str) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        mine, theirs = set(module.state_dict()), set(weights)
        missing, extra = sorted(mine - theirs), sorted(theirs - mine)
        detail = []
        if missing:
            detail.append(f"missing {len(missing)} keys ({', '.join(missing[:3])}...)")
        if extra:
            detail.append(f"{len(extra)} unexpected keys ({', '.join(extra[:3])}...)")
        if not detail:
            detail.append(str(e).splitlines()[-1].strip())
        raise ValueError(f"checkpoint {str(file)!r}: the {what} weights do not fit the architecture in its config: "
                         f"{'; '.join(detail)}") from None


def write_results(path: Path, net: Trained, entries: dict) -> dict:
    """Merge ``entries`` into the JSON results file next to the checkpoint (written atomically)."""
    doc = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("eval: %s was unreadable; starting it again", path)
    doc.update({"checkpoint": str(net.path) if net.path else "random initialisation",
                "method": net.cfg.method.name, "backbone": net.cfg.model.backbone, "step": net.step})
    doc.setdefault("results", {}).update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return doc


def run(kind: str, net: Trained, lset: LabelledSet, *, weights: str = "backbone", k: int = 20,
        temperature: float = 0.07, shots: tuple[int, ...] = (), probe: ProbeSettings | None = None,
        device: torch.device | None = None) -> dict:
    """One offline evaluation (``kind`` knn | linear) of ``net`` on ``lset``; returns the entries written."""
    device = device or torch.device("cpu")
    backbone = net.backbone(weights).to(device)
    cache = net.results_path.parent / "eval_cache"
    cl = net.cfg.run.channels_last

    def feats(split: str, copy: int) -> torch.Tensor:
        return cached_features(backbone, lset, split, copy, model_key=f"{net.key}|{weights}", cache_dir=cache,
                               device=device, channels_last=cl)

    tr, va = feats("train", -1), feats("val", -1)
    n_cls = len(lset.classes)
    where = f"{lset.name}/{weights}"
    entries: dict = {}
    if kind == "knn":
        trn, van = F.normalize(tr, dim=1), F.normalize(va, dim=1)
        entries[f"knn/{where}"] = {"top1": knn_accuracy(trn, lset.train_y, van, lset.val_y, k=k,
                                                        temperature=temperature, num_classes=n_cls),
                                   "k": k, "temperature": temperature, "bank": len(lset.train_y)}
        for s in shots:
            bank = few_shot_bank(lset.train_y, s, seed=0)
            entries[f"knn{s}shot/{where}"] = {
                "top1": knn_accuracy(trn[bank], lset.train_y[bank], van, lset.val_y, k=min(k, len(bank)),
                                     temperature=temperature, num_classes=n_cls),
                "k": min(k, len(bank)), "temperature": temperature, "bank": len(bank), "shots": s}
    elif kind == "linear":
        probe = probe or ProbeSettings()
        copies = [feats("train", c) for c in range(probe.copies)] or [tr]
        res, head = linear_probe(copies, lset.train_y, va, lset.val_y, n_cls, probe, device)
        head.classes = list(lset.classes)
        entries[f"linear/{where}"] = res
        torch.save({"weight": head.weight, "bias": head.bias, "mean": head.mean, "std": head.std,
                    "classes": head.classes, "data": lset.name, "weights": weights, "top1": res["top1"]},
                   net.results_path.with_name(net.results_path.name.replace(".eval.json", ".linear_head.pt")))
    else:
        raise ValueError(f"unknown evaluation {kind!r}: knn | linear")
    write_results(net.results_path, net, entries)
    return entries


def table(entries: dict) -> str:
    """The results as a small text table (printed by ``fusedssl eval``)."""
    rows = ["protocol                         top-1    top-5   detail"]
    for name, r in entries.items():
        top5 = f"{100 * r['top5']:6.2f}%" if "top5" in r else "      -"
        if "best_top1" in r:
            detail = f"best epoch {r['best_epoch']}: {100 * r['best_top1']:.2f}%"
        else:
            detail = f"k={r['k']} T={r['temperature']} bank={r['bank']}"
        rows.append(f"{name:<32} {100 * r['top1']:6.2f}%  {top5}   {detail}")
    return "\n".join(rows)
