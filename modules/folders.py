"""Which server folders a client may name: output folders in settings, and the folders the img2img Batch and
Extras "Batch from Directory" tabs read and write.

A client (the page or the API) may only point the server at folders inside the data folder or inside a
folder the machine's owner listed with `--allowed-paths DIR[,DIR]`. Paths are compared after resolving
`..` and symbolic links, so neither leads outside. What the owner writes into config.json by hand is not
checked: only values a client changes are. A server that listens on the network (`--listen`,
`--server-name`) without any login takes no folder names from the page at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The settings that name a folder the server writes into.
FOLDER_SETTINGS = ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
                   "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids", "outdir_save",
                   "outdir_init_images")


class FolderRefused(ValueError):
    """A client named a folder outside the allowed ones (the message says which and why)."""


def parse_allowed(value: str | None) -> tuple[Path, ...]:
    """`--allowed-paths DIR[,DIR]` as absolute paths (blank entries ignored)."""
    return tuple(Path(p.strip()).expanduser().resolve() for p in (value or "").split(",") if p.strip())


@dataclass(frozen=True)
class FolderPolicy:
    data: Path  # relative folders are taken from here
    allowed: tuple[Path, ...] = ()  # --allowed-paths
    server_folders: bool = True  # False: folder fields of the page are refused (--listen without a login)

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.data, *self.allowed)

    def resolve(self, what: str, folder: str | os.PathLike) -> Path:
        """`folder` (relative to the data folder unless absolute) as a real path inside one of the roots;
        FolderRefused, naming `what`, otherwise."""
        text = str(folder).strip()
        if not text:
            raise FolderRefused(f"{what}: no folder given")
        if "\0" in text:
            raise FolderRefused(f"{what}: the folder name holds a NUL character")
        path = Path(text).expanduser()
        real = Path(os.path.realpath(path if path.is_absolute() else self.data / path))
        for root in self.roots:
            real_root = os.path.realpath(root)
            if os.path.commonpath([real_root, real]) == real_root:
                return real
        raise FolderRefused(f"{what}: {text!r} is outside the data folder and the folders the server's owner "
                            "allowed with --allowed-paths")

    def check_settings(self, changes: dict, current: dict) -> None:
        """Refuse folder settings a client changes to a place outside the roots (unchanged values pass: the
        owner may have set them by hand)."""
        for name in FOLDER_SETTINGS:
            value = changes.get(name)
            if value is None or value == current.get(name) or (isinstance(value, str) and not value.strip()):
                continue  # unchanged, or empty (the setting's fallback folder)
            self.resolve(name, value)

    def page_folder(self, what: str, folder: str) -> Path:
        """A folder typed into the page (img2img Batch, Extras batch): refused outright when the server
        listens on the network without a login, else as `resolve`."""
        if not self.server_folders:
            raise FolderRefused(f"{what}: server folders cannot be used from the page while the server listens on "
                                "the network without a login (start it with --gradio-auth or --api-auth)")
        return self.resolve(what, folder)
