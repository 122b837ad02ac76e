"""Writing files safely: atomic replacement, and OS errors turned into one line with the fix.

Every file the project writes goes through :func:`temporary_for` (directly or through
:func:`write_text_atomic` / :func:`write_bytes_atomic`): the content goes to a hidden
temporary file in the destination's folder, which is renamed onto the destination only when
it is complete. A crash, a full disk or an exception while writing leaves the previous file
as it was (and no half-written file under the final name).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"

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


def os_error_message(err: OSError, path: str | os.PathLike[str]) -> str:
    """One line naming ``path``, what went wrong and what to do."""
    fix = FIXES.get(err.errno or 0, f"{err.strerror or err}: check the path and the disk")
    return f"Cannot write {path}: {fix}."


def output_error(err: OSError, path: str | os.PathLike[str]) -> OutputPathError:
    """``err`` as an :class:`OutputPathError` with a one-line message (errno kept)."""
    if isinstance(err, OutputPathError):
        return err
    return OutputPathError(err.errno, os_error_message(err, path))


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
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
    """Make sure ``path`` is (or can be created as) a folder we can write in; create it unless ``create`` is False.

    Raises:
        OutputPathError: one line naming the path and the fix (it is a file, a parent is a
            file, permission denied, read-only or full file system).
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
    """Make sure the file ``path`` can be written (it is not a folder; its folder is or can be made).

    Creates nothing but a probe file it removes at once; the folder itself is created only
    when the file is written.

    Raises:
        OutputPathError: one line naming the path and the fix.
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


def save_figure_formats(
    fig: Any,
    out_dir: str | os.PathLike[str],
    stem: str,
    suffixes: Sequence[str] = ("png", "pdf"),
    **savefig_kwargs: Any,
) -> list[Path]:
    """:func:`save_figure_atomic` to ``out_dir/stem.<suffix>`` for each suffix (creating
    ``out_dir``); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [save_figure_atomic(fig, out / f"{stem}.{suffix}", **savefig_kwargs) for suffix in suffixes]
