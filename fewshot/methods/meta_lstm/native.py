"""Native CPU kernels for the coordinate-wise LSTM step, built on first use.

The step's pointwise maths (gate activations, cell update, and their backward) touches every
one of the ~10^5 coordinates about fifteen times as separate torch operations, each a full pass
over memory; ``native/lstm_kernels.c`` does each direction in one pass. It is plain C (no torch
headers), so building it takes about a second with the system's C compiler: the shared library
is cached under ``$FEWSHOT_KERNEL_CACHE`` (default ``~/.cache/fewshot/kernels``), keyed by the
source, the compiler, its flags and this CPU's instruction set, and written atomically.

Where no compiler is found or the build fails, :func:`load` returns ``None`` and says why once;
the LSTM then runs the same maths as torch operations (``backend="torch"``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native") / "lstm_kernels.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fPIC", "-shared") + (
    ("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()
)

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p

Backend = Literal["auto", "native", "torch"]
"""Pointwise maths of the Meta-Learner: ``native`` (these kernels: CPU, float32), ``torch``
(torch operations: any device and dtype) or ``auto`` (native where it applies and builds)."""


def check_backend(backend: str) -> None:
    """Refuse an unknown backend name."""
    if backend not in ("auto", "native", "torch"):
        raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}.")


def applies(backend: Backend, *tensors: Tensor) -> bool:
    """Whether ``backend`` runs the native kernels on these tensors.

    Raises:
        ValueError: ``native`` asked for tensors it cannot take (not float32, or not on the CPU).
        RuntimeError: ``native`` asked for but the kernels cannot be built here.
    """
    if backend == "torch":
        return False
    fits = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    if backend == "auto":
        return fits and load() is not None
    if not fits:
        kinds = ", ".join(sorted({f"{t.dtype} on {t.device}" for t in tensors}))
        raise ValueError(f"backend='native' needs float32 tensors on the CPU, got {kinds}; use backend='auto'.")
    if load() is None:
        raise RuntimeError("backend='native': the native kernels could not be built here (see the warning).")
    return True


def cache_dir() -> Path:
    """Where built kernels are kept: ``$FEWSHOT_KERNEL_CACHE`` or ``~/.cache/fewshot/kernels``."""
    return Path(os.environ.get("FEWSHOT_KERNEL_CACHE", Path.home() / ".cache" / "fewshot" / "kernels"))


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags, so a cache shared between machines stays safe."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def build(target_dir: Path | None = None, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compile the kernels with ``flags`` (or find them in the cache); returns the shared library's path.

    Raises:
        RuntimeError: no C compiler, or the build failed (with the compiler's message).
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(), _cpu_signature().encode()]))
    target_dir = target_dir or cache_dir()
    library = target_dir / f"lstm_kernels-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        partial = Path(tmp) / library.name
        result = subprocess.run([compiler, *flags, "-o", str(partial), str(SOURCE)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr.strip()}")
        os.replace(partial, library)
    return library


@cache
def load() -> ctypes.CDLL | None:
    """The kernels as a ``ctypes`` library, or ``None`` (with one warning) if they cannot be built."""
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"Native Meta-LSTM kernels unavailable ({error}); using torch operations, which are slower. "
            "Install a C compiler (gcc) or set model.backend=torch to silence this.",
            stacklevel=2,
        )
        return None
    return declare(library)


def declare(library: ctypes.CDLL) -> ctypes.CDLL:
    """Set the argument and result types of the kernels' functions; returns ``library``."""
    library.lstm_step_forward.argtypes = [_i64, _i64, _int] + [_ptr, _i64] * 5
    library.lstm_step_backward.argtypes = [_i64, _i64, _int] + [_ptr, _i64] * 7
    library.cell_forward.argtypes = [_i64, _i64, _int, _ptr, _i64] + [_ptr] * 6 + [_int] + [_ptr] * 5
    library.cell_backward.argtypes = [_i64, _i64, _int, _ptr, _i64] + [_ptr] * 7 + [_int] + [_ptr] * 6
    library.cell_backward.argtypes += [_i64] + [_ptr] * 4
    library.lstm_fused_forward.argtypes = [_i64, _i64, _i64, _int, _ptr] + [_ptr, _i64] * 5
    library.lstm_fused_forward.restype = _int
    library.lstm_fused_backward.argtypes = [_i64, _i64, _i64, _int, _ptr] + [_ptr, _i64] * 8
    library.lstm_fused_backward.restype = _int
    library.lstm_fused_forward_vectorised.restype = _int
    library.preprocess_gradient.argtypes = [_i64, _int, ctypes.c_float, _ptr, _ptr, _i64]
    library.segment_moments.argtypes = [_i64, _i64, _int, _ptr, _i64, _ptr, _ptr]
    for name in ("fs_sigmoid_array", "fs_tanh_array"):
        getattr(library, name).argtypes = [_i64, _ptr, _ptr]
    return library


