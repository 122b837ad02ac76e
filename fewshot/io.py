"""Writing files safely: atomic replacement, and OS errors turned into one line with the fix.

Every file the project writes goes through :func:`temporary_for` (directly or through
:func:`write_text_atomic` / :func:`write_bytes_atomic` / :func:`write_json_atomic`): the content
goes to a hidden temporary file in the destination's folder, which is renamed onto the
destination only when it is complete. A crash, a full disk or an exception while writing leaves
the previous file as it was (and no half-written file under the final name); a process killed
while writing leaves its temporary file (``.<name>.fewshot-<host>-<pid>-<random>.tmp``), which
:func:`remove_stale_temporaries` deletes once that process is gone.

JSON files are strict JSON (:func:`json_text`): a NaN or infinite number is written as ``null``.
Paths built from file content (a run's method, seed, a queue's run name) go through
:func:`safe_name` / :func:`check_inside`; an output is never one of its command's inputs
(:func:`check_not_an_input`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# ``.<name>.fewshot-<host>-<pid>-<random>.tmp``: whose temporary file it is, so a later run can
# tell a dead writer's leftover from a file being written now
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.fewshot-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]+\.tmp$")

# what to do about an OS error, by errno
FIXES = {
    errno.EACCES: "permission denied: fix the folder's permissions or write somewhere you may write",
    errno.EPERM: "operation not permitted: fix the folder's permissions or write somewhere you may write",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.ENOSPC: "no space left on the device: free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or write to another disk",
    errno.EISDIR: "it is a folder: pass the path of a file (not a folder)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another path or move that file",
    errno.ENAMETOOLONG: "the name is too long: pass a shorter path",
}


class OutputPathError(OSError):
    """An output path that cannot be written; the message is one line naming the path and the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


def output_error(err: OSError, path: str | os.PathLike[str]) -> OutputPathError:
    """``err`` as an :class:`OutputPathError` (errno kept), one line naming ``path`` and the fix."""
    if isinstance(err, OutputPathError):
        return err
    fix = FIXES.get(err.errno or 0, f"{err.strerror or err}: check the path and the disk")
    return OutputPathError(err.errno, f"Cannot write {path}: {fix}.")


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync folders; files must be synced
            raise
    finally:
        os.close(fd)


@contextmanager
def temporary_for(path: Path, fsync: bool = False) -> Iterator[Path]:
    """A hidden temporary path next to ``path``, renamed onto ``path`` when the block succeeds.

    The name is new for every call, so threads and interrupted runs never share one; files
    are created with the usual permissions (unlike ``mkstemp``'s owner-only ones). With
    ``fsync`` the file (and the rename) are flushed to the disk, so a power cut cannot leave
    an empty file under the final name. On any error the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.fewshot-{host_tag()}-{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent, directory=True)


def host_tag() -> str:
    """This machine's name as it appears in temporary file names (letters, digits, ``_``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:32] or "host"


