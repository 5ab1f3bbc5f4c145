"""``fusedssl bench render``: the performance tables and plots, generated from committed long-format CSVs.

Reads every ``*.csv`` of a results folder (a dated suite folder ``bench/results/<device>/<date>/``, or the flat
``bench/results/<device>/``) and writes ``tables.md`` and PNG plots beside them (or to ``--out``):
  * kernels: median ms per provider for each op, mode and shape, with the speedup against the eager reference (the
    ``eager``/``reference``/``loop`` provider) and against ``compile`` where it was measured;
  * training step: images/s per variant and the objective's share of the step;
  * data loading: images/s per loader; device ceilings; verify pass/fail counts;
  * ``speedup_<op>.png``: speedup against the eager reference versus D, one line per provider, mode and N;
  * ``roofline.png``: each kernel measurement at its arithmetic intensity (FLOPs over bytes moved: the provider's
    own algorithm as counted in its rows, else the op's cost model below) against the measured bandwidth and FLOP/s
    ceilings of ``ceilings.csv``.
Every table and plot names the device and the versions (torch, triton, fusedssl, git) of the rows it shows.

With ``--prefer`` it also writes what a GPU record decides into kernels/preferences.json (``preferences``): for each
GPU model and op, the backend that ``backend="auto"`` takes, and DirectPred's Jacobi kernel per D.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

BASELINES = ("eager", "reference", "loop", "original", "torch")
# The supervised anchor for the training step (as the GPU-record issue cites it: MLPerf Training v4.0, ResNet-50 on
# 8x H200, 12.0 minutes to 75.9 % top-1): about 7,950 images/s per GPU. A two-view SSL step runs the backbone twice
# per source image, so about half of it is the ratio an SSL engine can approach.
SUPERVISED_R50_IMG_S_PER_GPU = 7950
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2}


def _flops_bytes(op: str, mode: str, n: int, d: int, dtype: str) -> tuple[float, float] | None:
    """(FLOPs, minimum bytes moved) of one call, for the ops with a cost model (methods.md §16.4)."""
    b = BYTES.get(dtype, 4)
    if op == "barlow_twins_loss":  # C = A'B (2ND^2); backward dA, dB (4ND^2); G is D x D fp32
        fwd = (2 * n * d * d, 2 * n * d * b + 4 * d * d)
        bwd = (4 * n * d * d, 2 * n * d * b + 4 * d * d + 2 * n * d * b)
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": (fwd[0] + bwd[0], fwd[1] + bwd[1])}.get(mode)
    if op == "col_normalize":  # two reads and one write of Z
        return 8 * n * d, 3 * n * d * b
    return None


def read(folder: Path) -> list[dict]:
    """Every row of every CSV in ``folder``; rows of verify.csv (another layout) get op "verify"."""
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                r["_file"] = path.name
                r.setdefault("op", "verify")
                r.setdefault("metric", "")
                rows.append(r)
    return rows


def _caption(rows: list[dict]) -> str:
    keys = ("device", "torch", "triton", "fusedssl", "git", "date")
    seen = {k: sorted({r.get(k, "") for r in rows if r.get(k)}) for k in keys}
    return "; ".join(f"{k} {', '.join(v)}" for k, v in seen.items() if v)


def _num(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def kernel_table(rows: list[dict]) -> tuple[str, dict]:
    """Median ms and speedups per (op, mode, n, d, dtype); returns (markdown, {key: {provider: p50}})."""
    groups: dict = defaultdict(dict)
    for r in rows:
        if r["metric"] == "p50" and r["op"] not in ("train_step",) and r.get("unit") == "ms":
            groups[(r["op"], r["mode"], int(r["n"]), int(r["d"]), r["dtype"])][r["provider"]] = _num(r["value"])
    if not groups:
        return "", groups
    lines = ["| op | mode | N x D | dtype | provider | median ms | vs eager | vs compile |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups):
        op, mode, n, d, dt = key
        provs = groups[key]
        base = next((provs[b] for b in BASELINES if b in provs), None)
        comp = provs.get("compile")
        for name, ms in provs.items():
            vs_e = f"{base / ms:.2f}x" if base else "-"
            vs_c = f"{comp / ms:.2f}x" if comp and name != "compile" else "-"
            lines.append(f"| {op} | {mode} | {n} x {d} | {dt} | {name} | {ms:.3f} | {vs_e} | {vs_c} |")
    return "\n".join(lines), groups


def step_table(rows: list[dict]) -> str:
    by: dict = defaultdict(dict)
    batch: dict = {}
    for r in rows:
        if r["op"] == "train_step":
            key = (r["provider"], r["d"], r["dtype"])
            by[key][(r["mode"], r["metric"])] = _num(r["value"])
            if r["mode"] == "objective_gathered":
                by[key]["gathered_n"] = r["n"]
            else:
                batch[key] = r["n"]
    if not by:
        return ""
    lines = ["| variant | batch | px | precision | model alone, images/s | real step, images/s | vs supervised R50 "
             "| step ms | objective ms | objective share | objective at the gathered N | its share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    phases = ("data", "forward", "objective", "backward", "optimizer")
    nan = float("nan")
    for (prov, d, dt), m in by.items():
        total = sum(m.get((p, "p50"), 0.0) for p in phases) or nan
        obj = m.get(("objective", "p50"), nan)
        step_ms = m.get(("model", "p50"), nan)
        g = m.get(("objective_gathered", "p50"))
        gathered = (f"{g:.2f} ms (N = {m['gathered_n']}) | {100 * g / (step_ms - obj + g):.1f} %" if g is not None
                    else "- | -")
        model = m.get(("model", "images_per_s"), nan)
        lines.append(f"| {prov} | {batch.get((prov, d, dt), '')} | {d} | {dt} | {model:.1f} | "
                     f"{m.get(('step', 'images_per_s'), nan):.1f} | {model / SUPERVISED_R50_IMG_S_PER_GPU:.2f} | "
                     f"{step_ms:.1f} | {obj:.2f} | {100 * obj / total:.1f} % | {gathered} |")
    lines.append("")
    lines.append(f"vs supervised R50: model-alone images/s over {SUPERVISED_R50_IMG_S_PER_GPU:,} images/s per GPU "
                 "(MLPerf v4.0, 8x H200, supervised ResNet-50); a two-view SSL step can approach about 0.5.")
    return "\n".join(lines)


def simple_table(rows: list[dict], op: str, metrics: tuple[str, ...], title: str) -> str:
    by: dict = defaultdict(dict)
    for r in rows:
        if r["op"] == op and r["metric"] in metrics:
            by[(r["provider"], r["mode"], r["n"], r["d"])][r["metric"]] = (_num(r["value"]), r["unit"])
    if not by:
        return ""
    lines = [f"| {title} | mode | n | d | " + " | ".join(metrics) + " |", "|---" * (4 + len(metrics)) + "|"]
    for (prov, mode, n, d), m in by.items():
        cells = [f"{m[k][0]:.4g} {m[k][1]}" if k in m else "-" for k in metrics]
        lines.append(f"| {prov} | {mode} | {n} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def file_table(rows: list[dict], name: str, columns: tuple[str, ...]) -> str:
    """The rows of one CSV of the record as a table (the suite's stages, the host-sync audit)."""
    sel = [r for r in rows if r["_file"] == name]
    if not sel:
        return ""
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    lines += ["| " + " | ".join(r.get(c, "") for c in columns) + " |" for r in sel]
    return "\n".join(lines)


def verify_table(rows: list[dict]) -> str:
    counts: dict = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["_file"] == "verify.csv":
            counts[(r["backend"], r["dtype"])][0 if r["ok"] == "True" else 1] += 1
    if not counts:
        return ""
    lines = ["| backend | dtype | checks passed | failed |", "|---|---|---|---|"]
    lines += [f"| {b} | {dt} | {p} | {f} |" for (b, dt), (p, f) in sorted(counts.items())]
    return "\n".join(lines)


def plots(rows: list[dict], groups: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    written = []
    caption = _caption([r for r in rows if r["_file"] != "verify.csv"])
    for op in sorted({k[0] for k in groups}):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        lines: dict = defaultdict(list)
        for (o, mode, n, d, dt), provs in groups.items():
            base = next((provs[b] for b in BASELINES if b in provs), None)
            if o != op or base is None:
                continue
            for name, ms in provs.items():
                if name not in BASELINES:
                    lines[(name, mode, n, dt)].append((d, base / ms))
        for (name, mode, n, dt), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{name} {mode} N={n} {dt}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xscale="log", xlabel="D", ylabel="speedup vs eager reference", title=f"{op}")
        if lines:
            ax.legend(fontsize=6, ncol=2)
        stem = re.sub(r"[^A-Za-z0-9_]+", "_", op).strip("_")  # variant names hold brackets and commas
        written.append(save_figure(fig, out / f"speedup_{stem}.png", caption, fontsize=6))
    ceil = {r["metric"]: _num(r["value"]) for r in rows if r["op"] == "ceiling"}
    counted = {(r["op"], r["mode"], int(r["n"]), int(r["d"]), r["dtype"], r["provider"], r["metric"]): _num(r["value"])
               for r in rows if r["metric"] in ("flops", "bytes") and str(r.get("n")).isdigit()
               and str(r.get("d")).isdigit()}
    pts = []
    for (op, mode, n, d, dt), provs in groups.items():
        for name, ms in provs.items():
            # the provider's own counted algorithm where the row has it (bench/flops.py), else the op's cost model
            fl, nb = (counted.get((op, mode, n, d, dt, name, m)) for m in ("flops", "bytes"))
            if fl is not None and not nb:
                continue  # counted FLOPs but unknown bytes (torch.compile): no intensity to place it at
            fb = (fl, nb) if fl else _flops_bytes(op, mode, n, d, dt)
            if fb:
                pts.append((name, fb[0] / fb[1], fb[0] / (ms * 1e-3) / 1e12))
    if pts:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in sorted({p[0] for p in pts}):
            sel = [p for p in pts if p[0] == name]
            ax.scatter([p[1] for p in sel], [p[2] for p in sel], label=name, s=18)
        if "bandwidth_gbs" in ceil and "matmul_tflops" in ceil:
            lo, hi = min(p[1] for p in pts) / 2, max(p[1] for p in pts) * 2
            xs = [lo * (hi / lo) ** (i / 50) for i in range(51)]
            ax.plot(xs, [min(ceil["matmul_tflops"], ceil["bandwidth_gbs"] * x / 1e3) for x in xs], "k--", lw=1,
                    label=f"ceiling ({ceil['bandwidth_gbs']:.3g} GB/s, {ceil['matmul_tflops']:.3g} TFLOP/s)")
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)", ylabel="TFLOP/s",
               title="roofline position of each kernel measurement")
        ax.legend(fontsize=7)
        written.append(save_figure(fig, out / "roofline.png", caption, fontsize=6))
    return written


