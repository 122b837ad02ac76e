"""fewshot: few-shot meta-learning experiments (Meta-Learner LSTM and peers) on Lightning + Hydra."""
__version__ = "0.1.0"
