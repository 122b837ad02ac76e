"""Run a queue of training runs a few at a time, one torch thread each; finished runs are
skipped and cut ones continue (``resume=true``), so the same command picks up where it stopped.

    python scripts/run_queue.py scripts/omniglot_converged.txt --out logs/converged --parallel 2

A queue file has one run per line: a folder name, then its overrides (shell quoting); a line
``@common <overrides>`` gives overrides that every run gets first; ``#`` starts a comment.
Each run writes into ``<out>/<name>/`` (``hydra.run.dir``) with its console output in
``run.log``; a failed run leaves ``FAILED`` (its exit code) and is not retried until that file
is deleted; a run whose earlier attempt ended before its first validation (no ``last.ckpt``)
starts afresh, with what that attempt left moved to ``<name>/attempt-<n>/``. Several instances
may share one ``--out``: a run is claimed by creating ``<name>/.claimed`` exclusively; while it
trains the marker holds the training process's id, so a killed queue leaves its running jobs
claimed until they end. The queue file is read again before
each run starts: lines added, removed or reordered while the queue works take effect at its next
pick. ``--skip-collected results/omniglot`` leaves out the runs already collected there (their
``run_name``; symlinked folders followed, as the report does), so a fresh machine runs only what
the committed results lack. ``--status`` prints where each run stands and starts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fewshot.io import UnsafePathError, safe_name
from fewshot.reporting.walk import files_below

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class QueuedRun:
    """One line of a queue file."""

    name: str
    overrides: tuple[str, ...]


def read_queue(path: Path) -> list[QueuedRun]:
    """The runs of a queue file, each with the ``@common`` overrides first."""
    common: list[str] = []
    runs = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SystemExit(
            f"{path}: cannot read the queue file ({reason}); pass a text file of '<name> <overrides>' lines."
        ) from None
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:  # e.g. "No closing quotation"
            raise SystemExit(f"{path}:{number}: {err}; close the quote (or escape it) on that line.") from None
        if not words:
            continue
        if words[0] == "@common":
            common = words[1:]
            continue
        if "=" in words[0]:
            raise SystemExit(f"{path}:{number}: a line starts with the run's folder name, got {words[0]!r}.")
        try:  # the name is a folder of --out: ".." would claim --out's parent and move its files
            safe_name(words[0], "the run's folder name", "rename the run (e.g. protonet_5w1s_seed0)")
        except UnsafePathError as err:
            raise SystemExit(f"{path}:{number}: {err}") from err
        runs.append(QueuedRun(words[0], (*common, *words[1:])))
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"{path}: run names must be unique, repeated: {', '.join(duplicates)}.")
    return runs


def alive(pid: int) -> bool:
    """Whether a process of that id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claimed_by_live_worker(folder: Path) -> bool:
    """Whether the run's ``.claimed`` marker belongs to a live worker (a marker without a process
    id yet, being written, counts as live for a minute)."""
    marker = folder / ".claimed"
    try:
        owner = marker.read_text().strip()
        return alive(int(owner)) if owner.isdigit() else time.time() - marker.stat().st_mtime <= 60
    except FileNotFoundError:
        return False


def claim(folder: Path) -> bool:
    """Claim a run that is neither finished, failed, nor claimed by a live worker."""
    if (folder / "results.json").exists() or (folder / "FAILED").exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".claimed"
    if not claimed_by_live_worker(folder):
        marker.unlink(missing_ok=True)  # its worker was killed: the run continues from its checkpoint
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def hand_claim_to(folder: Path, pid: int) -> None:
    """Make the training process the owner of the run's claim (replaced atomically), so the
    claim lives as long as the run does, whatever happens to the queue that started it."""
    temporary = folder / ".claimed.new"
    temporary.write_text(str(pid))
    os.replace(temporary, folder / ".claimed")


def command(run: QueuedRun, folder: Path, python: str) -> list[str]:
    """The train.py command of a run (continuing it when it has a last checkpoint)."""
    resume = ["resume=true"] if (folder / "checkpoints" / "last.ckpt").exists() else []
    return [python, "train.py", *run.overrides, f"hydra.run.dir={folder.resolve()}", *resume]


# what an attempt that never validated leaves behind (train.py refuses to start afresh beside it)
ATTEMPT_LEFTOVERS = (".hydra", "checkpoints", "csv")


def set_aside_unresumable_attempt(folder: Path) -> list[str]:
    """Move what an earlier attempt without a ``last.ckpt`` left in ``folder`` to
    ``<folder>/attempt-<n>/`` (nothing there can be resumed); the names moved."""
    if (folder / "checkpoints" / "last.ckpt").exists():
        return []
    leftovers = [name for name in ATTEMPT_LEFTOVERS if (folder / name).exists()]
    if leftovers:
        n = 1
        while (folder / f"attempt-{n}").exists():
            n += 1
        aside = folder / f"attempt-{n}"
        aside.mkdir()
        for name in leftovers:
            (folder / name).rename(aside / name)
    return leftovers