def render(folder: Path, out: Path | None = None) -> tuple[Path, list[Path]]:
    """Write tables.md (+ PNG plots) for the CSVs of ``folder``; returns (tables path, plot paths)."""
    rows = read(folder)
    if not rows:
        raise ValueError(f"no CSV files with rows in {str(folder)!r}")
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    ktab, groups = kernel_table(rows)
    ceil = {r["metric"]: (_num(r["value"]), r["dtype"]) for r in rows if r["op"] == "ceiling"}
    if ktab and ceil:
        ktab = ("Measured ceilings of this device, beside every figure below: "
                + ", ".join(f"{v:.4g} {'GB/s copy' if k == 'bandwidth_gbs' else f'TFLOP/s {dt} matmul'}"
                            for k, (v, dt) in sorted(ceil.items())) + " (ceilings.csv).\n\n" + ktab)
    parts = folder.resolve().parts  # a path relative to the results root: no machine path in a committed file
    where = "/".join(parts[parts.index("results") + 1:]) if "results" in parts else folder.name
    sections = [f"# Performance record: {where}", "", f"Rows from: {_caption(rows)}.", ""]
    for title, body in (("Stages of this record", file_table(rows, "stages.csv", ("stage", "estimate_s", "seconds",
                                                                                 "status", "note"))),
                        ("Device ceilings", simple_table(rows, "ceiling", ("bandwidth_gbs", "matmul_tflops"),
                                                          "measurement")),
                        ("Verification", verify_table(rows)),
                        ("Kernels", ktab),
                        ("DirectPred per update: Jacobi sweeps, modelled FLOPs (host-schedule: run on the host)",
                         simple_table(rows, "predictor_weight", ("sweeps", "flops"), "provider")),
                        ("Training step", step_table(rows)),
                        ("Host synchronisations in one training step (set_sync_debug_mode)",
                         file_table(rows, "syncs.csv", ("method", "where", "what"))),
                        ("Data loading", simple_table(rows, "data", ("images_per_s", "views_per_s"), "loader"))):
        if body:
            sections += [f"## {title}", "", body, ""]
    path = out / "tables.md"
    path.write_text("\n".join(sections))
    return path, plots(rows, groups, out)


