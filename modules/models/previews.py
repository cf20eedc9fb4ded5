"""Preview images beside model files, found the way A1111's extra-network cards find them."""

from __future__ import annotations

from pathlib import Path

PREVIEW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def preview_beside(path: Path) -> Path | None:
    """`NAME.png` or `NAME.preview.png` (or .jpg/.jpeg/.webp/.gif) next to `NAME.safetensors`."""
    base = Path(path).with_suffix("")
    for stem in (str(base), str(base) + ".preview"):
        for ext in PREVIEW_EXTENSIONS:
            candidate = Path(stem + ext)
            if candidate.is_file():
                return candidate
    return None
