"""Every Pillow mode decodes to what the image shows; flat images are named (issue 17, item 3)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.errors import DataError
from fewshot.data.folder import ImageFolder
from fewshot.data.images import decode_image, decode_many, warn_constant_images
from fewshot.predict import ImageFormat, read_images

SIZE = 16


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def stroke_mask() -> np.ndarray:
    """A diagonal band and a bar: the 'ink' of the drawings below."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for i in range(SIZE):
        mask[i, max(0, i - 1) : i + 2] = True
    mask[2:4, 8:14] = True
    return mask


def ink_on_transparent(mode: str) -> Image.Image:
    """Black ink on a fully transparent (black) sheet, as drawing programs export it."""
    alpha = np.where(stroke_mask(), 255, 0).astype(np.uint8)
    black = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if mode == "LA":
        return Image.fromarray(np.stack([black, alpha], -1), "LA")
    return Image.fromarray(np.stack([black, black, black, alpha], -1), "RGBA")


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
@pytest.mark.parametrize("channels", [1, 3])
def test_black_ink_on_transparent_decodes_to_a_visible_stroke_on_white(mode, channels):
    decoded = decode_image(encode(ink_on_transparent(mode)), "ink.png", channels, None)
    mask = torch.from_numpy(stroke_mask())
    assert decoded.shape == (channels, SIZE, SIZE)
    assert (decoded[:, mask] == 0).all() and (decoded[:, ~mask] == 255).all()


def test_a_palette_image_with_a_transparent_entry_is_composited_onto_white():
    indices = np.where(stroke_mask(), 1, 0).astype(np.uint8)
    img = Image.fromarray(indices, "P")
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.info["transparency"] = 0  # index 0 (black) is transparent
    decoded = decode_image(encode(img), "p.png", 3, None)
    mask = torch.from_numpy(stroke_mask())
    assert (decoded[:, ~mask] == 255).all()
    assert decoded[:, mask].T.unique(dim=0).tolist() == [[200, 30, 30]]


def test_a_palette_image_without_transparency_keeps_its_colours():
    img = Image.fromarray(np.where(stroke_mask(), 1, 0).astype(np.uint8), "P")
    img.putpalette([10, 20, 30, 240, 250, 5] + [0] * 762)
    decoded = decode_image(encode(img), "p.png", 3, None)
    assert decoded[:, 0, 0].tolist() == [240, 250, 5] and decoded[:, 0, SIZE - 1].tolist() == [10, 20, 30]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_a_16_bit_gradient_keeps_its_gradient_scaled_to_8_bits(mode):
    ramp = np.tile(np.linspace(0, 65535, SIZE), (SIZE, 1))
    if mode == "I":
        img = Image.fromarray(ramp.astype(np.int32), "I")
    else:
        dtype = "<u2" if mode == "I;16" else ">u2"
        img = Image.frombytes(mode, (SIZE, SIZE), ramp.astype(dtype).tobytes())
    data = encode(img, "PNG" if mode == "I;16" else "TIFF")
    decoded = decode_image(data, "deep.png", 1, None)[0].float()
    expected = torch.from_numpy(np.rint(ramp / 257.0)).float()
    assert torch.allclose(decoded, expected, atol=1)
    assert decoded[:, 0].max() <= 1 and decoded[:, -1].min() >= 254  # a full-range ramp, not clipped to white


def test_a_32_bit_image_of_8_bit_values_is_taken_as_0_to_255():
    values = np.tile(np.arange(SIZE) * 16, (SIZE, 1)).astype(np.int32)
    decoded = decode_image(encode(Image.fromarray(values, "I"), "TIFF"), "i.tif", 1, None)[0]
    assert decoded.tolist() == values.tolist()


def test_cmyk_decodes_to_its_rgb_colours():
    img = Image.new("CMYK", (SIZE, SIZE), (255, 0, 0, 0))  # pure cyan
    img.paste((0, 0, 0, 255), (0, 0, SIZE // 2, SIZE))  # black left half
    decoded = decode_image(encode(img, "JPEG"), "cmyk.jpg", 3, None).int()
    assert (decoded[:, :, -2:] - torch.tensor([0, 255, 255]).view(3, 1, 1)).abs().max() <= 8
    assert decoded[:, :, :2].max() <= 8


def test_training_data_with_blank_images_warns_naming_the_files(tmp_path):
    for c in range(6):
        for i in range(2):
            path = tmp_path / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if c == 0 and i == 1:
                Image.new("L", (SIZE, SIZE), 255).save(path)  # blank
            else:
                Image.fromarray(np.random.default_rng(c * 10 + i).integers(0, 256, (SIZE, SIZE), np.uint8)).save(path)
    blank = tmp_path / "class0" / "1.png"
    with pytest.warns(UserWarning, match=f"1 images decode to a single flat colour.*{blank}"):
        ImageFolder(tmp_path, channels=1, image_size=SIZE, split_fractions=(0.34, 0.33, 0.33), workers=1).load()


def test_warn_constant_images_lists_the_first_files_and_counts_the_rest():
    images = [torch.zeros(1, 2, 2)] * 7 + [torch.arange(4.0).view(1, 2, 2)]
    names = [f"f{i}.png" for i in range(8)]
    with pytest.warns(UserWarning, match=r"7 query images .*f0.png, f1.png, f2.png, f3.png, f4.png and 2 more"):
        assert warn_constant_images(names, images, "query images") == names[:7]


def test_varied_images_raise_no_warning(recwarn):
    images = decode_many([("a.png", lambda: encode(ink_on_transparent("LA")))], 1, None)
    assert len(images) == 1 and not [w for w in recwarn if "flat colour" in str(w.message)]


def test_predict_warns_about_blank_query_images_naming_them(tmp_path):
    (tmp_path / "query").mkdir()
    drawn, blank = tmp_path / "query" / "drawn.png", tmp_path / "query" / "blank.png"
    ink_on_transparent("LA").save(drawn)
    Image.new("LA", (SIZE, SIZE), (255, 0)).save(blank)  # white ink, nothing opaque: blank on white
    image_format = ImageFormat(image_size=SIZE, channels=1, invert=False, mean=None, std=None)
    with pytest.warns(UserWarning, match=f"1 query images decode to a single flat colour.*{blank}") as record:
        read_images([drawn, blank], image_format, "query images")
    assert str(drawn) not in " ".join(str(w.message) for w in record)


def test_an_image_larger_than_pillow_decodes_safely_is_one_line_naming_it(monkeypatch):
    data = encode(Image.new("L", (64, 64), 128))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: Pillow's DecompressionBombError
    with pytest.raises(DataError, match=r"Cannot decode image huge.png: it has more pixels than Pillow decodes safely"):
        decode_image(data, "huge.png", 1, SIZE)
