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
