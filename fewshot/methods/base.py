"""The shared episodic LightningModule: a method only says how it classifies queries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from fewshot.data.episode import Episode
from fewshot.evaluation.scoring import EVAL_STAGES, EpisodeScores, shot_stage
from fewshot.evaluation.stats import episode_accuracy
from fewshot.run.nonfinite import NonFiniteLossError, NonFiniteLossPolicy

if TYPE_CHECKING:
    from fewshot.data.datamodule import EpisodicDataModule

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
HISTORY_KEY = "fewshot_validation_history"


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


class EpisodicMethod(pl.LightningModule):
    """Base class of every few-shot method.

    Subclasses implement ``forward(episode) -> logits [B, N*Q, N]``: adapt to each episode's
    support set and score its queries. This class supplies episodic training with
    cross-entropy on the queries (and the run's non-finite loss policy, ``nonfinite``),
    evaluation over the fixed validation/test episodes (``scores``: per-episode accuracy with
    torchmetrics, mean and 95% CI, gathered across processes, validation history), and
    optimiser construction from Hydra partials.

    What a method must define: ``forward``. What it may (see CONTRIBUTING.md, "Adding a
    method"): ``display_name``, ``needs_fixed_n_way``, ``train_batches``, ``own_gradient_clipping``, ``episode_loss``,
    its own ``training_step``, ``eval_logits`` (to collect per-episode extras while scoring),
    ``stage_metrics`` (extra results of a stage, e.g. Meta-LSTM gates), ``fill_from_data`` (arguments
    only the data tell) and ``save_figures`` (its own figures of a tested run).
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
    # the model keys with which the method clips its own gradients, e.g. ("grad_clip_norm",): a run
    # that sets one of them and trainer.gradient_clip_val too is refused (fewshot.run.checks)
    own_gradient_clipping: ClassVar[tuple[str, ...]] = ()

    # -- run state set from outside ------------------------------------------------------------
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
        self.scores = EpisodeScores()
        self.nonfinite = NonFiniteLossPolicy(skippable=self.uses_shared_training_step)

    # -- what a method provides -------------------------------------------------------------
    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each support set and return query logits ``[B, N*Q, N]``."""
        raise NotImplementedError

    def episode_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Meta-training loss of a meta-batch and its query logits ``[B, N*Q, N]``."""
        logits = self(episode)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        return loss, logits

    def eval_logits(self, episode: Episode, stage: str) -> Tensor:
        """Query logits ``[B, N*Q, N]`` of an evaluation meta-batch of ``stage`` (a method that
        collects per-episode extras while adapting, as the Meta-LSTM's gates, overrides this)."""
        return self(episode)

    def stage_metrics(self, stage: str) -> dict[str, Any]:
        """Extra results of an evaluation stage, kept beside its accuracy (none by default)."""
        return {}

    def save_figures(self, results: dict[str, Any], output_dir: Path) -> dict[str, Path]:
        """Draw the method's own figures of a tested run (its ``results``) into ``output_dir``; return each
        figure's image by name, the key it is logged under (none by default)."""
        return {}

    def fill_from_data(self, datamodule: EpisodicDataModule) -> dict[str, Any]:
        """Take what only the loaded data tell (called once the data are set up, before any weights are
        loaded); return the constructor arguments so filled, which the run's config keeps so that
        ``fewshot.load`` rebuilds the same method (none by default)."""
        return {}

    def check_head_matches_way(self, n_outputs: int | None, n_way: int) -> None:
        """Refuse an episode whose N differs from the learner head's ``n_outputs`` (None skips the check):
        the one check of the methods that need a fixed N (``needs_fixed_n_way``)."""
        if n_outputs is not None and n_outputs != n_way:
            raise ValueError(
                f"{self.display_name}'s learner outputs {n_outputs} logits but the episode is {n_way}-way; build "
                f"the learner with n_classes={n_way} (model.learner.n_classes: ${{data.n_way}}) and keep "
                "data.train_n_way equal to data.n_way (or null)."
            )

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
        loss when the run's ``nonfinite_loss`` is ``skip`` (else it stops)."""
        loss, logits = self.episode_loss(episode)
        if self.nonfinite.should_skip(loss, episode.batch_size):
            skipped = self.nonfinite.skipped
            rank_zero_warn(
                f"Non-finite training loss ({loss.item()}) at step {self.global_step}: skipping the update of "
                f"these {episode.batch_size} episode(s) (nonfinite_loss=skip; {skipped} skipped so far)."
            )
            self.log("train/skipped_nonfinite", float(skipped), batch_size=episode.batch_size)
            return None  # Lightning makes no optimizer step for this batch
        self.check_finite(loss)
        acc = episode_accuracy(logits, episode.query_labels, episode.n_way).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=episode.batch_size)
        self.log("train/acc", acc, prog_bar=True, batch_size=episode.batch_size)
        return loss

    def check_finite(self, loss: Tensor) -> None:
        """Stop with a clear message on a NaN/inf loss instead of training on garbage."""
        self.nonfinite.check(loss, self.global_step)

    # -- evaluation ---------------------------------------------------------------------------
    def validation_step(self, episode: Episode, batch_idx: int) -> None:
        """Score validation episodes."""
        self.scores.record("val", self.eval_logits(episode, "val"), episode)

    def test_step(self, episode: Episode, batch_idx: int) -> None:
        """Score test episodes (and again with their first k shots for each k of ``scores.shots``)."""
        for stage, scored in self.scores.test_stages(episode):
            self.scores.record(stage, self.eval_logits(scored, stage), scored)

    def score_shots(self, shots: Sequence[int]) -> None:
        """Also score every test episode with only its first k support images per class, for
        each k in ``shots`` (the official protocol's 1- and 5-shot scores on one episode)."""
        self.scores.rescore_with_shots(shots)

    def summarise_stage(self, stage: str) -> dict[str, Any]:
        """Summarise the stage's episodes (``scores.summarise``) with the method's
        ``stage_metrics``, and log mean accuracy, its 95% CI and the mean query loss."""
        summary = self.scores.summarise(stage)
        summary.update(self.stage_metrics(stage))
        self.log(f"{stage}/acc", summary["acc"], prog_bar=stage == "val", sync_dist=False, rank_zero_only=False)
        self.log(f"{stage}/acc_ci95", summary["ci95"], sync_dist=False)
        self.log(f"{stage}/loss", summary["loss"], sync_dist=False, rank_zero_only=False)
        return summary

    def on_validation_epoch_end(self) -> None:
        """Summarise the validation episodes; keep the history and the best validation so far."""
        self.summarise_stage("val")
        if not self.trainer.sanity_checking:
            self.scores.note_validation(self.global_step, self.current_epoch, self.train_cpu_s)

    def on_test_epoch_end(self) -> None:
        """Summarise the test episodes, per number of shots when ``scores.shots`` asks for it."""
        self.summarise_stage("test")
        for stage in self.scores.rescored_stages():
            self.summarise_stage(stage)
        self.scores.attach_shots()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the validation history and best validation with the weights (resumed runs go on)."""
        checkpoint[HISTORY_KEY] = self.scores.history_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the validation history and best validation of a checkpoint."""
        self.scores.load_history_state(checkpoint.get(HISTORY_KEY))

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        """Bind the optimizer (and optional scheduler) partials to this method's parameters."""
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}


__all__ = ["EVAL_STAGES", "EpisodicMethod", "NonFiniteLossError", "embed_episode", "shot_stage"]