def available() -> bool:
    """Whether the native kernels can be used in this process."""
    return load() is not None


def _arg(t: Tensor | None) -> tuple[int | None, int]:
    """Pointer and row stride of a float32 CPU matrix whose rows are contiguous (``None``: NULL)."""
    if t is None:
        return None, 0
    if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"native kernels need float32 CPU matrices with contiguous rows, got {t.dtype} {t.stride()}")
    return t.data_ptr(), t.stride(0)


def _rows_contiguous(t: Tensor | None) -> Tensor | None:
    """``t`` itself if its rows are contiguous, else a contiguous copy (e.g. broadcast gradients)."""
    if t is None or t.dim() != 2 or t.shape[1] <= 1 or t.stride(1) == 1:
        return t
    return t.contiguous()


def step_forward(gates: Tensor, c_prev: Tensor | None, c: Tensor, h: Tensor, tanh_c: Tensor | None) -> None:
    """Write ``c`` and ``h`` (each ``[H, m]``) from the pre-activations ``gates [4H, m]``; unless
    ``tanh_c`` is ``None`` (nothing kept for a backward), also activate ``gates`` in place and
    write ``tanh(c)``."""
    library = load()
    hidden, m = c.shape
    tensors = (gates, _rows_contiguous(c_prev), c, h, tanh_c)  # referenced until the call returns
    args = [x for t in tensors for x in _arg(t)]
    library.lstm_step_forward(hidden, m, torch.get_num_threads(), *args)


def fused_step_pays() -> bool:
    """Whether :func:`fused_step_forward` beats a matrix product + :func:`step_forward` here: where
    the kernels were built with AVX-512 (its register-tiled activations)."""
    library = load()
    return library is not None and bool(library.lstm_fused_forward_vectorised())


def fused_step_forward(
    weight: Tensor, x: Tensor, h_prev: Tensor | None, c_prev: Tensor | None, c: Tensor, h: Tensor
) -> None:
    """An inference step in one pass (matrix product and activations, tile by tile): write ``c``
    and ``h`` (each ``[H, m]``) from ``weight = [W_x, W_h, b]`` (``[4H, F (+ H) + 1]``), ``x [F, m]``
    and ``h_prev``, ``c_prev`` (``None``: zeros)."""
    library = load()
    hidden, m = c.shape
    weight = weight.contiguous()  # referenced until the call returns, like the tensors
    tensors = [_rows_contiguous(t) for t in (x, h_prev, c_prev)] + [c, h]
    args = [x for t in tensors for x in _arg(t)]
    if library.lstm_fused_forward(x.shape[0], hidden, m, torch.get_num_threads(), weight.data_ptr(), *args):
        raise MemoryError("the native LSTM step could not allocate its per-thread buffers")


def preprocess(x: Tensor, p: float) -> Tensor:
    """:func:`fewshot.methods.meta_lstm.preprocess.preprocess` of a flat float32 CPU tensor ``x [n]`` with
    the feature axis first: ``[2, n]``, in one pass."""
    library = load()
    x = x.contiguous()
    out = x.new_empty(2, x.shape[0])
    library.preprocess_gradient(x.shape[0], torch.get_num_threads(), p, x.data_ptr(), out.data_ptr(), out.stride(0))
    return out


def segment_moments(x: Tensor, offsets: Tensor) -> Tensor:
    """Mean and population std of each segment ``offsets[s] .. offsets[s + 1]`` of every row of
    ``x [rows, n]``: ``[rows, 2 (mean, std), n_segments]`` (double sums, two passes)."""
    library = load()
    if offsets.dtype != torch.int64 or offsets.device.type != "cpu" or not offsets.is_contiguous():
        raise ValueError("offsets must be a contiguous int64 CPU tensor")
    if offsets[0] < 0 or offsets[-1] > x.shape[1] or bool((offsets[1:] <= offsets[:-1]).any()):
        raise ValueError(f"offsets must increase strictly within 0 .. {x.shape[1]}")
    rows, n_segments = x.shape[0], offsets.shape[0] - 1
    out = x.new_empty(rows, 2, n_segments)
    x = _rows_contiguous(x)  # referenced until the call returns
    pointer, stride = _arg(x)
    threads = torch.get_num_threads()
    library.segment_moments(rows, n_segments, threads, pointer, stride, offsets.data_ptr(), out.data_ptr())
    return out