def process_alive(pid: int) -> bool:
    """Whether a process of that id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or an id we cannot ask about): not ours to judge
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files in ``folder`` that a writer on this machine left when it was
    killed (its process is gone); files of live writers and of other machines stay. The removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = TEMP_PATTERN.match(name)
        if match and match["host"] == host_tag() and not process_alive(int(match["pid"])):
            path = Path(folder, name)
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def json_text(data: Any, indent: int | None = 2, sort_keys: bool = False, default: Any = None) -> str:
    """Strict JSON of ``data`` (NaN and infinities as ``null``; ``allow_nan=False`` guards the rest), newline-ended."""
    return json.dumps(finite_or_null(data), indent=indent, sort_keys=sort_keys, default=default, allow_nan=False) + "\n"


def write_json_atomic(
    path: str | os.PathLike[str],
    data: Any,
    fsync: bool = False,
    indent: int | None = 2,
    sort_keys: bool = False,
    default: Any = None,
) -> Path:
    """Write ``data`` as strict JSON (:func:`json_text`) to ``path`` atomically and return the path."""
    return write_text_atomic(path, json_text(data, indent, sort_keys, default), fsync)


class UnsafePathError(ValueError):
    """A path built from file content that would leave its folder; the message names the input and the fix."""


# a name that is one folder of its own: letters, digits, ``_ . + -``, not starting with a dot
SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


def safe_name(name: Any, what: str, fix: str) -> str:
    """``name`` if it is one plain folder or file name (not ``.``/``..``, no separator, not hidden), else
    an UnsafePathError naming ``what`` (where the name came from) and ``fix``.
    """
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UnsafePathError(
            f"{what} is {name!r}, which is not a plain folder name (letters, digits, _ . + -, not starting "
            f"with a dot; no / or \\, not . or ..); {fix}."
        )
    return name


def slug(text: Any, what: str, fix: str) -> str:
    """A safe folder name made from a method or setting name (lower case, other characters as ``_``);
    an UnsafePathError when ``text`` is not a string or nothing of it is left (``..``, ``/``).
    """
    if not isinstance(text, str):
        raise UnsafePathError(f"{what} is {text!r}, not a name; {fix}.")
    made = re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)).strip("_.").lower()
    return safe_name(made, f"{what} ({text!r} as a folder name)", fix)


def safe_int(value: Any, what: str, fix: str, minimum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool, a float or a string) of at least ``minimum``, else an
    UnsafePathError naming ``what`` and ``fix``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        least = "" if minimum is None else f" of at least {minimum}"
        raise UnsafePathError(f"{what} is {value!r}, not an integer{least}; {fix}.")
    return value


def check_inside(path: Path, root: Path, what: str) -> Path:
    """``path`` if it lies under ``root`` once both are resolved (symbolic links followed), else an
    UnsafePathError naming ``what``.
    """
    real, real_root = Path(path).resolve(), Path(root).resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            f"{what}: {path} lies outside {root} (it resolves to {real}); remove the link or fix the input."
        )
    return path


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (resolved paths, or one file under two hard links)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_an_input(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], what: str) -> Path:
    """``output`` if it is none of ``inputs`` (compared resolved, and as files), else an OutputPathError
    naming the input and ``what`` to pass instead.
    """
    target = Path(output).expanduser()
    for source in inputs:
        if same_file(target, Path(source).expanduser()):
            raise OutputPathError(
                errno.EEXIST,
                f"Cannot write {target}: it is {source}, an input of this command, which would be replaced; "
                f"pass another {what}.",
            )
    return target


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file, so ``path`` is never half written."""
    target = Path(path)
    try:
        with temporary_for(target, fsync) as tmp:
            tmp.write_bytes(data)
    except OSError as err:
        raise output_error(err, target) from err
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode(), fsync)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_can_create_in(folder: Path, target: Path) -> None:
    """Raise an :class:`OutputPathError` naming ``target`` unless a file can be created in ``folder``."""
    probe = folder / f".fewshot-write-check.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise output_error(err, target) from err


def check_writable_dir(path: str | os.PathLike[str], create: bool = True) -> Path:
    """Make sure ``path`` is (or can be created as) a folder we can write in, creating it unless ``create`` is False;
    an OutputPathError names the path and the fix (it is a file, a parent is a file, permission denied, full disk).
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(
            errno.ENOTDIR, f"Cannot write into {folder}: it is a file, not a folder; pass another folder or move it."
        )
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputPathError(
            errno.ENOTDIR,
            f"Cannot create the folder {folder}: {existing} is a file, not a folder; pass another path or move it.",
        )
    if not create:
        _check_can_create_in(existing, folder)
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(err, folder) from err
    _check_can_create_in(folder, folder)
    return folder


def check_writable_file(path: str | os.PathLike[str]) -> Path:
    """Make sure the file ``path`` can be written (it is not a folder; its folder is or can be made), else an
    OutputPathError naming it and the fix. Creates nothing but a probe file it removes at once.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputPathError(
            errno.EISDIR, f"Cannot write {target}: it is a folder; pass the path of a file, e.g. {target / 'out.csv'}."
        )
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise OutputPathError(
            errno.ENOTDIR,
            f"Cannot write {target}: {existing} is a file, not a folder; pass another path or move that file.",
        )
    _check_can_create_in(existing, target)
    return target


# no creation date or tool version in figure files, so the same figure gives the same bytes
# (the report regenerates committed figures exactly)
REPRODUCIBLE_METADATA = {
    "png": {"Software": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
    "svg": {"Date": None, "Creator": None},
}


def save_figure_atomic(fig: Any, path: str | os.PathLike[str], **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format is taken from the file's suffix),
    without dates or versions in the file."""
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    savefig_kwargs.setdefault("metadata", REPRODUCIBLE_METADATA.get(fmt))
    try:
        with temporary_for(target) as tmp:
            fig.savefig(tmp, format=fmt, **savefig_kwargs)
    except OSError as err:
        raise output_error(err, target) from err
    return target


def save_figure_formats(fig: Any, out_dir: str | os.PathLike[str], stem: str, **savefig_kwargs: Any) -> list[Path]:
    """:func:`save_figure_atomic` to ``out_dir/stem.png`` and ``.pdf`` (creating ``out_dir``), then close
    the figure; return the paths."""
    import matplotlib.pyplot as plt  # only ever given a matplotlib figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_figure_atomic(fig, out / f"{stem}.{suffix}", **savefig_kwargs) for suffix in ("png", "pdf")]
    plt.close(fig)
    return paths
