"""Protect a run folder that already holds a run: checked by Hydra before it writes anything.

Hydra writes ``.hydra/`` (config, overrides) into the run folder before the task starts, so a check
inside the task comes too late: a test-only run pointed at a trained run's folder had already
replaced that run's ``.hydra``. :class:`ProtectExistingRuns` is a Hydra callback whose
``on_run_start`` and ``on_multirun_start`` run earlier: they refuse a run or sweep that would replace
or mix with the runs in its folder, and give one that continues them its own ``.hydra-resume-<n>``.

Two runs (or sweeps) never share a folder: each holds an exclusive lock on
``<folder>/.fewshot-run.lock`` (:class:`FolderLock`) for its whole life; a time-stamped folder (the
default ``${now:...}`` names) taken by a run started in the same second gets a suffix instead
(``<time>_1``, ``<time>_2``, ...). This module imports no torch (it runs before every run).
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the checks below still run, without the lock
    fcntl = None  # type: ignore[assignment]

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fewshot.io import FIXES, OutputPathError, check_writable_dir

# what a run leaves in its folder; inside the task .hydra is this run's own (Hydra wrote it)
RUN_MARKERS = ("results.json", "checkpoints")
HYDRA_SUBDIR = ".hydra"


class RunConfigError(ValueError):
    """A run key with a value the run cannot use; the message names the key, the value and the fix."""


def run_markers_in(folder: Path, markers: Sequence[str]) -> list[str]:
    """The ``markers`` of a run that ``folder`` holds."""
    return [name for name in markers if (folder / name).exists()]


def check_test_only_folder(output_dir: str | Path, markers: Sequence[str] = RUN_MARKERS) -> None:
    """Refuse a test-only run in a folder that already holds another run (issue 17, item 5)."""
    folder = Path(output_dir)
    if existing := run_markers_in(folder, markers):
        raise RunConfigError(
            f"The run folder {folder} already holds another run ({', '.join(existing)}); a test-only run "
            "(train=false) would replace its results. Give it its own folder: drop hydra.run.dir (the default "
            "is a new timestamped folder) and keep ckpt_path=<checkpoint>."
        )


def check_fresh_training_folder(output_dir: str | Path, markers: Sequence[str] = RUN_MARKERS) -> None:
    """Refuse to train a new run from scratch in a folder that already holds a run."""
    folder = Path(output_dir)
    if existing := run_markers_in(folder, markers):
        raise RunConfigError(
            f"The run folder {folder} already holds a run ({', '.join(existing)}); training a new one from "
            "scratch there would mix the two runs' checkpoints and logs. Continue that run with resume=true, "
            "give this one its own folder (drop hydra.run.dir: the default is a new timestamped folder), or "
            f"delete {folder} to start over."
        )


def holds_trained_state(folder: Path) -> bool:
    """Whether ``folder`` holds a run's results or any checkpoint of it."""
    return (folder / "results.json").exists() or any((folder / "checkpoints").glob("*.ckpt"))


def folders_holding_runs(sweep_dir: Path) -> list[Path]:
    """The folders under a sweep folder that hold a run: its ``.hydra`` or a run marker."""
    if not sweep_dir.is_dir():
        return []
    names = {*RUN_MARKERS, HYDRA_SUBDIR}
    return sorted({path.parent for path in sweep_dir.rglob("*") if path.name in names and path.parent != sweep_dir})


