"""Saving images the way AUTOMATIC1111 lays them out: `outputs/txt2img-images/2026-11-22/00042-1234.png`.

The number is one more than the largest number already in the folder, so it continues across runs.
Files are written to a temporary name and renamed into place, so a crash never leaves half an image,
and an existing file is never overwritten.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import io
import os
import re
import threading
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from modules import fileio

_NUMBER = re.compile(r"^(\d+)")
_GRID_NUMBER = re.compile(r"grid-(\d+)")
_save_lock = threading.Lock()


def next_number(folder: Path, pattern: re.Pattern = _NUMBER) -> int:
    """One more than the largest number `pattern` finds in the folder's file names (0 in an empty folder)."""
    highest = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            if m := pattern.match(name):
                highest = max(highest, int(m.group(1)))
    return highest + 1


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    info = None
    if infotext:
        info = PngInfo()
        info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _save_numbered(image: Image.Image, folder: Path, infotext: str | None, by_date: bool,
                   today: datetime.date | None, pattern: re.Pattern, name: str) -> Path:
    """Write the PNG as `name` formatted with the next free number in `folder` (or its YYYY-MM-DD
    subfolder); never overwrites a file."""
    if by_date:
        folder = folder / (today or datetime.date.today()).isoformat()
    data = png_bytes(image, infotext)
    with _save_lock:
        folder.mkdir(parents=True, exist_ok=True)
        number = next_number(folder, pattern)
        for _ in range(500):
            path = folder / name.format(number)
            if not path.exists():
                fileio.atomic_write_bytes(path, data)
                return path
            number += 1
    raise OSError(f"could not find a free file name in {folder}")


def save_image(image: Image.Image, folder: Path, seed: int, infotext: str | None, by_date: bool = True,
               today: datetime.date | None = None) -> Path:
    """Save as NNNNN-SEED.png in `folder` (or its YYYY-MM-DD subfolder) and return the path."""
    return _save_numbered(image, folder, infotext, by_date, today, _NUMBER, "{:05d}-" + str(seed) + ".png")


def image_grid(images: list[Image.Image], batch_size: int, n_rows: int = -1) -> Image.Image:
    """A1111's grid: `n_rows` rows (0: one row per batch, -1: about square, round(sqrt(n))), filled row by
    row on black."""
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    else:
        rows = min(round(len(images) ** 0.5), len(images))
    cols = -(-len(images) // rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), color="black")
    for i, image in enumerate(images):
        grid.paste(image, box=(i % cols * w, i // cols * h))
    return grid


def save_grid(grid: Image.Image, folder: Path, infotext: str | None, by_date: bool = True,
              today: datetime.date | None = None) -> Path:
    """Save as grid-NNNN.png in `folder` (or its YYYY-MM-DD subfolder), A1111's short grid name."""
    return _save_numbered(grid, folder, infotext, by_date, today, _GRID_NUMBER, "grid-{:04d}.png")


def read_infotext(image: Image.Image) -> str | None:
    """The `parameters` text stored in a PNG by us or by A1111, if any."""
    text = image.info.get("parameters")
    return text if isinstance(text, str) else None


# Image metadata that is not worth showing as text (A1111's png-info leaves the same keys out).
_UNSHOWN_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                 "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
                 "photoshop", "parameters"}
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def _user_comment(raw: bytes | str) -> str | None:
    """An EXIF UserComment: 8 bytes naming the encoding, then the text (A1111 writes JPEG/WebP infotext here)."""
    if isinstance(raw, str):
        return raw
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        # UTF-16, big-endian by the EXIF standard; an ASCII first character shows which byte order it is.
        little = len(body) >= 2 and body[0] != 0 and body[1] == 0
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\x00")
    return body.decode("utf-8", errors="replace").rstrip("\x00")


def read_info(image: Image.Image) -> tuple[str | None, dict[str, str]]:
    """(generation parameters, other text fields) of an image, as A1111's PNG Info reads them:
    the PNG `parameters` chunk, else the EXIF UserComment of a JPEG/WebP."""
    if image.format == "PNG":
        image.load()  # text chunks written after the pixel data are read only by a full load
    text = read_infotext(image)
    if text is None:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
        if comment:
            text = _user_comment(comment) or None
    items = {str(k): v if isinstance(v, (str, int, float, bool)) else str(v)
             for k, v in image.info.items() if k not in _UNSHOWN_INFO}
    return text, items


# --- img2img input -------------------------------------------------------------------------------

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


def decode_base64_image(data: str) -> Image.Image:
    """An image from base64 or a `data:image/...;base64,` URL. ValueError says what is wrong with it."""
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise ValueError("Image URLs are not fetched; send the image itself as base64")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise ValueError("Invalid encoded image: a data URL must be base64 (data:image/png;base64,...)")
    text = "".join(text.split())
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise ValueError("Invalid encoded image: the text is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"Invalid encoded image: not an image that can be read ({type(e).__name__})") from None
    return image


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """RGB, with any transparency composited over `background` (A1111's `img2img_background_color`)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's `resize_image` with the Lanczos upscaler: 0 stretches to width x height; 1 scales to
    cover and crops the centre; 2 scales to fit, centres, and fills the empty bands by stretching the
    outermost rows or columns. (Mode 3, latent upscale, resizes the latent instead; for the images that
    go with it, such as a mask, it stretches as mode 0 does.)"""
    if mode not in (1, 2):
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if ratio > src_ratio if mode == 1 else ratio < src_ratio:  # the width decides the scale
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = image.resize((src_w, src_h), resample=Image.Resampling.LANCZOS)
    out = Image.new(image.mode if image.mode in ("L", "RGB") else "RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        if ratio < src_ratio:  # bands above and below
            band = height // 2 - src_h // 2
            if band > 0:
                out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
                out.paste(resized.resize((width, band), box=(0, resized.height, width, resized.height)),
                          box=(0, band + src_h))
        elif ratio > src_ratio:  # bands left and right
            band = width // 2 - src_w // 2
            if band > 0:
                out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
                out.paste(resized.resize((band, height), box=(resized.width, 0, resized.width, height)),
                          box=(band + src_w, 0))
    return out
