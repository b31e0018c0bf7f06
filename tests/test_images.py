"""Every image becomes upright 8-bit RGB, or one clear ImageError."""

import numpy as np
import pytest
from PIL import Image

from transferkit.core.errors import ImageError
from transferkit.core.images import load_image


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_modes_are_converted(tmp_path):
    gray = _save(Image.new("L", (5, 4), 100), tmp_path / "gray.png")
    assert load_image(gray).mode == "RGB" and load_image(gray).getpixel((0, 0)) == (100, 100, 100)

    rgba = Image.new("RGBA", (3, 3), (255, 0, 0, 0))  # fully transparent: composited on white
    assert load_image(_save(rgba, tmp_path / "rgba.png")).getpixel((1, 1)) == (255, 255, 255)

    palette = Image.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert load_image(_save(palette, tmp_path / "p.png")).getpixel((0, 0)) == (10, 20, 30)

    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit white stays white
    pixel = load_image(_save(deep, tmp_path / "deep.png")).getpixel((0, 0))
    assert pixel == (255, 255, 255)
    mid = Image.fromarray(np.full((4, 4), 32896, np.uint16))
    assert load_image(_save(mid, tmp_path / "mid.png")).getpixel((0, 0)) == (128, 128, 128)

    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert load_image(_save(cmyk, tmp_path / "cmyk.jpg")).getpixel((0, 0))[0] > 250


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_image(path).size == (10, 30)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (200, 200)), tmp_path / "big.png")
    monkeypatch.setenv("TRANSFERKIT_MAX_PIXELS", "10000")
    with pytest.raises(ImageError, match="over the 10,000 px limit"):
        load_image(path)


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"hello", "not an image"), (None, "corrupt or truncated")],
)
def test_bad_files(tmp_path, content, reason):
    path = tmp_path / "x.png"
    if content is None:
        _save(Image.new("RGB", (64, 64), (1, 2, 3)), path)
        content = path.read_bytes()[:70]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(path)


def test_tiny_image(tmp_path):
    assert load_image(_save(Image.new("RGB", (1, 1)), tmp_path / "one.png")).size == (1, 1)