# bench providers that are a backend of the public op (DirectPred's warm Jacobi providers join these: _solver_providers)
PROVIDER_BACKEND = {"eager": "torch", "torch": "torch", "triton": "triton", "cuda": "cuda"}


def _solver_providers() -> dict[str, str]:
    """bench directpred's warm Jacobi providers -> the kernel each times (training runs the update warm)."""
    from .bench_directpred import JACOBI

    return {name: solver for name, (solver, warm) in JACOBI.items() if warm}


def _case_ops() -> dict[str, str]:
    """verify's case names -> registry op (kernel_ssl_loss is a case of matrix_ssl_loss)."""
    from .verify import CASES

    return {c.name: c.op for c in CASES}


def preferences(rows: list[dict], ops: set[str] | None = None) -> dict[str, dict[str, dict[str, str]]]:
    """The choices a GPU record makes, from its rows (``read``); CPU rows are ignored.

    "fastest" {GPU model: {op: backend}}: per op (variants "op[...]" count as their op), the backend with the highest
    geometric-mean speedup over "torch" (the eager provider) across the op's measured shapes, modes and dtypes (only
    "fwd+bwd" where the op has it: training runs both), where that mean exceeds 1. A backend with a failed check in
    the record's verify.csv is never chosen (for DirectPred: a Jacobi kernel, "cuda[multi-block]").
    "directpred_solver" {GPU model: {D: kernel}}: the faster warm Jacobi kernel at each measured D, among those that
    passed verify and did not synchronise the host (metric host_syncs)."""
    gpu = [r for r in rows if r.get("device") and not r["device"].startswith("cpu")]
    solvers = _solver_providers()
    backend_of = {**PROVIDER_BACKEND, **dict.fromkeys(solvers, "cuda")}
    case_op = _case_ops() if any(r["_file"] == "verify.csv" for r in gpu) else {}
    failed = {(r["device"].lower(), case_op.get(r["case"], r["case"].split("[")[0]), r["backend"]) for r in gpu
              if r["_file"] == "verify.csv" and r.get("ok") != "True"}
    times: dict = defaultdict(dict)  # (gpu, op, mode, n, d, dtype) -> {provider: p50 ms}
    syncs: dict = {}
    for r in gpu:
        if r["_file"] == "verify.csv":
            continue
        key = (r["device"].lower(), r["op"].split("[")[0], r["mode"], r["n"], r["d"], r["dtype"])
        if r["metric"] == "p50" and r.get("unit") == "ms":
            times[key][r["provider"]] = _num(r["value"])
        elif r["metric"] == "host_syncs":
            syncs[key + (r["provider"],)] = _num(r["value"])

    def usable(model: str, op: str, provider: str, key: tuple) -> bool:
        backend = backend_of.get(provider)
        if backend is None or (model, op, backend) in failed:
            return False
        kernel = solvers.get(provider) if op == "predictor_weight" else None
        return kernel is None or ((model, op, f"{backend}[{kernel}]") not in failed
                                  and not syncs.get(key + (provider,)))

    trained = {(k[0], k[1]) for k in times if k[2] == "fwd+bwd"}
    speedups: dict = defaultdict(list)  # (gpu, op, backend) -> [speedup over torch]
    solver: dict = defaultdict(dict)
    for key, provs in times.items():
        model, op, mode, _n, d, _dt = key
        if (ops is not None and op not in ops) or ((model, op) in trained and mode != "fwd+bwd"):
            continue
        ok = {name: ms for name, ms in provs.items() if ms > 0 and usable(model, op, name, key)}
        base = provs.get("eager", provs.get("torch"))
        best: dict = {}  # backend -> its fastest provider's ms in this group
        for name, ms in ok.items():
            backend = backend_of[name]
            best[backend] = min(ms, best.get(backend, math.inf))
        for backend, ms in best.items():
            if base and backend != "torch":
                speedups[(model, op, backend)].append(base / ms)
        warm = {solvers[name]: ms for name, ms in ok.items() if name in solvers}
        if op == "predictor_weight" and warm:
            solver[model][str(int(d))] = min(warm, key=warm.get)
    fastest: dict = {k[0]: {} for k in times}  # a measured GPU with no winner: auto keeps torch there
    for (model, op, backend), xs in sorted(speedups.items()):
        mean = math.exp(sum(math.log(x) for x in xs) / len(xs))
        current = fastest[model].get(op)
        if mean > 1.0 and (current is None or mean > current[1]):
            fastest[model][op] = (backend, mean)
    return {"fastest": {m: {op: b for op, (b, _) in sorted(c.items())} for m, c in sorted(fastest.items())},
            "directpred_solver": {m: dict(sorted(c.items(), key=lambda kv: int(kv[0])))
                                  for m, c in sorted(solver.items())}}


