"""Export stage: a trained checkpoint as plain torchvision weights that load anywhere without fusedssl.

``fusedssl export CHECKPOINT OUT`` writes into OUT:
  * ``backbone.pt``: the backbone's state_dict with torchvision's key names and no ``fc`` (the feature extractor).
    It loads with strict=True into ``torchvision.models.<name>()`` once ``fc`` is replaced by ``nn.Identity()``;
  * ``classifier.pt`` (when a linear probe was trained, ``fusedssl eval linear``): the full torchvision state_dict with
    the probe as ``fc`` (its feature standardisation folded into the weights), which loads with strict=True into
    ``torchvision.models.<name>(num_classes=K)`` as it comes;
  * ``projector.pt`` (and ``predictor.pt``): the heads, as ``nn.Sequential`` state_dicts;
  * ``config.json`` (the training config), ``metrics.json`` (training metrics and every evaluation result), and
    ``export.json`` (architecture, stem, feature size, classes, how to load).
A ``cifar`` stem (3x3 conv1, no max-pool) is not torchvision's default: ``torchvision_model(OUT)`` builds the model with
that stem swapped in and loads the weights strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from . import config, evaluate


def export(checkpoint: str | Path, out: str | Path, *, weights: str = "backbone", head: str | Path | None = None,
           recipe: str | None = None, overwrite: bool = False) -> Path:
    """Write the export folder for ``checkpoint`` (a file or a run folder); returns the folder.

    ``head``: a ``*.linear_head.pt`` from ``fusedssl eval linear`` (default: the one next to the checkpoint, if any).
    ``weights``: ``backbone`` (the online network) or ``teacher`` (the EMA teacher's backbone, where there is one).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {str(out)!r} is a file: give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"export folder {str(out)!r} is not empty: nothing was written (pass --force to replace "
                         "the files of an earlier export there)")
    net = evaluate.load_network(checkpoint, recipe=recipe)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the export folder {str(out)!r}: {e.strerror}") from None
    cfg = net.cfg
    sd = {k: v.detach().cpu().clone() for k, v in net.backbone(weights).state_dict().items()}
    torch.save(sd, out / "backbone.pt")
    torch.save(net.model.projector.state_dict(), out / "projector.pt")
    if net.model.predictor is not None:
        torch.save(net.model.predictor.state_dict(), out / "predictor.pt")
    head_path = Path(head) if head else net.path.with_suffix(".linear_head.pt")
    meta = {"architecture": cfg.model.backbone, "stem": cfg.model.stem, "feature_dim": net.model.feat_dim,
            "weights": weights, "method": cfg.method.name, "step": net.step, "checkpoint": str(net.path),
            "torchvision": torchvision.__version__,
            "load": f"m = torchvision.models.{cfg.model.backbone}(); m.fc = torch.nn.Identity(); "
                    "m.load_state_dict(torch.load('backbone.pt'), strict=True)"}
    if cfg.model.stem != "imagenet":
        meta["load"] = "fusedssl.engine.export.torchvision_model(folder) (non-default stem: 3x3 conv1, no max-pool)"
    if head or head_path.exists():
        h = _read_head(head_path, net.model.feat_dim)
        w, b = evaluate.LinearHead(h["weight"], h["bias"], h["mean"], h["std"]).folded()
        torch.save({**sd, "fc.weight": w.contiguous(), "fc.bias": b.contiguous()}, out / "classifier.pt")
        meta.update(classes=h["classes"], num_classes=len(h["classes"]), probe_data=h.get("data"),
                    probe_top1=h.get("top1"))
        meta["load_classifier"] = (f"m = torchvision.models.{cfg.model.backbone}(num_classes={len(h['classes'])}); "
                                   "m.load_state_dict(torch.load('classifier.pt'), strict=True)")
    (out / "config.json").write_text(json.dumps(config.to_dict(cfg), indent=1))
    metrics = dict(net.metrics)
    if net.results_path.exists():
        metrics["evaluation"] = json.loads(net.results_path.read_text()).get("results", {})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "export.json").write_text(json.dumps(meta, indent=1))
    return out


def _read_head(path: Path, feat_dim: int) -> dict:
    if not path.exists():
        raise ValueError(f"linear head {str(path)!r} does not exist (write one with `fusedssl eval linear`)")
    try:
        h = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise ValueError(f"linear head {str(path)!r} cannot be read: {e}") from None
    if not isinstance(h, dict) or not {"weight", "bias", "mean", "std", "classes"} <= set(h):
        raise ValueError(f"{str(path)!r} is not a linear head written by `fusedssl eval linear`")
    if h["weight"].shape[1] != feat_dim:
        raise ValueError(f"linear head {str(path)!r} takes {h['weight'].shape[1]}-d features, but this backbone "
                         f"gives {feat_dim}-d ones (a head from another architecture)")
    return h


def torchvision_model(folder: str | Path, *, classifier: bool = False) -> nn.Module:
    """The exported network as a torchvision model, loaded with strict=True (features, or the probe classifier)."""
    folder = Path(folder)
    meta = json.loads((folder / "export.json").read_text())
    kw = {"num_classes": meta["num_classes"]} if classifier else {}
    m = getattr(torchvision.models, meta["architecture"])(weights=None, **kw)
    if meta["stem"] == "cifar":
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    if not classifier:
        m.fc = nn.Identity()
    sd = torch.load(folder / ("classifier.pt" if classifier else "backbone.pt"), map_location="cpu",
                    weights_only=True)
    m.load_state_dict(sd, strict=True)
    return m.eval()
