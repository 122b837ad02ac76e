"""The Meta-Learner LSTM as a LightningModule (Ravi & Larochelle, ICLR 2017)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric

from fewshot.data.episode import Episode
from fewshot.methods.base import EVAL_STAGES, EpisodicMethod, OptimizerFactory, SchedulerFactory
from fewshot.methods.choices import BatchNormModes
from fewshot.methods.meta_lstm.cell import Feedback
from fewshot.methods.meta_lstm.metalearner import GATES, STATISTICS, BNMode, GateStats, GradScale, MetaLearner
from fewshot.nn import native
from fewshot.nn.native import Backend


def summarise_gate_runs(values: Tensor, layers: tuple[str, ...]) -> dict:
    """Average per-episode gate statistics ``[E, T, 2, 2, L]`` over episodes into a
    JSON-friendly dict: ``{"layers": [...], "input": {"mean": [T][L], "std": [T][L]}, ...}``."""
    mean = values.mean(0)
    out: dict = {"layers": list(layers), "steps": int(mean.shape[0]), "episodes": int(values.shape[0])}
    for g, gate in enumerate(GATES):
        out[gate] = {stat: mean[:, g, s].tolist() for s, stat in enumerate(STATISTICS)}
    return out


class MetaLSTM(EpisodicMethod):
    """Meta-Learner LSTM: an LSTM whose cell state is the learner's parameters learns the
    learner's initialisation ``c_0`` and its update rule (input gate = learning rate, forget
    gate = shrinkage), coordinate-wise, under the gradient independence assumption.

    Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017. The pieces
    (preprocessing, coordinate-wise LSTM, meta-learner cell, BN handling) live beside it in
    ``fewshot.methods.meta_lstm``; this class wires them into the episodic interface: meta-training on
    the query loss after ``inner_steps`` updates on the support set (meta-batch averaged), Adam with
    global gradient-norm clipping (``grad_clip_norm``, official 0.25), and evaluation by
    adapting on each support set. Gate values (mean and spread of ``i_t`` and ``f_t`` per step
    and learner layer) are averaged over the validation/test episodes and logged as
    ``gates/input/conv1/step3`` etc.

    The learner's head must match the episodes' ``n_way``; training episodes therefore use
    the evaluation N (``data.train_n_way`` must equal ``data.n_way``).
    """

    needs_fixed_n_way = True
    own_gradient_clipping = ("grad_clip_norm",)
    bn_modes = BatchNormModes(train=("transductive", "support"), eval=("transductive", "support"))

    def __init__(
        self,
        learner: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        inner_steps: int = 12,
        hidden_size: int = 20,
        preprocess_p: float = 10.0,
        train_bn: BNMode = "transductive",
        eval_bn: BNMode = "support",
        grad_clip_norm: float | None = 0.25,
        fused: bool = True,
        feedback: Feedback = "preactivation",
        backend: Backend = "auto",
        checkpoint: bool = False,
        grad_scale: GradScale = "official",
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.bn_modes.check(type(self).__name__, train_bn, eval_bn)
        native.select(backend)  # a process setting: what the operators' CPU kernels run
        self.backend = backend
        self.metalearner = MetaLearner(
            learner,
            n_steps=inner_steps,
            hidden_size=hidden_size,
            preprocess_p=preprocess_p,
            train_bn=train_bn,
            eval_bn=eval_bn,
            fused=fused,
            feedback=feedback,
            checkpoint=checkpoint,
            grad_scale=grad_scale,
        )
        self.n_way = getattr(learner, "out_features", None)
        self.grad_clip_norm = grad_clip_norm
        self.gate_runs = nn.ModuleDict({s: CatMetric() for s in EVAL_STAGES})
        self.gate_results: dict[str, dict] = {}

    display_name = "Meta-LSTM"

    def save_figures(self, results: dict[str, Any], output_dir: Path) -> dict[str, Path]:
        """The gate figure of the test episodes (``gates.png``/``.pdf``), when the results hold their gates."""
        gates = results["test"].get("gates")
        if not gates:
            return {}
        from fewshot.reporting.gates import save_gate_figure  # matplotlib: only when a figure is drawn
        from fewshot.reporting.results import run_title

        png, _ = save_gate_figure(gates, output_dir, run_title(results))
        return {"gates": png}

    def adapt_and_predict(self, episode: Episode) -> tuple[Tensor, Tensor, list[GateStats]]:
        """Meta-loss (mean over the meta-batch), query logits ``[B, N*Q, N]``, gate stats."""
        self.check_head_matches_way(self.n_way, episode.n_way)
        losses, logits, gates = [], [], []
        for single in episode.unbatch():
            result = self.metalearner.meta_loss(
                single.support_images, single.support_labels, single.query_images, single.query_labels
            )
            losses.append(result.loss)
            logits.append(result.logits)
            gates.append(result.gates)
        return torch.stack(losses).mean(), torch.stack(logits), gates

    def forward(self, episode: Episode) -> Tensor:
        """Adapt to each support set, then query logits ``[B, N*Q, N]``."""
        return self.adapt_and_predict(episode)[1]

    def episode_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Query cross-entropy after adaptation, averaged over the meta-batch."""
        loss, logits, _ = self.adapt_and_predict(episode)
        return loss, logits

    def eval_logits(self, episode: Episode, stage: str) -> Tensor:
        """Query logits of evaluation episodes; their gate statistics are collected for val/test."""
        _, logits, gates = self.adapt_and_predict(episode)
        if stage in self.gate_runs:  # gates are summarised for val/test, not per-shot rescoring
            for g in gates:
                self.gate_runs[stage].update(g.values.unsqueeze(0))
        return logits

    def stage_metrics(self, stage: str) -> dict[str, Any]:
        """Gate means per step and layer over the stage's episodes (``{"gates": ...}``), also logged."""
        if stage not in self.gate_runs:
            return {}
        values = self.gate_runs[stage].compute().cpu()
        self.gate_runs[stage].reset()
        layers = self.metalearner.gate_layers
        values = values.view(-1, *values.shape[-4:]) if values.dim() > 4 else values.unsqueeze(0)
        summary = summarise_gate_runs(values, layers)
        self.gate_results[stage] = summary
        mean_stats = GateStats(layers, values.mean(0))
        # validation gates are logged as gates/input/conv1/step3 (a curve over training), test as test/gates/...
        self.log_dict(mean_stats.to_metrics(prefix="gates" if stage == "val" else f"{stage}/gates"))
        return {"gates": summary}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Global gradient-norm clipping at ``grad_clip_norm`` (official 0.25); with it null, the
        Trainer's ``gradient_clip_val`` if set (a run setting both is refused: fewshot.run.checks)."""
        value = self.grad_clip_norm if self.grad_clip_norm is not None else gradient_clip_val
        if value:
            self.clip_gradients(
                optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm or "norm"
            )
