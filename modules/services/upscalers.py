"""The upscalers every job may use: the plain ones and the model upscalers in the model folders
(modules/models/upscalers), by name, with the job's settings (tile sizes) and its interrupt, and the tiles'
progress shown as the job's steps."""

from __future__ import annotations

from PIL import Image

from modules import upscaling
from modules.jobs import Job
from modules.models.checkpoint_file import CheckpointError
from modules.models.upscalers import UpscalerFile, UpscalerModels
from modules.services.errors import BadRequest
from modules.settings import Settings


class UpscalerService:
    def __init__(self, models: UpscalerModels):
        self.models = models

    def files(self) -> list[UpscalerFile]:
        """The model upscalers there are now (a file dropped in a folder shows without a restart)."""
        return self.models.files()

    def names(self) -> list[str]:
        """Every upscaler's name, as A1111 lists them: None, Lanczos, Nearest, then the models by name."""
        return [*upscaling.BUILTIN, *(f.name for f in self.files())]

    def pass_for(self, job: Job | None, settings: Settings, show_tiles: bool = True):
        """(name, scale) -> one pass of that upscaler for `job`: a plain resample, or the model over the image in
        tiles (its load errors as BadRequest), checking the job's interrupt before each tile and, with
        `show_tiles` (Extras: a generation job counts its sampler steps there), showing the tiles done as the
        job's steps."""

        found: dict[str, UpscalerFile] = {}  # the folders, read at the job's first model upscaler, not every image

        def on_tile(done: int, total: int) -> None:
            if job is not None and show_tiles:
                job.state.sampling_step, job.state.sampling_steps = done, total

        def pass_for(name: str, scale: float) -> upscaling.Pass:
            if name in upscaling.PLAIN:
                return upscaling.plain_pass(name, scale)
            if not found:
                found.update({f.name: f for f in self.files()})
            item = found.get(name)
            if item is None:
                raise BadRequest(f"Upscaler {name!r} was not in its folder when the job started")
            tile_name, overlap_name = item.tile_settings
            try:
                factor = self.models.load(item).scale
                one_pass = self.models.model_pass(item, getattr(settings, tile_name), getattr(settings, overlap_name),
                                                  job.check if job is not None else None, on_tile)
            except CheckpointError as e:  # unreadable, not an upscaler, or code in a pickle
                if getattr(e, "status_code", None):  # not enough memory to load it: a 507 stays one
                    raise
                raise BadRequest(f"Upscaler {name!r}: {e}") from None

            def bounded(image: Image.Image) -> Image.Image:
                # A1111 runs a pass whatever it makes: a 4x model asked for 5x runs twice, 16x in between
                if max(image.size) * factor > upscaling.MAX_SIDE:
                    raise BadRequest(f"Upscaler {name!r} ({factor}x) would make a {image.width * factor}x"
                                     f"{image.height * factor} image on the way to x{scale:g}, over "
                                     f"{upscaling.MAX_SIDE} pixels a side; ask for a scale it reaches in fewer "
                                     "passes, or use Lanczos")
                return one_pass(image)

            return bounded

        return pass_for

    def upscale(self, image: Image.Image, scale: float, name: str, job: Job | None, settings: Settings
                ) -> Image.Image:
        """`image` upscaled by `scale` with the upscaler `name` (A1111's Upscaler.upscale), for `job` (a script's:
        its tiles shown as the job's steps until its cells run)."""
        return upscaling.upscale(image, scale, self.pass_for(job, settings)(name, scale),
                                 job.check if job is not None else None)

    def resize(self, job: Job | None, settings: Settings):
        """(image, width, height, upscaler name) -> the image at that size as A1111's resize_image makes it with
        that upscaler (Hires. fix and img2img)."""
        pass_for = self.pass_for(job, settings, show_tiles=False)

        def resize(image: Image.Image, width: int, height: int, name: str) -> Image.Image:
            if name in ("", "None"):
                return upscaling.resize(image, width, height, None)
            return upscaling.resize(image, width, height, lambda scale: pass_for(name, scale),
                                    job.check if job is not None else None)

        return resize
