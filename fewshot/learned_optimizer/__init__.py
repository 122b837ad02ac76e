"""Learned optimizers (Andrychowicz et al., "Learning to learn by gradient descent by gradient
descent", NeurIPS 2016): optimizee problems, the coordinate-wise LSTM optimizer, the shared
unroll, truncated-BPTT meta-training, tuned hand-designed baselines, reports and plots.

Run it with ``python -m fewshot.learned_optimizer`` (configs in ``fewshot/learned_optimizer/conf``,
``CONFIG_DIR``)."""

from pathlib import Path

from fewshot.learned_optimizer.baselines import SGD, Adam, Momentum, RMSprop
from fewshot.learned_optimizer.comparison import Baselines, Comparison, OptimizerResult, tune_learning_rate
from fewshot.learned_optimizer.errors import ConfigError
from fewshot.learned_optimizer.meta_train import MetaTrainer, MetaTrainingSummary
from fewshot.learned_optimizer.mlp import MLPClassification
from fewshot.learned_optimizer.network import LSTMOptimizer
from fewshot.learned_optimizer.problem import Optimizees, Problem
from fewshot.learned_optimizer.quadratic import Quadratics
from fewshot.learned_optimizer.rules import UpdateRule
from fewshot.learned_optimizer.unroll import Trajectory, evaluate, unroll

# the family's Hydra config root (learn_to_learn.yaml), inside the package so that it ships in the wheel
CONFIG_DIR = Path(__file__).resolve().parent / "conf"

__all__ = [
    "CONFIG_DIR",
    "SGD",
    "Adam",
    "Baselines",
    "Comparison",
    "ConfigError",
    "LSTMOptimizer",
    "MLPClassification",
    "MetaTrainer",
    "MetaTrainingSummary",
    "Momentum",
    "Optimizees",
    "OptimizerResult",
    "Problem",
    "Quadratics",
    "RMSprop",
    "Trajectory",
    "UpdateRule",
    "evaluate",
    "tune_learning_rate",
    "unroll",
]
