"""NVIDIA DALI pipeline: encoded files -> decode (GPU "mixed" or CPU) -> per-view augmentation -> uint8 NHWC views.

Graph per view, every random decision an argument input from params.py (so resume and sharding are exact):
  decode the crop box (ROI decode: only the box is decoded, when ``roi_decode``) or slice it from one full decode
  shared by the views -> resize to size x size (linear, antialiased) -> flip -> colour jitter in float (brightness,
  contrast about the per-image mean luma, saturation towards luma: torchvision's definitions) -> hue rotation and
  grayscale as one YIQ transform (``fn.hsv``: saturation 0 is luma gray, the same weights as the other pipelines) ->
  Gaussian blur under a per-sample conditional -> solarisation as arithmetic (DALI has no solarise or random-grayscale
  operator) -> uint8.
The views leave DALI as uint8 NHWC; files.py moves them to the device and normalises them as channels-last NCHW.

The source is a batch callback (``fn.external_source``): it reads this rank's files for step ``start + iteration``
and draws their parameters. With ``read_workers`` > 0 DALI runs it in that many worker processes (parallel external
source), so file reads never block the training loop.
"""

from __future__ import annotations

import numpy as np

from .augment import ViewRecipe, blur_window
from .folder import read_bytes
from .params import Plan

_LUMA = (0.299, 0.587, 0.114)
_PER_VIEW = 11  # argument inputs per view, in the order of _Source.__call__


def available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


class _Source:
    """Batch callback: encoded bytes and per-view parameters of this rank's rows at step ``start + iteration``."""

    def __init__(self, plan: Plan, start: int):
        self.plan, self.start = plan, start

    def __call__(self, info) -> tuple[list[np.ndarray], ...]:
        step = self.start + info.iteration
        plan = self.plan
        root, files = plan.index.root, plan.index.files
        outs: list[list[np.ndarray]] = [[read_bytes(root, files[i], plan.index_path) for i in plan.rows(step)]]
        for p in plan.params(step):
            box = p.box.astype(np.float32)
            cols = [box[:, :2], box[:, 2:], p.flip.astype(np.int32), p.brightness, p.contrast, p.saturation,
                    (360.0 * p.hue).astype(np.float32), np.where(p.gray, 0.0, 1.0).astype(np.float32), p.blur,
                    p.sigma, p.solarize.astype(np.float32)]
            outs.extend([np.array(c[k]) for k in range(len(c))] for c in cols)  # 0-d per sample: scalars
        return tuple(outs)


def _luma(x):
    return x[:, :, 0] * _LUMA[0] + x[:, :, 1] * _LUMA[1] + x[:, :, 2] * _LUMA[2]


def _view(x, args, recipe: ViewRecipe, crop_in_decoder: bool, decode: dict):
    """The augmentation graph of one view; ``x`` is the encoded file (ROI decode) or the decoded image."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    anchor, shape, flip, bright, contrast, sat, hue, keep_colour, blur, sigma, solarize = args
    if crop_in_decoder:
        x = fn.decoders.image_slice(x, anchor, shape, axis_names="WH", normalized_anchor=False,
                                    normalized_shape=False, output_type=types.RGB, **decode)
    else:
        x = fn.slice(x, anchor, shape, axis_names="WH", normalized_anchor=False, normalized_shape=False)
    x = fn.resize(x, size=[recipe.size, recipe.size], interp_type=types.INTERP_LINEAR, antialias=True)
    x = fn.flip(x, horizontal=flip)
    x = fn.cast(x, dtype=types.FLOAT)
    x = dmath.clamp(x * bright, 0.0, 255.0)
    mean = fn.reductions.mean(_luma(x))
    x = dmath.clamp((x - mean) * contrast + mean, 0.0, 255.0)
    gray = fn.expand_dims(_luma(x), axes=[2])
    x = dmath.clamp((x - gray) * sat + gray, 0.0, 255.0)
    x = dmath.clamp(fn.hsv(x, hue=hue, saturation=keep_colour, dtype=types.FLOAT), 0.0, 255.0)
    if blur:
        x = fn.gaussian_blur(x, sigma=sigma, window_size=blur_window(recipe.size))
    x = x + solarize * (x >= 128.0) * (255.0 - 2.0 * x)
    return fn.cast(x, dtype=types.UINT8)


def _graph(source: _Source, recipes: list[ViewRecipe], roi_decode: bool, decode: dict, parallel: bool):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    outs = fn.external_source(source=source, batch=True, batch_info=True, parallel=parallel,
                              num_outputs=1 + _PER_VIEW * len(recipes))
    enc, args = outs[0], outs[1:]
    full = None if roi_decode else fn.decoders.image(enc, output_type=types.RGB, **decode)
    views = []
    for v, r in enumerate(recipes):
        view_args = args[v * _PER_VIEW:(v + 1) * _PER_VIEW]
        views.append(_view(enc if roi_decode else full, view_args, r, roi_decode, decode))
    return tuple(views)


def pipeline(plan: Plan, start: int, *, device_id: int | None, threads: int, prefetch: int, roi_decode: bool,
             hw_decoder_load: float, read_workers: int, seed: int):
    """A built DALI pipeline whose i-th run returns the views of step ``start + i`` (uint8 NHWC TensorLists)."""
    from nvidia.dali import pipeline_def

    if device_id is None:
        decode = {"device": "cpu"}
    else:
        decode = {"device": "mixed", "hw_decoder_load": hw_decoder_load}
    build = pipeline_def(_graph, enable_conditionals=True)
    kw = {"py_num_workers": read_workers, "py_start_method": "spawn"} if read_workers else {}
    pipe = build(_Source(plan, start), plan.recipes, roi_decode, decode, read_workers > 0,
                 batch_size=plan.per_rank, num_threads=threads, device_id=device_id, seed=seed,
                 prefetch_queue_depth=prefetch, **kw)
    pipe.build()
    return pipe