def execute(run: QueuedRun, folder: Path, python: str, project: Path) -> int:
    """Run one training job with one torch thread in ``project``; its exit code."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    moved = set_aside_unresumable_attempt(folder)
    cmd = command(run, folder, python)
    with (folder / "run.log").open("a") as log:
        if moved:
            log.write(f"an earlier attempt left no last.ckpt: {', '.join(moved)} set aside in attempt-<n>/\n")
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        start = time.time()
        process = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        hand_claim_to(folder, process.pid)
        code = process.wait()
        log.write(f"exit {code} after {time.time() - start:.0f} s wall\n")
    return code


@dataclass
class FailureStreak:
    """Failures in a row across workers: a setup problem (missing data, a broken checkout) fails
    every run in seconds, so the queue stops after ``limit`` instead of failing all of them."""

    limit: int
    count: int = 0

    @property
    def stopped(self) -> bool:
        """Whether the queue takes no new run."""
        return self.count >= self.limit


def collected_runs(folders: list[Path]) -> dict[str, Path]:
    """Run name -> results file of every run collected into ``folders`` (``run_name`` in the
    results.json that ``python -m fewshot.reporting.collect`` writes)."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--skip-collected {folder}: no such folder (a results folder, e.g. results/omniglot).")
        for results in sorted(files_below(folder, "results.json")):  # symlinked folders too, as the report
            try:
                name = json.loads(results.read_text()).get("run_name")
            except (OSError, ValueError) as err:
                raise SystemExit(f"--skip-collected: {results} is unreadable ({err}).") from err
            if isinstance(name, str):
                found.setdefault(name, results)
    return found


class QueueFile:
    """The queue file, read again at every pick; a file broken mid-edit keeps the last good runs.
    Runs already collected into a results folder are left out."""

    def __init__(self, path: Path, collected: dict[str, Path] | None = None) -> None:
        self.path = path
        self.collected = collected or {}
        self.runs = self.pending(read_queue(path))

    def pending(self, runs: list[QueuedRun]) -> list[QueuedRun]:
        """The runs that are not collected yet."""
        return [run for run in runs if run.name not in self.collected]

    def current(self) -> list[QueuedRun]:
        """The runs the file lists now (the last readable version while it cannot be read)."""
        try:
            self.runs = self.pending(read_queue(self.path))
        except (SystemExit, OSError) as problem:
            print(f"{time.strftime('%H:%M:%S')} queue file unreadable, using its last version: {problem}", flush=True)
        return self.runs


def next_run(queue: QueueFile, out: Path) -> QueuedRun | None:
    """Claim the first run of the queue file that nobody has finished, failed or claimed."""
    return next((run for run in queue.current() if claim(out / run.name)), None)


def worker(
    queue: QueueFile, out: Path, python: str, project: Path, lock: threading.Lock, streak: FailureStreak
) -> None:
    """Take unclaimed runs from the queue until none is left (or failures in a row stop it)."""
    while True:
        with lock:
            run = None if streak.stopped else next_run(queue, out)
        if run is None:
            return
        folder = out / run.name
        print(f"{time.strftime('%H:%M:%S')} start {run.name}", flush=True)
        code = execute(run, folder, python, project)
        with lock:
            streak.count = streak.count + 1 if code != 0 else 0
        if code != 0:
            (folder / "FAILED").write_text(f"{code}\n")
        (folder / ".claimed").unlink(missing_ok=True)
        print(f"{time.strftime('%H:%M:%S')} {'done' if code == 0 else f'FAILED ({code})'} {run.name}", flush=True)


def last_validation(folder: Path) -> str:
    """``val 83.6 at step 4499 (9 validations)`` from the run's CSV log, or ``""`` without one."""
    scores = []
    for metrics in sorted(folder.glob("**/metrics.csv")):
        try:
            with metrics.open(newline="") as f:
                scores += [(int(r["step"]), float(r["val/acc"])) for r in csv.DictReader(f) if r.get("val/acc")]
        except (OSError, ValueError, KeyError, csv.Error) as err:  # UnicodeDecodeError is a ValueError
            return f"{metrics.relative_to(folder)} unreadable ({type(err).__name__})"
    if not scores:
        return ""
    step, acc = max(scores)
    count = f"{len(scores)} validation{'s' if len(scores) > 1 else ''}"
    return f"val {100 * acc:.1f} at step {step} ({count})"