def fused_step_backward(
    weight: Tensor,
    x: Tensor,
    h_prev: Tensor | None,
    c_prev: Tensor | None,
    dh: Tensor,
    dc_next: Tensor | None,
    d_pre: Tensor,
    dc_prev: Tensor | None,
    inputs: Tensor,
) -> None:
    """A training step's backward in one pass, the gates recomputed per tile from the step's inputs
    (as :func:`fused_step_forward` computes them): write ``d_pre [4H, m]``, ``dc_prev`` (unless
    ``None``) and the gathered ``inputs = [x; h_prev; 1]`` (for the weight gradient)."""
    library = load()
    hidden, m = dh.shape
    weight = weight.contiguous()  # referenced until the call returns, like the tensors
    tensors = [_rows_contiguous(t) for t in (x, h_prev, c_prev, dh, dc_next)] + [d_pre, dc_prev, inputs]
    args = [x for t in tensors for x in _arg(t)]
    if library.lstm_fused_backward(x.shape[0], hidden, m, torch.get_num_threads(), weight.data_ptr(), *args):
        raise MemoryError("the native LSTM step could not allocate its per-thread buffers")


def step_backward(
    gates: Tensor,
    tanh_c: Tensor,
    c_prev: Tensor | None,
    dh: Tensor,
    dc_next: Tensor | None,
    d_pre: Tensor,
    dc_prev: Tensor | None,
) -> None:
    """Write the pre-activation gradient ``d_pre [4H, m]`` and ``dc_prev [H, m]`` (unless ``None``)."""
    library = load()
    hidden, m = tanh_c.shape
    tensors = [_rows_contiguous(t) for t in (gates, tanh_c, c_prev, dh, dc_next)] + [d_pre, dc_prev]
    args = [x for t in tensors for x in _arg(t)]
    library.lstm_step_backward(hidden, m, torch.get_num_threads(), *args)


CELL_CHUNK = 1024  # as in the C source


def _vector(t: Tensor) -> int:
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"native kernels need contiguous float32 CPU tensors, got {t.dtype} {t.stride()}")
    return t.data_ptr()


def cell_forward(
    h: Tensor,
    theta: Tensor,
    grad: Tensor,
    i_prev: Tensor,
    f_prev: Tensor,
    weight: Tensor,
    bias: Tensor,
    feed_preactivation: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The Meta-Learner cell's step (``cell.py``): ``(theta_t, i_t, f_t, i_state, f_state)``, each ``[n]``."""
    hidden, n = h.shape
    h_ptr, ld_h = _arg(h)
    vectors = [t.contiguous() for t in (theta, grad, i_prev, f_prev, weight, bias)]
    outputs = [theta.new_empty(n) for _ in range(5)]
    load().cell_forward(
        hidden, n, torch.get_num_threads(), h_ptr, ld_h, *map(_vector, vectors), int(feed_preactivation),
        *map(_vector, outputs),
    )  # fmt: skip
    return tuple(outputs)


def cell_backward(
    h: Tensor,
    theta: Tensor,
    grad: Tensor,
    i_prev: Tensor,
    f_prev: Tensor,
    gates: tuple[Tensor, Tensor],
    weight: Tensor,
    feed_preactivation: bool,
    d_outputs: tuple[Tensor | None, ...],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the cell's step: ``(d_h, d_theta_prev, d_i_prev, d_f_prev, d_weight, d_bias)``.

    ``d_outputs`` are the gradients of the five outputs of :func:`cell_forward` (``None``: zero).
    """
    hidden, n = h.shape
    h_ptr, ld_h = _arg(h)
    d_outputs = [theta.new_zeros(n) if d is None else d.contiguous() for d in d_outputs]
    inputs = [t.contiguous() for t in (theta, grad, i_prev, f_prev, *gates, weight)]
    d_h = h.new_empty(hidden, n)
    d_vectors = [theta.new_empty(n) for _ in range(3)]
    partials = theta.new_empty((n + CELL_CHUNK - 1) // CELL_CHUNK, 2, hidden + 3)
    load().cell_backward(
        hidden, n, torch.get_num_threads(), h_ptr, ld_h, *map(_vector, inputs), int(feed_preactivation),
        *map(_vector, d_outputs), d_h.data_ptr(), n, *map(_vector, d_vectors), partials.data_ptr(),
    )  # fmt: skip
    sums = partials.sum(0)
    return (d_h, *d_vectors, sums[:, : hidden + 2], sums[:, hidden + 2])


def sigmoid(x: Tensor) -> Tensor:
    """The kernels' float32 sigmoid, elementwise (for accuracy tests)."""
    return _elementwise(load().fs_sigmoid_array, x)


def tanh(x: Tensor) -> Tensor:
    """The kernels' float32 tanh, elementwise (for accuracy tests)."""
    return _elementwise(load().fs_tanh_array, x)


def _elementwise(function: ctypes._CFuncPtr, x: Tensor) -> Tensor:
    x = x.detach().to(torch.float32).contiguous()
    y = torch.empty_like(x)
    function(x.numel(), x.data_ptr(), y.data_ptr())
    return y


__all__ = [
    "available",
    "build",
    "cache_dir",
    "cell_backward",
    "cell_forward",
    "load",
    "sigmoid",
    "step_backward",
    "step_forward",
    "tanh",
]
