"""The composition root: build everything from the Hydra config, train, test, report."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ProgressBar, Timer
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fewshot.data.datamodule import EpisodicDataModule
from fewshot.io import check_writable_dir
from fewshot.methods.base import EpisodicMethod
from fewshot.reporting.results import (
    RESULTS_FILE,
    accuracy_at_prefixes,
    git_commit,
    hardware,
    print_results,
    write_results,
)
from fewshot.run.callbacks.budget import CpuTimeBudget
from fewshot.run.callbacks.provenance import CommitPerSegment
from fewshot.run.callbacks.rng_state import RngStateInCheckpoint
from fewshot.run.callbacks.speed_probe import CpuSpeedProbe
from fewshot.run.checkpoint import (
    CONFIG_KEY,
    StoreConfigInCheckpoint,
    check_checkpoint_fits,
    read_checkpoint,
    resumable_checkpoint,
)
from fewshot.run.checks import check_resume_config, check_run_config
from fewshot.run.folder import check_test_only_folder, holds_trained_state, in_sweep_job
from fewshot.run.loggers import ResumableCSVLogger
from fewshot.run.nonfinite import NONFINITE_POLICIES
from fewshot.run.process import retain_freed_memory, silence_library_noise
from fewshot.run.signals import RunInterrupted, StopFlag, StopOnSignal, stop_on_signals

log = logging.getLogger(__name__)

CallbackT = TypeVar("CallbackT", bound=pl.Callback)

FINAL_CHECKPOINT = "final.ckpt"


def group_entries(group: DictConfig | None) -> list[DictConfig]:
    """The ``_target_`` entries of a callbacks/logger group (a dict of configs; null entries are off)."""
    return [entry for entry in (group or {}).values() if entry is not None and "_target_" in entry]


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group."""
    return [instantiate(entry) for entry in group_entries(group)]


def sweep_group() -> str | None:
    """``sweep-<folder name>`` inside a Hydra multirun (so W&B groups a sweep's runs), else None."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not started by @hydra.main (e.g. the compose API)
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"sweep-{Path(hydra_cfg.sweep.dir).name}"


def instantiate_loggers(group: DictConfig | None) -> list[Any]:
    """The configured loggers; in a multirun, W&B runs of the sweep share one group."""
    sweep = sweep_group()
    loggers = []
    for entry in group_entries(group):
        is_wandb = str(entry._target_).endswith("WandbLogger")
        loggers.append(instantiate(entry, group=sweep) if is_wandb and sweep else instantiate(entry))
    return loggers


def log_results_table(results: dict[str, Any], loggers: list[Any]) -> None:
    """Log the run's test result as a one-row table to W&B (other loggers have the metrics)."""
    test = results["test"]
    row = {key: results[key] for key in ("method", "dataset", "n_way", "n_shot")}
    row.update(episodes=test["episodes"], acc=test["acc"], ci95=test["ci95"], fingerprint=test.get("fingerprint"))
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.log_table(key="results", columns=list(row), data=[list(row.values())])


def method_name(method: EpisodicMethod, variant: str | None = None) -> str:
    """A method's display name and its variant, if any: ``MAML (meta-batch 4)``."""
    name = method.display_name
    return f"{name} ({variant})" if variant else name


def set_nonfinite_policy(method: EpisodicMethod, policy: str, world_size: int) -> None:
    """Apply ``nonfinite_loss``: ``stop`` on a NaN/inf training loss, or ``skip`` its meta-batch."""
    if policy not in NONFINITE_POLICIES:
        raise ValueError(
            f"nonfinite_loss must be one of {list(NONFINITE_POLICIES)}, got {policy!r}; set nonfinite_loss=stop "
            "(end training with an error) or nonfinite_loss=skip (skip that meta-batch and go on)."
        )
    if policy == "skip" and not method.uses_shared_training_step:
        raise ValueError(
            f"nonfinite_loss=skip needs the shared episodic training step, but {method_name(method)} trains "
            "with its own; set nonfinite_loss=stop."
        )
    if policy == "skip" and world_size > 1:
        # a process that skips its backward would leave the others waiting for its gradients
        raise ValueError(
            f"nonfinite_loss=skip works in a single process only, got {world_size}; set nonfinite_loss=stop "
            "or train on one device (trainer.devices=1)."
        )
    method.nonfinite.mode = policy


def stop_reason(trainer: pl.Trainer) -> str:
    """What ended training: ``plateau`` (early stopping on validation), ``cpu_budget``,
    ``max_time``, ``max_steps``, ``max_epochs``, or ``other`` (e.g. interrupted)."""
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and (callback.stopped_epoch > 0 or getattr(callback, "reached", False)):
            return "plateau"
        if isinstance(callback, CpuTimeBudget) and callback.spent:
            return "cpu_budget"
        if isinstance(callback, Timer) and callback.time_remaining() is not None and callback.time_remaining() <= 0:
            return "max_time"
    if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
        return "max_steps"
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        return "max_epochs"
    return "other"


