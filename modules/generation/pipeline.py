"""The denoising loop: prompt -> conditioning -> noise -> sampler steps with CFG -> VAE decode.

Reads like k-diffusion's samplers: a short function of (model, noise, schedule); all state is local.
Images come out per batch as soon as they are decoded, so a caller can save them while the next batch
runs and an interrupted job keeps what it finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from modules.generation import extra_networks, rng, samplers
from modules.generation.conditioning import ComposableCond, ScheduledCond
from modules.generation.params import GenerationParams
from modules.jobs import JobSkipped

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
VAE_SCALE = 8


class NansError(RuntimeError):
    pass


@dataclass
class Hooks:
    """How the loop reports progress and learns that it should stop. All optional."""
    on_batch: Callable[[int], None] | None = None  # a batch (0-based index) starts
    on_step: Callable[[int, int, torch.Tensor], None] | None = None  # (step, steps, latent)
    check: Callable[[], None] | None = None  # raises JobInterrupted (stop) or JobSkipped (next batch)


@dataclass
class BatchOutput:
    images: list[Image.Image]
    seeds: list[int]
    batch_index: int


def _to_pil(decoded: torch.Tensor) -> Image.Image:
    # A1111's conversion: clamp((x + 1) / 2, 0, 1), then truncate 255*x to uint8 (not round).
    x = torch.clamp((decoded.float() + 1.0) / 2.0, min=0.0, max=1.0)
    arr = (255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)).astype(np.uint8)
    return Image.fromarray(arr)


class Denoiser:
    """The U-Net with classifier-free guidance: one call gives the guided prediction for a batch.

    Like A1111's CFG denoiser it counts its calls: call i uses the conditionings its schedules give for
    step i (prompt editing and alternation), and combines the AND sub-prompts as
    uncond + sum_j (cond_j - uncond) * (weight_j * cfg_scale). One U-Net batch holds every image's
    sub-prompts, image by image, then the unconds; when the prompt and the negative prompt have
    different chunk counts they run as two batches (as A1111 does)."""

    def __init__(self, model, cond: ComposableCond | torch.Tensor, uncond: ScheduledCond | torch.Tensor,
                 cfg_scale: float, image_cond: torch.Tensor | None = None):
        self.unet = model.unet
        self.dtype = next(model.unet.parameters()).dtype
        self.cfg_scale = cfg_scale
        if isinstance(cond, torch.Tensor):
            cond = ComposableCond.fixed(cond)
        if isinstance(uncond, torch.Tensor):
            uncond = ScheduledCond.fixed(uncond)
        self.parts = [(scheduled.to(self.dtype), weight) for scheduled, weight in cond.parts]
        self.uncond = uncond.to(self.dtype)
        self.image_cond = image_cond
        self.step = 0  # calls so far

    def _unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.image_cond is not None:  # inpainting models see [latent, mask, masked-image latent]
            x = torch.cat([x, self.image_cond.expand(x.shape[0], -1, -1, -1).to(x.dtype)], dim=1)
        t = t.to(x.device, torch.float32).expand(x.shape[0])
        return self.unet(x.to(self.dtype), t, encoder_hidden_states=context).sample.float()

    def conds_at(self, step: int) -> tuple[list[tuple[torch.Tensor, float]], torch.Tensor]:
        """The (cond, weight) of each sub-prompt and the uncond used at denoiser call `step`."""
        return [(scheduled.at(step), weight) for scheduled, weight in self.parts], self.uncond.at(step)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conds, uncond = self.conds_at(self.step)
        self.step += 1
        k, n = len(conds), x_in.shape[0]
        length = max(c.shape[0] for c, _ in conds)
        # sub-prompts of different chunk counts: the shorter are padded with their last vector (A1111)
        stacked = torch.stack([torch.cat([c, c[-1:].expand(length - c.shape[0], -1)]) for c, _ in conds])
        cond_context = stacked.repeat(n, 1, 1)  # image 0's sub-prompts, image 1's, ...
        x_cond = x_in.repeat_interleave(k, dim=0) if k > 1 else x_in
        uncond_context = uncond.expand(n, -1, -1)
        if self.cfg_scale == 1 and k == 1 and conds[0][1] == 1:  # guidance would give the conditional prediction
            return self._checked(self._unet(x_in, t, cond_context))
        if length == uncond.shape[0]:
            both = self._unet(torch.cat([x_cond, x_in]), t, torch.cat([cond_context, uncond_context]))
            cond_out, uncond_out = both[:n * k], both[n * k:]
        else:
            cond_out = self._unet(x_cond, t, cond_context)
            uncond_out = self._unet(x_in, t, uncond_context)
        out = uncond_out.clone()
        for j, (_, weight) in enumerate(conds):
            out += (cond_out[j::k] - uncond_out) * (weight * self.cfg_scale)
        return self._checked(out)

    @staticmethod
    def _checked(out: torch.Tensor) -> torch.Tensor:
        if torch.isnan(out.flatten()[0]):
            raise NansError("A tensor with NaNs was produced in the U-Net. Try the --no-half flag "
                            "(full precision); some checkpoints need it.")
        return out


def sample(model, denoiser: Denoiser, noise: torch.Tensor, choice: samplers.SamplerChoice, steps: int,
           generators: list[torch.Generator], hooks: Hooks) -> torch.Tensor:
    prepared = samplers.prepare(choice, steps, model.alphas_cumprod, model.prediction_type)
    scheduler = prepared.scheduler
    x = noise * prepared.initial_scale
    for i, t in enumerate(prepared.timesteps):
        if hooks.check:
            hooks.check()
        x_in = scheduler.scale_model_input(x, t)
        guided = denoiser(x_in, t)
        x = scheduler.step(guided, t, x, generator=generators).prev_sample
        if hooks.on_step:
            hooks.on_step(i + 1, steps, x)
    return x


@torch.no_grad()
def decode(model, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode one latent at a time (bounded memory). An fp16 VAE that produces NaNs is switched
    to fp32 and the decode retried, as A1111's "auto VAE precision" does."""
    images = []
    for latent in latents:
        z = latent[None] / model.vae.config.scaling_factor
        out = model.vae.decode(z.to(model.vae.dtype)).sample
        if torch.isnan(out).any() and model.vae.dtype != torch.float32:
            log.warning("The VAE produced NaNs in 16-bit precision; converting it to 32-bit float and retrying. "
                        "Use --no-half-vae to start that way.")
            model.upcast_vae()
            out = model.vae.decode(z.float()).sample
        if torch.isnan(out).any():
            raise NansError("A tensor with NaNs was produced in the VAE.")
        images.append(_to_pil(out[0]))
    return images


