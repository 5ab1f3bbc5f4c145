"""`fusedssl bench kernels|matrix_log|step|data|lars|checkpoint|all|render`: long-format rows with the environment
stamp; re-runs replace, not duplicate; the suite leaves a dated record the renderer turns into tables and plots."""

import csv
from pathlib import Path

import pytest
from fusedssl.engine import cli

ROOT = Path(__file__).resolve().parents[1]


TIMED = {"p20", "p50", "p80", "peak_mem", "flops", "tflops", "bytes", "gbs", "roofline_ms", "of_roofline"}


def test_bench_writes_long_format_csv(tmp_path, capsys):
    args = ["bench", "kernels", "--out", str(tmp_path), "--shapes", "16x24", "--providers", "eager",
            "--ops", "barlow_twins_loss"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/covariance.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 3 * len(TIMED)  # 3 modes x the metrics of a timed provider
    assert {r["metric"] for r in rows} == TIMED
    assert all(r["torch"] and r["device"] and r["date"] for r in rows)
    p50 = [float(r["value"]) for r in rows if r["metric"] == "p50"]
    assert all(v > 0 for v in p50)
    assert "16x24" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert len(list(csv.DictReader(open(path)))) == 3 * len(TIMED)  # same key: replaced


def test_bench_counts_each_providers_own_algorithm(tmp_path):
    """Every provider row carries the FLOPs of its own algorithm: at N < D the original code forms the D x D
    cross-correlation, the eager reference the N x N Grams, the Triton provider (counted, not timed, on a CPU) half
    the Gram tiles; each timed row has its roofline bound as a fraction of the time."""
    n, d = 16, 96
    assert cli.main(["bench", "kernels", "--out", str(tmp_path), "--shapes", f"{n}x{d}", "--ops",
                     "barlow_twins_loss", "--providers", "original,eager,triton"]) == 0
    (path,) = tmp_path.glob("*/covariance.csv")
    rows = list(csv.DictReader(open(path)))
    fl = {r["provider"]: float(r["value"]) for r in rows if r["metric"] == "flops" and r["mode"] == "fwd+bwd"}
    assert fl["original"] == 6 * n * d * d and fl["eager"] == 12 * n * n * d
    assert 0 < fl["triton"] < fl["eager"] < fl["original"]
    assert {r["metric"] for r in rows if r["provider"] == "triton"} == {"flops", "bytes"}
    frac = [float(r["value"]) for r in rows if r["metric"] == "of_roofline"]
    assert len(frac) == 2 * 3 and all(f > 0 for f in frac)


def test_bench_directpred_models_each_providers_cost(tmp_path):
    """The eigensolvers' FLOPs are a model (FlopCounterMode does not count eigh): every row set carries it, labelled
    as one; a Jacobi solve costs more with every sweep, so the warm start's fewer sweeps show as fewer FLOPs."""
    from fusedssl.bench import bench_directpred
    from fusedssl.kernels import _cuda

    assert cli.main(["bench", "directpred", "--out", str(tmp_path), "--dims", "32", "--reps", "2"]) == 0
    (path,) = tmp_path.glob("*/directpred.csv")
    rows = list(csv.DictReader(open(path)))
    fl = {r["provider"]: float(r["value"]) for r in rows if r["metric"] == "flops"}
    assert all(r["unit"].endswith("(model)") for r in rows if r["metric"] in ("flops", "bytes", "tflops", "gbs"))
    assert fl["eager"] == fl["eager-batched"] == 11 * 32**3
    timed = {r["provider"] for r in rows if r["metric"] == "p50"}
    assert {"eager", "eager-batched"} <= timed
    one, two = (bench_directpred.model_cost("cuda-warm", 32, k) for k in (1, 2))
    assert two[0] - one[0] == 6 * 32**3 and two[1] > one[1]
    if _cuda.ext() is not None:  # the host run of the kernel's schedule gives the sweep counts
        sweeps = {r["provider"]: float(r["value"]) for r in rows if r["metric"] == "sweeps"}
        assert sweeps["cuda-warm"] < sweeps["cuda-cold"] and fl["cuda-warm"] < fl["cuda-cold"]
    with pytest.raises(ValueError, match="provider 'triton'"):
        bench_directpred.model_cost("triton", 32)


def test_bench_frobenius(tmp_path, capsys):
    args = ["bench", "frobenius", "--out", str(tmp_path), "--shapes", "16x24", "--providers", "original,eager"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/frobenius.csv")
    rows = list(csv.DictReader(open(path)))
    assert {r["op"] for r in rows} == {"frossl_loss", "frossl_loss[legacy]", "log_frobenius"}
    assert {r["provider"] for r in rows if r["op"] == "frossl_loss"} == {"original", "eager"}
    assert "log_frobenius" in capsys.readouterr().out


def test_bench_refuses_unknown_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "kernels", "--ops", "barlow,vicreg_covariance"])
    assert "--ops: unknown barlow (choose from barlow_twins_loss" in capsys.readouterr().err


