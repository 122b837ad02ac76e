"""Stopping a run on SIGTERM/SIGINT with a loadable last checkpoint and the command that resumes.

SIGTERM is what SLURM preemption, ``timeout`` and ``docker stop`` send; SIGINT is Ctrl+C. While a
run is inside :func:`stop_on_signals`, either signal only sets a flag; :class:`StopOnSignal`
raises :class:`RunInterrupted` before the next training episode (meta-batch) starts, or at the end
of the current validation or test episode, so a long validation or fine-tuning grid stops within
one episode, and saves the state at the cut as ``last.ckpt``, from which the resume continues
exactly. A second Ctrl+C stops at once (KeyboardInterrupt).

On SLURM, requeueing is Lightning's own: its SLURMEnvironment (auto_requeue, on by default)
saves ``hpc_ckpt_<n>.ckpt`` on the requeue signal (``#SBATCH --signal=SIGUSR1@90``), requeues
the job and restores that checkpoint when the requeued job starts in the same run folder.
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """The run was stopped by a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        kept = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(f"Run interrupted by {name}; {kept}.")
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


class StopFlag:
    """The signal received while a run is inside :func:`stop_on_signals` (None until one arrives)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.last_checkpoint: Path | None = None

    def interruption(self) -> RunInterrupted:
        """The RunInterrupted to raise for the signal received (SIGTERM if Lightning saw it first)."""
        last = self.last_checkpoint
        return RunInterrupted(self.signum or signal.SIGTERM, last if last and last.is_file() else None)

    def raise_if_set(self) -> None:
        """Raise RunInterrupted when a stop signal has arrived."""
        if self.signum is not None:
            raise self.interruption()


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turn SIGTERM and SIGINT into a flag for the duration of a run (main thread only)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum: int, frame: Any) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        flag.signum = signum
        log.warning("Received %s: stopping after the current episode.", signal.Signals(signum).name)

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopOnSignal(pl.Callback):
    """Raise RunInterrupted between episodes once a stop signal has arrived, and save the fit's
    state at that point as ``last_checkpoint``."""

    def __init__(self, flag: StopFlag, last_checkpoint: Path) -> None:
        self.flag = flag
        self.last_checkpoint = Path(last_checkpoint)
        flag.last_checkpoint = self.last_checkpoint

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        """Stop before the next training episode (after the last one is logged: a stop at its end
        would lose its logged values, which Lightning hands to the loggers after that hook)."""
        self.flag.raise_if_set()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop before a validation begins."""
        self.flag.raise_if_set()

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Stop between validation episodes."""
        self.flag.raise_if_set()

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Stop between test episodes."""
        self.flag.raise_if_set()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """On a signal during fit, save the state at the cut (an interrupted validation as not run)."""
        stopped = self.flag.signum is not None or getattr(trainer, "received_sigterm", False)
        if stopped and trainer.state.fn == "fit" and trainer.global_step > 0:
            if trainer.validating and not trainer.sanity_checking:
                mark_validation_not_run(trainer)
            trainer.save_checkpoint(self.last_checkpoint)


def mark_validation_not_run(trainer: pl.Trainer) -> None:
    """Set the fit's validation progress to "restarted at its first episode", so a checkpoint saved
    now makes Lightning run the interrupted validation again in full when the run resumes."""
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
    earlier = progress.total.completed - progress.current.completed  # this epoch's earlier validations
    progress.current.reset()
    progress.is_last_batch = False
    # Lightning's test for a restart mid-evaluation: started == ready, processed == started - 1,
    # completed == processed (EvaluationLoop.update_restart_stage)
    total = progress.total
    total.ready = total.started = earlier + 1
    total.processed = total.completed = earlier


def resume_command(script: str, overrides: Iterable[str], run_dir: str | Path) -> str:
    """``python <script> <overrides> hydra.run.dir=<run_dir> resume=true``, shell-quoted."""
    return shell_command(script, [*without_run_keys(overrides), f"hydra.run.dir={run_dir}", "resume=true"])


def resume_sweep_command(script: str, arguments: Iterable[str], sweep_dir: str | Path) -> str:
    """``python <script> <the sweep's arguments> hydra.sweep.dir=<sweep_dir> resume=true``: continues
    every job of a cut sweep (``-m``) that has not finished and starts those that never ran."""
    kept = without_run_keys(arguments, ("resume", "hydra.sweep.dir"))
    return shell_command(script, [*kept, f"hydra.sweep.dir={sweep_dir}", "resume=true"])


def sweep_folder(job_dir: str | Path, job_subdir: str) -> Path:
    """The sweep folder of a job run in ``job_dir`` = ``<sweep folder>/<job_subdir>``."""
    depth = len(Path(job_subdir).parts)
    return Path(job_dir).parents[depth - 1] if depth else Path(job_dir)


def rerun_command(script: str, overrides: Iterable[str]) -> str:
    """``python <script> <overrides>`` in a new run folder: an interrupted test-only run, which has no
    training to resume, starts again (its folder holds its .hydra, where a run is refused)."""
    return shell_command(script, without_run_keys(overrides))


def without_run_keys(overrides: Iterable[str], keys: Iterable[str] = ("resume", "hydra.run.dir")) -> list[str]:
    """The overrides without ``keys`` (by default ``resume`` and ``hydra.run.dir``)."""
    dropped = set(keys)
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in dropped]


def shell_command(script: str, overrides: Iterable[str]) -> str:
    """``python <script> <overrides>``, shell-quoted."""
    return " ".join(shlex.quote(word) for word in ["python", script, *overrides])
