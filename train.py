"""Train and test a few-shot method: `python train.py [overrides]` (see README)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("FEWSHOT_PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers."""
    from fewshot.training import objective, train

    return objective(train(cfg), cfg.get("optimized_metric", "val/acc"))


if __name__ == "__main__":
    main()