def callback_of(trainer: pl.Trainer, kind: type[CallbackT]) -> CallbackT | None:
    """The trainer's first callback of type ``kind``, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """Path of the best-on-validation checkpoint, if one was saved."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    path = monitored[0].best_model_path if monitored else ""
    return path or None


def last_checkpoint_path(output_dir: Path) -> Path:
    """Where a run keeps its latest state (``callbacks.last_checkpoint``), what ``resume=true`` uses."""
    return output_dir / "checkpoints" / "last.ckpt"


def checkpoint_to_start_from(cfg: DictConfig, output_dir: Path) -> str | None:
    """``ckpt_path``, or with ``resume=true`` the run folder's ``checkpoints/last.ckpt``."""
    if cfg.get("ckpt_path") or not cfg.get("resume", False):
        return cfg.get("ckpt_path")
    last = last_checkpoint_path(output_dir)
    if not last.is_file() and in_sweep_job() and not holds_trained_state(output_dir):
        log.info("resume=true: job %s of the sweep has nothing to resume (never started); training it from scratch.",
                 output_dir)  # fmt: skip
        return None
    if not last.is_file():
        raise FileNotFoundError(
            f"resume=true but {last} does not exist: no epoch of this run finished. Run it in the folder of "
            "the interrupted run (hydra.run.dir=<run folder>) or pass ckpt_path=<checkpoint>."
        )
    return str(resumable_checkpoint(last))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and/or test the configured method on the configured data; return the results.

    Raises RunInterrupted when SIGTERM/SIGINT stopped the run (see fewshot.run.signals).
    """
    silence_library_noise()
    try:
        with stop_on_signals() as flag:
            return train_and_test(cfg, flag)
    finally:  # end this process's W&B run, if any, so the next run (multirun job) starts its own
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()


def check_before_work(cfg: DictConfig) -> None:
    """Everything about the run's keys and folder that can be refused before anything is built."""
    check_run_config(cfg)
    if not cfg.get("train", True):
        check_test_only_folder(cfg.paths.output_dir)


def check_continuation(ckpt_path: str | None, resolved: dict[str, Any], cfg: DictConfig) -> tuple[int, int] | None:
    """When training continues a checkpoint, refuse a config that differs from the checkpoint's
    (fewshot.run.checks.check_resume_config); return the checkpoint's (epoch, global step)."""
    if not ckpt_path or not cfg.get("train", True) or not Path(ckpt_path).is_file():
        return None
    checkpoint = read_checkpoint(ckpt_path)
    check_resume_config(checkpoint[CONFIG_KEY], resolved, ckpt_path)
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))


def fit_or_test(run: Any, flag: StopFlag) -> None:
    """Call ``trainer.fit``/``trainer.test`` (``run``); a stop signal becomes RunInterrupted."""
    flag.raise_if_set()
    try:
        run()
    except (RunInterrupted, SIGTERMException) as stop:  # Lightning's own SIGTERM exit is a SystemExit(0)
        raise flag.interruption() from stop  # names the checkpoint saved while the trainer stopped
    flag.raise_if_set()


@dataclass
class Run:
    """A run once built from its config: data, method, trainer and loggers, and where it starts."""

    cfg: DictConfig
    output_dir: Path
    resolved: dict[str, Any]  # the composed config as written into checkpoints and results
    ckpt_path: str | None  # the checkpoint training continues or the one tested/validated
    datamodule: EpisodicDataModule
    method: EpisodicMethod
    trainer: pl.Trainer
    loggers: list[Any]
    # the code's commit when the run was built: a checkout changed while it trains does not relabel it
    commit: str | None
    # the seed the weights were trained with: the run's own, or a test-only run's checkpoint's
    trained_seed: int

    @property
    def trains(self) -> bool:
        """``train=true``: fit before anything else."""
        return bool(self.cfg.get("train", True))

    @property
    def validates_checkpoint(self) -> bool:
        """``train=false validate=true``: score ``ckpt_path`` on the validation episodes."""
        return not self.trains and bool(self.cfg.get("validate", False))

    @property
    def tests(self) -> bool:
        """``test=true``: score the trained (or given) checkpoint on the test episodes."""
        return bool(self.cfg.get("test", True))


