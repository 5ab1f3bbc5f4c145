"""Imported by the PIL loader's forkserver only (a preload of fallback._worker_context), never by a trainer.

torchrun and SLURM signal every process of the group or job step, and the server is one of them. A server dead of
that SIGTERM reads, to the trainer's DataLoader, as every worker dead at once (multiprocessing learns a worker's exit
status from the server, and takes a closed server for exit status 255): the run crashes with "DataLoader worker
exited unexpectedly" before its preemption checkpoint. So the server ignores the stop signals. It still ends: it
leaves when its liveness pipe closes, which is when the trainer and its workers have gone (the workers watch the
trainer, fallback.guard_stop_signals), and SIGKILL ends it as any process."""

import signal

for _sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(_sig, signal.SIG_IGN)
