"""Episode invariants and determinism of the index-addressable sampler."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fewshot.data.classes import ClassImages
from fewshot.data.episode import collate_episodes
from fewshot.data.errors import DataError
from fewshot.data.sampler import EpisodeIndexSampler, EpisodeSampler, EpisodeSpec
from tests.conftest import random_classes


@pytest.fixture(scope="module")
def classes() -> ClassImages:
    return random_classes("c", n_classes=12, n_images=20)


def image_keys(images: torch.Tensor) -> list[bytes]:
    return [img.numpy().tobytes() for img in images]


def test_episode_has_n_distinct_classes_k_plus_q_each_and_relabelled(classes):
    spec = EpisodeSpec(5, 3, 4)
    sampler = EpisodeSampler(classes, spec, seed=1, split="test")
    for i in range(20):
        ep = sampler[i]
        assert ep.support_images.shape == (15, 1, 8, 8)
        assert ep.query_images.shape == (20, 1, 8, 8)
        assert ep.support_labels.tolist() == [c for c in range(5) for _ in range(3)]
        assert ep.query_labels.tolist() == [c for c in range(5) for _ in range(4)]
        class_ids, supports, queries = sampler.draw(i)
        assert len(set(class_ids.tolist())) == 5
        for s, q in zip(supports, queries):
            assert len(s) == 3 and len(q) == 4
            assert not set(s.tolist()) & set(q.tolist())
        # the images really come from the drawn classes, in label order
        for label, c in enumerate(class_ids):
            expected = classes.images[c][torch.from_numpy(supports[label])]
            assert torch.equal(ep.support_images[label * 3 : label * 3 + 3], expected)


def test_support_and_query_images_are_disjoint(classes):
    sampler = EpisodeSampler(classes, EpisodeSpec(5, 5, 10), seed=0, split="train")
    ep = sampler[3]
    # random images are unique with overwhelming probability, so equal bytes = same image
    assert not set(image_keys(ep.support_images)) & set(image_keys(ep.query_images))


def test_one_shot_support_is_prefix_of_five_shot_support(classes):
    one = EpisodeSampler(classes, EpisodeSpec(5, 1, 15), seed=0, split="test")
    five = EpisodeSampler(classes, EpisodeSpec(5, 5, 15), seed=0, split="test")
    for i in range(10):
        e1, e5 = one[i], five[i]
        assert torch.equal(e1.query_images, e5.query_images)
        assert torch.equal(e1.support_images, e5.with_shots(1).support_images)
        assert torch.equal(e5.with_shots(1).support_labels, e1.support_labels)


def test_random_access_equals_sequential_access(classes):
    sampler = EpisodeSampler(classes, EpisodeSpec(4, 2, 3), seed=5, split="val")
    sequential = [sampler[i] for i in range(8)]
    again = EpisodeSampler(classes, EpisodeSpec(4, 2, 3), seed=5, split="val")
    for i in (7, 2, 5, 0):
        assert torch.equal(again[i].support_images, sequential[i].support_images)
        assert torch.equal(again[i].query_images, sequential[i].query_images)


def test_episodes_depend_on_seed_split_and_index(classes):
    base = EpisodeSampler(classes, EpisodeSpec(5, 1, 5), seed=0, split="test")
    other_seed = EpisodeSampler(classes, EpisodeSpec(5, 1, 5), seed=1, split="test")
    other_split = EpisodeSampler(classes, EpisodeSpec(5, 1, 5), seed=0, split="val")
    assert not torch.equal(base[0].query_images, base[1].query_images)
    assert not torch.equal(base[0].query_images, other_seed[0].query_images)
    assert not torch.equal(base[0].query_images, other_split[0].query_images)


FINGERPRINT_SCRIPT = """
import torch
from fewshot.data.classes import ClassImages
from fewshot.data.sampler import EpisodeSampler, EpisodeSpec
g = torch.Generator().manual_seed(0)
classes = ClassImages.from_mapping(
    {f"c{i:03d}": torch.randint(0, 256, (20, 1, 8, 8), generator=g, dtype=torch.uint8) for i in range(12)})
