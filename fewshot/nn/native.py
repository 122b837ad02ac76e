"""The Meta-LSTM's C++ operators (``native/lstm_ops.cpp``), built on first use, and the one
place that decides between them and torch operations.

The coordinate-wise LSTM step's pointwise maths (gate activations, cell update and their
backward) touches every one of the ~10^5 coordinates about fifteen times as separate torch
operations, each a full pass over memory; the C++ kernels do each direction in one pass, on
torch's thread pool and ``at::vec`` vectors. They register ``torch.ops.fewshot.*`` operators
(``TORCH_LIBRARY``); :mod:`~fewshot.nn.lstm` and
:mod:`~fewshot.methods.meta_lstm.cell` wrap them into the autograd-visible operators.

The build (``torch.utils.cpp_extension``, ninja and a C++ compiler) is cached under
``$FEWSHOT_KERNEL_CACHE`` (default ``~/.cache/fewshot/kernels``), keyed by the source, torch's
version, the flags and this CPU, and moved into place only once complete. ``at::vec`` is built for
the instruction set torch itself uses here (``torch.backends.cpu.get_cpu_capability()``;
``$FEWSHOT_CPU_CAPABILITY`` overrides it, e.g. ``DEFAULT`` for the portable scalar path).

Where the build fails, :func:`load` returns ``None`` and says why once; the Meta-LSTM then runs
the same maths as torch operations (``backend="torch"``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import cache
from pathlib import Path
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
"""Pointwise maths of the Meta-Learner: ``native`` (the C++ operators: CPU, float32), ``torch``
(torch operations: any device and dtype) or ``auto`` (native where it applies and builds)."""


def check_backend(backend: str) -> None:
    """Refuse an unknown backend name."""
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}.")


def applies(backend: Backend, *tensors: Tensor) -> bool:
    """Whether ``backend`` runs the C++ operators on these tensors (the one place that decides).

    Raises:
        ValueError: ``native`` asked for tensors it cannot take (not float32, or not on the CPU).
        RuntimeError: ``native`` asked for but the operators cannot be built here.
    """
    if backend == "torch":
        return False
    fits = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    if backend == "auto":
        return fits and available()
    if not fits:
        kinds = ", ".join(sorted({f"{t.dtype} on {t.device}" for t in tensors}))
        raise ValueError(f"backend='native' needs float32 tensors on the CPU, got {kinds}; use backend='auto'.")
    if not available():
        raise RuntimeError("backend='native': the native operators could not be built here (see the warning).")
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

    The compiler runs in a child process (``torch.utils.cpp_extension.load`` also loads what it
    builds, and a process can hold only one library registering ``fewshot``'s operators).

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
            "is_python_module=False)"
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
    """Build and load the operators once per process: their library, or ``None`` (with one
    warning that says why) if they cannot be built."""
    try:
        library = build()
        torch.ops.load_library(str(library))
        return library
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"Native Meta-LSTM operators unavailable ({error}); using torch operations, which are slower. "
            "Install a C++ compiler and ninja, or set model.backend=torch to silence this.",
            stacklevel=2,
        )
        return None


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the native operators can be used in this process (building and loading them on the
    first call; under ``torch.compile`` a constant of the trace, so a compiled forward never traces
    the build: :func:`prepare` runs it when a module is built)."""
    return load() is not None


def prepare(backend: Backend) -> None:
    """Build and load the operators for a module of this ``backend`` when it is constructed, outside
    any traced region (``torch.compile(..., fullgraph=True)`` of its forward only calls registered
    operators); ``torch`` needs nothing. A failed build warns here; ``native`` refuses at the forward."""
    check_backend(backend)
    if backend != "torch" and available():
        ops()


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


def _register_fakes() -> None:
    """Shapes of the C++ operators' results without running them (``torch.compile``, ``opcheck``)."""

    @torch.library.register_fake("fewshot::lstm_gates_forward")
    def _(gates, c_prev, c, h, tanh_c) -> None:
        return None

    @torch.library.register_fake("fewshot::lstm_gates_backward")
    def _(gates, tanh_c, c_prev, dh, dc_next, d_pre, dc_prev) -> None:
        return None

    @torch.library.register_fake("fewshot::meta_cell_forward")
    def _(h, theta, grad, i_prev, f_prev, weight, bias, feed_preactivation):
        return tuple(torch.empty_like(theta) for _ in range(5))

    @torch.library.register_fake("fewshot::meta_cell_backward")
    def _(h, theta, grad, i_prev, f_prev, i_gate, f_gate, weight, feed_preactivation, *d_outputs):
        vectors = tuple(torch.empty_like(theta) for _ in range(3))
        return (torch.empty_like(h), *vectors, weight.new_empty(weight.shape), weight.new_empty(2))


_fakes_registered = False


def ops() -> object:
    """``torch.ops.fewshot`` with the C++ operators loaded and their fake kernels registered.

    Raises:
        RuntimeError: the operators cannot be built here.
    """
    global _fakes_registered
    if load() is None:
        raise RuntimeError("the native Meta-LSTM operators could not be built here (see the warning)")
    if not _fakes_registered:
        _register_fakes()
        _fakes_registered = True
    return torch.ops.fewshot


__all__ = [
    "Backend",
    "applies",
    "available",
    "build",
    "cache_dir",
    "capability",
    "check_backend",
    "kernel_matrix",
    "load",
    "ops",
    "prepare",
]
