"""The training command: ``fewshot-train [overrides]`` (installed), ``python train.py`` (a checkout)
or ``python -m fewshot.run.training``; Hydra composes the configs shipped in the package (``fewshot/conf``)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fewshot.run.config_keys import CONFIG_DIR
from fewshot.run.resolvers import register_resolvers

register_resolvers()  # task_name: ${fewshot.task_name:train}, resolved while Hydra names the run folder


def user_error(err: BaseException) -> BaseException | None:
    """The error, or the one it wraps (Hydra wraps a constructor's), that names a bad input and its fix:
    printed as one line instead of a traceback; None for anything else (a bug keeps its traceback)."""
    from fewshot.data.errors import DataError
    from fewshot.io import OutputPathError
    from fewshot.methods.choices import OptionError
    from fewshot.run.checkpoint import CheckpointError
    from fewshot.run.config_keys import UnknownConfigKeyError
    from fewshot.run.config_types import ConfigTypeError
    from fewshot.run.folder import RunConfigError

    kinds = (
        CheckpointError,
        ConfigTypeError,
        DataError,
        OptionError,
        OutputPathError,
        RunConfigError,
        UnknownConfigKeyError,
    )
    while err is not None and not isinstance(err, kinds):
        err = err.__cause__
    return err


def composed_model(overrides: list[str]) -> dict | None:
    """The ``model`` node the command line's single-valued ``key=value`` overrides without a dot compose
    (``model=``, ``experiment=``, ...), None when they do not compose (sweeps are left out)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    groups = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0] and "," not in o and o[0] != "-"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return OmegaConf.to_container(compose(config_name="train", overrides=groups).model, resolve=False)
    except Exception:  # noqa: BLE001 - the error names every method's new keys instead
        return None
    finally:
        GlobalHydra.instance().clear()


def main() -> float | None:
    """The training command: refuse an old option name on the command line (one line, before Hydra composes
    the config and fails on it), then run :func:`train_main`."""
    from fewshot.run.renamed_options import RenamedOptionError, check_renamed_overrides

    overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
    try:
        check_renamed_overrides(overrides, lambda: composed_model(overrides))
    except RenamedOptionError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    return train_main()


# an absolute path: the same folder whether this module runs as a script, a module or a console script
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the optimised metric for sweepers."""
    from fewshot.run.config_keys import check_known_keys
    from fewshot.run.signals import RunInterrupted, rerun_command, resume_command, resume_sweep_command, sweep_folder

    hydra_cfg = HydraConfig.get()
    try:
        check_known_keys(cfg, hydra_cfg.runtime.choices, hydra_cfg.overrides.task, hydra_cfg.job.config_name)
        from fewshot.run.training import objective, train

        return objective(train(cfg), cfg.get("optimized_metric", "val/acc"))
    except RunInterrupted as stop:
        if cfg.get("train", True) and hydra_cfg.mode == RunMode.MULTIRUN:
            sweep = sweep_folder(hydra_cfg.runtime.output_dir, str(hydra_cfg.sweep.subdir))
            command = resume_sweep_command(sys.argv[0], sys.argv[1:], sweep)
            print(f"{stop} Continue the sweep with:\n  {command}", file=sys.stderr, flush=True)
        elif cfg.get("train", True):
            command = resume_command(sys.argv[0], hydra_cfg.overrides.task, hydra_cfg.runtime.output_dir)
            print(f"{stop} Resume it with:\n  {command}", file=sys.stderr, flush=True)
        else:
            command = rerun_command(sys.argv[0], hydra_cfg.overrides.task)
            print(f"{stop} A test-only run has no training to resume; run it again:\n  {command}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as err:  # noqa: BLE001 - a bad input is one line; anything else is re-raised
        found = user_error(err)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
