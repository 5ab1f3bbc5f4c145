"""NVIDIA DALI pipeline: encoded files -> decode (GPU "mixed" or CPU) -> per-view augmentation -> uint8 NHWC views.

Graph per view, every random decision an argument input from params.py (so resume and sharding are exact):
  decode the crop box (ROI decode: only the box is decoded, when ``roi_decode``) or slice it from one full decode
  shared by the views -> resize to size x size (linear, antialiased; the flip is a reversed resize ROI) -> colour
  jitter with torchvision's definitions (brightness, contrast about the mean luma, saturation towards luma), hue as
  a rotation of YIQ's chroma and random grayscale as saturation 0 (DALI has no random-grayscale operator), skipped
  by a per-sample conditional where neither applies -> Gaussian blur -> solarisation (a lookup table under a
  per-sample conditional; DALI has no solarise operator) -> uint8.
On the CPU the colour step is two passes (``_colour_fused``) and the blur two 1-D filter passes with per-sample
taps; on a GPU the colour step is float arithmetic and the blur DALI's gaussian_blur under a conditional.
The "geometry" graph stops after the resize: on the CPU, files.py then runs every photometric step and the
normalisation in one fused C++ kernel (kernels/photometric.py), several times cheaper than these DALI operators.
The views leave DALI as uint8 NHWC; files.py moves them to the device and normalises them as channels-last NCHW.

The source is a batch callback (``fn.external_source``): it reads this rank's files for step ``start + iteration``
and draws their parameters. With ``read_workers`` > 0 DALI runs it in that many worker processes (parallel external
source), so file reads never block the training loop.
"""

from __future__ import annotations

import numpy as np
from fusedssl import kernels

from .augment import LUMA as _LUMA
from .folder import read_bytes
from .params import Plan, ViewRecipe

# The per-view inputs the callback hands each graph, by name: crop anchor and shape (x, y pixels), resize ROI start
# and end (relative, (y, x); a flip is a reversed ROI); then, unless the graph is "geometry" (the fused kernel does the
# rest after DALI), brightness, contrast, saturation, hue (degrees), colour keep (0 = grayscale), whether the colour
# step runs at all, the blur ("cpu": horizontal and vertical taps; "gpu": a flag and sigma) and the solarisation flag.
_GEOMETRY = ("anchor", "shape", "roi_start", "roi_end")
_COLOUR = ("bright", "contrast", "sat", "hue", "keep_colour", "colour")
_INPUTS = {"geometry": _GEOMETRY, "cpu": (*_GEOMETRY, *_COLOUR, "blur_h", "blur_v", "solarize"),
           "gpu": (*_GEOMETRY, *_COLOUR, "blur", "sigma", "solarize")}


