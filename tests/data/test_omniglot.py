"""Omniglot: the real small background sets, and fake archives for the layouts and errors."""

from __future__ import annotations

import zipfile

import pytest
import torch

from fewshot.data.classes import SPLITS, ClassImages
from fewshot.data.errors import DataError
from fewshot.data.omniglot import Omniglot
from fewshot.data.source import DatasetSource
from tests.data.fakes import omniglot_files, write_files, write_zip
from tests.helpers import requires_omniglot

SMALL1 = "images_background_small1.zip"
ALPHABETS = [
    "Balinese",
    "Early_Aramaic",
    "Greek",
    "Japanese_(katakana)",
    "Korean",
    "Latin",
    "Sanskrit",
    "Tagalog",
]
FAKE = {"Greek": 3, "Latin": 2, "Korean": 2, "Tagalog": 2, "Early_Aramaic": 2}
FAKE_SPLIT = {"val_alphabets": ["Korean"], "test_alphabets": ["Tagalog"]}

real = [pytest.mark.omniglot, requires_omniglot]


def plain(splits: dict[str, ClassImages]) -> dict[str, torch.Tensor]:
    """``{character: images}`` of the unrotated classes of every split."""
    return {n: t for s in SPLITS for n, t in zip(splits[s].names, splits[s].images, strict=True) if "/rot" not in n}


def all_names(splits: dict[str, ClassImages]) -> list[str]:
    """Every class name, all splits together."""
    return [n for s in SPLITS for n in splits[s].names]


# --- the real data ---------------------------------------------------------------------------


@pytest.mark.omniglot
@requires_omniglot
def test_real_set_has_8_alphabets_242_characters_of_20_inverted_images(real_omniglot):
    characters = plain(real_omniglot)
    assert len(characters) == 242
    assert sorted({n.split("/")[0] for n in characters}) == ALPHABETS
    for images in characters.values():
        assert images.dtype == torch.uint8
        assert tuple(images.shape) == (20, 1, 28, 28)
    pixels = torch.stack(list(characters.values())).float()
    assert pixels.mean() < 50  # inverted: mostly background 0, ink bright
    assert pixels.amax() == 255


