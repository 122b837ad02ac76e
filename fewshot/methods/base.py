"""The shared episodic LightningModule: a method only says how it classifies queries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torchmetrics import CatMetric

from fewshot.data.episode import Episode
from fewshot.evaluation.stats import episode_accuracy, mean_ci95

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
EVAL_STAGES = ("val", "test")
HISTORY_KEY = "fewshot_validation_history"


def shot_stage(n_shot: int) -> str:
    """The evaluation stage that scores test episodes with their first ``n_shot`` shots."""
    return f"test_{n_shot}shot"


def embed_episode(backbone: torch.nn.Module, episode: Episode) -> tuple[Tensor, Tensor]:
    """Embed support and query images in one backbone call (so batch norm in training mode
    sees the whole episode, as ProtoNet's and Matching Networks' code do).

    Returns:
        ``(support [B, N*K, D], query [B, N*Q, D])``.
    """
    b, nk = episode.support_labels.shape
    images = torch.cat([episode.support_images.flatten(0, 1), episode.query_images.flatten(0, 1)])
    features = backbone(images)
    return features[: b * nk].view(b, nk, -1), features[b * nk :].view(b, -1, features.shape[-1])


class NonFiniteLossError(FloatingPointError):
    """Meta-training produced a NaN or infinite loss."""


class EpisodicMethod(pl.LightningModule):
    """Base class of every few-shot method.

    Subclasses implement ``forward(episode) -> logits [B, N*Q, N]``: adapt to each episode's
    support set and score its queries. This class supplies episodic training with
    cross-entropy on the queries, evaluation over the fixed validation/test episodes
    (per-episode accuracy with torchmetrics, mean and 95% CI, gathered across processes),
    and optimiser construction from Hydra partials.
    """

    # -- what a method may declare (class attributes) -----------------------------------------
    # methods whose learner has an N-way head cannot train on episodes of another N
    needs_fixed_n_way: ClassVar[bool] = False
    # what training batches are: meta-batches of episodes, or shuffled labelled images
    # (pre-trained baselines); the training loop tells the datamodule
    train_batches: ClassVar[Literal["episodes", "images"]] = "episodes"
    # whether the method trains with this class's training_step (set for every subclass when it
    # is defined): only that step can skip a NaN/inf meta-batch (nonfinite_loss=skip)
    uses_shared_training_step: ClassVar[bool] = True

    # -- run state set from outside ------------------------------------------------------------
    # what a NaN/inf training loss does: "stop" or "skip" the update (set from the run config)
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    skipped_nonfinite: int = 0
    # CPU seconds of training so far, set by the CPU budget callback when there is one
    train_cpu_s: float | None = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.uses_shared_training_step = cls.training_step is EpisodicMethod.training_step

    @property
    def display_name(self) -> str:
        """The method's name in results and reports (the class name unless the method sets one)."""
        return type(self).__name__

    def __init__(self, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.episode_acc = torch.nn.ModuleDict({s: CatMetric() for s in EVAL_STAGES})
        self.episode_index = torch.nn.ModuleDict({s: CatMetric() for s in EVAL_STAGES})
        self.eval_results: dict[str, dict] = {}
        self.best_val: dict | None = None  # the best validation summary so far (highest accuracy)
        self.val_history: list[dict[str, float]] = []  # (step, epoch, acc, ci95) of every validation
        self.eval_shots: tuple[int, ...] = ()
        self.test_n_shot: int | None = None

    # -- what a method provides -------------------------------------------------------------
    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each support set and return query logits ``[B, N*Q, N]``."""
        raise NotImplementedError

    def episode_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Meta-training loss of a meta-batch and its query logits ``[B, N*Q, N]``."""
        logits = self(episode)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        return loss, logits

    # -- training -----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Refuse training episodes whose N differs from evaluation's when the method needs one N."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not self.needs_fixed_n_way or datamodule is None:
            return
        train_way, eval_way = datamodule.train_spec.n_way, datamodule.eval_spec.n_way
        if train_way != eval_way:
            name = self.display_name
            raise ValueError(
                f"{name} classifies with a head of data.n_way={eval_way} outputs, but the training episodes are "
                f"data.train_n_way={train_way}-way. Set data.train_n_way=null (or {eval_way}) so that training "
                "and evaluation episodes have the same number of classes."
            )

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor | None:
        """One meta-training step on a meta-batch of episodes; None (no update) for a NaN/inf
        loss when ``nonfinite_loss`` is ``"skip"`` (set by ``fewshot.training``; else it stops)."""
        loss, logits = self.episode_loss(episode)
        if self.nonfinite_loss == "skip" and not torch.isfinite(loss).all():
            self.skipped_nonfinite += episode.batch_size
            rank_zero_warn(
                f"Non-finite training loss ({loss.item()}) at step {self.global_step}: skipping the update of "
                f"these {episode.batch_size} episode(s) (nonfinite_loss=skip; {self.skipped_nonfinite} skipped so far)."
            )
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=episode.batch_size)
            return None  # Lightning makes no optimizer step for this batch
        self.check_finite(loss)
        acc = episode_accuracy(logits, episode.query_labels, episode.n_way).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=episode.batch_size)
        self.log("train/acc", acc, prog_bar=True, batch_size=episode.batch_size)
        return loss

    def check_finite(self, loss: Tensor) -> None:
        """Stop with a clear message on a NaN/inf loss instead of training on garbage."""
        if not torch.isfinite(loss).all():
            skippable = self.uses_shared_training_step
            raise NonFiniteLossError(
                f"Non-finite training loss ({loss.item()}) at step {self.global_step}; training stopped (the "
                "checkpoints saved so far are kept). Lower the learning rate (model.optimizer.lr), add gradient "
                "clipping (trainer.gradient_clip_val), or check the data normalisation"
                + (", or set nonfinite_loss=skip to skip such meta-batches." if skippable else ".")
            )

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate_episodes(self, episode: Episode, stage: str) -> Tensor:
        """Score a meta-batch of evaluation episodes and record per-episode accuracies."""
        return self.record_episode_accuracy(self(episode), episode, stage)

    def record_episode_accuracy(self, logits: Tensor, episode: Episode, stage: str) -> Tensor:
        """Per-episode accuracies ``[B]`` of query logits ``[B, N*Q, N]``, recorded for the stage."""
        acc = episode_accuracy(logits, episode.query_labels, episode.n_way)
        self.episode_acc[stage].update(acc)
        self.episode_index[stage].update(episode.index.to(acc.dtype))
        return acc

    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        """Score validation episodes."""
        self.evaluate_episodes(episode, "val")

    def test_step(self, episode: Episode, batch_idx: int) -> None:
        """Score test episodes (and again with their first k shots for each k of ``eval_shots``)."""
        self.test_n_shot = episode.n_shot
        self.evaluate_episodes(episode, "test")
        for n_shot in self.eval_shots:
            if n_shot != episode.n_shot:
                self.evaluate_episodes(episode.with_shots(n_shot), shot_stage(n_shot))

    def score_shots(self, shots: Sequence[int]) -> None:
        """Also score every test episode with only its first k support images per class, for
        each k in ``shots`` (the official protocol's 1- and 5-shot scores on one episode)."""
        bad = [k for k in shots if int(k) < 1]
        if bad:
            raise ValueError(f"eval.shots must be positive shot counts, got {list(shots)}.")
        self.eval_shots = tuple(sorted({int(k) for k in shots}))
        for n_shot in self.eval_shots:
            stage = shot_stage(n_shot)
            if stage not in self.episode_acc:
                self.episode_acc[stage] = CatMetric().to(self.device)
                self.episode_index[stage] = CatMetric().to(self.device)

    def summarise_stage(self, stage: str) -> None:
        """Log mean accuracy and 95% CI over all episodes of the stage, gathered from every
        process, and keep the per-episode accuracies (sorted by episode index)."""
        acc = self.episode_acc[stage].compute().flatten().cpu()
        index = self.episode_index[stage].compute().flatten().cpu().long()
        self.episode_acc[stage].reset()
        self.episode_index[stage].reset()
        order = torch.argsort(index)
        acc, index = acc[order], index[order]
        mean, ci95 = mean_ci95(acc)
        self.eval_results[stage] = {
            "acc": mean,
            "ci95": ci95,
            "episodes": int(acc.numel()),
            "episode_index": index.tolist(),
            "episode_acc": acc.tolist(),
        }
        self.log(f"{stage}/acc", mean, prog_bar=stage == "val", sync_dist=False, rank_zero_only=False)
        self.log(f"{stage}/acc_ci95", ci95, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        """Summarise the validation episodes; keep the history and the best validation so far."""
        self.summarise_stage("val")
        if self.trainer.sanity_checking:
            return
        latest = self.eval_results["val"]
        point = {"step": int(self.global_step), "epoch": int(self.current_epoch)}
        if self.train_cpu_s is not None:
            point["cpu_s"] = round(float(self.train_cpu_s), 2)
        self.val_history.append({**point, "acc": latest["acc"], "ci95": latest["ci95"]})
        if self.best_val is None or latest["acc"] > self.best_val["acc"]:
            self.best_val = {**latest, **point}

    def on_test_epoch_end(self) -> None:
        """Summarise the test episodes, per number of shots when ``eval_shots`` asks for it."""
        self.summarise_stage("test")
        if not self.eval_shots:
            return
        shots = {}
        for n_shot in self.eval_shots:
            if n_shot == self.test_n_shot:
                shots[str(n_shot)] = {k: v for k, v in self.eval_results["test"].items() if k != "shots"}
            else:
                self.summarise_stage(shot_stage(n_shot))
                shots[str(n_shot)] = self.eval_results.pop(shot_stage(n_shot))
        self.eval_results["test"]["shots"] = shots

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the validation history and best validation with the weights (resumed runs go on)."""
        checkpoint[HISTORY_KEY] = {"val_history": self.val_history, "best_val": self.best_val}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the validation history and best validation of a checkpoint."""
        history = checkpoint.get(HISTORY_KEY) or {}
        self.val_history = list(history.get("val_history", []))
        self.best_val = history.get("best_val")

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        """Bind the optimizer (and optional scheduler) partials to this method's parameters."""
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}