@torch.no_grad()
def inpainting_conditioning(model, batch: int, height: int, width: int) -> torch.Tensor | None:
    """For 9-channel inpainting models doing txt2img: the whole image is "masked" (mask of ones) and the
    masked image is uniform grey, as A1111 does. We encode the grey image with the VAE's mean rather
    than a random sample of it, so the result is deterministic."""
    if model.config.in_channels != 9:
        return None
    vae = model.vae
    grey = torch.zeros(1, 3, height, width, device=model.device, dtype=vae.dtype)  # 0.5 in [0,1] is 0 in [-1,1]
    latent = vae.encode(grey).latent_dist.mode().float() * vae.config.scaling_factor
    mask = torch.ones(1, 1, height // VAE_SCALE, width // VAE_SCALE, device=model.device)
    return torch.cat([mask, latent], dim=1)


@torch.no_grad()
def txt2img(model, params: GenerationParams, seeds: list[int], clip_skip: int = 1, randn_source: str = "CPU",
            hooks: Hooks | None = None, emphasis: str = "Original") -> Iterator[BatchOutput]:
    """Generate `params.n_iter` batches of `params.batch_size` images; `seeds` has one seed per image.
    The prompt's extra-network tags (`<lora:...>`) are taken out before it is encoded; the negative
    prompt is used as written (A1111 reads tags from the prompt only)."""
    hooks = hooks or Hooks()
    choice = samplers.resolve(params.sampler_name, params.scheduler)
    prompt = extra_networks.parse(params.prompt).text
    cond = model.text.encode_prompt(prompt, params.steps, clip_skip, emphasis)
    uncond = model.text.encode_scheduled(params.negative_prompt, params.steps, clip_skip, emphasis)
    shape = (LATENT_CHANNELS, params.height // VAE_SCALE, params.width // VAE_SCALE)
    image_cond = inpainting_conditioning(model, params.batch_size, params.height, params.width)
    for b in range(params.n_iter):
        if hooks.on_batch:
            hooks.on_batch(b)
        batch_seeds = seeds[b * params.batch_size:(b + 1) * params.batch_size]
        generators = rng.create_generators(batch_seeds, randn_source, model.device)
        noise = rng.initial_noise(generators, shape, model.device)
        denoiser = Denoiser(model, cond, uncond, params.cfg_scale, image_cond)
        try:
            latents = sample(model, denoiser, noise, choice, params.steps, generators, hooks)
        except JobSkipped:
            continue
        yield BatchOutput(decode(model, latents), batch_seeds, b)
