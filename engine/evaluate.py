"""Evaluation stage: weighted kNN, the offline linear probe and the online probe, on frozen backbone features.

* kNN (Wu et al. 2018; DINO's monitor): L2-normalised features; each test sample takes its k most similar bank samples,
  which vote with weights exp(sim / T). Used by the training loop (start, end, every ``knn_every_epochs``) and by
  ``fusedssl eval knn``.
* Offline linear probe (``fusedssl eval linear``): a linear classifier on frozen features, trained with SGD, LARS or
  Adam on a cosine schedule. The "standard train augmentation" (random resized crop + flip with the run's crop scale
  and flip probability) is kept while features stay cached: ``copies`` augmented passes over the training set are
  extracted once, and epoch e trains on copy e mod copies; the validation features come from the deterministic
  evaluation view. Features are standardised with the training statistics (StandardScaler, as DirectPred's probe;
  the head exported by ``fusedssl export`` has this folded into its weights).
* Online probe (``evaluate.online_probe``): a linear head on the detached backbone features of the first view, with its
  own SGD, updated every step; its running accuracy and loss sit on the device and are read at the log interval only
  (no extra host sync). Under DDP its gradient is averaged over ranks in one flat all-reduce, so W ranks equal one
  process here too, and it is checkpointed with the run (exact resume).

Every feature set is cached under ``<checkpoint folder>/eval_cache/`` keyed by the checkpoint's SHA-256, the weights
(backbone or teacher), the data set and the view, so a second evaluation reads features instead of running the net.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data as data_stage
from . import dist

log = logging.getLogger("fusedssl")


# --------------------------------------------------------------------------------------------------- features


@torch.no_grad()
def extract(backbone: nn.Module, batches, device: torch.device, channels_last: bool, *, on_device: bool = False
            ) -> torch.Tensor:
    """Raw float32 features of an iterable of normalised (n, 3, s, s) batches, eval mode, no grad: on the CPU (for
    the cache), or left on ``device`` with ``on_device`` (the training loop's monitor: no copy back per batch)."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for x in batches:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        f = backbone(x).float()
        out.append(f if on_device else f.cpu())
    backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def features(backbone: nn.Module, images: torch.Tensor, *, size: int, mean, std, device: torch.device,
             channels_last: bool, batch: int = 512) -> torch.Tensor:
    """Raw features of the deterministic evaluation view of in-memory uint8 images, on ``device``."""
    views = (data_stage.eval_view(images[i:i + batch].to(device), size, mean, std, channels_last)
             for i in range(0, len(images), batch))
    return extract(backbone, views, device, channels_last, on_device=True)


# --------------------------------------------------------------------------------------------------------- kNN


@torch.no_grad()
def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, *,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> float:
    """Weighted kNN top-1 accuracy in [0, 1] (features L2-normalised by the caller)."""
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    train_y, test_y = train_y.to(train_f.device), test_y.to(train_f.device)
    test_f = test_f.to(train_f.device)
    k = min(k, len(train_y))
    correct = 0
    for i in range(0, len(test_f), 1024):
        sim, idx = (test_f[i : i + 1024] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], torch.exp(sim / temperature))
        correct += int((votes.argmax(1) == test_y[i : i + 1024]).sum())
    return correct / len(test_y)


