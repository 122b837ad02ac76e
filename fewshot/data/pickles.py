"""Reading the pickles some benchmarks ship in (CIFAR-100, tieredImageNet), allowing only plain data."""

from __future__ import annotations

import importlib
import pickle
from typing import IO, Any

from fewshot.data.errors import DataError

# What the CIFAR-100 and tieredImageNet pickles are made of: containers, numpy arrays and,
# in pickles written by Python 3 at protocol 2, bytes re-encoded through ``_codecs.encode``.
# Anything else (a pickle can name any callable) is refused rather than run.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global ``module.name``; anything else raises ``pickle.UnpicklingError``."""
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data and numpy arrays")
        return getattr(importlib.import_module(_current_numpy_module(module)), name)


def _current_numpy_module(module: str) -> str:
    # Pickles written by numpy 1.x name ``numpy.core``, which numpy 2 renamed ``numpy._core``.
    if module.startswith("numpy.core."):
        try:
            importlib.import_module("numpy._core")
        except ImportError:
            return module
        return "numpy._core." + module.removeprefix("numpy.core.")
    return module


def pickle_entry(table: Any, key: str, where: str, fix: str) -> Any:
    """``table[key]`` of an unpickled dict whose keys may be ``str`` or (Python 2 pickles) ``bytes``;
    a DataError naming ``where``, the key and ``fix`` when it has none."""
    if isinstance(table, dict):
        for candidate in (key, key.encode()):
            if candidate in table:
                return table[candidate]
    raise DataError(f"{where} has no {key!r} entry; {fix}.")


def load_data_pickle(file: IO[bytes], where: str, encoding: str = "bytes") -> Any:
    """Unpickle plain data and numpy arrays from the binary ``file``, raising a DataError naming ``where``;
    ``encoding`` decodes Python 2 ``str`` objects (``"bytes"`` keeps them as bytes).
    """
    try:
        return DataUnpickler(file, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(
            f"Cannot read the pickle {where}: {err}. The file is truncated, corrupt or not the expected "
            "dataset file; download the archive again."
        ) from err
