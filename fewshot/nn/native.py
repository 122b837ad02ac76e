"""The Meta-LSTM's C++ kernels (``native/lstm_ops.cpp``), built on first use, and the one place
that decides whether a CPU kernel of the Meta-LSTM's operators runs them.

The coordinate-wise LSTM step as separate torch operations writes its ``[4H, n]`` gates to memory
and reads them back about fifteen times (``n`` ~ 10^5 coordinates); the C++ step walks the
coordinates in cache-sized blocks, each a task on torch's thread pool: gather ``[x; h; 1]``, one
matrix product for the block's gates, the pointwise maths on ``at::vec`` vectors, and in the
backward the block's products while its gradient is in cache. The cell's step is one pass too.
They are a Python extension module, not torch operators: the registered operators are
``fewshot::lstm_step`` (:mod:`~fewshot.nn.lstm`) and ``fewshot::meta_cell_step``
(:mod:`~fewshot.methods.meta_lstm.cell`), each with its backward. Each has a default (composite)
implementation in torch operations, for any device and dtype, and a CPU kernel
(``register_kernel("cpu")``) that calls these kernels where :func:`applies` (float32, built,
not switched off) and the composite maths otherwise; the dispatcher picks by device.

The build (``torch.utils.cpp_extension``, ninja and a C++ compiler) is cached under
``$FEWSHOT_KERNEL_CACHE`` (default ``~/.cache/fewshot/kernels``), keyed by the source, torch's
version, the flags and this CPU, and moved into place only once complete. ``at::vec`` is built for
the instruction set torch itself uses here (``torch.backends.cpu.get_cpu_capability()``;
``$FEWSHOT_CPU_CAPABILITY`` overrides it, e.g. ``DEFAULT`` for the portable scalar path).

Where the build fails, :func:`load` returns ``None`` and says why once; the CPU kernels then run
the composite maths. :func:`select` (``model.backend``) and :func:`selected` (a context manager)
switch the C++ kernels off (``torch``) or insist on them (``native``): the one switch.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native") / "lstm_ops.cpp"
OPTIMISE = ("-O3", "-fno-trapping-math")
CAPABILITY_FLAGS = {  # as torch.compile's C++ backend builds at::vec for each level
    "AVX512": ("-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"),
    "AVX2": ("-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"),
    "DEFAULT": (),
}

Backend = Literal["auto", "native", "torch"]
"""What the CPU kernels run: ``native`` (the C++ kernels: float32 only), ``torch`` (the composite
torch operations) or ``auto`` (native where it applies and builds)."""

_selected: Backend = "auto"


def check_backend(backend: str) -> None:
    """Refuse an unknown backend name."""
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}.")


def select(backend: Backend) -> Backend:
    """Choose, for this process, what the CPU kernels run (see :data:`Backend`); returns the previous
    choice. ``native`` is refused here if the kernels cannot be built."""
    global _selected
    check_backend(backend)
    if backend == "native" and not available():
        raise RuntimeError("backend='native': the native operators could not be built here (see the warning).")
    if backend != "torch":
        available()  # build and load now, outside any traced region
    previous, _selected = _selected, backend
    return previous


@contextmanager
def selected(backend: Backend) -> Iterator[None]:
    """:func:`select` ``backend`` inside the ``with`` block only (e.g. ``torch`` to run the composite
    maths on the CPU, as the equivalence tests do)."""
    previous = select(backend)
    try:
        yield
    finally:
        select(previous)


def applies(*tensors: Tensor) -> bool:
    """Whether a CPU kernel runs the C++ kernels on these (CPU) tensors: the one place that decides.

    Raises:
        ValueError: ``native`` is selected and a tensor is not float32.
    """
    if _selected == "torch":
        return False
    fits = all(t.dtype == torch.float32 for t in tensors)
    if _selected == "auto":
        return fits and available()
    if not fits:
        kinds = ", ".join(sorted({str(t.dtype) for t in tensors}))
        raise ValueError(f"backend='native' needs float32 tensors, got {kinds}; use backend='auto'.")
    return True


def cache_dir() -> Path:
    """Where built operators are kept: ``$FEWSHOT_KERNEL_CACHE`` or ``~/.cache/fewshot/kernels``."""
    return Path(os.environ.get("FEWSHOT_KERNEL_CACHE", Path.home() / ".cache" / "fewshot" / "kernels"))


def capability() -> str:
    """The ``at::vec`` instruction set to build for: ``$FEWSHOT_CPU_CAPABILITY`` or torch's own."""
    chosen = os.environ.get("FEWSHOT_CPU_CAPABILITY") or torch.backends.cpu.get_cpu_capability()
    return chosen if chosen in CAPABILITY_FLAGS else "DEFAULT"


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags, so a cache shared between machines stays safe."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def build(target_dir: Path | None = None, level: str | None = None) -> Path:
    """Compile the operators for the ``at::vec`` level (default :func:`capability`), or find them
    in the cache; returns the shared library's path (not loaded: see :func:`load`).

    The compiler runs in a child process (``torch.utils.cpp_extension.load`` also imports what it
    builds; the parent imports the finished file from the cache, see :func:`load`).

    Raises:
        RuntimeError: no C++ compiler, or the build failed (with the compiler's message).
    """
    level = level or capability()
    flags = (*OPTIMISE, *CAPABILITY_FLAGS[level])
    key = hashlib.sha256(b"\0".join(s.encode() for s in (torch.__version__, " ".join(flags), _cpu_signature())))
    key.update(SOURCE.read_bytes())
    name = f"fewshot_lstm_ops_{level.lower()}_{key.hexdigest()[:16]}"
    target_dir = target_dir or cache_dir()
    library = target_dir / f"{name}.so"
    if library.exists():
        return library
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        script = (
            "import sys; from torch.utils import cpp_extension; "
            "cpp_extension.load(sys.argv[1], [sys.argv[2]], extra_cflags=sys.argv[4:], build_directory=sys.argv[3], "
            "is_python_module=True)"
        )
        command = [sys.executable, "-c", script, name, str(SOURCE), tmp, *flags]
        # ninja from pip (a dependency) lives beside the interpreter, on PATH only in an activated env
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{(result.stdout + result.stderr).strip()[-4000:]}")
        os.replace(Path(tmp) / f"{name}.so", library)
    return library