def available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _gaussian_kernels(p, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian taps of sample k, (1, n) and (n, 1), radius ceil(3 sigma) (the fused kernel's taps); [[1]]
    where not blurred."""
    taps, radius = kernels.gaussian_taps(p.sigma[k:k + 1], p.blur[k:k + 1])
    g = taps[0, :2 * int(radius[0]) + 1]
    return g[None, :], np.ascontiguousarray(g[:, None])


class _Source:
    """Batch callback: encoded bytes, then the inputs ``_INPUTS[graph]`` of each view, of this rank's rows at step
    ``start + iteration``."""

    def __init__(self, plan: Plan, start: int, graph: str):
        self.plan, self.start, self.graph = plan, start, graph

    def __setstate__(self, state: dict) -> None:
        """Unpickled in a DALI read worker (``read_workers`` > 0): leave the stop signals to the training process."""
        import os

        from .fallback import guard_stop_signals

        self.__dict__.update(state)
        guard_stop_signals(os.getppid())  # DALI spawns its read workers from the training process

    def __call__(self, info) -> tuple[list[np.ndarray], ...]:
        step = self.start + info.iteration
        plan = self.plan
        root, files = plan.index.root, plan.index.files
        outs: list[list[np.ndarray]] = [[read_bytes(root, files[i], plan.index_path) for i in plan.rows(step)]]
        for p in plan.params(step):
            n = len(p.flip)
            box = p.box.astype(np.float32)
            flip = p.flip.astype(np.float32)
            roi_start = np.stack([np.zeros(n, np.float32), flip], 1)
            roi_end = np.stack([np.ones(n, np.float32), 1 - flip], 1)
            cols = {"anchor": box[:, :2], "shape": box[:, 2:], "roi_start": roi_start, "roi_end": roi_end}
            if self.graph != "geometry":
                colour = (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0) | p.gray
                cols |= {"bright": p.brightness, "contrast": p.contrast, "sat": p.saturation,
                         "hue": (360.0 * p.hue).astype(np.float32),
                         "keep_colour": np.where(p.gray, 0.0, 1.0).astype(np.float32), "colour": colour,
                         "solarize": p.solarize}
                if self.graph == "gpu":
                    cols |= {"blur": p.blur, "sigma": p.sigma}
                else:
                    taps = [_gaussian_kernels(p, k) for k in range(n)]
                    cols |= {"blur_h": [kh for kh, _ in taps], "blur_v": [kv for _, kv in taps]}
            # 0-d per sample: scalars
            outs.extend([np.array(cols[name][k]) for k in range(n)] for name in _INPUTS[self.graph])
        return tuple(outs)


_SOLARIZE = [v if v < 128 else 255 - v for v in range(256)]  # ImageOps.solarize(threshold=128) as a table


def _luma(x):
    return x[:, :, 0] * _LUMA[0] + x[:, :, 1] * _LUMA[1] + x[:, :, 2] * _LUMA[2]


def _colour_fused(x, bright, contrast, sat, hue, keep_colour):
    """Colour jitter and grayscale of uint8 images in two passes (the CPU path).

    Brightness first, saturating at 255 as torchvision clamps it (the clamp matters: a factor 1.4 clips the bright
    parts of an image, which then move the mean). Then torchvision's contrast c about the mean luma m of the
    brightened image, ``c y + (1 - c) m``, is what ``fn.color_twist`` computes as ``b' (c' y + (1 - c') 128)`` with
    b' = c + (1 - c) m / 128 and c' = c / b' (b' > 0 for c < 2). Saturation (a blend with luma) is a scaling of YIQ's
    chroma, which color_twist does with the hue rotation in the same pass; saturation 0 is the grayscale. m is a
    per-sample value on the CPU, as an argument input must be: hence CPU only.
    """
    import nvidia.dali.fn as fn

    x = fn.brightness_contrast(x, brightness=bright)
    m = fn.reductions.mean(x, axes=[0, 1])
    m = m[0] * _LUMA[0] + m[1] * _LUMA[1] + m[2] * _LUMA[2]
    b2 = contrast + (1.0 - contrast) * m / 128.0
    return fn.color_twist(x, brightness=b2, contrast=contrast / b2, saturation=sat * keep_colour, hue=hue)


def _colour_arithmetic(x, bright, contrast, sat, hue, keep_colour):
    """The same jitter step by step in float arithmetic with torchvision's clamps (the GPU path: the mean luma
    stays on the GPU, and these elementwise passes are cheap there, where they are slow on a CPU)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    x = dmath.clamp(fn.cast(x, dtype=types.FLOAT) * bright, 0.0, 255.0)
    mean = fn.reductions.mean(_luma(x))
    x = dmath.clamp((x - mean) * contrast + mean, 0.0, 255.0)
    gray = fn.expand_dims(_luma(x), axes=[2])
    x = dmath.clamp((x - gray) * sat + gray, 0.0, 255.0)
    x = fn.hsv(x, hue=hue, saturation=keep_colour, dtype=types.FLOAT)
    return fn.cast(dmath.clamp(x, 0.0, 255.0), dtype=types.UINT8)


def _view(x, a: dict, recipe: ViewRecipe, crop_in_decoder: bool, decode: dict, graph: str):
    """The augmentation graph of one view; ``x`` is the encoded file (ROI decode) or the decoded image, ``a`` the
    view's inputs by name (``_INPUTS[graph]``)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    if crop_in_decoder:
        x = fn.decoders.image_slice(x, a["anchor"], a["shape"], axis_names="WH", normalized_anchor=False,
                                    normalized_shape=False, output_type=types.RGB, **decode)
    else:
        x = fn.slice(x, a["anchor"], a["shape"], axis_names="WH", normalized_anchor=False, normalized_shape=False)
    # The flip rides on the resize (a reversed ROI flips), which saves a pass over every image.
    x = fn.resize(x, size=[recipe.size, recipe.size], interp_type=types.INTERP_LINEAR, antialias=True,
                  roi_start=a["roi_start"], roi_end=a["roi_end"], roi_relative=True)
    if graph == "geometry":
        return x
    if a["colour"]:  # identity jitter and no grayscale: skip the pass (16 % of samples with the default recipe)
        x = (_colour_arithmetic if graph == "gpu" else _colour_fused)(x, *(a[k] for k in _COLOUR[:5]))
    if graph == "gpu":
        if a["blur"]:
            x = fn.gaussian_blur(x, sigma=a["sigma"])
    else:
        # Two 1-D passes with per-sample taps (a 1-tap identity where not blurred): about 3x faster than DALI's CPU
        # gaussian_blur, measured (0.32 vs 0.9 ms per 224-px image), and no conditional split/merge.
        conv = getattr(fn, "filter", None) or fn.experimental.filter  # moved out of experimental in newer DALI
        x = conv(conv(x, a["blur_h"]), a["blur_v"])
    if a["solarize"]:
        x = fn.lookup_table(x, keys=list(range(256)), values=_SOLARIZE, dtype=types.UINT8)
    return x


def _graph(source: _Source, recipes: list[ViewRecipe], roi_decode: bool, decode: dict, parallel: bool):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    names = _INPUTS[source.graph]
    outs = fn.external_source(source=source, batch=True, batch_info=True, parallel=parallel,
                              num_outputs=1 + len(names) * len(recipes))
    enc, args = outs[0], outs[1:]
    full = None if roi_decode else fn.decoders.image(enc, output_type=types.RGB, **decode)
    views = []
    for v, r in enumerate(recipes):
        inputs = {name: args[v * len(names) + i] for i, name in enumerate(names)}
        views.append(_view(enc if roi_decode else full, inputs, r, roi_decode, decode, source.graph))
    return tuple(views)


GRAPHS = ("cpu", "gpu", "geometry")


def pipeline(plan: Plan, start: int, *, device_id: int | None, threads: int, prefetch: int, roi_decode: bool,
             hw_decoder_load: float, read_workers: int, seed: int, graph: str | None = None):
    """A built DALI pipeline whose i-th run returns the views of step ``start + i`` (uint8 NHWC TensorLists).

    ``graph``: "geometry" stops after the crop, resize and flip (the photometric steps then run in the fused kernel,
    files.py); "cpu" and "gpu" do every step in DALI with the CPU or the GPU variants of the colour and blur steps
    (default: "gpu" when decoding on the GPU, else "cpu"); tests run both on the CPU.
    """
    from nvidia.dali import pipeline_def

    if device_id is None:
        decode = {"device": "cpu"}
    else:
        decode = {"device": "mixed", "hw_decoder_load": hw_decoder_load}
    if graph is None:
        graph = "cpu" if device_id is None else "gpu"
    if graph not in GRAPHS:
        raise ValueError(f"graph={graph!r} is not one of {GRAPHS}")
    build = pipeline_def(_graph, enable_conditionals=True)
    kw = {"py_num_workers": read_workers, "py_start_method": "spawn"} if read_workers else {}
    pipe = build(_Source(plan, start, graph), plan.recipes, roi_decode, decode, read_workers > 0,
                 batch_size=plan.per_rank, num_threads=threads, device_id=device_id, seed=seed,
                 prefetch_queue_depth=prefetch, **kw)
    pipe.build()
    return pipe
