"""The Meta-Learner LSTM's pieces (Ravi & Larochelle, ICLR 2017), each a small module:
preprocessing, the coordinate-wise LSTM (layer 1), the meta-learner cell (layer 2), flat
parameter views, and the :class:`MetaLearner` that unrolls them over an episode."""

from fewshot.metalstm.cell import CellOutput, MetaLearnerCell, cell_update
from fewshot.metalstm.flat import FlatLayout
from fewshot.metalstm.lstm import CoordinateLSTM
from fewshot.metalstm.metalearner import Adaptation, GateStats, MetaLearner, MetaLoss
from fewshot.metalstm.preprocess import preprocess

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
