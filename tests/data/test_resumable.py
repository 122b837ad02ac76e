"""The training loader's position: saved in checkpoints, it makes a resumed epoch continue at its next batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from fewshot.data.classification import ClassBalancedIndexSampler, ShuffledIndexSampler
from fewshot.data.resumable import ResumableLoader
from fewshot.data.sampler import EpisodeIndexSampler


class Indices(Dataset):
    """Item i is i (as a tensor), so a batch shows which indices it holds."""

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


def loader(sampler, batch_size: int = 2, **kwargs) -> ResumableLoader:
    """A ResumableLoader over ``sampler`` serving index batches."""
    return ResumableLoader(Indices(), batch_size=batch_size, sampler=sampler, **kwargs)


def batches(iterator, n: int) -> list[list[int]]:
    """The next ``n`` batches as lists of indices."""
    return [next(iterator).tolist() for _ in range(n)]


def test_a_loader_restored_from_a_mid_epoch_state_serves_the_rest_of_that_epoch_then_whole_ones():
    first = loader(EpisodeIndexSampler(8, advance_per_epoch=True))
    first.sampler.set_epoch(1)
    assert batches(iter(first), 2) == [[8, 9], [10, 11]]
    state = first.state_dict()
    assert state == {"epoch": 1, "position": 4}
    second = loader(EpisodeIndexSampler(8, advance_per_epoch=True))
    second.load_state_dict(state)
    second.sampler.set_epoch(1)  # Lightning sets the restored epoch
    assert len(second) == 4  # the epoch's length is unchanged: Lightning counts the restored batches in it
    assert [b.tolist() for b in second] == [[12, 13], [14, 15]]
    second.sampler.set_epoch(2)
    assert [b.tolist() for b in second] == [[16, 17], [18, 19], [20, 21], [22, 23]]


def test_the_position_is_the_training_loops_count_when_the_datamodule_gives_it():
    trained = {"batches": 1}
    served = loader(EpisodeIndexSampler(8, advance_per_epoch=True), trained_batches=lambda: trained["batches"])
    iterator = iter(served)
    batches(iterator, 2)  # the second batch is fetched but not trained on yet
    assert served.state_dict() == {"epoch": 0, "position": 2}


def test_a_state_saved_at_an_epochs_end_continues_with_the_next_epoch():
    finished = loader(EpisodeIndexSampler(4, advance_per_epoch=True))
    list(finished)
    assert finished.state_dict() == {"epoch": 0, "position": 4}
    restored = loader(EpisodeIndexSampler(4, advance_per_epoch=True))
    restored.load_state_dict(finished.state_dict())
    assert restored.sampler.epoch == 1
    assert [b.tolist() for b in restored] == [[4, 5], [6, 7]]


def test_a_position_for_another_epoch_than_lightnings_is_dropped():
    restored = loader(EpisodeIndexSampler(4, advance_per_epoch=True))
    restored.load_state_dict({"epoch": 0, "position": 2})
    restored.sampler.set_epoch(3)
    assert [b.tolist() for b in restored] == [[12, 13], [14, 15]]


def test_shuffled_image_batches_resume_in_the_same_permutation():
    whole = [b.tolist() for b in loader(ShuffledIndexSampler(10, seed=3), batch_size=3)]
    first = loader(ShuffledIndexSampler(10, seed=3), batch_size=3)
    assert batches(iter(first), 2) == whole[:2]
    rest = loader(ShuffledIndexSampler(10, seed=3), batch_size=3)
    rest.load_state_dict(first.state_dict())
    assert [b.tolist() for b in rest] == whole[2:]


def test_class_balanced_image_batches_resume_at_the_next_batch_of_the_same_draws():
    def sampler() -> ClassBalancedIndexSampler:
        return ClassBalancedIndexSampler([10, 10, 7], per_class=5, batch_size=4, seed=3)  # 27 images: 7 batches

    whole = loader(sampler(), batch_size=4)
    whole.sampler.set_epoch(2)
    epoch = [b.tolist() for b in whole]
    assert len(epoch) == 7 and all(len(b) == 4 for b in epoch)
    first = loader(sampler(), batch_size=4)
    first.sampler.set_epoch(2)
    assert batches(iter(first), 3) == epoch[:3]
    assert first.state_dict() == {"epoch": 2, "position": 12}
    rest = loader(sampler(), batch_size=4)
    rest.load_state_dict(first.state_dict())
    rest.sampler.set_epoch(2)
    assert [b.tolist() for b in rest] == epoch[3:]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_iterator_created_before_set_epoch_serves_the_epoch_set(num_workers):
    # Lightning creates the iterator of a fit's first epoch (also a resumed fit's) before set_epoch
    served = loader(EpisodeIndexSampler(4, advance_per_epoch=True), num_workers=num_workers)
    iterator = iter(served)
    served.sampler.set_epoch(2)
    assert batches(iterator, 2) == [[8, 9], [10, 11]]


def test_a_loader_over_another_sampler_is_refused():
    with pytest.raises(TypeError, match="needs an EpochSampler"):
        ResumableLoader(Indices(), batch_size=2, sampler=range(4))
