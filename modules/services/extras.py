"""Extras jobs: post-processing (see modules/postprocessing) of images, one after the other, in the queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from modules import images, limits, postprocessing
from modules.jobs import Job, JobInterrupted, JobQueue, JobSkipped
from modules.services.errors import BadRequest, OverLimit
from modules.services.options import OptionsService
from modules.services.output import OutputWriter
from modules.services.requests import RequestResolver
from modules.services.upscalers import UpscalerService

log = logging.getLogger(__name__)


@dataclass
class ExtrasResult:
    # The results, their `info` holding the PNG text chunks to write (parameters, extras, ...). A folder batch
    # keeps only the first ones within the server's limits, and only when they are to be shown.
    images: list[Image.Image]
    infotexts: list[str]  # A1111's extras infotext of each image done ('' when nothing was done)
    paths: list[str | None]  # where each image done was saved (None: not saved)
    interrupted: bool = False
    skipped: list[str] = field(default_factory=list)  # a folder batch's files that could not be done: "name: why"


class ExtrasService:
    def __init__(self, requests: RequestResolver, options: OptionsService, queue: JobQueue, output: OutputWriter,
                 decode_budget: images.DecodeBudget, upscalers: UpscalerService):
        self._requests = requests
        self._upscalers = upscalers
        self._options = options
        self._queue = queue
        self._output = output
        self._decode_budget = decode_budget

    def submit(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams, save: bool = True,
               names: list[str] | None = None) -> Job:
        """Queue Extras of `inputs`; the job runs after those ahead of it, as A1111's extras wait for its queue
        lock. What cannot be done is refused at once (BadRequest). With `save` (A1111's Extras tab; its API never
        saves) each result goes to outdir_extras_samples (outdir_samples when set) as A1111 names extras:
        00042.png, or after the input's file name in `names` (OutputWriter.extras_image), no date folder, the
        original's text chunks kept and the extras infotext added."""
        if not inputs:
            raise BadRequest("Extras: send at least one image")
        self.check_batch(inputs, params)
        settings = self._options.values

        def run(job: Job) -> ExtrasResult:
            result = ExtrasResult([], [], [])
            job.state.job_count = len(inputs)
            pass_for, available = self._upscalers.pass_for(job, settings), self._upscalers.names()
            for index, image in enumerate(inputs):
                job.state.job_no, job.state.sampling_step, job.state.sampling_steps = index, 0, 0
                if job.state.interrupted:
                    result.interrupted = True
                    break
                try:
                    out, text = postprocessing.run(images.load(image, self._decode_budget), params, pass_for,
                                                   available)
                except (postprocessing.ExtrasError, images.InvalidImage) as e:
                    raise BadRequest(str(e)) from None
                except JobSkipped:  # within a model upscaler's tiles: this image is left out
                    continue
                except JobInterrupted:  # the image is not done, nor the ones after it
                    result.interrupted = True
                    break
                if not settings.enable_pnginfo:
                    out.info = {}
                path = str(self._output.extras_image(out, text, settings, None, names[index] if names else None)
                           ) if save else None
                result.images.append(out)
                result.infotexts.append(text)
                result.paths.append(path)
            return result

        return self._queue.submit("extras", run)

    def submit_folder(self, files: list[Path], params: postprocessing.ExtrasParams, outdir: str | None = None,
                      show: bool = True) -> Job:
        """Queue Extras of the image files `files` (the Extras tab's Batch from Directory), each saved as `submit`
        saves (named after its file), in `outdir` when given. As in A1111 the files are read, done and saved one
        at a time, so a folder of any length needs the memory of one image, and a file that cannot be done (not
        an image, over --max-input-megapixels, a result too large) is skipped, named in the result's `skipped`.
        With `show` (the tab's "Show result images") the results are kept for the page too, the first ones up to
        --max-extras-images and --max-extras-megapixels; the others are only saved."""
        if not files:
            raise BadRequest("Extras: no images to do")
        self._check(params)
        settings = self._options.values
        lim = self._requests.limits

        def run(job: Job) -> ExtrasResult:
            result = ExtrasResult([], [], [])
            job.state.job_count = len(files)
            held, keeping = 0, show
            pass_for, available = self._upscalers.pass_for(job, settings), self._upscalers.names()
            for index, path in enumerate(files):
                job.state.job_no, job.state.textinfo = index, path.name
                job.state.sampling_step = job.state.sampling_steps = 0
                if job.state.interrupted:
                    result.interrupted = True
                    break
                try:
                    out, text = postprocessing.run(images.read_image(path, lim.max_input_pixels, self._decode_budget),
                                                   params, pass_for, available)
                except JobSkipped:
                    continue
                except JobInterrupted:
                    result.interrupted = True
                    break
                except (postprocessing.ExtrasError, images.InvalidImage) as e:
                    log.warning("Extras: skipped %s: %s", path, e)
                    result.skipped.append(f"{path.name}: {e}")
                    continue
                if not settings.enable_pnginfo:
                    out.info = {}
                result.paths.append(str(self._output.extras_image(out, text, settings, outdir, path.name)))
                result.infotexts.append(text)
                held += out.width * out.height
                keeping = keeping and len(result.images) < lim.max_extras_images and held <= lim.max_extras_pixels
                if keeping:
                    result.images.append(out)
                del out  # one result at a time in memory while the next file is read and done
            return result

        return self._queue.submit("extras", run)

    def check_count(self, count: int) -> None:
        """OverLimit when a batch of `count` images is over --max-extras-images (callers that receive encoded
        images ask before they read any)."""
        limit = self._requests.limits.max_extras_images
        if count > limit:
            raise OverLimit(f"Extras: {count} images, over this server's limit of {limit} a batch "
                            "(--max-extras-images)")

    def check_batch(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams) -> None:
        """Refuse (BadRequest; OverLimit naming the flag) what cannot be done or is over the server's limits, from
        the images' sizes before any is decoded: more images than --max-extras-images, one with more pixels than
        --max-input-megapixels, a result that would be too large, or results that together (each is held until
        the batch ends) have more pixels than --max-extras-megapixels."""
        lim = self._requests.limits
        self.check_count(len(inputs))
        self._check(params)
        total, largest = 0, (0, 0)
        for index, image in enumerate(inputs):
            self._requests.check_input_image(image)
            try:
                w, h = postprocessing.output_size(image.width, image.height, params)
            except postprocessing.ExtrasError as e:
                raise BadRequest(f"image {index + 1} of {len(inputs)}: {e}" if len(inputs) > 1 else str(e)) from None
            total += w * h
            largest = max(largest, (w, h), key=lambda size: size[0] * size[1])
        if total > lim.max_extras_pixels:
            raise OverLimit(f"Extras: the results would be {limits.megapixels(total)} megapixels ({len(inputs)} "
                            f"image{'s' if len(inputs) != 1 else ''}, the largest {largest[0]}x{largest[1]}), over "
                            f"this server's limit of {limits.megapixels(lim.max_extras_pixels)} megapixels a batch "
                            "(--max-extras-megapixels)")

    def _check(self, params: postprocessing.ExtrasParams) -> None:
        """BadRequest when the operations asked for cannot be done here (postprocessing.check)."""
        try:
            postprocessing.check(params, self._upscalers.names())
        except postprocessing.ExtrasError as e:
            raise BadRequest(str(e)) from None