@pytest.mark.omniglot
@requires_omniglot
def test_real_rotations_in_every_split_make_968_classes(real_omniglot):
    assert sum(len(real_omniglot[s]) for s in SPLITS) == 968
    train = dict(zip(real_omniglot["train"].names, real_omniglot["train"].images, strict=True))
    base = train["Greek/character01"]
    for degrees in (90, 180, 270):
        expected = torch.rot90(base, k=degrees // 90, dims=(2, 3))
        assert torch.equal(train[f"Greek/character01/rot{degrees}"], expected)


@pytest.mark.omniglot
@requires_omniglot
def test_real_default_alphabet_split_is_disjoint_and_covers_every_character(real_omniglot, real_omniglot_root):
    split = Omniglot(real_omniglot_root).character_split()
    alphabets = {s: sorted({n.split("/")[0] for n in split[s]}) for s in SPLITS}
    assert alphabets == {
        "train": ["Balinese", "Greek", "Japanese_(katakana)", "Latin", "Sanskrit"],
        "val": ["Early_Aramaic"],
        "test": ["Korean", "Tagalog"],
    }
    names = [n for s in SPLITS for n in split[s]]
    assert len(names) == len(set(names)) == 242
    assert set(names) == set(plain(real_omniglot))


@pytest.mark.omniglot
@requires_omniglot
def test_real_character_split_is_deterministic(real_omniglot_root):
    def split(seed):
        return Omniglot(real_omniglot_root, split="character", split_seed=seed).character_split()

    first, again, other = split(3), split(3), split(4)
    assert first == again
    assert first != other
    assert [len(first[s]) for s in SPLITS] == [169, 25, 48]  # round(0.7 * 242), round(0.8 * 242) - 169
    assert len({n for s in SPLITS for n in first[s]}) == 242


@pytest.mark.omniglot
@requires_omniglot
def test_real_unpacked_folder_gives_the_same_tensors_as_the_zip(real_omniglot, real_omniglot_root, tmp_path):
    with zipfile.ZipFile(real_omniglot_root / SMALL1) as archive:
        archive.extractall(tmp_path)
    unpacked = plain(Omniglot(tmp_path, split="character").load())
    from_zip = plain(real_omniglot)
    assert len(unpacked) == 136
    for name, images in unpacked.items():
        assert torch.equal(images, from_zip[name]), name


@pytest.mark.omniglot
@requires_omniglot
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_real_zip_with_a_wrong_checksum_is_named(real_omniglot_root, tmp_path, damage):
    copy = tmp_path / SMALL1
    data = bytearray((real_omniglot_root / SMALL1).read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    copy.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"images_background_small1\.zip.*re-download"):
        Omniglot(tmp_path, split="character").load()


@pytest.mark.omniglot
@requires_omniglot
def test_real_unknown_alphabet_error_lists_the_alphabets_found(real_omniglot_root):
    with pytest.raises(DataError, match=r"Unknown Omniglot alphabets \['Klingon'\].*Balinese"):
        Omniglot(real_omniglot_root, test_alphabets=["Klingon"]).character_split()


# --- layouts on fake data --------------------------------------------------------------------


def test_is_a_dataset_source(tmp_path):
    source = Omniglot(tmp_path)
    assert isinstance(source, DatasetSource)
    assert source.name == "omniglot"


def test_reads_a_folder_of_zips_with_defaults(tmp_path):
    write_zip(tmp_path / "images_background.zip", omniglot_files(FAKE))
    splits = Omniglot(tmp_path).load()
    assert splits["val"].names == ("Early_Aramaic/character01", "Early_Aramaic/character02")
    assert sorted({n.split("/")[0] for n in splits["test"].names}) == ["Korean", "Tagalog"]
    assert len(splits["train"]) == 5
    assert splits["train"].image_shape == (1, 28, 28)
    assert set(splits["train"].counts) == {3}


def test_a_single_zip_an_unpacked_folder_and_torchvision_layout_agree(tmp_path):
    files = omniglot_files(FAKE)
    archive = write_zip(tmp_path / "zip" / "images_background.zip", files)
    write_files(tmp_path / "unpacked", files)
    write_files(tmp_path / "tv" / "omniglot-py", files)
    loads = [Omniglot(root, image_size=20).load() for root in (archive, tmp_path / "unpacked", tmp_path / "tv")]
    first = plain(loads[0])
    assert len(first) == 11
    for other in loads[1:]:
        assert plain(other).keys() == first.keys()
        assert all(torch.equal(plain(other)[n], first[n]) for n in first)


def test_images_are_inverted_so_ink_is_bright(tmp_path):
    write_zip(tmp_path / "o.zip", omniglot_files(FAKE))
    images = torch.cat(Omniglot(tmp_path).load()["train"].images).float()
    assert images.mean() < 60
    assert images.amax() == 255


def test_characters_in_two_archives_are_kept_once_from_the_first(tmp_path):
    first = omniglot_files({"Greek": 2, "Korean": 2}, top="images_background_small1", seed=1)
    second = omniglot_files({"Greek": 2, "Tagalog": 2, "Latin": 2}, top="images_background_small2", seed=2)
    del second["images_background_small2/Greek/character01/0001_01.png"]
    write_zip(tmp_path / "b.zip", second)
    write_zip(tmp_path / "a.zip", first)
    with pytest.warns(UserWarning, match="Greek/character01 differs"):
        splits = Omniglot(tmp_path, image_size=105, val_alphabets=["Korean"], test_alphabets=["Tagalog"]).load()
    characters = plain(splits)
    assert len(characters) == 8
    assert characters["Greek/character01"].shape[0] == 3
    inside_a = Omniglot(tmp_path / "a.zip", image_size=105, split="character", split_fractions=[0.5, 0.25, 0.25])
    greek = plain(inside_a.load())["Greek/character02"]
    assert torch.equal(characters["Greek/character02"], greek)


def test_an_unpacked_copy_next_to_its_zip_is_not_counted_twice(tmp_path):
    files = omniglot_files(FAKE)
    write_zip(tmp_path / "images_background.zip", files)
    write_files(tmp_path, files)
    assert len(plain(Omniglot(tmp_path).load())) == 11


def test_junk_files_are_ignored(tmp_path):
    files = omniglot_files(FAKE)
    files["images_background/Greek/character01/.DS_Store"] = b"junk"
    files["images_background/Greek/Thumbs.db"] = b"junk"
    files["__MACOSX/images_background/Greek/character01/._0001_01.png"] = b"junk"
    files["README.txt"] = b"not data"
    write_zip(tmp_path / "o.zip", files)
    assert len(plain(Omniglot(tmp_path).load())) == 11


def test_rotations_default_to_the_train_split_only(tmp_path):
    write_zip(tmp_path / "o.zip", omniglot_files(FAKE))
    splits = Omniglot(tmp_path, rotations=[0, 90, 180, 270]).load()
    assert len(splits["train"]) == 5 * 4
    assert "Greek/character01/rot270" in splits["train"].names
    assert len(splits["val"]) == 2 and len(splits["test"]) == 4
    rotated = Omniglot(tmp_path, rotations=[0, 180], rotate_splits=["val", "test"]).load()
    assert len(rotated["train"]) == 5 and len(rotated["val"]) == 4 and len(rotated["test"]) == 8


def test_character_split_follows_fractions_and_seed(tmp_path):
    write_zip(tmp_path / "o.zip", omniglot_files({"Greek": 10, "Latin": 10}))

    def split(seed):
        return Omniglot(tmp_path, split="character", split_fractions=[0.5, 0.25, 0.25], split_seed=seed)

    first = split(0).character_split()
    assert [len(first[s]) for s in SPLITS] == [10, 5, 5]
    assert first == split(0).character_split() != split(1).character_split()
    loaded = split(0).load()
    assert {s: list(loaded[s].names) for s in SPLITS} == first


def test_explicit_train_alphabets_drop_the_others(tmp_path):
    write_zip(tmp_path / "o.zip", omniglot_files(FAKE))
    split = Omniglot(tmp_path, train_alphabets=["Greek"], **FAKE_SPLIT).character_split()
    assert {n.split("/")[0] for n in split["train"]} == {"Greek"}


# --- errors ----------------------------------------------------------------------------------


def test_missing_root_says_how_to_set_it(tmp_path):
    with pytest.raises(DataError, match=r"not found; set data.source.root.*shared/data/omniglot"):
        Omniglot(tmp_path / "nowhere").load()


def test_root_without_omniglot_images(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="No Omniglot images"):
        Omniglot(tmp_path).load()


def test_alphabet_in_two_lists(tmp_path):
    write_zip(tmp_path / "o.zip", omniglot_files(FAKE))
    with pytest.raises(DataError, match="'Korean' is in both val_alphabets and test_alphabets"):
        Omniglot(tmp_path, val_alphabets=["Korean"], test_alphabets=["Korean", "Tagalog"]).load()


@pytest.mark.parametrize(
    "settings",
    [{"split": "drawer"}, {"rotations": [45]}, {"rotations": [0, 0]}, {"rotate_splits": ["dev"]}],
)
def test_bad_settings(tmp_path, settings):
    with pytest.raises(DataError):
        Omniglot(tmp_path, **settings)


def test_truncated_zip_is_named(tmp_path):
    archive = write_zip(tmp_path / "images_evaluation.zip", omniglot_files(FAKE))
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"images_evaluation\.zip is not a readable zip.*re-download"):
        Omniglot(tmp_path).load()