def in_sweep_job() -> bool:
    """Whether this process runs a job of a Hydra sweep (``-m``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def free_subdir(folders: Sequence[Path], stem: str) -> str:
    """``<stem>-1``, ``<stem>-2``, ...: the first that exists in none of ``folders``."""
    n = 1
    while any((folder / f"{stem}-{n}").exists() for folder in folders):
        n += 1
    return f"{stem}-{n}"


def keep_former_file(path: Path) -> Path | None:
    """Rename ``path`` (if it exists) to ``<stem>.before-resume-<n><suffix>`` beside it, so what is
    written at ``path`` next does not replace it; return the new name."""
    if not path.is_file():
        return None
    n = 1
    while (kept := path.with_name(f"{path.stem}.before-resume-{n}{path.suffix}")).exists():
        n += 1
    path.rename(kept)
    return kept


LOCK_FILE = ".fewshot-run.lock"
TIME_RESOLVER = "${now:"


class FolderLock:
    """An exclusive lock on a run or sweep folder, held until :meth:`release` (or the process ends)."""

    def __init__(self, folder: Path, fd: int | None, created: bool) -> None:
        self.folder, self.fd, self.created = folder, fd, created

    @classmethod
    def take(cls, folder: Path) -> FolderLock | None:
        """Lock ``folder`` (created if missing) for this process; None when another process holds it.

        A folder that cannot be made or written gets no lock: :func:`check_folder_writable` names
        that problem with its fix, before any work."""
        created = not folder.exists()
        path = folder / LOCK_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return cls(folder, None, False)
        if fcntl is None:
            return cls(folder, None, created)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return cls(folder, None, created)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return None
                return cls(folder, None, created)  # a file system without locks (some network ones)
            try:  # a lock file that its last holder removed between our open and our lock is no lock
                locked = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                locked = False
            if locked:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return cls(folder, fd, created)
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and let the lock go (and the folder, if this lock made it and it is empty)."""
        if self.fd is not None:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)  # while still held: no one else can be using it
            os.close(self.fd)
            self.fd = None
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:
                pass  # the run wrote into it: keep it
            self.created = False

    def __del__(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def lock_holder(folder: Path) -> str:
    """``process <pid>`` that holds ``folder``'s lock, as far as its lock file says."""
    try:
        pid = (folder / LOCK_FILE).read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def is_time_named(node: DictConfig) -> bool:
    """Whether a ``hydra.run`` / ``hydra.sweep`` node's ``dir`` is named by the time (``${now:...}``)."""
    raw = OmegaConf.to_container(node, resolve=False).get("dir")
    return isinstance(raw, str) and TIME_RESOLVER in raw


def holds_anything(folder: Path) -> bool:
    """Whether ``folder`` holds anything but its lock file."""
    return folder.is_dir() and any(p.name != LOCK_FILE for p in folder.iterdir())


def claim_new_folder(base: Path) -> tuple[Path, FolderLock]:
    """``base``, else ``base_1``, ``base_2``, ...: the first folder that no process holds and that
    holds nothing, locked for this process."""
    for n in itertools.count():
        folder = base if n == 0 else base.with_name(f"{base.name}_{n}")
        lock = FolderLock.take(folder)
        if lock is None:
            continue
        if not holds_anything(folder):
            return folder, lock
        lock.release()
    raise AssertionError("unreachable")


def lock_or_refuse(folder: Path, what: str, fix: str) -> FolderLock:
    """Lock ``folder`` for this process; exit naming the holder when another run holds it."""
    lock = FolderLock.take(folder)
    if lock is None:
        raise SystemExit(
            f"Error: The {what} {folder} is in use by another run ({lock_holder(folder)}) right now; two runs in one "
            f"folder would mix their checkpoints and results. Wait for it to end, or {fix}."
        )
    return lock


def check_folder_writable(folder: Path, kind: str) -> None:
    """Exit with one line naming the ``run`` (or ``sweep``) folder and the fix unless this process can write in it."""
    try:
        check_writable_dir(folder)
    except OutputPathError as err:
        reason = FIXES.get(err.errno or 0) or f"{os.strerror(err.errno or 0).lower()}: check the path and the disk"
        raise SystemExit(
            f"Error: The {kind} folder {folder} is not writable ({reason}). "
            f"Choose another with hydra.{kind}.dir=<folder>."
        ) from err


def quoted_override(key: str, value: str) -> str:
    """``key='value'`` with the value quoted for Hydra's override parser."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{escaped}'"


# set by Lightning's DDP launcher, torchrun and SLURM for each process of a multi-process run
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def another_process_of_the_run() -> bool:
    """Whether this process is not rank 0 of a multi-process run (its rank 0 started in the same folder)."""
    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


class ProtectExistingRuns(Callback):
    """Hydra callback (conf/hydra/default.yaml): nothing of an existing run is replaced, and no
    two runs share a folder."""

    def __init__(self) -> None:
        # the folders this process runs in, locked until the run or sweep ends
        self.locks: list[FolderLock] = []

    def hold(self, lock: FolderLock) -> None:
        """Keep ``lock`` until the run (or sweep) ends."""
        self.locks.append(lock)

    def release_all(self) -> None:
        """Let every folder this process locked go."""
        while self.locks:
            self.locks.pop().release()

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The run ended (also when it failed): its folder is free."""
        self.release_all()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The sweep ended: its folder is free."""
        self.release_all()

    def claim(self, folder: Path, kind: str, check: Callable[[Path], Any], claimed: bool) -> Any:
        """Lock ``folder`` (a ``run`` or ``sweep`` folder) unless it is ``claimed`` already, make sure
        it can be written, then ``check(folder)`` (it exits on a problem) while no other run can start
        there; what it returns."""
        if not claimed:
            check(folder)  # before creating a lock file in another run's folder
            fix = f"give this {kind} its own folder (drop hydra.{kind}.dir: the default is a new timestamped folder)"
            self.hold(lock_or_refuse(folder, f"{kind} folder", fix))
        try:
            check_folder_writable(folder, kind)
            return check(folder)  # again: now no other run can start there
        except SystemExit:
            self.release_all()
            raise

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before Hydra writes .hydra: claim the run folder (a taken time-stamped one gets a
        suffix; another run's explicit one is refused while that run runs); refuse a test-only
        run, or a run trained from scratch, in another run's folder; point the .hydra of a run
        that continues one at a fresh folder."""
        if another_process_of_the_run():
            return  # rank 0 claimed the folder and made these checks for the whole run
        run_dir = Path(str(config.hydra.run.dir))
        claimed = is_time_named(config.hydra.run)
        if claimed:
            run_dir, lock = claim_new_folder(run_dir)
            self.hold(lock)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.run.dir = str(run_dir)
        if config.hydra.output_subdir is None:  # Hydra writes no config here: nothing to check
            self.claim(run_dir, "run", lambda folder: None, claimed)
            return
        self.claim(run_dir, "run", lambda folder: self.check_run_folder(config, folder), claimed)
        self.point_config_of_continued_run(config, run_dir)

    @staticmethod
    def check_run_folder(config: DictConfig, run_dir: Path) -> None:
        """Exit when the run would replace or mix with another run in ``run_dir``."""
        trains = config.get("train", True)
        continues = config.get("resume", False) or bool(config.get("ckpt_path"))
        markers = (*RUN_MARKERS, HYDRA_SUBDIR)
        try:
            if not trains:
                check_test_only_folder(run_dir, markers)
            elif not continues:
                check_fresh_training_folder(run_dir, markers)
        except RunConfigError as err:
            # Hydra turns a callback's exception into a warning and goes on: exit instead
            raise SystemExit(f"Error: {err}") from err

    @staticmethod
    def point_config_of_continued_run(config: DictConfig, run_dir: Path) -> None:
        """A run that continues one in its folder writes its config beside the first (``.hydra-resume-<n>``)."""
        trains = config.get("train", True)
        continues = config.get("resume", False) or bool(config.get("ckpt_path"))
        if trains and continues and config.hydra.output_subdir == HYDRA_SUBDIR and (run_dir / HYDRA_SUBDIR).exists():
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = free_subdir([run_dir], f"{HYDRA_SUBDIR}-resume")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before Hydra writes the sweep's files: refuse a test-only sweep, or a sweep trained from
        scratch, into a sweep folder that holds runs, and a continued sweep into one that holds none;
        point a continued sweep's job configs at a fresh folder and keep its former multirun.yaml."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        claimed = is_time_named(config.hydra.sweep)
        if claimed:  # a sweep started in the same second has it: take the next
            sweep_dir, lock = claim_new_folder(sweep_dir)
            self.hold(lock)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.sweep.dir = str(sweep_dir)
                # each job's config is composed again from these overrides: they must name this folder
                config.hydra.overrides.hydra = [
                    *(o for o in config.hydra.overrides.hydra if o.lstrip("+").split("=", 1)[0] != "hydra.sweep.dir"),
                    quoted_override("hydra.sweep.dir", str(sweep_dir)),
                ]
        if config.hydra.output_subdir is None:  # Hydra writes no config here: nothing to check
            self.claim(sweep_dir, "sweep", lambda folder: None, claimed)
            return
        runs = self.claim(sweep_dir, "sweep", lambda folder: self.check_sweep(config, folder), claimed)
        if not runs:
            return
        keep_former_file(sweep_dir / "multirun.yaml")
        if config.hydra.output_subdir == HYDRA_SUBDIR:
            subdir = free_subdir(runs, f"{HYDRA_SUBDIR}-resume")
            # each job's config is composed again from these overrides (ConfigLoader.load_sweep_config)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.overrides.hydra.append(f"hydra.output_subdir='{subdir}'")

    @staticmethod
    def check_sweep(config: DictConfig, sweep_dir: Path) -> list[Path]:
        """The folders of ``sweep_dir`` that hold runs; exit when the sweep would replace or mix with them."""
        runs = folders_holding_runs(sweep_dir)
        trains = config.get("train", True)
        try:
            check_sweep_folder(
                sweep_dir, runs, trains, bool(config.get("resume", False)), bool(config.get("ckpt_path"))
            )
        except RunConfigError as err:
            raise SystemExit(f"Error: {err}") from err
        return runs

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A job of a continued sweep that never started: its config is its first, its ``.hydra``."""
        subdir = config.hydra.output_subdir
        if subdir is None or not str(subdir).startswith(f"{HYDRA_SUBDIR}-resume-"):
            return
        job_dir = Path(str(config.hydra.runtime.output_dir))
        if not (job_dir / HYDRA_SUBDIR).exists() and (job_dir / str(subdir)).is_dir():
            (job_dir / str(subdir)).rename(job_dir / HYDRA_SUBDIR)


def check_sweep_folder(sweep_dir: Path, runs: Sequence[Path], trains: bool, resume: bool, ckpt_path: bool) -> None:
    """Refuse a sweep whose folder's runs it would replace or mix with, or a resume with nothing to resume."""
    if runs and not trains:
        raise RunConfigError(
            f"The sweep folder {sweep_dir} already holds runs ({runs[0]}, ...); a test-only sweep (train=false) "
            "would replace their configs. Give it its own folder: drop hydra.sweep.dir (the default is a new "
            "timestamped folder)."
        )
    if runs and trains and not (resume or ckpt_path):
        raise RunConfigError(
            f"The sweep folder {sweep_dir} already holds runs ({runs[0]}, ...); training a new sweep from scratch "
            "there would mix the runs' checkpoints and logs. Continue that sweep with resume=true (the same sweep "
            "overrides), give this one its own folder (drop hydra.sweep.dir), or delete the folder to start over."
        )
    if resume and trains and not runs:
        raise RunConfigError(
            f"resume=true but the sweep folder {sweep_dir} holds no run to continue. Pass the folder of the "
            "interrupted sweep (hydra.sweep.dir=<its folder>) or drop resume=true."
        )