def checkpoint_cpu_minutes(folder: Path) -> str:
    """``5.2 of 60 CPU-min at the last checkpoint`` from ``checkpoints/last.ckpt``, or ``""``
    without a readable one or a CPU budget in it."""
    from fewshot.run.checkpoint import CONFIG_KEY, read_checkpoint  # torch: only for --status

    try:
        checkpoint = read_checkpoint(folder / "checkpoints" / "last.ckpt")
        used_s = float(checkpoint["callbacks"]["CpuTimeBudget"]["used_s"])
    except Exception:  # noqa: BLE001 - a checkpoint being written, or none: nothing to show
        return ""
    cap = ((checkpoint[CONFIG_KEY].get("callbacks") or {}).get("cpu_budget") or {}).get("minutes")
    return f"{used_s / 60:.1f}{f' of {cap:g}' if cap else ''} CPU-min at the last checkpoint"


def finished_summary(results_file: Path) -> str:
    """``test 96.67 +- 0.35, 60.2 CPU-min, stopped by cpu_budget`` from a finished run's results."""
    try:
        results = json.loads(results_file.read_text())
        test, train = results["test"], results.get("train", {})
        summary = f"test {100 * test['acc']:.2f} +- {100 * test['ci95']:.2f}"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"results.json unreadable ({err.__class__.__name__}: {err})"
    if isinstance(train.get("cpu_s"), (int, float)):
        summary += f", {train['cpu_s'] / 60:.1f} CPU-min"
    if train.get("stopped_by"):
        summary += f", stopped by {train['stopped_by']}"
    return summary


def run_status(folder: Path) -> tuple[str, str]:
    """A run's state (``done``, ``failed``, ``running``, ``cut``, ``waiting``) and what it shows."""
    if (folder / "results.json").exists():
        return "done", finished_summary(folder / "results.json")
    if (folder / "FAILED").exists():
        code = (folder / "FAILED").read_text().strip()
        return "failed", f"exit {code}; see {folder / 'run.log'}, delete FAILED to retry"
    progress = ", ".join(filter(None, [last_validation(folder), checkpoint_cpu_minutes(folder)]))
    if claimed_by_live_worker(folder):
        return "running", progress
    if (folder / "checkpoints" / "last.ckpt").exists():
        return "cut", ", ".join(filter(None, [progress, "continues from checkpoints/last.ckpt"]))
    return "waiting", progress


def print_status(runs: list[QueuedRun], out: Path, collected: dict[str, Path] | None = None) -> None:
    """One line per queued run: its state and progress, then how many runs are in each state."""
    collected = collected or {}
    rows = [
        (run.name, "collected", finished_summary(collected[run.name]))
        if run.name in collected
        else (run.name, *run_status(out / run.name))
        for run in runs
    ]
    name_width = max(len(name) for name, _, _ in rows)
    state_width = max(len("waiting"), *(len(state) for _, state, _ in rows))
    counts: dict[str, int] = {}
    for name, state, detail in rows:
        counts[state] = counts.get(state, 0) + 1
        print(f"{name:{name_width}s}  {state:{state_width}s}  {detail}".rstrip())
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + f" (of {len(runs)})")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queue", type=Path, help="the queue file")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs' folders")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs train.py")
    parser.add_argument(
        "--project",
        type=Path,
        default=PROJECT_ROOT,
        help="the checkout whose train.py runs (e.g. a git worktree kept at one commit while you develop)",
    )
    parser.add_argument(
        "--stop-after-failures", type=int, default=3, help="take no new run after this many failures in a row"
    )
    parser.add_argument(
        "--skip-collected",
        type=Path,
        action="append",
        default=[],
        metavar="RESULTS_DIR",
        help="leave out runs already collected into this results folder (e.g. results/omniglot); repeatable",
    )
    parser.add_argument("--status", action="store_true", help="print where each run stands; start nothing")
    args = parser.parse_args(argv)
    if args.parallel < 1 or args.stop_after_failures < 1:
        parser.error("--parallel and --stop-after-failures must be at least 1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; pass the folder that holds (or will hold) the runs' folders")
    runs = read_queue(args.queue)
    if not runs:
        raise SystemExit(
            f"{args.queue} lists no runs; add lines '<name> <overrides>' (see the queue files in scripts/)."
        )
    collected = collected_runs(args.skip_collected)
    if args.status:
        print_status(runs, args.out, collected)
        return 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"--out {args.out}: cannot create it ({err.strerror}); pass a folder you can write.") from None
    lock = threading.Lock()
    streak = FailureStreak(args.stop_after_failures)
    queue = QueueFile(args.queue, collected)
    jobs = (queue, args.out.resolve(), args.python, args.project.resolve(), lock, streak)
    threads = [threading.Thread(target=worker, args=jobs) for _ in range(args.parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = sorted(r.name for r in queue.runs if (args.out / r.name / "FAILED").exists())
    if failed:
        print(f"failed: {', '.join(failed)} (see <out>/<name>/run.log; delete FAILED to retry)")
    if streak.stopped:
        print(f"stopped after {streak.count} failures in a row: fix the cause (run.log), delete FAILED, run again")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
