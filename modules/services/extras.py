"""Extras jobs: post-processing (see modules/postprocessing) of images, one after the other, in the queue."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules import images, limits, postprocessing
from modules.jobs import Job, JobQueue
from modules.services.errors import BadRequest, OverLimit
from modules.services.options import OptionsService
from modules.services.output import OutputWriter
from modules.services.requests import RequestResolver


@dataclass
class ExtrasResult:
    images: list[Image.Image]  # their `info` holds the PNG text chunks to write (parameters, extras, ...)
    infotexts: list[str]  # A1111's extras infotext of each image ('' when nothing was done)
    paths: list[str | None]
    interrupted: bool = False


class ExtrasService:
    def __init__(self, requests: RequestResolver, options: OptionsService, queue: JobQueue, output: OutputWriter,
                 decode_budget: images.DecodeBudget):
        self._requests = requests
        self._options = options
        self._queue = queue
        self._output = output
        self._decode_budget = decode_budget

    def submit(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams, save: bool = True,
               outdir: str | None = None) -> Job:
        """Queue Extras of `inputs`; the job runs after those ahead of it, as A1111's extras wait for its queue
        lock. What cannot be done is refused at once (BadRequest). With `save` (A1111's Extras tab; its API never
        saves) each result goes to outdir_extras_samples (outdir_samples when set) as A1111 names extras:
        00042.png, no date folder, the original's text chunks kept and the extras infotext added; `outdir` (the
        Extras tab's batch output folder) replaces that folder."""
        if not inputs:
            raise BadRequest("Extras: send at least one image")
        self.check_batch(inputs, params)
        settings = self._options.values

        def run(job: Job) -> ExtrasResult:
            result = ExtrasResult([], [], [])
            job.state.job_count = len(inputs)
            for index, image in enumerate(inputs):
                job.state.job_no = index
                if job.state.interrupted:
                    result.interrupted = True
                    break
                try:
                    out, text = postprocessing.run(images.load(image, self._decode_budget), params)
                except (postprocessing.ExtrasError, images.InvalidImage) as e:
                    raise BadRequest(str(e)) from None
                if not settings.enable_pnginfo:
                    out.info = {}
                path = str(self._output.extras_image(out, text, settings, outdir)) if save else None
                result.images.append(out)
                result.infotexts.append(text)
                result.paths.append(path)
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
        try:
            postprocessing.check(params)
        except postprocessing.ExtrasError as e:
            raise BadRequest(str(e)) from None
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
