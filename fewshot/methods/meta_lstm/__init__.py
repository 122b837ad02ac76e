"""The Meta-Learner LSTM (Ravi & Larochelle, ICLR 2017), ``model=meta_lstm``, one small module per piece.

* ``method``: :class:`MetaLSTM`, the LightningModule the config's ``_target_`` names
  (``fewshot.methods.meta_lstm.MetaLSTM``, re-exported here);
* ``metalearner``: :class:`MetaLearner`, which unrolls the pieces below over an episode;
* ``cell``: the meta-learner cell whose state is the learner's parameters (layer 2);
* from :mod:`fewshot.nn` (shared with the learned optimizers): ``preprocess`` (gradient and loss
  preprocessing), ``lstm`` (the coordinate-wise LSTM, layer 1), ``flat`` (flat parameter views of the
  learner) and ``native`` (``native/lstm_ops.cpp``: the optional C++ operators of the LSTM and cell steps).
"""

from fewshot.methods.meta_lstm.cell import CellOutput, MetaLearnerCell, cell_update
from fewshot.methods.meta_lstm.metalearner import Adaptation, GateStats, MetaLearner, MetaLoss
from fewshot.methods.meta_lstm.method import MetaLSTM
from fewshot.nn.flat import FlatLayout
from fewshot.nn.lstm import CoordinateLSTM
from fewshot.nn.preprocess import preprocess

__all__ = [
    "Adaptation",
    "CellOutput",
    "CoordinateLSTM",
    "FlatLayout",
    "GateStats",
    "MetaLSTM",
    "MetaLearner",
    "MetaLearnerCell",
    "MetaLoss",
    "cell_update",
    "preprocess",
]
