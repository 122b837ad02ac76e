"""Old path of :mod:`fewshot.methods.baseline_finetune`, kept because configs, checkpoints and results
written before the rename name ``fewshot.methods.finetune.BaselineFinetune``: importing it gives that
same module."""

import sys

from fewshot.methods import baseline_finetune

sys.modules[__name__] = baseline_finetune
