"""Old path of :mod:`fewshot.methods.baseline_nn`, kept because configs, checkpoints and results written
before the rename name ``fewshot.methods.nearest_neighbour.BaselineNearestNeighbour``: importing it
gives that same module."""

import sys

from fewshot.methods import baseline_nn

sys.modules[__name__] = baseline_nn