def build_run(cfg: DictConfig, flag: StopFlag) -> Run:
    """Seed, then build the data, the method (checked against the checkpoint it starts from),
    the callbacks, loggers and trainer of a checked config."""
    if cfg.retain_freed_memory:
        retain_freed_memory()
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = check_writable_dir(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = checkpoint_to_start_from(cfg, output_dir)
    commit = git_commit(Path(__file__).parent)
    # the callbacks first: their options are refused before any data are read
    callbacks = instantiate_group(cfg.get("callbacks")) + [
        StoreConfigInCheckpoint(resolved),  # the same dict as `resolved`, completed below
        RngStateInCheckpoint(),
        CommitPerSegment(commit),
    ]
    callbacks.append(StopOnSignal(flag, last_checkpoint_path(output_dir)))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress-bar callback then
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]

    log.info("Building data <%s>", cfg.data.source._target_)
    datamodule: EpisodicDataModule = instantiate(cfg.data)
    datamodule.setup()
    flag.raise_if_set()
    log.info("Building method <%s>", cfg.model._target_)
    method: EpisodicMethod = instantiate(cfg.model)
    resolved["model"].update(method.fill_from_data(datamodule))  # so that fewshot.load rebuilds the same method
    if ckpt_path:  # another method or architecture first: that message shows shapes and settings
        check_checkpoint_fits(ckpt_path, method, resolved["model"])
    continued = check_continuation(ckpt_path, resolved, cfg)
    datamodule.train_batches = method.train_batches
    method.scores.select_best_by(cfg.get("monitor", "val/acc"))
    shots = list((cfg.get("eval") or {}).get("shots") or [])  # checked by check_before_work
    if shots:
        method.score_shots(shots)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    set_nonfinite_policy(method, cfg.get("nonfinite_loss", "stop"), trainer.world_size)
    for lg in loggers:
        if continued is not None and isinstance(lg, ResumableCSVLogger):
            lg.continue_from(*continued)  # drop the CSV rows logged after the checkpoint: the resume logs them again
        lg.log_hyperparams(resolved)
    trained_seed = cfg.seed if cfg.get("train", True) else read_checkpoint(ckpt_path)[CONFIG_KEY].get("seed", cfg.seed)
    return Run(cfg, output_dir, resolved, ckpt_path, datamodule, method, trainer, loggers, commit, trained_seed)


def fit_and_validate(run: Run, flag: StopFlag) -> None:
    """Train (``train=true``), or score the given checkpoint on the validation episodes
    (``train=false validate=true``)."""
    if run.trains:
        fit_or_test(lambda: run.trainer.fit(run.method, datamodule=run.datamodule, ckpt_path=run.ckpt_path), flag)
    if run.validates_checkpoint:
        fit_or_test(
            lambda: run.trainer.validate(
                run.method, datamodule=run.datamodule, ckpt_path=run.ckpt_path, weights_only=True, verbose=False
            ),
            flag,
        )


def tested_weights(run: Run) -> str:
    """Which weights a training run tests: ``test_checkpoint``, except that ``best`` becomes ``last``
    (the final weights) when no best-on-validation checkpoint was saved (``callbacks=none``, or no
    validation ran), so that results.json names the weights it scored."""
    choice = run.cfg.get("test_checkpoint", "best")  # checked by check_before_work
    if choice == "best" and best_checkpoint(run.trainer) is None:
        return "last"
    return choice


def checkpoint_to_test(run: Run) -> str | None:
    """The checkpoint a training run tests (see :func:`tested_weights`): the best on validation, or
    the final weights, saved as ``checkpoints/final.ckpt`` when ``test_checkpoint=last`` asks for
    them (the official Meta-LSTM protocol) and tested in memory when there is no best checkpoint."""
    choice = run.cfg.get("test_checkpoint", "best")
    if choice == "last":
        path = run.output_dir / "checkpoints" / FINAL_CHECKPOINT
        run.trainer.save_checkpoint(path)
        return str(path)
    ckpt = best_checkpoint(run.trainer)
    if ckpt is None:
        log.warning(
            "No best-on-validation checkpoint was saved (callbacks=none, or no validation ran): testing the "
            "final weights, recorded as test_checkpoint: last. Pass test_checkpoint=last to keep them as "
            "checkpoints/final.ckpt."
        )
    elif not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"The best-on-validation checkpoint {ckpt} is missing (a run folder moved or copied without it?), "
            "so the run cannot be tested with it. Put it back and test it with train=false ckpt_path=<it>; "
            "checkpoints/last.ckpt holds the final weights."
        )
    return ckpt


def tested_validation(run: Run) -> dict[str, Any] | None:
    """The validation summary of the weights the run tests (:func:`tested_weights`): the best one;
    for the final weights the last one if training ended at it, else None (the final weights
    trained on after their last validation were never validated)."""
    scores = run.method.scores
    last = scores.results.get("val")
    if not run.trains or tested_weights(run) != "last":
        return scores.best or last
    validated_at = scores.history[-1]["step"] if scores.history else None
    return last if validated_at == int(run.trainer.global_step) else None