def test_damaged_member_names_archive_and_member(tmp_path):
    files = omniglot_files(FAKE)
    archive = write_zip(tmp_path / "o.zip", files)
    member = "images_background/Greek/character02/0002_02.png"
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
    data = bytearray(archive.read_bytes())
    data[info.header_offset + 30 + len(member.encode()) + 40] ^= 0xFF  # inside the stored PNG bytes
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"Cannot read {member} in .*o\.zip.*re-download"):
        Omniglot(tmp_path).load()


def test_corrupt_png_names_archive_and_member(tmp_path):
    files = omniglot_files(FAKE)
    member = "images_background/Latin/character01/0003_01.png"
    files[member] = files[member][:50]
    write_zip(tmp_path / "o.zip", files)
    with pytest.raises(DataError, match=rf"Cannot decode image {member} in .*o\.zip"):
        Omniglot(tmp_path).load()


def test_checksum_is_checked_by_file_name_and_can_be_turned_off(tmp_path):
    write_zip(tmp_path / SMALL1, omniglot_files(FAKE, top="images_background_small1"))
    with pytest.raises(DataError, match=r"images_background_small1\.zip is corrupt or incomplete.*re-download"):
        Omniglot(tmp_path).load()
    assert len(plain(Omniglot(tmp_path, verify_checksums=False).load())) == 11


@pytest.mark.parametrize("packed", [False, True])
def test_empty_character_folder_is_named(tmp_path, packed):
    files = omniglot_files(FAKE)
    empty = "images_background/Greek/character09"
    if packed:
        write_zip(tmp_path / "o.zip", files, dirs=[empty])
    else:
        write_files(tmp_path, files)
        (tmp_path / empty).mkdir()
    with pytest.raises(DataError, match=r"character09.* has no images; delete it or re-extract"):
        Omniglot(tmp_path).load()


def test_non_image_file_in_a_character_folder_is_named(tmp_path):
    files = omniglot_files(FAKE)
    files["images_background/Greek/character01/notes.txt"] = b"hello"
    write_files(tmp_path, files)
    with pytest.raises(DataError, match=r"character01/notes\.txt is not an image"):
        Omniglot(tmp_path).load()
