"""Old path of the Meta-LSTM's pieces, now :mod:`fewshot.methods.meta_lstm`; kept so that code written
against it still imports. ``fewshot.metalstm.<piece>`` is the same module object as
``fewshot.methods.meta_lstm.<piece>`` (one ``native`` loader, one set of classes), and
``python -m fewshot.metalstm.bench`` forwards to ``python -m benchmarks.meta_lstm``."""

import importlib
import sys

from fewshot.methods.meta_lstm import (
    Adaptation,
    CellOutput,
    CoordinateLSTM,
    FlatLayout,
    GateStats,
    MetaLearner,
    MetaLearnerCell,
    MetaLoss,
    cell_update,
    preprocess,
)

__all__ = [
    "Adaptation",
    "CellOutput",
    "CoordinateLSTM",
    "FlatLayout",
    "GateStats",
    "MetaLearner",
    "MetaLearnerCell",
    "MetaLoss",
    "cell_update",
    "preprocess",
]

for _piece in ("cell", "flat", "lstm", "metalearner", "native", "preprocess"):
    sys.modules[f"{__name__}.{_piece}"] = importlib.import_module(f"fewshot.methods.meta_lstm.{_piece}")