print(EpisodeSampler(classes, EpisodeSpec(5, 1, 15), seed=0, split="test").fingerprint(50))
"""


def test_test_episodes_identical_across_processes(classes):
    here = EpisodeSampler(classes, EpisodeSpec(5, 1, 15), seed=0, split="test").fingerprint(50)
    out = subprocess.run([sys.executable, "-c", FINGERPRINT_SCRIPT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here
    # and the fingerprint does change with the episodes
    assert EpisodeSampler(classes, EpisodeSpec(5, 1, 15), seed=1, split="test").fingerprint(50) != here


def test_class_order_comes_from_sorted_names_not_insertion_order():
    g = torch.Generator().manual_seed(0)
    tensors = {f"k{i}": torch.randint(0, 256, (6, 1, 4, 4), generator=g, dtype=torch.uint8) for i in range(6)}
    forward = ClassImages.from_mapping(tensors)
    backward = ClassImages.from_mapping(dict(reversed(list(tensors.items()))))
    a = EpisodeSampler(forward, EpisodeSpec(3, 1, 2), 0, "train")[4]
    b = EpisodeSampler(backward, EpisodeSpec(3, 1, 2), 0, "train")[4]
    assert torch.equal(a.support_images, b.support_images)


def test_collate_stacks_meta_batch(classes):
    sampler = EpisodeSampler(classes, EpisodeSpec(5, 2, 3), seed=0, split="train")
    batch = collate_episodes([sampler[0], sampler[1], sampler[2]])
    assert batch.support_images.shape == (3, 10, 1, 8, 8)
    assert batch.query_labels.shape == (3, 15)
    assert batch.index.tolist() == [0, 1, 2]
    assert batch.batch_size == 3 and batch.n_shot == 2 and batch.n_query == 3
    assert torch.equal(batch.unbatch()[1].query_images, sampler[1].query_images)
    assert batch.with_shots(1).support_images.shape == (3, 5, 1, 8, 8)


def test_index_sampler_advances_per_epoch_for_training_only():
    train = EpisodeIndexSampler(4, advance_per_epoch=True)
    evaluation = EpisodeIndexSampler(4, advance_per_epoch=False)
    assert list(train) == [0, 1, 2, 3]
    train.set_epoch(2)
    evaluation.set_epoch(2)
    assert list(train) == [8, 9, 10, 11]
    assert list(evaluation) == [0, 1, 2, 3]
    assert len(train) == 4


def test_n_way_larger_than_classes_raises_clear_error(classes):
    with pytest.raises(DataError, match=r"n_way=20 is larger than the 12 classes of the 'test' split.*lower n_way"):
        EpisodeSampler(classes, EpisodeSpec(20, 1, 5), seed=0, split="test")


def test_shots_plus_queries_larger_than_class_raises_clear_error():
    counts = {"a": 20, "b": 20, "c": 7}
    classes = ClassImages.from_mapping({k: torch.zeros(n, 1, 4, 4, dtype=torch.uint8) for k, n in counts.items()})
    with pytest.raises(DataError, match=r"5 \+ 5 = 10 is larger than the 7 images of class 'c'.*at most 7"):
        EpisodeSampler(classes, EpisodeSpec(3, 5, 5), seed=0, split="train")


@pytest.mark.parametrize("field,value", [("n_way", 0), ("n_shot", -1), ("n_query", 0), ("n_way", 1), ("n_shot", 1.5)])
def test_non_positive_episode_sizes_raise_clear_error(field, value):
    kwargs = {"n_way": 5, "n_shot": 1, "n_query": 15, field: value}
    with pytest.raises(DataError, match=field):
        EpisodeSpec(**kwargs)


def test_draw_uses_numpy_only_from_its_own_generator(classes):
    np.random.seed(0)
    a = EpisodeSampler(classes, EpisodeSpec(5, 1, 5), 0, "test")[0]
    np.random.seed(123)
    torch.manual_seed(123)
    b = EpisodeSampler(classes, EpisodeSpec(5, 1, 5), 0, "test")[0]
    assert torch.equal(a.query_images, b.query_images)
