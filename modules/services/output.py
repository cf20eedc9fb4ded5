"""Where a job's files go: its images, its grid and params.txt, in the folders the settings name. Each image
is indexed in the history (services/history.py) right after its file is written (atomically): a crash in between
leaves a file without a row, which the history's heal adds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modules import fileio, filenames, images
from modules.paths import Paths
from modules.services.history import HistoryService
from modules.settings import Settings


class OutputWriter:
    def __init__(self, paths: Paths, history: HistoryService | None = None):
        self._paths = paths
        self._history = history

    def _indexed(self, path: Path, kind: str, text: str | None, image: Image.Image) -> Path:
        if self._history is not None:
            self._history.saved(path, kind, text, image)
        return path

    def folder(self, setting: str) -> Path:
        """An output folder setting's value as a real folder (relative values are inside the data folder)."""
        return self._paths.resolve_output_dir(setting)

    def image(self, image: Image.Image, text: str, settings: Settings, namer: filenames.FileNamer, seed: int,
              index: int, img2img: bool, basename: str = "", suffix: str = "") -> Path:
        """One generated image, named and placed as A1111 does (outdir_samples wins over the kind's folder);
        `basename` starts the name of an image that is not a sample (the depth model's map: depth-00042-SEED),
        `suffix` ends it (an inpainting mask: 00043-SEED-mask)."""
        kind_dir = settings.outdir_img2img_samples if img2img else settings.outdir_txt2img_samples
        path = images.save_image(image, self.folder(settings.outdir_samples or kind_dir), text, settings, namer,
                                 seed, index=index, basename=basename, suffix=suffix)
        return self._indexed(path, "img2img" if img2img else "txt2img", text, image)

    def grid(self, grid: Image.Image, text: str, settings: Settings, namer: filenames.FileNamer, seed: int,
             img2img: bool, basename: str = "") -> Path:
        kind_dir = settings.outdir_img2img_grids if img2img else settings.outdir_txt2img_grids
        path = images.save_image(grid, self.folder(settings.outdir_grids or kind_dir), text, settings, namer, seed,
                                 grid=True, basename=basename)
        return self._indexed(path, "grid", text, grid)

    def extras_image(self, image: Image.Image, text: str, settings: Settings, outdir: str | None,
                     name: str | None = None) -> Path:
        """An Extras result: A1111's short name (00042.png, no date folder), or, for an image of a batch whose
        input file was `name`, that name's stem (photo-0000.png, setting use_original_name_batch); the
        original's text chunks kept and the extras infotext added. `outdir` (the Extras tab's batch output
        folder) replaces the setting's."""
        folder = self.folder(outdir or settings.outdir_samples or settings.outdir_extras_samples)
        basename = original_stem(name) if name and settings.use_original_name_batch else ""
        path = images.save_image(image, folder, text, settings, filenames.FileNamer(), to_dirs=False,
                                 texts=image.info, section="extras", basename=basename)
        original = image.info.get("parameters") if isinstance(image.info.get("parameters"), str) else None
        return self._indexed(path, "extras", original or text, image)

    def init_image(self, image: Image.Image, digest: str, settings: Settings) -> Path:
        """An img2img init image as it was given (save_init_img): `<digest>.<samples_format>` (the MD5 of its
        pixels, images.pixels_md5) in outdir_init_images, with the text chunks it came with, replaced when the same
        picture comes again (as A1111's forced file name does). Not indexed in the history: it is an input."""
        fmt, ext = images.file_format(image, settings.samples_format)
        folder = self.folder(settings.outdir_init_images)
        folder.mkdir(parents=True, exist_ok=True)
        texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
        data = images.encode(image, fmt, None, settings.jpeg_quality, settings.webp_lossless, texts)
        path = folder / f"{digest}.{ext}"
        fileio.atomic_write_bytes(path, data)
        return path

    def last_parameters(self, text: str) -> None:
        """params.txt: the last job's first infotext (what the page's paste button reads)."""
        fileio.atomic_write_bytes(self._paths.params_file, text.encode("utf-8"))


@dataclass
class Write:
    """One file a job running elsewhere (a cluster replica) asked for: the method of OutputWriter and its
    arguments, replayed by the process that owns the output folders and the history index."""
    method: str  # "image", "grid", "init_image" or "last_parameters"
    args: tuple
    kwargs: dict


PENDING_PREFIX = "pending-write:"  # a result's path until the front has written the file (see RecordingWriter)


class RecordingWriter(OutputWriter):
    """An OutputWriter that writes nothing and records what it was asked to write, for a replica whose files the
    front process writes (so that one process numbers the files and feeds the history). A recorded image's path
    is `pending-write:N`, N its place in `writes`; `replay` turns it into the real one."""

    def __init__(self, paths: Paths):
        super().__init__(paths, None)
        self.writes: list[Write] = []

    def _record(self, method: str, *args, **kwargs) -> Path:
        self.writes.append(Write(method, args, kwargs))
        return Path(f"{PENDING_PREFIX}{len(self.writes) - 1}")

    def image(self, *args, **kwargs) -> Path:
        return self._record("image", *args, **kwargs)

    def grid(self, *args, **kwargs) -> Path:
        return self._record("grid", *args, **kwargs)

    def init_image(self, *args, **kwargs) -> Path:
        return self._record("init_image", *args, **kwargs)

    def last_parameters(self, text: str) -> None:
        self._record("last_parameters", text)

    def take(self) -> list[Write]:
        """The writes recorded since the last call (one job's)."""
        writes, self.writes = self.writes, []
        return writes


def replay(writer: OutputWriter, writes: list[Write], paths: list[str | None]) -> list[str | None]:
    """Write what a RecordingWriter recorded, in order, through `writer`; returns `paths` with each pending path
    replaced by the file's real one."""
    written: dict[str, str] = {}
    for n, w in enumerate(writes):
        result = getattr(writer, w.method)(*w.args, **w.kwargs)
        if result is not None:
            written[f"{PENDING_PREFIX}{n}"] = str(result)
    return [written.get(p, p) if p is not None else None for p in paths]


def original_stem(name: str) -> str:
    """A batch input's file name as the start of a result's name: its last part (either separator: an uploaded
    file's name is the client's) without the extension, made safe as A1111 makes file-name parts; "" when
    nothing is left."""
    last = re.split(r"[\\/]", name)[-1]
    stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
    return filenames.sanitize(stem, replace_spaces=False)
