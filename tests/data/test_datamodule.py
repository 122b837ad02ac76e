"""The episodic datamodule: loaders, shapes, normalisation, classification batches, errors."""

import pytest
import torch

from fewshot.data.classes import ClassImages
from fewshot.data.classification import LabelledImages
from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.errors import DataError
from tests.conftest import random_classes


class FakeSource:
    name = "fake"

    def __init__(self, size: int = 8, channels: int = 1) -> None:
        self.size, self.channels = size, channels

    def load(self) -> dict[str, ClassImages]:
        return {
            split: random_classes(prefix, n, 10, size=self.size, channels=self.channels, seed=i)
            for i, (split, prefix, n) in enumerate([("train", "a", 12), ("val", "b", 6), ("test", "c", 6)])
        }


def make(**kwargs) -> EpisodicDataModule:
    args = dict(
        source=FakeSource(),
        image_size=8,
        channels=1,
        n_way=3,
        n_shot=2,
        n_query=4,
        train_episodes=5,
        val_episodes=4,
        test_episodes=7,
    )
    args.update(kwargs)
    dm = EpisodicDataModule(**args)
    dm.setup()
    return dm


def test_loaders_serve_meta_batches_of_the_configured_shapes():
    dm = make(meta_batch_size=2, train_n_way=4, train_n_query=1, eval_batch_size=3)
    train = next(iter(dm.train_dataloader()))
    assert train.support_images.shape == (2, 8, 1, 8, 8) and train.query_images.shape == (2, 4, 1, 8, 8)
    assert train.support_images.dtype == torch.uint8
    test_batches = list(dm.test_dataloader())
    assert [b.batch_size for b in test_batches] == [3, 3, 1]
    assert torch.cat([b.index for b in test_batches]).tolist() == list(range(7))
    assert len(dm.train_dataloader()) == 3


def test_training_episodes_change_every_epoch_but_evaluation_episodes_do_not():
    dm = make()
    train, val = dm.train_dataloader(), dm.val_dataloader()
    first_train = next(iter(train)).index.tolist()
    first_val = next(iter(val)).index.tolist()
    train.sampler.set_epoch(1)
    val.sampler.set_epoch(1)
    assert next(iter(train)).index.tolist() == [5]
    assert first_train == [0] and next(iter(val)).index.tolist() == first_val


def test_normalisation_scales_and_standardises_on_transfer():
    dm = make(mean=[0.5], std=[0.25])
    batch = next(iter(dm.val_dataloader()))
    out = dm.on_after_batch_transfer(dm.transfer_batch_to_device(batch, torch.device("cpu"), 0), 0)
    expected = (batch.support_images.float() / 255 - 0.5) / 0.25
    assert out.support_images.dtype == torch.float32
    assert torch.allclose(out.support_images, expected)


def test_tuning_episodes_are_validation_episodes_after_the_scored_ones_normalised():
    dm = make(mean=[0.5], std=[0.25])
    tuning = list(dm.tuning_episodes(3))
    assert [index for index, _ in tuning] == [4, 5, 6]
    assert [i for b in dm.val_dataloader() for i in b.index.tolist()] == [0, 1, 2, 3]  # the scored ones
    raw = dm.samplers["val"][4]
    episode = tuning[0][1]
    assert episode.support_images.dtype == torch.float32
    assert torch.allclose(episode.support_images, (raw.support_images.float() / 255 - 0.5) / 0.25)
    assert torch.equal(episode.query_labels, raw.query_labels)


def test_image_batches_cover_every_training_image_once_per_epoch():
    dm = make(image_batch_size=16)
    dm.train_batches = "images"
    loader = dm.train_dataloader()
    batches = list(loader)
    assert all(isinstance(b, LabelledImages) for b in batches)
    labels = torch.cat([b.labels for b in batches])
    assert labels.numel() == 120 and torch.bincount(labels).tolist() == [10] * 12
    order_epoch0 = torch.cat([b.labels for b in batches])
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat([b.labels for b in loader]), order_epoch0)
    assert dm.n_train_classes == 12


def class_balanced(**kwargs) -> EpisodicDataModule:
    """A datamodule serving class-balanced image batches (12 training classes of 10 images)."""
    dm = make(image_sampling="class_balanced", **kwargs)
    dm.train_batches = "images"
    return dm


