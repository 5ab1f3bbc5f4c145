"""Long runs as they really run: 2 gloo ranks under torchrun, signalled the way torchrun and SLURM signal them.

A preemption must leave a complete checkpoint by the time every process has exited: SIGTERM to torchrun (which
passes it to every rank's process group, data workers included, and SIGKILLs what is left 30 s after the first rank
exits) or SIGUSR1 to the ranks, at a random step, with the PIL loader's workers and with DALI. The requeue decision
must not depend on torchrun's exit status (1 for every case): the SLURM script reads the marker rank 0 writes after
its checkpoint, checked here with a stand-in ``scontrol``.
"""

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, wait_for
from fusedssl.engine import checkpoint, guard
from fusedssl.engine.data import dali, folder

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.batch_size=16", "data.image_size=32", "model.projector=32-16", "evaluate.knn=false",
         "log.every=1", "log.progress=false", "method.name=barlow", "dist.signal_check_every=4",
         "data.workers=2", "dist.timeout_s=60"]



@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    folder.write_photo_tree(root, 24, seed=0)
    return root


def _args(tree: Path, loader: str, steps: int, out: Path | None = None) -> list[str]:
    """``--set`` arguments of the run; the run folder only when given (the SLURM script sets its own)."""
    sets = [*SMALL, "data.source=folder", f"data.root={tree}", f"data.loader={loader}", f"run.steps={steps}"]
    if out is not None:
        sets += [f"run.out_dir={out}", "run.name=run"]
    return [a for o in sets for a in ("--set", o)]


def _recipe(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text("{}\n")
    return out / "recipe.yaml"


def _torchrun(out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), "-m", "fusedssl.engine.cli"]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (the test's own folder: nothing else mentions it)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (p / "stat").read_text().split()[2]
            except OSError:
                continue
            if text in cmd and state != "Z":
                pids.append(int(p.name))
    return pids


def _logged_steps(out: Path) -> int:
    log = out / "run" / "log.jsonl"
    return sum('"loss/total"' in line for line in log.read_text().splitlines()) if log.is_file() else 0


LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not dali.available(), reason="DALI not installed"))]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("how", ["SIGTERM to torchrun", "SIGUSR1 to the ranks"])
def test_preemption_under_torchrun_leaves_a_complete_checkpoint(tmp_path, tree, loader, how):
    out = tmp_path / "out"
    cmd = [*_torchrun(out), "train", "--config", str(_recipe(out)), *_args(tree, loader, 400, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    at = random.Random().randint(2, 8)  # a random step of a fresh run
    assert wait_for(lambda: _logged_steps(out) >= at, 300, proc), proc.communicate()[0][-3000:]
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        ranks = [p for p in _processes_mentioning(str(out)) if p != proc.pid
                 and b"torch.distributed.run" not in Path(f"/proc/{p}/cmdline").read_bytes()
                 and b"fusedssl.engine.cli" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(ranks) == 2, ranks
        for p in ranks:
            os.kill(p, signal.SIGUSR1)
    text = proc.communicate(timeout=300)[0]
    assert wait_for(lambda: not _processes_mentioning(str(out)), 30), "processes outlived torchrun"
    assert text.count("fusedssl: stopped by SIG") == 2, text[-3000:]  # both ranks, not a crash (torchrun itself
    assert "exited unexpectedly" not in text, text[-3000:]            # prints a traceback for its own signal)
    ckpts = sorted((out / "run" / "checkpoints").glob("step_*.pt"))
    assert ckpts, f"no checkpoint was written:\n{text[-3000:]}"
    state = checkpoint.load(ckpts[-1])  # complete: it loads and matches its checksum
    assert at <= state["step"] < 400
    marker = guard.requeue_marker(out / "run")
    assert marker.is_file() and int(marker.read_text()) == state["step"]


def test_the_slurm_script_requeues_on_the_marker_not_on_exit_codes(tmp_path, tree):
    """configs/slurm/requeue.sbatch with a stand-in scontrol: USR1 to the script (SLURM's B:USR1 before the time
    limit) -> every rank checkpoints -> the script requeues the job although torchrun exits 1; the next segment
    resumes, finishes, and is not requeued."""
    out = tmp_path / "out"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.log"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "run", "FUSEDSSL_RUN_DIR": str(out / "run"),
           "FUSEDSSL_LAUNCH": " ".join(_torchrun(out))}
    recipe = _recipe(out)
    sets = _args(tree, "torch", 40)
    script = ROOT / "configs" / "slurm" / "requeue.sbatch"
    proc = subprocess.Popen(["bash", str(script), str(recipe), *sets], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert wait_for(lambda: _logged_steps(out) >= 3, 300, proc), proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGUSR1)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"], text[-3000:]
    step = int(guard.requeue_marker(out / "run").read_text())
    assert 3 <= step < 40
    # the requeued segment: resumes at that step, finishes, leaves no marker, no second requeue
    again = subprocess.run(["bash", str(script), str(recipe), *sets], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not guard.requeue_marker(out / "run").exists()
    assert checkpoint.load(out / "run" / "checkpoints" / "step_00000040.pt")["step"] == 40
    assert f"resumed from {out / 'run' / 'checkpoints' / f'step_{step:08d}.pt'}" in again.stdout + again.stderr