def write_preferences(folders: list[Path], path: Path, ops: set[str] | None = None) -> dict:
    """Merge the choices of the records in ``folders`` into the preferences file at ``path``: the GPU models these
    records measured are replaced, the others kept. Returns the file's new content."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    found = preferences([r for f in folders for r in read(f)], ops)
    for choice, by_model in found.items():
        kept = {m: v for m, v in data.get(choice, {}).items() if m not in by_model}
        data[choice] = {**kept, **by_model}
    data.setdefault("note", "backend=auto on a CUDA GPU: the fastest backend per op and DirectPred's Jacobi kernel per "
                            "D, per GPU model, from a committed GPU record (fusedssl bench render --prefer)")
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fusedssl bench render", description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="results folders holding CSVs (e.g. bench/results/<device>/<date>)")
    p.add_argument("--out", default=None, help="where to write (default: each folder itself)")
    p.add_argument("--prefer", nargs="?", const=str(Path(__file__).resolve().parents[1] / "kernels" /
                                                   "preferences.json"), default=None, metavar="JSON",
                   help="also write the records' choices (auto's backend per op, DirectPred's kernel per D) into this "
                        "file (default: kernels/preferences.json of this checkout)")
    args = p.parse_args(argv)
    if args.prefer:
        from fusedssl.kernels import _backend

        missing = [f for f in args.folders if not Path(f).is_dir()]
        if missing:
            print(f"fusedssl bench render: error: folders: {', '.join(missing)} not found")
            return 2
        data = write_preferences([Path(f) for f in args.folders], Path(args.prefer), set(_backend._REGISTRY))
        print(f"wrote {args.prefer}: " + json.dumps({k: v for k, v in data.items() if k != "note"}))
    for f in args.folders:
        try:
            tables, pngs = render(Path(f), Path(args.out) if args.out else None)
        except ValueError as e:
            print(f"fusedssl bench render: error: {e}")
            return 2
        print(f"wrote {tables}" + "".join(f", {q.name}" for q in pngs))
    return 0
