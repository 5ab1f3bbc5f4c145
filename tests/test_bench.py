"""`fusedssl bench kernels`: writes long-format rows with the environment stamp; re-runs replace, not duplicate."""

import csv

from fusedssl.engine import cli


def test_bench_writes_long_format_csv(tmp_path, capsys):
    args = ["bench", "kernels", "--out", str(tmp_path), "--shapes", "16x24", "--providers", "eager"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/covariance.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 3 * 5  # 3 modes x (p20, p50, p80, tflops, peak_mem)
    assert {r["metric"] for r in rows} == {"p20", "p50", "p80", "tflops", "peak_mem"}
    assert all(r["torch"] and r["device"] and r["date"] for r in rows)
    p50 = [float(r["value"]) for r in rows if r["metric"] == "p50"]
    assert all(v > 0 for v in p50)
    assert "16x24" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert len(list(csv.DictReader(open(path)))) == 15  # same key: replaced


def test_bench_matrix_log(tmp_path, capsys):
    args = ["bench", "matrix_log", "--out", str(tmp_path), "--shapes", "16x8", "--providers", "original,eager"]
    assert cli.main(args) == 0
    (path,) = tmp_path.glob("*/matrix_log.csv")
    rows = list(csv.DictReader(open(path)))
    assert {r["provider"] for r in rows} == {"original", "eager"} and len(rows) == 6
    assert "16x8" in capsys.readouterr().out