def label_counts(batch: LabelledImages) -> list[int]:
    """How many images of each of the 12 training classes a batch holds."""
    return torch.bincount(batch.labels, minlength=12).tolist()


@pytest.mark.parametrize("per_class", [1, 2, 5])
def test_a_class_balanced_batch_of_every_drawn_image_holds_each_class_images_per_class_times(per_class):
    dm = class_balanced(images_per_class=per_class, image_batch_size=12 * per_class)
    batches = list(dm.train_dataloader())
    assert len(batches) == 10 // per_class  # an epoch is ceil(120 images / batch size) batches
    assert all(label_counts(b) == [per_class] * 12 for b in batches)


def test_class_balanced_batches_take_a_subset_of_five_drawn_images_per_class():
    dm = class_balanced(image_batch_size=16)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 8 and all(b.labels.numel() == 16 for b in batches)  # 120 images / 16, all full
    assert max(max(label_counts(b)) for b in batches) <= 5
    indices = loader.sampler.epoch_indices()
    assert all(len(set(indices[i : i + 16])) == 16 for i in range(0, 128, 16))  # no image twice in a batch
    # over many batches every class is drawn about equally often: 16/12 images per batch
    sampler = loader.sampler
    labels = torch.cat([torch.from_numpy(sampler.batch_indices(b)) for b in range(300)])
    per_class = torch.bincount(torch.div(labels, 10, rounding_mode="floor"), minlength=12).float() / 300
    assert torch.allclose(per_class, torch.full((12,), 16 / 12), atol=0.15)


def test_class_balanced_batches_follow_the_seed_and_change_every_epoch():
    def labels(dm: EpisodicDataModule, epoch: int) -> torch.Tensor:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b.labels for b in loader])

    same, other = class_balanced(image_batch_size=16), class_balanced(image_batch_size=16, seed=1)
    reference = class_balanced(image_batch_size=16)
    assert torch.equal(labels(same, 0), labels(reference, 0))
    assert torch.equal(labels(same, 3), labels(reference, 3))
    assert not torch.equal(labels(same, 0), labels(other, 0))
    assert not torch.equal(labels(same, 0), labels(same, 1))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            dict(image_sampling="random"),
            r"data.image_sampling must be one of \('shuffle', 'class_balanced'\), got 'random'",
        ),
        (dict(images_per_class=0), r"data.images_per_class must be a positive integer, got 0"),
    ],
)
def test_bad_image_sampling_settings_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        make(**setting)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(images_per_class=11), r"data.images_per_class=11 is more than the 10 images of the smallest"),
        (dict(images_per_class=2, image_batch_size=25), r"data.image_batch_size=25 is more than the 24 images drawn"),
    ],
)
def test_class_balanced_batches_that_cannot_be_drawn_are_refused(setting, message):
    dm = class_balanced(**setting)
    with pytest.raises(DataError, match=message):
        dm.train_dataloader()


def test_train_on_val_trains_on_the_training_and_validation_classes_and_validates_on_the_same():
    dm = make(train_on_val=True)
    assert dm.n_train_classes == 12 + 6 and len(dm.splits["val"]) == 6
    assert dm.samplers["train"].classes.names[-6:] == dm.splits["val"].names  # b000..b005 after a000..a011
    drawn = {dm.samplers["train"].classes.names[c] for i in range(30) for c in dm.samplers["train"].draw(i)[0]}
    assert any(name.startswith("b") for name in drawn) and any(name.startswith("a") for name in drawn)
    dm.train_batches = "images"
    labels = torch.cat([b.labels for b in dm.train_dataloader()])
    assert torch.bincount(labels).tolist() == [10] * 18
    assert make().n_train_classes == 12


def test_train_on_val_must_be_a_bool():
    with pytest.raises(DataError, match=r"data.train_on_val must be true or false, got 'yes'"):
        make(train_on_val="yes")


def test_declared_shape_must_match_the_images():
    with pytest.raises(DataError, match=r"set data.channels and data.image_size"):
        make(image_size=28)


def test_mean_with_wrong_number_of_channels_is_rejected():
    with pytest.raises(DataError, match="data.mean has 3 values but the images have 1 channels"):
        make(mean=[0.5, 0.5, 0.5])


def test_non_positive_episode_counts_are_rejected():
    with pytest.raises(DataError, match=r"data.test_episodes must be a positive integer, got 0; set it >= 1"):
        make(test_episodes=0)
