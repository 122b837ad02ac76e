"""Meta-train and compare learned optimizers (docs/learned_optimizers.md): `python -m fewshot.learned_optimizer`."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

# run from a checkout (an editable install): runs go to its logs/; installed from a wheel: to ./logs
CHECKOUT = Path(__file__).resolve().parents[2]
if (CHECKOUT / "pyproject.toml").is_file():
    os.environ.setdefault("FEWSHOT_PROJECT_ROOT", str(CHECKOUT))


# the config root inside this package (fewshot/learned_optimizer/conf), shipped in the wheel
@hydra.main(version_base="1.3", config_path="conf", config_name="learn_to_learn")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the learned optimizer's mean final loss (for sweepers)."""
    from fewshot.learned_optimizer.run import run

    return float(run(cfg)["final_loss"][0]["final_loss"]["mean"])


if __name__ == "__main__":
    main()
