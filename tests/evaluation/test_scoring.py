"""Episode scoring and the non-finite loss policy, the components every method shares."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.data.episode import Episode
from fewshot.evaluation.scoring import EpisodeScores, shot_stage
from fewshot.methods.base import EpisodicMethod
from fewshot.run.nonfinite import NonFiniteLossError, NonFiniteLossPolicy


def batch(indices: list[int], n_way: int = 2, n_shot: int = 3, n_query: int = 2) -> Episode:
    """A meta-batch of tiny episodes with the given indices (images are zeros)."""
    b = len(indices)
    labels = torch.arange(n_way).repeat_interleave(n_shot).expand(b, -1)
    query_labels = torch.arange(n_way).repeat_interleave(n_query).expand(b, -1)
    return Episode(
        torch.zeros(b, n_way * n_shot, 1, 2, 2),
        labels.clone(),
        torch.zeros(b, n_way * n_query, 1, 2, 2),
        query_labels.clone(),
        n_way,
        torch.tensor(indices),
    )


def logits_right_on(episode: Episode, right_per_episode: list[int]) -> torch.Tensor:
    """Logits that classify exactly the first ``right_per_episode[b]`` queries of episode b right."""
    labels = episode.query_labels
    wrong = (labels + 1) % episode.n_way
    chosen = torch.stack(
        [torch.where(torch.arange(labels.shape[1]) < r, labels[b], wrong[b]) for b, r in enumerate(right_per_episode)]
    )
    return torch.nn.functional.one_hot(chosen, episode.n_way).float()


def test_summary_is_sorted_by_episode_index_with_mean_and_ci():
    scores = EpisodeScores()
    second = batch([3, 1])
    first = batch([0, 2])
    scores.record("val", logits_right_on(second, [4, 2]), second)  # episode 3: 1.0, episode 1: 0.5
    scores.record("val", logits_right_on(first, [0, 3]), first)  # episode 0: 0.0, episode 2: 0.75
    summary = scores.summarise("val")
    assert summary["episode_index"] == [0, 1, 2, 3]
    assert summary["episode_acc"] == [0.0, 0.5, 0.75, 1.0]
    assert summary["acc"] == pytest.approx(0.5625)
    sd = torch.tensor([0.0, 0.5, 0.75, 1.0]).std().item()
    assert summary["ci95"] == pytest.approx(1.96 * sd / 2, rel=1e-3)
    assert summary["episodes"] == 4 and scores.results["val"] is summary


def test_the_summary_loss_is_the_mean_query_cross_entropy_of_the_logits():
    scores = EpisodeScores()
    episode = batch([3, 1])
    scores.record("val", logits_right_on(episode, [4, 2]), episode)
    # one-hot logits of 2 classes: a right query costs ln(1 + e^-1) = 0.31326, a wrong one ln(1 + e) = 1.31326
    assert scores.summarise("val")["loss"] == pytest.approx((0.31326 + (0.31326 + 1.31326) / 2) / 2, abs=1e-5)


def test_monitor_val_loss_keeps_the_lowest_loss_as_the_best_validation():
    scores = EpisodeScores()
    scores.select_best_by("val/loss")
    episode = batch([0])
    for step, right, scale in [(10, 4, 0.01), (20, 3, 1.0), (30, 2, 1.0)]:  # accuracy 1.0, 0.75, 0.5
        scores.record("val", scale * logits_right_on(episode, [right]), episode)
        scores.summarise("val")
        scores.note_validation(step, step // 10, cpu_s=None)
    losses = [h["loss"] for h in scores.history]
    assert losses == pytest.approx([0.68816, (3 * 0.31326 + 1.31326) / 4, (0.31326 + 1.31326) / 2], abs=1e-5)
    assert scores.best["step"] == 20 and scores.best["acc"] == 0.75  # not the most accurate (step 10)
    with pytest.raises(ValueError, match=r"monitor must be one of \['val/acc', 'val/loss'\], got 'acc'"):
        scores.select_best_by("acc")


def test_summarise_resets_the_stage():
    scores = EpisodeScores()
    episode = batch([0])
    scores.record("val", logits_right_on(episode, [4]), episode)
    scores.summarise("val")
    scores.record("val", logits_right_on(episode, [0]), episode)
    assert scores.summarise("val")["episode_acc"] == [0.0]


def test_history_keeps_every_validation_and_the_best_one():
    scores = EpisodeScores()
    episode = batch([0])
    for step, right in [(10, 2), (20, 4), (30, 3)]:
        scores.record("val", logits_right_on(episode, [right]), episode)
        scores.summarise("val")
        scores.note_validation(step, step // 10, cpu_s=step * 1.5 if step > 10 else None)
    assert [h["acc"] for h in scores.history] == [0.5, 1.0, 0.75]
    assert "cpu_s" not in scores.history[0] and scores.history[1]["cpu_s"] == 30.0
    assert scores.best["step"] == 20 and scores.best["acc"] == 1.0 and scores.best["episode_acc"] == [1.0]
    restored = EpisodeScores()
    restored.load_history_state(scores.history_state())
    assert restored.history == scores.history and restored.best == scores.best
    restored.load_history_state(None)  # a checkpoint from before histories were kept
    assert restored.history == [] and restored.best is None


def test_test_episodes_are_rescored_with_each_other_shot_count():
    scores = EpisodeScores()
    scores.rescore_with_shots([5, 1, 1])
    assert scores.shots == (1, 5)
    episode = batch([0, 1], n_shot=5)
    stages = list(scores.test_stages(episode))
    assert [s for s, _ in stages] == ["test", shot_stage(1)]
    assert stages[1][1].n_shot == 1 and stages[0][1] is episode
    for stage, scored in stages:
        scores.record(stage, logits_right_on(scored, [4, 4] if stage == "test" else [2, 2]), scored)
    scores.summarise("test")
    for stage in scores.rescored_stages():
        scores.summarise(stage)
    scores.attach_shots()
    test = scores.results["test"]
    assert test["acc"] == 1.0
    assert test["shots"]["5"]["acc"] == 1.0 and "shots" not in test["shots"]["5"]
    assert test["shots"]["1"]["acc"] == 0.5
    assert shot_stage(1) not in scores.results


@pytest.mark.parametrize("shots", [[0], [2, -1]])
def test_non_positive_shot_counts_are_refused(shots):
    with pytest.raises(ValueError, match="eval.shots must be positive shot counts"):
        EpisodeScores().rescore_with_shots(shots)


def test_stop_policy_raises_with_the_fix_and_skip_policy_counts_episodes():
    nan = torch.tensor(math.nan)
    with pytest.raises(NonFiniteLossError, match=r"at step 7.*set nonfinite_loss=skip"):
        NonFiniteLossPolicy().check(nan, 7)
    with pytest.raises(NonFiniteLossError) as caught:
        NonFiniteLossPolicy(skippable=False).check(torch.tensor(math.inf), 0)
    assert "nonfinite_loss=skip" not in str(caught.value)
    NonFiniteLossPolicy().check(torch.tensor(1.0), 0)  # finite: nothing happens
    skip = NonFiniteLossPolicy(mode="skip")
    assert not skip.should_skip(torch.tensor(1.0), 4)
    assert skip.should_skip(nan, 4) and skip.should_skip(nan, 2) and skip.skipped == 6
    assert not NonFiniteLossPolicy(mode="stop").should_skip(nan, 4)


class Constant(EpisodicMethod):
    """Always predicts class 0, and reports how many times a stage was summarised."""

    def __init__(self) -> None:
        super().__init__(optimizer=None)
        self.summarised: list[str] = []

    def forward(self, episode: Episode) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.zeros_like(episode.query_labels), episode.n_way).float()

    def stage_metrics(self, stage: str) -> dict:
        self.summarised.append(stage)
        return {"extra": stage}


def test_a_method_adds_per_stage_metrics_through_the_hook(monkeypatch):
    method = Constant()
    monkeypatch.setattr(method, "log", lambda *args, **kwargs: None)
    episode = batch([0, 1])
    method.validation_step(episode, 0)
    summary = method.summarise_stage("val")
    assert summary["extra"] == "val" and summary["acc"] == 0.5 and method.scores.results["val"]["extra"] == "val"
    assert method.summarised == ["val"]


def test_the_skippable_flag_follows_the_methods_training_step():
    class OwnStep(Constant):
        def training_step(self, episode, batch_idx):
            return None

    assert Constant().nonfinite.skippable and not OwnStep().nonfinite.skippable
