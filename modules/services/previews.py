"""Live previews of a running job, as the `show_progress_type` setting asks, for the page and for the API alike."""

from __future__ import annotations

import threading
from typing import Callable

import torch
from PIL import Image

from modules import images
from modules.generation import pipeline, preview
from modules.generation.vae_tiling import VaeTiling
from modules.jobs import Job
from modules.services.checkpoints import CheckpointService
from modules.services.options import OptionsService

Renderer = Callable[[torch.Tensor], "Image.Image | None"]


class PreviewService:
    def __init__(self, checkpoints: CheckpointService, options: OptionsService):
        self._checkpoints = checkpoints
        self._options = options
        self._lock = threading.Lock()
        # the API's polls: the job they follow, its renderer (TAESD keeps its time budget across polls), the step
        # its last preview showed and that preview
        self._polled: tuple[str, Renderer, int, Image.Image | None] | None = None

    def renderer(self, job: Job, kind: str) -> Renderer:
        """What draws `kind` ("Full": the model's VAE; "TAESD": the tiny autoencoder within a share of the job's
        time, the cheap preview when its file is absent; else "Approx cheap", which costs nothing). A renderer may
        give None: not now (over its time budget), keep the last one."""
        if kind == "Full":
            return self._full
        if kind == "TAESD":
            return preview.TaesdPreview(self._checkpoints.taesd_preview_decoder, lambda: job.state.started)
        return preview.latent_to_image

    def _full(self, latent: torch.Tensor) -> Image.Image:
        """The current prediction decoded by the model's VAE (the images of a batch side by side)."""
        model = self._checkpoints.current
        if model is None:
            return preview.latent_to_image(latent)
        try:
            values = self._options.values
            decoded = pipeline.decode(model, latent if latent.dim() == 4 else latent[None],
                                      tiling=VaeTiling(values.vae_tiling, values.vae_tile_size))
        except Exception:  # noqa: BLE001 - the model was replaced meanwhile (a refiner switch): a cheap preview
            return preview.latent_to_image(latent)
        return images.image_grid(decoded, len(decoded), 1)

    def for_poll(self, job: Job) -> Image.Image | None:
        """The preview a progress poll (the API's /progress, /internal/progress) shows for `job` now: drawn as the
        setting says, once per sampling step however often it is asked, the last one again while TAESD's budget
        says not now. None before the job has a latent."""
        state = job.state
        latent, step = state.current_latent, (state.job_no << 20) + state.sampling_step
        if latent is None:
            return None
        with self._lock:
            if self._polled is None or self._polled[0] != job.id:
                self._polled = (job.id, self.renderer(job, self._options.values.show_progress_type), -1, None)
            job_id, render, shown_step, shown = self._polled
            if step != shown_step:
                image = render(latent)
                if image is not None:
                    shown, shown_step = image, step
                self._polled = (job_id, render, shown_step, shown)
            return shown if shown is not None else preview.latent_to_image(latent)