@cache
def load() -> Path | None:
    """Build and import the kernels once per process: their library, or ``None`` (with one
    warning that says why) if they cannot be built."""
    try:
        library = build()
        _import(library)
        return library
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"Native Meta-LSTM operators unavailable ({error}); using torch operations, which are slower. "
            "Install a C++ compiler and ninja, or set model.backend=torch to silence this.",
            stacklevel=2,
        )
        return None


_module: ModuleType | None = None


def _import(library: Path) -> None:
    """Import the extension module built at ``library`` (its module name is the file's stem)."""
    global _module
    loader = importlib.machinery.ExtensionFileLoader(library.stem, str(library))
    spec = importlib.util.spec_from_file_location(library.stem, library, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    _module = module


def available() -> bool:
    """Whether the C++ kernels can be used in this process (building and loading them on the first
    call; a module runs :func:`prepare` when it is built, so that this happens there)."""
    return load() is not None


def prepare() -> None:
    """Build and load the kernels when a module is constructed, outside any traced region (a
    failed build warns here); ``torch.compile(..., fullgraph=True)`` of its forward only sees the
    registered operators, whose kernels are opaque to it."""
    available()


def kernels() -> ModuleType:
    """The C++ kernels (an extension module).

    Raises:
        RuntimeError: they cannot be built here.
    """
    if load() is None or _module is None:
        raise RuntimeError("the native Meta-LSTM operators could not be built here (see the warning)")
    return _module


def kernel_matrix(t: Tensor | None) -> Tensor | None:
    """``t`` itself if the C++ operators take its layout (rows contiguous and not overlapping), else a
    contiguous copy: any strides the torch operations accept, e.g. a broadcast gradient (strides
    ``[0, 0]``) of a block of one coordinate."""
    if t is None:
        return t
    rows, cols = t.shape
    if (cols <= 1 or t.stride(1) == 1) and (rows <= 1 or t.stride(0) >= cols):
        return t
    return t.contiguous()


__all__ = [
    "Backend",
    "applies",
    "available",
    "build",
    "cache_dir",
    "capability",
    "check_backend",
    "kernel_matrix",
    "kernels",
    "load",
    "prepare",
    "select",
    "selected",
]
