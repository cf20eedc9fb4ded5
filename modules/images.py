"""Saving images the way AUTOMATIC1111 lays them out: `outputs/txt2img-images/2026-11-22/00042-1234.png`.

The number is one more than the largest number already in the folder, so it continues across runs.
Files are written to a temporary name and renamed into place, so a crash never leaves half an image,
and an existing file is never overwritten.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import threading
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules import fileio

_NUMBER = re.compile(r"^(\d+)")
_save_lock = threading.Lock()


def next_number(folder: Path) -> int:
    highest = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            if m := _NUMBER.match(name):
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


def save_image(image: Image.Image, folder: Path, seed: int, infotext: str | None, by_date: bool = True,
               today: datetime.date | None = None) -> Path:
    """Save as NNNNN-SEED.png in `folder` (or its YYYY-MM-DD subfolder) and return the path."""
    if by_date:
        folder = folder / (today or datetime.date.today()).isoformat()
    data = png_bytes(image, infotext)
    with _save_lock:
        folder.mkdir(parents=True, exist_ok=True)
        number = next_number(folder)
        for _ in range(500):
            path = folder / f"{number:05d}-{seed}.png"
            if not path.exists():
                fileio.atomic_write_bytes(path, data)
                return path
            number += 1
    raise OSError(f"could not find a free file name in {folder}")


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
