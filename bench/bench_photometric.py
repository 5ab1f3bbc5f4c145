"""``fusedssl bench photometric``: the CPU data path's photometric augmentation of a batch of uint8 views (colour
jitter, grayscale, Gaussian blur, solarisation, normalisation) per provider.

Providers: ``original`` (torchvision's functional transforms image by image, rounding to uint8 between steps, as the
peers' CPU pipelines run them), ``eager`` (kernels.photometric_augment backend "torch": the float64 reference, whole
batch per op) and ``cuda`` (csrc/photometric.cpp, the extension's fused one-pass C++ kernel; it runs on the CPU).
Per-sample factors follow BYOL's augmentation (jitter 0.4/0.4/0.2/0.1 with p 0.8, grayscale 0.2, blur sigma in
[0.1, 2] with p 0.5, solarisation 0.2); every provider gets the same factors. The torchvision chain is the same
recipe, not the same function (it rounds to uint8 after each step and rotates hue in HSV: a mean difference of about
0.1 on the normalised scale at 16 images of 32 px). Bytes are what any implementation must
move, the uint8 views read and the float32 views written, so GB/s compares providers directly; rows also give
images/s. Rows go to bench/results/<device>/photometric.csv (harness.FIELDS; n = images, d = side in pixels).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from fusedssl import kernels
from fusedssl.kernels import photometric as photo

from . import harness

GRID = [(256, 32), (64, 96), (32, 224)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROVIDERS = ("original", "eager", "cuda")


def factors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-sample augmentation factors of BYOL's recipe (Grill et al. 2020, table 6: the first view's blur p)."""
    rng = np.random.default_rng(seed)
    jitter = rng.random(n) < 0.8
    return {"bright": np.where(jitter, rng.uniform(0.6, 1.4, n), 1.0),
            "contrast": np.where(jitter, rng.uniform(0.6, 1.4, n), 1.0),
            "saturation": np.where(jitter, rng.uniform(0.8, 1.2, n), 1.0),
            "hue": np.where(jitter, rng.uniform(-0.1, 0.1, n), 0.0),
            "gray": rng.random(n) < 0.2, "blur": rng.random(n) < 0.5, "sigma": rng.uniform(0.1, 2.0, n),
            "solarize": rng.random(n) < 0.2}


def torchvision_chain(x: torch.Tensor, f: dict[str, np.ndarray]) -> torch.Tensor:
    """The same augmentation by torchvision's functional ops, one image at a time: uint8 (n, h, w, 3) -> float32."""
    from torchvision.transforms.v2 import functional as tf

    out = []
    for k, img in enumerate(x.permute(0, 3, 1, 2)):
        img = tf.adjust_brightness(img, float(f["bright"][k]))
        img = tf.adjust_contrast(img, float(f["contrast"][k]))
        img = tf.adjust_saturation(img, float(f["saturation"][k]))
        img = tf.adjust_hue(img, float(f["hue"][k]))
        if f["gray"][k]:
            img = tf.rgb_to_grayscale(img, num_output_channels=3)
        if f["blur"][k]:
            r = int(np.ceil(3 * f["sigma"][k]))
            img = tf.gaussian_blur(img, [2 * r + 1, 2 * r + 1], [float(f["sigma"][k])] * 2)
        if f["solarize"][k]:
            img = tf.solarize(img, 128)
        img = tf.normalize(tf.to_dtype(img, torch.float32, scale=True), list(MEAN), list(STD))
        out.append(img.permute(1, 2, 0))
    return torch.stack(out)


def providers() -> tuple[dict, list[str]]:
    out = {"original": lambda x, p, f: torchvision_chain(x, f),
           "eager": lambda x, p, f: kernels.photometric_augment(x, p, MEAN, STD, backend="torch")}
    why = kernels.why_not("photometric_augment", "cuda", torch.device("cpu"))
    if why is None:
        out["cuda"] = lambda x, p, f: kernels.photometric_augment(x, p, MEAN, STD, backend="cuda")
        return out, []
    return out, [f"cuda: not timed ({why})"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench photometric", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="results folder (a <device>/photometric.csv inside)")
    p.add_argument("--shapes", default=None, help="images x side list like 64x96,32x224 (default: the grid)")
    p.add_argument("--providers", default=None, help=f"comma list of {', '.join(PROVIDERS)} (default: all that run)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per provider and shape")
    args = p.parse_args(argv)
    try:
        grid = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else GRID
    except ValueError:
        p.error(f"--shapes: {args.shapes!r} is not a comma list of images x side like 64x96")
    provs, notes = providers()
    if args.providers:
        unknown = [w for w in args.providers.split(",") if w not in PROVIDERS]
        if unknown:
            p.error(f"--providers: unknown {', '.join(unknown)} (choose from {', '.join(PROVIDERS)})")
        provs = {k: v for k, v in provs.items() if k in args.providers.split(",")}
    device = torch.device("cpu")  # the CPU data path, on every machine
    stamp = harness.env(device)
    rows, table = [], {}
    for n, side in grid:
        sets = []
        for s in range(3):
            f = factors(n, seed=s)
            x = torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(s))
            sets.append((x, photo.photo_params(f["bright"], f["contrast"], f["saturation"], f["hue"], f["gray"],
                                               f["blur"], f["sigma"], f["solarize"]), f))
        moved = n * side * side * 3 * (1 + 4)  # uint8 in, float32 out
        for name, fn in provs.items():
            p20, p50, p80 = harness.time_fn(lambda i, fn=fn, sets=sets: fn(*sets[i % 3]), device=device, warmup=1,
                                            reps=args.reps)
            table[(n, side, name)] = p50
            base = dict(op="photometric_augment", provider=name, mode="fwd", n=n, d=side, dtype="uint8", **stamp)
            rows += harness.ms_rows(base, p20, p50, p80)
            rows += [{**base, "metric": "images_per_s", "value": f"{n / p50 * 1e3:.6g}", "unit": "images/s"},
                     {**base, "metric": "bytes", "value": f"{moved:.6g}", "unit": "B"},
                     {**base, "metric": "gbs", "value": f"{moved / p50 / 1e6:.6g}", "unit": "GB/s"}]
    print(f"photometric_augment on {stamp['device']}, torch {stamp['torch']}; median ms (speedup vs original)")
    print(f"{'images x px':>12s} " + " ".join(f"{x:>18s}" for x in provs))
    for n, side in grid:
        orig = table.get((n, side, "original"))
        cells = [f"{table[(n, side, x)]:9.2f} ({orig / table[(n, side, x)]:5.1f}x)" if orig else
                 f"{table[(n, side, x)]:18.2f}" for x in provs]
        print(f"{f'{n}x{side}':>12s} " + " ".join(cells))
    harness.finish(args.out, stamp, "photometric", rows, notes)
    return 0
