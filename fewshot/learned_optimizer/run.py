"""The composition root of the learned-optimizer family: build from the config, meta-train, compare, report."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fewshot.io import temporary_for, write_json_atomic, write_text_atomic
from fewshot.learned_optimizer.comparison import Baselines, Comparison, OptimizerResult
from fewshot.learned_optimizer.errors import ConfigError
from fewshot.learned_optimizer.meta_train import MetaTrainer
from fewshot.learned_optimizer.plots import save_curves_figure
from fewshot.learned_optimizer.problem import Problem
from fewshot.learned_optimizer.report import final_row, markdown_table, write_curves_csv
from fewshot.reporting.results import RESULTS_FILE, git_commit, hardware, write_results
from fewshot.run.training import instantiate_group

log = logging.getLogger(__name__)

NET_FILE = "optimizer_net.pt"
LEARNED_NAME = "LSTM"


def build(node: DictConfig) -> Any:
    """``instantiate(node)``, re-raising a bad setting's :class:`ConfigError` as itself (Hydra
    wraps it, which buries the message that names the setting and the fix)."""
    try:
        return instantiate(node)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def load_optimizer_net(net: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load weights saved by a run into ``net``; return what the file says about their training."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r} does not exist: point it at a run's {NET_FILE}.")
    saved = torch.load(file, map_location="cpu", weights_only=True)
    net.load_state_dict(saved["state_dict"])
    return {"ckpt_path": str(file), **saved.get("meta", {})}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Meta-train the optimizer network (unless ``meta_train.iterations=0``), compare it with
    the tuned baselines on the evaluation draws, and write the results into the run folder."""
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    log.info("Building problem <%s>", cfg.problem._target_)
    problem: Problem = build(cfg.problem)
    net: nn.Module = build(cfg.optimizer_net)
    trainer: MetaTrainer = build(cfg.meta_train)
    comparison: Comparison = build(cfg.evaluation)
    baselines: Baselines = build(cfg.baselines)
    loggers = instantiate_group(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(resolved)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        for lg in loggers:
            lg.log_metrics(metrics, step)

    trained: dict[str, Any] = {"problem": None, "iterations": 0}
    if cfg.get("ckpt_path"):
        trained = load_optimizer_net(net, cfg.ckpt_path)
        log.info("Loaded the optimizer network from %s (meta-trained on %s)", cfg.ckpt_path, trained.get("problem"))
    summary = trainer.fit(net, problem, cfg.seed, log_metrics)
    if trainer.iterations:
        trained = {
            "problem": problem.name,
            "iterations": trainer.iterations,
            "best_iteration": summary.best_iteration,
            "started_from": cfg.get("ckpt_path"),
        }
        with temporary_for(output_dir / NET_FILE, fsync=True) as tmp, tmp.open("wb") as f:
            torch.save({"state_dict": net.state_dict(), "meta": trained}, f)

    results_list = comparison.run(problem, {LEARNED_NAME: net}, baselines)
    rows = [final_row(r) for r in results_list]
    metrics = {f"test/final_loss/{row['optimizer']}": row["final_loss"]["mean"] for row in rows}  # mean over draws
    metrics.update({f"test/lr/{row['optimizer']}": row["lr"] for row in rows if row["lr"] is not None})
    log_metrics(metrics, summary.iterations)
    for lg in loggers:
        lg.finalize("success")

    results = {
        "problem": problem.name,
        "steps": comparison.steps,
        "n_draws": comparison.n_draws,
        "n_tuning_draws": comparison.n_tuning_draws,
        "optimizer_net_trained": trained,
        "meta_training": asdict(summary),
        "final_loss": rows,
        "seed": cfg.seed,
        "git_commit": git_commit(Path(__file__).parent),
        "hardware": hardware(),
        "output_dir": str(output_dir),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "config": resolved,
    }
    write_report(results, results_list, output_dir)
    return results


def run_title(results: dict[str, Any]) -> str:
    """``<problem>: <n> draws, <T> steps; LSTM meta-trained on <problem> (<k> it.)``, for figures."""
    trained = results["optimizer_net_trained"]
    lstm = (
        f"LSTM meta-trained on {trained['problem']} ({trained['iterations']} it.)"
        if trained.get("iterations")
        else "untrained LSTM"
    )
    return f"{results['problem']}: {results['n_draws']} draws, {results['steps']} steps; {lstm}"


def write_report(results: dict[str, Any], curves: list[OptimizerResult], output_dir: Path) -> None:
    """``results.json``, ``final_loss.md``/``.json``, ``curves.csv`` and ``loss_curves.png``/``.pdf``."""
    write_results(output_dir / RESULTS_FILE, results)
    table = markdown_table(results["final_loss"])
    header = f"{run_title(results)}; final loss after {results['steps']} steps over {results['n_draws']} draws\n\n"
    write_text_atomic(output_dir / "final_loss.md", header + table)
    write_json_atomic(output_dir / "final_loss.json", results["final_loss"])
    write_curves_csv(curves, output_dir / "curves.csv")
    png, _ = save_curves_figure(curves, output_dir, run_title(results))
    print(header + table)
    log.info("Results, table and figure %s written to %s", png.name, output_dir)


__all__ = ["LEARNED_NAME", "NET_FILE", "load_optimizer_net", "run"]
