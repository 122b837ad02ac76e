"""Old path of :mod:`fewshot.methods.matchingnet`, kept because configs, checkpoints and results written
before the rename name ``fewshot.methods.matching.MatchingNetwork``: importing it gives that same
module."""

import sys

from fewshot.methods import matchingnet

sys.modules[__name__] = matchingnet
