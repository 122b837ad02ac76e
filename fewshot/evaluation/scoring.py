"""Scoring of evaluation episodes, the same for every method: per-episode accuracies and losses
(torchmetrics, gathered across processes), their summaries, and the validation history.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import CatMetric

from fewshot.data.episode import Episode
from fewshot.evaluation.stats import episode_accuracy, mean_ci95

EVAL_STAGES = ("val", "test")
# what may pick the best validation (the top-level ``monitor``), and whether higher or lower is better
MONITOR_MODES = {"val/acc": "max", "val/loss": "min"}


def shot_stage(n_shot: int) -> str:
    """The evaluation stage that scores test episodes with their first ``n_shot`` shots."""
    return f"test_{n_shot}shot"


class EpisodeScores(nn.Module):
    """Per-episode accuracies of every evaluation stage, their summaries, and the validation history.

    ``results`` holds the latest summary of each stage (``{acc, ci95, episodes, episode_index,
    episode_acc}`` plus what the method adds, see ``EpisodicMethod.stage_metrics``); ``history`` one
    ``{step, epoch[, cpu_s], acc, ci95, loss}`` per validation of training; ``best`` the best validation
    so far by ``monitor`` (a key of ``MONITOR_MODES``), with its step and epoch; ``shots`` the shot
    counts the test episodes are rescored with.
    """

    def __init__(self) -> None:
        super().__init__()
        self.accuracies = nn.ModuleDict({s: CatMetric() for s in EVAL_STAGES})
        self.indices = nn.ModuleDict({s: CatMetric() for s in EVAL_STAGES})
        self.losses = nn.ModuleDict({s: CatMetric() for s in EVAL_STAGES})
        self.results: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None
        self.shots: tuple[int, ...] = ()
        self.test_n_shot: int | None = None
        self.monitor = "val/acc"

    def select_best_by(self, monitor: str) -> None:
        """Pick the best validation by ``monitor`` (``val/acc``: highest; ``val/loss``: lowest)."""
        if monitor not in MONITOR_MODES:
            raise ValueError(f"monitor must be one of {list(MONITOR_MODES)}, got {monitor!r}.")
        self.monitor = monitor

    def is_better(self, summary: dict[str, Any], than: dict[str, Any] | None) -> bool:
        """Whether a validation summary beats ``than`` (None: there is none yet) on ``monitor``."""
        if than is None:
            return True
        key = self.monitor.partition("/")[2]
        if MONITOR_MODES[self.monitor] == "max":
            return summary[key] > than[key]
        return summary[key] < than[key]

    def rescore_with_shots(self, shots: Sequence[int]) -> None:
        """Also score every test episode with only its first k support images per class, for each
        k in ``shots`` (the official protocol's 1- and 5-shot scores on one episode)."""
        bad = [k for k in shots if int(k) < 1]
        if bad:
            raise ValueError(f"eval.shots must be positive shot counts, got {list(shots)}.")
        self.shots = tuple(sorted({int(k) for k in shots}))
        device = next(iter(self.accuracies.values())).device
        for n_shot in self.shots:
            stage = shot_stage(n_shot)
            if stage not in self.accuracies:
                self.accuracies[stage] = CatMetric().to(device)
                self.indices[stage] = CatMetric().to(device)
                self.losses[stage] = CatMetric().to(device)

    def test_stages(self, episode: Episode) -> Iterator[tuple[str, Episode]]:
        """``("test", episode)``, then the episode cut to each other shot count of ``shots``."""
        self.test_n_shot = episode.n_shot
        yield "test", episode
        for n_shot in self.shots:
            if n_shot != episode.n_shot:
                yield shot_stage(n_shot), episode.with_shots(n_shot)

    def record(self, stage: str, logits: Tensor, episode: Episode) -> Tensor:
        """Per-episode accuracies ``[B]`` of query logits ``[B, N*Q, N]``, recorded for the stage
        with each episode's query cross-entropy (of the logits, as the methods' training loss)."""
        acc = episode_accuracy(logits, episode.query_labels, episode.n_way)
        labels = episode.query_labels
        loss = F.cross_entropy(logits.detach().flatten(0, 1).float(), labels.flatten(), reduction="none")
        self.accuracies[stage].update(acc)
        self.indices[stage].update(episode.index.to(acc.dtype))
        self.losses[stage].update(loss.view(labels.shape).mean(1).to(acc.dtype))
        return acc

    def summarise(self, stage: str) -> dict[str, Any]:
        """Mean accuracy and 95% CI over all recorded episodes of the stage (gathered from every
        process), kept in ``results[stage]`` with the per-episode accuracies; resets the stage."""
        acc = self.accuracies[stage].compute().flatten().cpu()
        index = self.indices[stage].compute().flatten().cpu().long()
        loss = self.losses[stage].compute().flatten().cpu()
        for metric in (self.accuracies, self.indices, self.losses):
            metric[stage].reset()
        order = torch.argsort(index)
        acc, index = acc[order], index[order]
        mean, ci95 = mean_ci95(acc)
        self.results[stage] = {
            "acc": mean,
            "ci95": ci95,
            "loss": float(loss.mean()),
            "episodes": int(acc.numel()),
            "episode_index": index.tolist(),
            "episode_acc": acc.tolist(),
        }
        return self.results[stage]

    def note_validation(self, step: int, epoch: int, cpu_s: float | None) -> None:
        """Add the latest validation summary to the history; keep it if it is the best so far (``monitor``)."""
        latest = self.results["val"]
        point: dict[str, Any] = {"step": int(step), "epoch": int(epoch)}
        if cpu_s is not None:
            point["cpu_s"] = round(float(cpu_s), 2)
        self.history.append({**point, "acc": latest["acc"], "ci95": latest["ci95"], "loss": latest["loss"]})
        if self.is_better(latest, self.best):
            self.best = {**latest, **point}

    def rescored_stages(self) -> list[str]:
        """The stages ``test_stages`` filled besides ``test`` (shot counts other than the episodes')."""
        return [shot_stage(k) for k in self.shots if k != self.test_n_shot]

    def attach_shots(self) -> None:
        """Fold the summarised shot stages into ``results["test"]["shots"]`` (keyed by shot count)."""
        if not self.shots:
            return
        test = self.results["test"]
        shots = {}
        for n_shot in self.shots:
            if n_shot == self.test_n_shot:
                shots[str(n_shot)] = {k: v for k, v in test.items() if k != "shots"}
            else:
                shots[str(n_shot)] = self.results.pop(shot_stage(n_shot))
        test["shots"] = shots

    def history_state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run goes on: the history, the best and the latest validation."""
        return {"val_history": self.history, "best_val": self.best, "last_val": self.results.get("val")}

    def load_history_state(self, state: dict[str, Any] | None) -> None:
        """Restore what :meth:`history_state` saved (nothing saved: an empty history)."""
        state = state or {}
        self.history = list(state.get("val_history", []))
        self.best = state.get("best_val")
        if state.get("last_val") is not None:
            self.results["val"] = state["last_val"]


__all__ = ["EVAL_STAGES", "MONITOR_MODES", "EpisodeScores", "shot_stage"]
