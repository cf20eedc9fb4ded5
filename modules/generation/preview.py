"""Live previews: a picture of a latent while it is still being denoised.

"Approx cheap" (`latent_to_image`) runs no VAE: each of the 4 latent channels of SD 1.x / 2.x contributes a
fixed amount of red, green and blue (the factors below are the widely used linear fit that A1111 calls
"Approx cheap"). The picture
has the latent's resolution (1/8 of the image's side), which is what a progress preview needs.
"TAESD" (`TaesdPreview`) decodes it with the tiny autoencoder, within a share of the job's time.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from modules.models import taesd

# Rows: latent channels 0..3; columns: R, G, B contribution (output in [-1, 1]).
LATENT_TO_RGB = torch.tensor([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
])


def latent_to_image(latent: torch.Tensor) -> Image.Image:
    """One RGB picture for a (C, H, W) latent, or a (B, C, H, W) batch laid side by side."""
    x = latent.detach().float().cpu()
    if x.dim() == 3:
        x = x[None]
    x = x[:, :LATENT_TO_RGB.shape[0]]
    # Early in sampling the state still carries most of its noise (k-diffusion samplers hold
    # x0 + sigma * noise); bring it back to roughly unit scale so the preview is not all white and black.
    spread = float(x.std()) if x.numel() > 1 else 1.0
    if spread > 1.0:
        x = x / spread
    rgb = torch.einsum("bchw,cr->brhw", x, LATENT_TO_RGB)
    rgb = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
    strip = torch.cat(list(rgb), dim=2)  # batch side by side: (3, H, B*W)
    arr = (255.0 * strip.permute(1, 2, 0).numpy()).round().astype(np.uint8)
    return Image.fromarray(arr)


# TAESD live previews: the share of the job's time they may take, and the largest latent side they decode
# (a larger latent is area-downscaled first: a 512x512 image is previewed at 256x256, a quarter of the cost).
TAESD_PREVIEW_BUDGET = 0.015
TAESD_PREVIEW_LATENT_SIDE = 32


def _preview_latent(latent: torch.Tensor) -> torch.Tensor:
    x = latent.detach().float()
    if x.dim() == 3:
        x = x[None]
    side = max(x.shape[-2:])
    if side > TAESD_PREVIEW_LATENT_SIDE:
        factor = -(-side // TAESD_PREVIEW_LATENT_SIDE)
        size = (max(1, -(-x.shape[-2] // factor)), max(1, -(-x.shape[-1] // factor)))
        x = torch.nn.functional.interpolate(x, size=size, mode="area")
    return x


def taesd_image(decoder: torch.nn.Module, latent: torch.Tensor) -> Image.Image:
    """The TAESD preview of a (C, H, W) latent or a (B, C, H, W) batch (images side by side), at 8x the latent
    size up to TAESD_PREVIEW_LATENT_SIDE x 8 pixels a side."""
    pixels = taesd.decode(decoder, _preview_latent(latent))
    strip = torch.cat(list(((pixels + 1.0) / 2.0).clamp(0.0, 1.0)), dim=2)  # (3, H, B*W)
    arr = (255.0 * strip.permute(1, 2, 0).numpy()).round().astype(np.uint8)
    return Image.fromarray(arr)


class TaesdPreview:
    """A1111's "TAESD" live preview, kept under TAESD_PREVIEW_BUDGET of the job's time: a preview is decoded only
    while the previews so far, and one more of the last one's cost, fit in that share of the time since the job
    started (`started()`, a time.time() value; 0 while it has not). Otherwise it gives None (the page keeps the
    last preview), so on a CPU where one decode costs as much as a tenth of a sampler step they come every few
    steps instead of every step, and on a GPU every step. Without a decoder (`decoder()` None: no model, or the
    file is absent) the cheap preview is shown."""

    def __init__(self, decoder: Callable[[], torch.nn.Module | None], started: Callable[[], float],
                 budget: float = TAESD_PREVIEW_BUDGET, clock: Callable[[], float] = time.time):
        self._decoder, self._started, self._budget, self._clock = decoder, started, budget, clock
        self.spent = 0.0  # seconds the previews took so far
        self.last_cost = 0.0
        self.rendered = 0

    def __call__(self, latent: torch.Tensor) -> Image.Image | None:
        decoder = self._decoder()
        if decoder is None:
            return latent_to_image(latent)
        started = self._started()
        elapsed = self._clock() - started if started else 0.0
        if self.rendered and self.spent + self.last_cost > self._budget * elapsed:
            return None
        begin = time.perf_counter()
        image = taesd_image(decoder, latent)
        self.last_cost = time.perf_counter() - begin
        self.spent += self.last_cost
        self.rendered += 1
        return image