def effective_rank(f: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred, row-L2-normalised features (Roy & Vetterli
    2007; RankMe, Garrido et al. 2023): about 1 for a collapsed representation, up to min(N, F) for a spread one."""
    f = F.normalize(f.double() - f.double().mean(0), dim=1)
    s = torch.linalg.svdvals(f)
    p = s / s.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def few_shot_bank(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` labelled samples per class (seeded): the low-label kNN protocol."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(picks).sort().values


# ------------------------------------------------------------------------------------------------ linear probe


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 100                 # passes over the training features
    batch_size: int = 256
    optimizer: str = "sgd"            # sgd (momentum 0.9, Nesterov) | lars | adam
    lr: float = 0.1                   # peak learning rate (absolute), cosine to 0 per iteration
    weight_decay: float = 0.0
    copies: int = 4                   # augmented passes of the training set extracted once (0: eval view only)
    standardize: bool = True          # features standardised with the training mean/std
    seed: int = 0


@dataclass
class LinearHead:
    """A trained probe: logits = ((f - mean) / std) @ weight.T + bias, over ``classes``."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        return ((f - self.mean) / self.std) @ self.weight.T + self.bias

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) acting on raw features: the standardisation folded in (for a torchvision ``fc``)."""
        w = self.weight / self.std
        return w, self.bias - w @ self.mean


def _accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == y[:, None]).any(1).float().mean())


def linear_probe(train_copies: list[torch.Tensor], train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
                 num_classes: int, s: ProbeSettings, device: torch.device) -> tuple[dict, LinearHead]:
    """Train a linear head on cached features; returns (results, head).

    ``train_copies``: one (N, F) feature matrix per augmented copy of the training set (epoch e uses copy e mod len).
    Results: top-1/top-5 after the last epoch (the number to report), the best epoch's top-1 (reported separately, as
    some papers report it), and the per-epoch validation top-1 and training loss.
    """
    from .optim import LARS

    g = torch.Generator().manual_seed(s.seed)
    allf = torch.cat(train_copies)
    mean = allf.mean(0) if s.standardize else torch.zeros(allf.shape[1])
    std = allf.std(0).clamp_min(1e-6) if s.standardize else torch.ones(allf.shape[1])
    copies = [((c - mean) / std).to(device) for c in train_copies]
    ty, vy = train_y.to(device), val_y.to(device)
    vf = ((val_f - mean) / std).to(device)
    torch.manual_seed(s.seed)
    head = nn.Linear(allf.shape[1], num_classes).to(device)
    nn.init.zeros_(head.bias)
    nn.init.normal_(head.weight, std=0.01)
    params = [{"params": [head.weight], "weight_decay": s.weight_decay, "lars": True},
              {"params": [head.bias], "weight_decay": 0.0, "lars": False}]
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=s.lr, momentum=0.9, nesterov=True)
    elif s.optimizer == "lars":
        opt = LARS(params, lr=s.lr, momentum=0.9, eta=0.001)
    elif s.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=s.lr)
    else:
        raise ValueError(f"linear probe optimizer {s.optimizer!r} is not one of sgd, lars, adam")
    n = len(ty)
    per_epoch = max(1, math.ceil(n / s.batch_size))
    total = s.epochs * per_epoch
    curve, losses, it = [], [], 0
    for epoch in range(s.epochs):
        x = copies[epoch % len(copies)]
        order = torch.randperm(n, generator=g).to(device)
        run_loss = 0.0
        for i in range(per_epoch):
            idx = order[i * s.batch_size:(i + 1) * s.batch_size]
            for grp in opt.param_groups:
                grp["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * it / total))
            loss = F.cross_entropy(head(x[idx]), ty[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach()) * len(idx)
            it += 1
        with torch.no_grad():
            curve.append(_accuracy(head(vf), vy, 1))
        losses.append(run_loss / n)
    with torch.no_grad():
        logits = head(vf)
    res = {"top1": _accuracy(logits, vy, 1), "top5": _accuracy(logits, vy, 5), "best_top1": max(curve),
           "best_epoch": int(np.argmax(curve)) + 1, "val_top1_per_epoch": curve, "train_loss_per_epoch": losses,
           "settings": asdict(s)}
    out = LinearHead(head.weight.detach().cpu(), head.bias.detach().cpu(), mean, std)
    return res, out


def held_out(backbone: nn.Module, probe, data, cfg, device: torch.device) -> dict[str, float]:
    """The training run's monitor: kNN accuracy and the online probe's accuracy on the held-out split of an
    in-memory source (empty for other sources, or when neither is on)."""
    if data.test is None or not (cfg.evaluate.knn or probe is not None):
        return {}
    c = cfg.data
    tr, te = (features(backbone, s.images, size=c.image_size, mean=c.mean, std=c.std, device=device,
                       channels_last=cfg.run.channels_last) for s in (data.train, data.test))
    out = {}
    if cfg.evaluate.knn:
        out["knn"] = knn_accuracy(F.normalize(tr, dim=1), data.train.labels, F.normalize(te, dim=1), data.test.labels,
                                  k=cfg.evaluate.knn_k, temperature=cfg.evaluate.knn_temperature)
    if probe is not None:
        out["probe"] = probe.accuracy(te, data.test.labels)
    return out


# ------------------------------------------------------------------------------------------------ online probe


class OnlineProbe(nn.Module):
    """Linear head on detached backbone features with its own SGD; metrics accumulate on the device."""

    def __init__(self, feat_dim: int, num_classes: int, lr: float, device: torch.device):
        super().__init__()
        self.head = nn.Linear(feat_dim, num_classes).to(device)
        self.opt = torch.optim.SGD(self.head.parameters(), lr=lr, momentum=0.9)
        self.register_buffer("_sums", torch.zeros(2, device=device))  # correct, loss * n (on the device)
        self._seen = 0  # samples since the last read, counted on the host (no per-step copy to the device)

    def step(self, h: torch.Tensor, y: torch.Tensor) -> None:
        logits = self.head(h.detach().float())
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if dist.world_size() > 1:  # average over ranks in one flat collective: W ranks == one process
            grads = [p.grad for p in self.head.parameters()]
            flat = dist.all_reduce_mean(torch.cat([g.flatten() for g in grads]))
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))
        self.opt.step()
        with torch.no_grad():
            self._sums += torch.stack([(logits.argmax(1) == y).sum().float(), loss.detach() * len(y)])
        self._seen += len(y)

    def read(self) -> dict[str, float]:
        """Running accuracy and loss since the last read (one host sync: call at the log interval)."""
        s = dist.all_reduce_mean(self._sums) * dist.world_size()
        seen = self._seen * dist.world_size()  # every rank steps on the same number of samples
        out = {} if seen == 0 else {"probe/train_acc": float(s[0]) / seen, "probe/loss": float(s[1]) / seen}
        self._sums.zero_()
        self._seen = 0
        return out

    @torch.no_grad()
    def accuracy(self, f: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.head(f.to(self.head.weight.device)).argmax(1) == y.to(self.head.weight.device))
                     .float().mean())

    def state(self) -> dict:
        """A copy (optimizer state_dicts alias the live momentum buffers, and loading does not copy them)."""
        return copy.deepcopy({"head": self.head.state_dict(), "opt": self.opt.state_dict(), "sums": self._sums,
                              "seen": self._seen})

    def load(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["opt"])
        self._sums.copy_(state["sums"])
        self._seen = state["seen"]


# ------------------------------------------------------------------------------------------- labelled data sets


class LabelledSet:
    """A labelled train/val pair the evaluation reads: ``batches(split, copy)`` yields normalised views.

    ``copy = -1`` is the deterministic evaluation view; ``copy >= 0`` the copy-th augmented pass (random resized crop
    with the run's crop scale, flip with its flip probability), seeded by (seed, copy) so a cache entry is exact."""

    name: str
    key: str                       # identifies the data for the feature cache
    classes: list[str]
    train_y: torch.Tensor
    val_y: torch.Tensor

    def batches(self, split: str, copy: int) -> Iterator[torch.Tensor]:
        raise NotImplementedError


class DigitsSet(LabelledSet):
    """The bundled MNIST digits split as the run split them (same seed: the held-out digits were never trained on)."""

    def __init__(self, data_cfg, seed: int, batch: int = 512):
        self.cfg, self.seed, self.batch = data_cfg, seed, batch
        self.train, self.val = data_stage.load_digits(data_cfg.test_fraction, seed)
        self.name, self.classes = "digits", [str(i) for i in range(10)]
        self.train_y, self.val_y = self.train.labels, self.val.labels
        self.key = f"digits-seed{seed}-test{data_cfg.test_fraction}-size{data_cfg.image_size}"

    def batches(self, split: str, copy: int) -> Iterator[torch.Tensor]:
        c = self.cfg
        images = (self.train if split == "train" else self.val).images
        recipe = data_stage.ViewRecipe(c.image_size, c.crop_scale, c.flip_p, (0.0, 0.0, 0.0, 0.0), 0.0, 0.0, 0.0,
                                       c.blur_sigma, 0.0, c.mean, c.std)
        for i in range(0, len(images), self.batch):
            x = images[i:i + self.batch]
            if copy < 0:
                yield data_stage.eval_view(x, c.image_size, c.mean, c.std, channels_last=False)
            else:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + copy) * 1_000_003 + i)
                yield data_stage.augment(x, recipe, g, channels_last=False)


