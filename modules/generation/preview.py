"""Live previews: a cheap picture of a latent while it is still being denoised.

No VAE runs: each of the 4 latent channels of SD 1.x / 2.x contributes a fixed amount of red, green and
blue (the factors below are the widely used linear fit that A1111 calls "Approx cheap"). The picture
has the latent's resolution (1/8 of the image's side), which is what a progress preview needs.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

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
