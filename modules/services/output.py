"""Where a job's files go: its images, its grid and params.txt, in the folders the settings name."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from modules import fileio, filenames, images
from modules.paths import Paths
from modules.settings import Settings


class OutputWriter:
    def __init__(self, paths: Paths):
        self._paths = paths

    def folder(self, setting: str) -> Path:
        """An output folder setting's value as a real folder (relative values are inside the data folder)."""
        return self._paths.resolve_output_dir(setting)

    def image(self, image: Image.Image, text: str, settings: Settings, namer: filenames.FileNamer, seed: int,
              index: int, img2img: bool) -> Path:
        """One generated image, named and placed as A1111 does (outdir_samples wins over the kind's folder)."""
        kind_dir = settings.outdir_img2img_samples if img2img else settings.outdir_txt2img_samples
        return images.save_image(image, self.folder(settings.outdir_samples or kind_dir), text, settings, namer,
                                 seed, index=index)

    def grid(self, grid: Image.Image, text: str, settings: Settings, namer: filenames.FileNamer, seed: int,
             img2img: bool, basename: str = "") -> Path:
        kind_dir = settings.outdir_img2img_grids if img2img else settings.outdir_txt2img_grids
        return images.save_image(grid, self.folder(settings.outdir_grids or kind_dir), text, settings, namer, seed,
                                 grid=True, basename=basename)

    def extras_image(self, image: Image.Image, text: str, settings: Settings, outdir: str | None) -> Path:
        """An Extras result: A1111's short name (00042.png, no date folder), the original's text chunks kept and
        the extras infotext added; `outdir` (the Extras tab's batch output folder) replaces the setting's."""
        folder = self.folder(outdir or settings.outdir_samples or settings.outdir_extras_samples)
        return images.save_image(image, folder, text, settings, filenames.FileNamer(), to_dirs=False,
                                 texts=image.info, section="extras")

    def last_parameters(self, text: str) -> None:
        """params.txt: the last job's first infotext (what the page's paste button reads)."""
        fileio.atomic_write_bytes(self._paths.params_file, text.encode("utf-8"))