def training_results(run: Run) -> dict[str, Any]:
    """What a run reports before testing: method, data, seed, provenance, validation and training."""
    method, trainer = run.method, run.trainer
    probe = callback_of(trainer, CpuSpeedProbe)
    speed_probe_summary = {"speed_probe": probe.summary()} if probe and probe.history else {}
    results: dict[str, Any] = {
        "method": method_name(method, run.cfg.get("variant")),
        **run.datamodule.describe(),
        "seed": run.trained_seed,
        "git_commit": run.commit,
        "hardware": {**hardware(), **speed_probe_summary},
        "output_dir": str(run.output_dir),
        # the validation of the weights tested (see tested_validation), and the last one
        "val": tested_validation(run),
        "val_last": method.scores.results.get("val"),
        "val_history": method.scores.history,
        "train": {
            "steps": int(trainer.global_step),
            "epochs": int(trainer.current_epoch),
            "cpu_s": None if method.train_cpu_s is None else round(method.train_cpu_s, 1),
            "skipped_nonfinite": method.nonfinite.skipped,
        },
    }
    if run.validates_checkpoint:  # this checkpoint's score under this config, not its training's best
        val = {**method.scores.results["val"], "fingerprint": run.datamodule.episode_fingerprint("val")}
        results.update(val=val, val_last=val, checkpoint=run.ckpt_path)
    if run.trains:
        segments = callback_of(trainer, CommitPerSegment)  # the commit of each stretch of training
        results["git_commits"] = list(segments.segments) if segments else []
        stopped_by = stop_reason(trainer)
        results["train"].update(stopped_by=stopped_by, plateaued=stopped_by == "plateau")
    return results


def score_test_episodes(run: Run, flag: StopFlag) -> dict[str, Any]:
    """Test once, on the fixed test episodes: the checkpoint ``test_checkpoint`` picks after
    training, or the given one; the results' ``test``, ``checkpoint`` and ``test_checkpoint``."""
    ckpt = checkpoint_to_test(run) if run.trains else run.ckpt_path
    fit_or_test(
        lambda: run.trainer.test(
            run.method, datamodule=run.datamodule, ckpt_path=ckpt, weights_only=True, verbose=False
        ),
        flag,
    )
    test = dict(run.method.scores.results["test"])
    test["fingerprint"] = run.datamodule.episode_fingerprint("test")
    test["acc_at"] = accuracy_at_prefixes(test["episode_acc"])
    return {"test": test, "checkpoint": ckpt, "test_checkpoint": tested_weights(run) if run.trains else "given"}


def publish_results(run: Run, results: dict[str, Any]) -> None:
    """Write ``results.json`` into the run folder, print the scores, and draw and log the figures."""
    path = write_results(run.output_dir / RESULTS_FILE, results)
    if "test" in results:
        print_results([results])
        log.info("Results written to %s", path)
        log_figures(run, results)
        log_results_table(results, run.loggers)
    elif run.validates_checkpoint:
        print_results([results], stage="val")
        log.info("Results written to %s", path)


def train_and_test(cfg: DictConfig, flag: StopFlag | None = None) -> dict[str, Any]:
    """The body of :func:`train`: build everything, fit, test the best checkpoint, write results."""
    check_before_work(cfg)
    flag = flag or StopFlag()
    started = time.perf_counter()
    run = build_run(cfg, flag)
    fit_and_validate(run, flag)
    results = training_results(run)
    if run.tests:
        results.update(score_test_episodes(run, flag))
    results["wall_time_s"] = round(time.perf_counter() - started, 2)
    results["config"] = run.resolved
    if run.trainer.is_global_zero:  # every rank holds the gathered results; one writes them
        publish_results(run, results)
    return results


def log_figures(run: Run, results: dict[str, Any]) -> None:
    """Draw the method's own figures (its ``save_figures``, e.g. the Meta-LSTM's gates) into the run folder
    and log them to W&B when W&B is on."""
    for key, png in run.method.save_figures(results, run.output_dir).items():
        log.info("Figure %s written to %s", key, png)
        for lg in run.loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image(key=key, images=[str(png)])


def objective(results: dict[str, Any], metric: str) -> float | None:
    """The value a Hydra sweeper optimises, e.g. ``val/acc``."""
    stage, _, key = metric.partition("/")
    section = results.get(stage) or {}
    value = section.get(key)
    return None if value is None else float(value)


if __name__ == "__main__":  # python -m fewshot.run.training: the training command (fewshot-train, train.py)
    from fewshot.cli import main

    main()
