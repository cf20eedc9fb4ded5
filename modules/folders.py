"""Which server folders a client may name: output folders in settings, and the folders the img2img Batch and
Extras "Batch from Directory" tabs read and write.

A client (the page or the API) may only point the server at folders inside the data folder or inside a
folder the machine's owner listed with `--allowed-paths DIR[,DIR]`. Paths are compared after resolving
`..` and symbolic links, so neither leads outside.

Without `--data-dir` the data folder is the program folder itself, which holds what the launcher installs
and runs (`requirements.txt`, `webui-user.sh`, `modules/`, the tokenizer's files). A client could otherwise
save an image's `.txt` as `requirements.txt` there and have pip install a package of its choosing at the next
start. So inside the program folder only `outputs/` and `log/` may be named (and a separate data folder
placed inside it, or what `--allowed-paths` lists). What the owner writes into config.json by hand is not
checked: only values a client changes are. A server that listens on the network (`--listen`,
`--server-name`) without any login takes no folder names from the page at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modules.paths import ROOT

# The folders of the program folder that clients may name (the default output folders are in them).
PROGRAM_FOLDERS_OPEN = ("outputs", "log")

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
    program: Path | None = ROOT  # the program folder: closed to clients but for PROGRAM_FOLDERS_OPEN

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
        if self._in_program_files(str(real)) and not any(_inside(real, os.path.realpath(r)) for r in self.allowed):
            raise FolderRefused(f"{what}: {text!r} is inside the program folder ({self.program}), where clients may "
                                f"name only {' and '.join(n + '/' for n in PROGRAM_FOLDERS_OPEN)} (the server's "
                                "owner may allow others with --allowed-paths)")
        if any(_inside(real, os.path.realpath(root)) for root in self.roots):
            return real
        raise FolderRefused(f"{what}: {text!r} is outside the data folder and the folders the server's owner "
                            "allowed with --allowed-paths")

    def _in_program_files(self, real: str) -> bool:
        """Whether `real` (resolved) is inside the program folder but outside the folders open in it."""
        if self.program is None:
            return False
        program = os.path.realpath(self.program)
        if not _inside(real, program):
            return False
        open_ = [os.path.join(program, name) for name in PROGRAM_FOLDERS_OPEN]
        data = os.path.realpath(self.data)
        if data != program and _inside(data, program):
            open_.append(data)  # a separate data folder placed inside the program folder
        return not any(_inside(real, folder) for folder in open_)

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


def _inside(path: str | os.PathLike, folder: str) -> bool:
    """Whether resolved `path` is `folder` or inside it (never, on Windows, when they are on different drives)."""
    try:
        return os.path.commonpath([folder, str(path)]) == folder
    except ValueError:
        return False