class FolderSet(LabelledSet):
    """ImageFolder trees (checked by ``fusedssl data check``; checked here first if they have no index).

    Evaluation view: resize the shorter side to size / 0.875, centre crop ``size`` (the 256/224 protocol). Validation
    classes are matched to the training classes by folder name; a validation class the training tree lacks is an
    error naming it."""

    def __init__(self, train_root: str, val_root: str, data_cfg, *, workers: int = 2, batch: int = 256):
        from .data import folder

        self.cfg, self.workers, self.batch = data_cfg, workers, batch
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
        ds = _FolderViews(idx, self.cfg, copy, self.batch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers)
        yield from loader


def _index_of(root: str, data_cfg):
    from .data import folder

    path = folder.default_index_path(root)
    if not Path(root).is_dir():
        raise folder.DatasetError(f"dataset tree {root!r} is not a folder")
    if path.exists():
        return folder.load(path, root)
    return folder.check(root, out=path, workers=max(1, data_cfg.workers), min_side=data_cfg.min_side,
                        max_pixels=data_cfg.max_pixels)


class _FolderViews(torch.utils.data.Dataset):
    def __init__(self, idx, cfg, copy: int, batch: int):
        self.idx, self.cfg, self.copy, self.batch = idx, cfg, copy, batch

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch)

    def __getitem__(self, b: int) -> torch.Tensor:
        from PIL import Image

        from .data import fallback, folder, params

        c, size = self.cfg, self.cfg.image_size
        rows = range(b * self.batch, min(len(self.idx), (b + 1) * self.batch))
        if self.copy >= 0:
            rng = np.random.default_rng([c.image_size, self.copy, b, 0xE7A1])
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
    from . import checkpoint

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
    from . import checkpoint, config
    from . import model as model_stage

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
    if want is not None:
        for key in config.ARCH_KEYS:
            if config.get(cfg, key) != config.get(want, key):
                raise ValueError(f"checkpoint {str(file)!r} was trained with {key}={config.get(cfg, key)!r}, but "
                                 f"{recipe} has {key}={config.get(want, key)!r}")
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