def test_bench_matrix_log(tmp_path, capsys):
    args = ["bench", "matrix_log", "--out", str(tmp_path), "--shapes", "16x8", "--providers", "original,eager"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/matrix_log.csv")
    rows = list(csv.DictReader(open(path)))
    assert {r["provider"] for r in rows} == {"original", "eager"}
    assert {r["metric"] for r in rows} == {"p20", "p50", "p80", "flops", "bytes", "tflops", "gbs"}
    fl = {r["provider"]: float(r["value"]) for r in rows if r["metric"] == "flops"}
    assert fl["eager"] < fl["original"]  # the trace identities against the original's explicit matrix powers
    assert "16x8" in capsys.readouterr().out


def test_bench_step_writes_phases_and_throughput(tmp_path, capsys):
    """`fusedssl bench step`: every variant that runs on CPU gets images/s, step ms, peak memory and five phases."""
    smoke = ROOT / "configs" / "smoke.yaml"
    assert cli.main(["bench", "step", "--config", str(smoke), "--steps", "1", "--warmup", "0", "--out",
                     str(tmp_path), "--set", "data.batch_size=8", "--set", "data.image_size=16"]) == 0
    rows = list(csv.DictReader(open(next(tmp_path.rglob("step.csv")))))
    variants = {r["provider"] for r in rows}
    assert variants == {"reference", "no_channels_last", "bf16"}  # fused is GPU-only, compile needs --compile
    for v in variants:
        got = {(r["mode"], r["metric"]) for r in rows if r["provider"] == v}
        assert {("model", "images_per_s"), ("model", "p50"), ("step", "images_per_s"), ("step", "p50"),
                ("data", "p50"), ("objective", "p50"), ("backward", "p50"), ("optimizer", "p50")} <= got
        assert all(float(r["value"]) > 0 for r in rows if r["provider"] == v and r["metric"] != "peak_mem")
        # Barlow Twins runs on the all-gathered batch: its objective is timed at 8 GPUs x the per-GPU batch too
        assert [r["n"] for r in rows if r["provider"] == v and r["mode"] == "objective_gathered"] == ["64"]
    out = capsys.readouterr().out
    assert "fused: skipped" in out and "objective %" in out


def test_bench_data_measures_both_loaders_on_the_same_files(tmp_path, capsys):
    """`fusedssl bench data`: images/s and views/s per loader, with the cores and workers, in one run."""
    from fusedssl.engine.data import dali

    assert cli.main(["bench", "data", "--images", "12", "--batch", "4", "--size", "32", "--steps", "1",
                     "--repeats", "2", "--warmup", "1", "--workers", "1", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(next(tmp_path.rglob("data.csv")))))
    providers = {r["provider"] for r in rows}
    import torch
    from fusedssl import kernels

    kernel_built = kernels.why_not("photometric_augment", "cuda", torch.device("cpu")) is None
    dali_rows = {"dali-cpu-ops"} | ({"dali-cpu"} if kernel_built else set())
    assert providers == ({"pil-dataloader"} | dali_rows if dali.available() else {"pil-dataloader"})
    for p in providers:
        got = {r["metric"]: float(r["value"]) for r in rows if r["provider"] == p}
        assert got["images_per_s"] > 0 and abs(got["views_per_s"] - 2 * got["images_per_s"]) < 1e-4 * got["views_per_s"]
        assert got["cores"] >= 1 and got["workers"] == 1
    out = capsys.readouterr().out
    assert "images/s" in out and ("dali-cpu / pil-dataloader" in out or not dali.available())


def test_bench_lars_times_loop_and_foreach(tmp_path, capsys):
    from fusedssl.engine import cli

    assert cli.main(["bench", "lars", "--out", str(tmp_path), "--reps", "2", "--backbone", "resnet18",
                     "--projector", "64"]) == 0
    out = capsys.readouterr().out
    assert "lars_step_  loop" in out and "ema_        foreach" in out and "cuda: not timed" in out
    rows = next(tmp_path.glob("*/lars.csv")).read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 5  # 2 ops x 2 providers x (p20, p50, p80, bytes, gbs)


def test_bench_checkpoint_saves_and_loads_a_real_run_state_holding_it_once(tmp_path):
    """The state of a built run (a ResNet-18 + LARS here, to stay small) is written and read back with no second
    copy in memory: a save that buffered the file, or a load that read it as bytes first, peaks one state higher."""
    assert cli.main(["bench", "checkpoint", "--out", str(tmp_path / "res"), "--dir", str(tmp_path), "--reps", "1",
                     "--set", "model.backbone=resnet18", "--set", "model.projector=512-512"]) == 0
    rows = {(r["provider"], r["metric"]): float(r["value"])
            for r in csv.DictReader(next((tmp_path / "res").glob("*/checkpoint.csv")).open())}
    size = rows[("file", "bytes")]
    assert size > 2 * 11e6 * 4  # a ResNet-18's weights and their momentum buffers, in fp32
    assert rows[("save", "p50")] > 0 and rows[("load", "p50")] > 0 and rows[("raw_write", "p50")] > 0
    assert rows[("save", "peak_rss_above_state")] < size / 2
    assert rows[("load", "peak_rss_above_state")] < size / 2
    assert not list(tmp_path.glob("fusedssl-ckpt-*")), "the benchmark left its checkpoints behind"


def test_bench_all_quick_leaves_a_dated_record_and_the_renderer_reads_it(tmp_path, capsys):
    """The GPU suite's CPU/CI size: every stage runs, the CSVs land in <out>/<device>/<date>/, tables and plots too."""
    import datetime

    from fusedssl.engine import cli

    assert cli.main(["bench", "all", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 failed stage(s)" in out and out.rstrip().splitlines()[-1].startswith("|")  # the short table comes last
    folder = next(tmp_path.glob(f"*/{datetime.date.today().isoformat()}"))
    names = {p.name for p in folder.iterdir()}
    assert {"ceilings.csv", "verify.csv", "covariance.csv", "matrix_log.csv", "lars.csv", "data.csv", "step.csv",
            "tables.md", "roofline.png", "speedup_barlow_twins_loss.png"} <= names
    assert not (folder / "_raw").exists()
    tables = (folder / "tables.md").read_text()
    for section in ("## Device ceilings", "## Verification", "## Kernels", "## Training step", "## Data loading"):
        assert section in tables
    assert "| triton | float32 |" in tables  # verify ran the Triton kernels in the interpreter
    assert "GB/s" in tables and "TFLOP/s" in tables


def test_renderer_on_the_committed_cpu_record(tmp_path):
    from fusedssl.bench import render

    folder = Path(__file__).resolve().parents[1] / "bench" / "results" / "cpu-x86_64-2threads"
    tables, pngs = render.render(folder, tmp_path)
    text = tables.read_text()
    assert "| barlow_twins_loss | fwd+bwd | 256 x 512 | float32 | compile |" in text  # speedup vs eager and compile
    assert "objective share" in text and "dali-cpu" in text
    assert {p.name for p in pngs} >= {"speedup_barlow_twins_loss.png", "speedup_matrix_ssl_loss.png", "roofline.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    with pytest.raises(ValueError, match="no CSV files"):
        render.render(tmp_path / "empty_folder_missing")


def _record(folder: Path, name: str, rows: list[tuple], device: str = "NVIDIA H200") -> None:
    """A CSV of a record: rows (op, provider, mode, n, d, dtype, metric, value, unit) on ``device``."""
    from fusedssl.bench import harness

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=harness.FIELDS)
        w.writeheader()
        for op, prov, mode, n, d, dt, metric, value, unit in rows:
            w.writerow(dict(op=op, provider=prov, mode=mode, n=n, d=d, dtype=dt, metric=metric, value=value, unit=unit,
                            device=device, torch="2.11.0", triton="3.6.0", fusedssl="0.1.0", git="abc1234",
                            date="2026-12-06"))


def test_render_prefer_writes_what_the_gpu_record_decides(tmp_path, monkeypatch):
    """--prefer turns a record into kernels/preferences.json: per op the backend with the best geometric-mean speedup
    over eager in training mode (fwd+bwd), none where nothing beats eager or the winner failed verify; DirectPred's
    faster warm Jacobi kernel per D; CPU rows ignored; other GPU models kept, this one's old choices replaced. Then
    auto and the cuda predictor provider follow the file."""
    import json

    import torch
    from fusedssl.bench import render
    from fusedssl.kernels import _backend, directpred

    def timed(op, prov, mode, n, d, ms, dt="bfloat16"):
        return (op, prov, mode, n, d, dt, "p50", ms, "ms")

    rec = tmp_path / "NVIDIA_H200" / "2026-12-06"
    _record(rec, "covariance.csv", [
        # barlow: triton wins both fwd+bwd shapes (2x, 3x), cuda 1.5x and 1.2x; its fwd-only rows would pick cuda
        timed("barlow_twins_loss", "eager", "fwd+bwd", 256, 8192, 6.0), timed("barlow_twins_loss", "triton",
                                                                                "fwd+bwd", 256, 8192, 3.0),
        timed("barlow_twins_loss", "cuda", "fwd+bwd", 256, 8192, 4.0), timed("barlow_twins_loss[hsic,tsai]", "eager",
                                                                            "fwd+bwd", 2048, 8192, 9.0),
        timed("barlow_twins_loss[hsic,tsai]", "triton", "fwd+bwd", 2048, 8192, 3.0),
        timed("barlow_twins_loss[hsic,tsai]", "cuda", "fwd+bwd", 2048, 8192, 7.5),
        timed("barlow_twins_loss", "eager", "fwd", 256, 8192, 2.0), timed("barlow_twins_loss", "cuda", "fwd", 256,
                                                                        8192, 0.1),
        timed("barlow_twins_loss", "compile", "fwd+bwd", 256, 8192, 0.5),  # torch.compile is not a backend
        # vicreg: faster at one shape, slower at the other: geometric mean 0.9 -> stays torch
        timed("vicreg_covariance", "eager", "fwd+bwd", 256, 2048, 1.0), timed("vicreg_covariance", "triton",
                                                                            "fwd+bwd", 256, 2048, 0.9),
        timed("vicreg_covariance", "eager", "fwd+bwd", 2048, 8192, 1.0), timed("vicreg_covariance", "triton",
                                                                             "fwd+bwd", 2048, 8192, 1.0 / 0.729),
        # frossl: cuda fastest but failed verify; triton next
        timed("frossl_loss", "eager", "fwd+bwd", 256, 2048, 4.0), timed("frossl_loss", "cuda", "fwd+bwd", 256, 2048,
                                                                        1.0),
        timed("frossl_loss", "triton", "fwd+bwd", 256, 2048, 2.0),
    ])
    _record(rec, "directpred.csv", [
        timed("predictor_weight", "eager", "directpred", 512, 256, 3.0, "float32"),
        ("predictor_weight", "eager", "directpred", 512, 256, "float32", "host_syncs", "2", "syncs per update"),
        timed("predictor_weight", "cuda-warm", "directpred", 512, 256, 0.4, "float32"),
        timed("predictor_weight", "cuda-multiblock-warm", "directpred", 512, 256, 0.6, "float32"),
        timed("predictor_weight", "cuda-cold", "directpred", 512, 256, 0.1, "float32"),  # not what training runs
        timed("predictor_weight", "eager", "directpred", 512, 512, 9.0, "float32"),
        timed("predictor_weight", "cuda-warm", "directpred", 512, 512, 3.0, "float32"),
        timed("predictor_weight", "cuda-multiblock-warm", "directpred", 512, 512, 1.5, "float32"),
    ])
    with open(rec / "verify.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "backend", "dtype", "shape", "layout", "quantity", "err", "tol", "ok", "device"])
        w.writerow(["frossl_loss[legacy]", "cuda", "bfloat16", "256x2048", "contiguous", "dA", "1", "0.1", "False",
                    "NVIDIA H200"])
        w.writerow(["frossl_loss", "triton", "bfloat16", "256x2048", "contiguous", "dA", "0.01", "0.1", "True",
                    "NVIDIA H200"])
    _record(tmp_path / "cpu", "covariance.csv", [timed("vicreg_covariance", "eager", "fwd+bwd", 256, 2048, 9.0),
                                                 timed("vicreg_covariance", "triton", "fwd+bwd", 256, 2048, 1.0)],
            device="cpu-x86_64-2threads")
    prefs = tmp_path / "preferences.json"
    prefs.write_text(json.dumps({"note": "kept", "fastest": {"nvidia h200": {"log_frobenius": "cuda"},
                                                             "nvidia a100-sxm4-80gb": {"barlow_twins_loss": "cuda"}}}))
    assert cli.main(["bench", "render", str(rec), str(tmp_path / "cpu"), "--out", str(tmp_path / "tables"),
                     "--prefer", str(prefs)]) == 0
    data = json.loads(prefs.read_text())
    assert data["note"] == "kept"
    assert data["fastest"] == {"nvidia h200": {"barlow_twins_loss": "triton", "frossl_loss": "triton",
                                               "predictor_weight": "cuda"},
                               "nvidia a100-sxm4-80gb": {"barlow_twins_loss": "cuda"}}
    assert data["directpred_solver"] == {"nvidia h200": {"256": "one-block", "512": "multi-block"}}

    choices = {k: v for k, v in data.items() if isinstance(v, dict)}
    monkeypatch.setattr(_backend, "_CHOICES", choices)
    monkeypatch.setattr(_backend, "_PREFERENCE", choices["fastest"])
    monkeypatch.setattr(_backend, "gpu_model", lambda device: "nvidia h200")
    monkeypatch.setattr(_backend, "why_unavailable", lambda device: None)
    cuda = torch.device("cuda")
    assert _backend.resolve("barlow_twins_loss", "auto", cuda) == "triton"
    assert _backend.resolve("vicreg_covariance", "auto", cuda) == "torch"
    assert [directpred.jacobi_solver(d, cuda) for d in (64, 256, 300, 384, 400, 512)] == [
        "one-block", "one-block", "one-block", "one-block", "multi-block", "multi-block"]
    assert directpred.jacobi_solver(512, torch.device("cpu")) == "one-block"
    monkeypatch.setattr(_backend, "gpu_model", lambda device: "nvidia a100-sxm4-80gb")
    assert directpred.jacobi_solver(512, cuda) == "one-block"  # nothing measured on that GPU
    assert cli.main(["bench", "render", str(tmp_path / "nowhere"), "--prefer", str(prefs)]) == 2
    assert render.preferences([]) == {"fastest": {}, "directpred_solver": {}}


def test_gpu_suite_dry_run_lists_every_stage_inside_the_budget(tmp_path):
    """The GPU record's plan, checked on a CPU machine: every stage with its estimate, the sum within the 330 s."""
    import subprocess

    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(tmp_path), "--dry-run",
                          "--plan", "gpu"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("  ")]
    stages = {ln[0]: float(ln[1]) for ln in lines}
    assert list(stages)[:3] == ["smoke", "ceilings", "verify"] and {"step", "kernels:covariance", "data"} < set(stages)
    assert stages["total"] == sum(v for k, v in stages.items() if k != "total") <= 330
    assert "within the budget" in out.stdout


def test_the_archive_is_complete_after_every_stage_and_skips_are_recorded(tmp_path):
    """bench all --archive: at most 8 files and no folders; record.tar.gz is rebuilt after each stage (a run killed
    after some stages leaves a readable archive of them), and stages the budget cannot cover are listed with why."""
    import subprocess
    import sys
    import tarfile
    import time

    arch = tmp_path / "out"
    cmd = [sys.executable, "-m", "fusedssl.engine.cli", "bench", "all", "--quick", "--out", str(tmp_path / "res"),
           "--archive", str(arch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300:  # kill the run as soon as the archive holds the verify stage
        try:
            with tarfile.open(arch / "record.tar.gz") as tar:
                if any(n.endswith("verify.csv") for n in tar.getnames()):
                    break
        except (OSError, tarfile.TarError):
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    with tarfile.open(arch / "record.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"ceilings.csv", "verify.csv", "stages.csv"} <= names
    # a whole run with a budget that cannot cover every stage
    arch2 = tmp_path / "out2"
    assert cli.main(["bench", "all", "--quick", "--out", str(tmp_path / "res2"), "--archive", str(arch2),
                     "--budget-s", "25"]) == 0
    files = list(arch2.iterdir())
    assert len(files) <= 8 and not any(f.is_dir() for f in files), files
    stages = list(csv.DictReader(open(arch2 / "stages.csv")))
    skipped = [r for r in stages if r["status"] == "skipped"]
    assert skipped and all("left of the budget" in r["note"] for r in skipped), stages
    assert {r["stage"] for r in stages} == {"smoke", "ceilings", "verify", "kernels:covariance", "step",
                                            "kernels:matrix_log", "kernels:directpred", "kernels:lars", "data"}
    assert "## Stages of this record" in (arch2 / "tables.md").read_text()


def test_bench_normalize_counts_bytes(tmp_path):
    """A normalisation has no matrix products: its rows carry bytes (eager moves its intermediates, so more than the
    one read and one write of z any implementation needs) and zero FLOPs."""
    n, d = 32, 24
    assert cli.main(["bench", "normalize", "--out", str(tmp_path), "--shapes", f"{n}x{d}", "--providers",
                     "original,eager", "--ops", "col_normalize[bn],row_normalize"]) == 0
    (path,) = tmp_path.glob("*/normalize.csv")
    rows = list(csv.DictReader(open(path)))
    got = {(r["op"], r["provider"], r["metric"]): float(r["value"]) for r in rows if r["mode"] == "fwd"}
    assert got[("col_normalize[bn]", "original", "flops")] == 0
    assert got[("col_normalize[bn]", "eager", "bytes")] > 2 * n * d * 4
    assert ("row_normalize", "original", "p50") not in got and got[("row_normalize", "eager", "p50")] > 0


def test_bench_photometric(tmp_path, capsys):
    """Every provider that runs here gets its times, images/s and GB/s."""
    args = ["bench", "photometric", "--out", str(tmp_path), "--shapes", "4x16", "--reps", "2"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/photometric.csv")
    rows = list(csv.DictReader(open(path)))
    provs = {r["provider"] for r in rows}
    assert {"original", "eager"} <= provs
    assert {r["metric"] for r in rows} == {"p20", "p50", "p80", "images_per_s", "bytes", "gbs"}
    assert all(float(r["value"]) > 0 for r in rows)
    assert "4x16" in capsys.readouterr().out
