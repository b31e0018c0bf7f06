"""Safe image decoding: every file becomes an upright 8-bit RGB image or one clear ImageError.

Grayscale, 16-bit, palette, RGBA/LA (composited on white), CMYK and EXIF-rotated images are
converted; files over the pixel limit are refused before decoding (decompression bombs).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferkit.core.errors import ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; TRANSFERKIT_MAX_PIXELS overrides


def max_pixels() -> int:
    """The decompression-bomb guard's limit: $TRANSFERKIT_MAX_PIXELS, else 64 million pixels."""
    value = os.environ.get("TRANSFERKIT_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise ImageError(f"TRANSFERKIT_MAX_PIXELS={value!r} is not a positive whole number of pixels; fix or unset it")
    return limit


def _bomb(path: Path, pixels: int | str, limit: int) -> ImageError:
    pixels = f"{pixels:,} px" if isinstance(pixels, int) else pixels
    return ImageError(
        f"{path}: {pixels} is over the {limit:,} px limit (decompression-bomb guard); "
        "downscale it or raise TRANSFERKIT_MAX_PIXELS"
    )


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high-bit-depth data."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and pixels.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = max(float(pixels.max(initial=0)), 1.0)
        gray = np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` into an upright RGB image, or raise ImageError with the reason.

    The size in the file's header is checked against the pixel limit before any pixel is
    decoded; whatever else goes wrong decoding a damaged file is an ImageError too.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory with no image files, expected an image file")
    limit = max_pixels()
    # Pillow's own guard (a warning above Image.MAX_IMAGE_PIXELS, an error above twice that)
    # must not refuse what TRANSFERKIT_MAX_PIXELS allows; ours below is the one that decides.
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow warns about damaged metadata (EXIF, ICC) it skips; the image itself decides.
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limit:
                    raise _bomb(path, f"{width}x{height} px", limit)
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except Image.DecompressionBombError as err:  # refused by Pillow while reading the header
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _bomb(path, int(found.group(1)) if found else "too many pixels", limit) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file that can be read") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except MemoryError:
        raise ImageError(f"{path}: too large to decode in the memory available") from None
    except Exception as err:  # a damaged file can make a decoder raise almost anything
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"{path}: corrupt or truncated image ({reason})") from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
