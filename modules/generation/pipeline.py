"""The denoising loop: prompt -> conditioning -> noise -> sampler steps with CFG -> VAE decode.

Reads like k-diffusion's samplers: a short function of (model, noise, schedule); all state is local.
Images come out per batch as soon as they are decoded, so a caller can save them while the next batch
runs and an interrupted job keeps what it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from modules import devices, images, prompt_syntax, upscaling
from modules.generation import (color_correction, extra_networks, hires, ksampling, masking, preview, rng, samplers,
                                schedules, soft_inpainting, vae_tiling)
from modules.generation.conditioning import ComposableCond, Cond, ScheduledCond
from modules.generation.context import JobContext, RefinerPlan, UncondSkips
from modules.generation.params import Img2ImgParams, SoftInpainting
from modules.generation.vae_tiling import VaeTiling
from modules.jobs import JobInterrupted, JobSkipped
from modules.prompt_syntax import Timeline
from modules.models import depth, hypertile, low_memory, taesd, token_merging

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
VAE_SCALE = 8
VAE_TILING_KEY = "VAE tiling"  # the infotext key of a job whose VAE ran in tiles


class NansError(RuntimeError):
    pass


class NonFiniteInput(NansError):
    """NaNs that come from what was asked, not from the model's precision: the sampler's numbers (its noise
    levels, eta, s_noise, ...) or the prompt's conditioning were already infinite or NaN before the U-Net."""


@dataclass
class Hooks:
    """How the loop reports progress and learns that it should stop. All optional."""
    on_batch: Callable[[int], None] | None = None  # a batch (0-based index) starts
    # (step, steps, x0) after each step, x0 its latest prediction of the clean latent: what a live preview
    # shows, and what a stopped batch is decoded from (A1111 returns the last denoised latent when interrupted)
    on_step: Callable[[int, int, torch.Tensor], None] | None = None
    # A1111's live_preview_content for what a live preview shows: "Combined" (the x0 on_step gives), or the
    # prediction of each image's "Prompt" (its first sub-prompt) or of the "Negative prompt" alone, given as x0 to
    # `on_preview` just before each step's on_step (not called for "Combined")
    preview: str = "Combined"
    on_preview: Callable[[torch.Tensor], None] | None = None
    check: Callable[[], None] | None = None  # raises JobInterrupted (stop) or JobSkipped (next batch)
    # a job with a refiner (ctx.refiner): load the refiner checkpoint / the job's own checkpoint again, each
    # made ready for the job (its networks and settings), returning the loaded model
    load_refiner: Callable[[], Any] | None = None
    load_base: Callable[[], Any] | None = None
    load_hires: Callable[[], Any] | None = None  # a job with a Hires checkpoint: load it in the model's place
    # a Hires. fix job whose hires prompt names other LoRA or hypernetworks than its prompt: (model, hires) applies
    # the hires prompt's networks (True) or the prompt's again (False) to the model, in place of those it has
    hires_networks: Callable[[Any, bool], None] | None = None
    # a job whose context asks for TAESD (vae_decode_method / vae_encode_method): the TAESD "decoder" or
    # "encoder" that fits a model, (model, part) -> module (raises taesd.TaesdMissing when its file is absent)
    taesd: Callable[[Any, str], torch.nn.Module] | None = None
    # an SD 2 depth model's img2img: its depth estimator, model -> module (raises depth.DepthModelMissing when the
    # file has none and models/midas has none either)
    depth_estimator: Callable[[Any], torch.nn.Module] | None = None
    # an image made larger with a model upscaler (Hires. fix, upscaler_for_img2img): (image, width, height,
    # upscaler name) -> the image at that size, as A1111's resize_image makes it (see upscaling.resize)
    upscale: Callable[[Image.Image, int, int, str], Image.Image] | None = None


def pixel_resize(hooks: Hooks | None, upscaler: str | None) -> Callable[[Image.Image, int, int], Image.Image]:
    """How an image upscaler resizes: A1111's resize_image with it (None and "None": Lanczos; the plain ones
    here; a model upscaler through the hooks)."""
    if upscaler in (None, "None"):
        return lambda image, w, h: upscaling.resize(image, w, h, None)
    if upscaler in upscaling.PLAIN:
        return lambda image, w, h: upscaling.resize(image, w, h, lambda scale: upscaling.plain_pass(upscaler, scale))
    if hooks is None or hooks.upscale is None:
        raise RuntimeError(f"the model upscaler {upscaler!r} needs Hooks.upscale")
    upscale = hooks.upscale
    return lambda image, w, h: upscale(image, w, h, upscaler)


def taesd_part(hooks: Hooks | None, model, part: str, method: str) -> torch.nn.Module | None:
    """The TAESD decoder / encoder for `model` when the job's method for that part is "TAESD", else None (the
    model's own VAE)."""
    if method != "TAESD":
        return None
    if hooks is None or hooks.taesd is None:
        raise taesd.TaesdMissing("The job asks for TAESD but nothing provides it")
    return hooks.taesd(model, part)


def _keeping_x0(hooks: Hooks, last_x0: list[torch.Tensor]) -> Hooks:
    """`hooks` whose on_step also keeps the latest x0 it is given in `last_x0`."""
    def on_step(step: int, steps: int, x0: torch.Tensor) -> None:
        last_x0[:] = [x0]
        if hooks.on_step:
            hooks.on_step(step, steps, x0)
    return dataclasses.replace(hooks, on_step=on_step)


@dataclass
class BatchOutput:
    images: list[Image.Image]
    seeds: list[int]
    batch_index: int
    interrupted: bool = False  # decoded from the last prediction of a batch the user interrupted
    skipped: bool = False  # the same for a batch the user skipped (the job goes on)
    vae_tiled: bool = False  # the VAE decoded or encoded in tiles for this batch (or one before it)
    fields: dict[str, Any] = field(default_factory=dict)  # infotext keys its sampling called for (UncondSkips')
    overlaid: list[masking.Overlaid] | None = None  # inpainting: each image before the original went back over it
    before_correction: list[Image.Image] | None = None  # img2img color correction: each image without it
    before_hires: list[Image.Image] | None = None  # Hires. fix: each image's first pass (JobContext.keep_before_hires)


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
    different chunk counts they run as two batches (as A1111 does).

    A cond may carry a pooled text vector besides its context; it then goes to the U-Net as
    `added_cond_kwargs["text_embeds"]`, batched like the contexts, with the job's `unet_inputs` (the
    model's prompt encoder gives them, e.g. SDXL's size and crop `time_ids`) repeated for every row."""

    def __init__(self, model, cond: ComposableCond | Cond | torch.Tensor, uncond: ScheduledCond | Cond | torch.Tensor,
                 cfg_scale: float, image_cond: torch.Tensor | None = None,
                 unet_inputs: dict[str, torch.Tensor] | None = None,
                 uncond_inputs: dict[str, torch.Tensor] | None = None, empty: torch.Tensor | None = None):
        self.cfg_scale = cfg_scale
        self.empty: torch.Tensor | None = None  # "pad": the empty prompt's conditioning (one chunk)
        self.rebind(model, cond, uncond, image_cond, unet_inputs, uncond_inputs, empty)
        self.switch: RefinerSwitch | None = None  # a refiner to switch to, armed by the batch loop
        self.step = 0  # calls so far
        self.total_calls = 0  # the calls the pass makes as A1111 counts them (set by `sample`)
        self.skips = UncondSkips()  # when the negative prompt's pass is left out (set by the batch loop)
        self.fields: dict[str, Any] = {}  # infotext keys the calls so far call for (the skips')
        self.cfg_multiplier = 1.0  # DDIM CFG++ uses cfg_scale / 12.5
        self.keep_uncond = False  # DDIM CFG++ also needs the unconditional prediction: kept in last_uncond
        self.last_uncond: torch.Tensor | None = None
        # what a live preview shows (Hooks.preview): "Prompt" / "Negative prompt" keep that prediction of the
        # latest call in preview_out (the model's output, as the guided one); "Combined" keeps nothing
        self.preview = "Combined"
        self.preview_out: torch.Tensor | None = None
        self.pad = ""  # prompt and negative prompt of different lengths: "pad" / "v0" (JobContext.pad_conds)

    def rebind(self, model, cond: ComposableCond | Cond | torch.Tensor, uncond: ScheduledCond | Cond | torch.Tensor,
               image_cond: torch.Tensor | None = None, unet_inputs: dict[str, torch.Tensor] | None = None,
               uncond_inputs: dict[str, torch.Tensor] | None = None, empty: torch.Tensor | None = None) -> None:
        """Run `model` with these conditionings from the next call on (the refiner switch); the call count,
        and so the prompt schedules' position, carries on."""
        self.unet = model.denoising_unet  # the PyTorch U-Net or the job's other backend for it
        self.autocast = model.unet_autocast  # a type the U-Net computes in for this job (None: its own)
        self.batch_cond_uncond = model.batch_cond_uncond  # False: two smaller U-Net batches
        self.dtype = low_memory.compute_dtype(model.unet)  # (in low-memory mode the weights rest in 16 bits)
        if not isinstance(cond, ComposableCond):
            cond = ComposableCond.fixed(cond)
        if not isinstance(uncond, ScheduledCond):
            uncond = ScheduledCond.fixed(uncond)
        self.parts = [(scheduled.to(self.dtype), weight) for scheduled, weight in cond.parts]
        self.uncond = uncond.to(self.dtype)
        self.image_cond = image_cond
        self.unet_inputs = dict(unet_inputs or {})
        self.uncond_inputs = dict(uncond_inputs if uncond_inputs is not None else self.unet_inputs)
        if empty is not None:
            self.empty = empty.to(self.dtype)

    def maybe_switch(self, timestep: int) -> None:
        """Switch to the refiner if it is due at this call (`timestep`: the model timestep of its noise level)."""
        if self.switch is not None and self.switch.plan.due(self.step, self.total_calls, timestep):
            switch, self.switch = self.switch, None
            switch.fire(self)

    def _added(self, rows: list[tuple[int, dict[str, torch.Tensor]]], device) -> dict[str, torch.Tensor]:
        """The job-wide U-Net inputs for a batch made of (count, inputs) row groups."""
        keys = rows[0][1].keys()
        return {k: torch.cat([inputs[k].to(device).expand(n, *inputs[k].shape[-1:]) for n, inputs in rows])
                for k in keys}

    def _unet(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
              image_cond: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
              inputs: list[tuple[int, dict[str, torch.Tensor]]] | None = None) -> torch.Tensor:
        """`inputs`: the job-wide inputs of the batch's rows, in groups (the prompt's rows, then the negative's);
        None: the prompt's for every row."""
        if image_cond is not None:  # inpainting models see [latent, mask, masked-image latent]
            x = torch.cat([x, image_cond.expand(x.shape[0], -1, -1, -1).to(x.dtype)], dim=1)
        t = t.to(x.device, torch.float32).expand(x.shape[0])
        extra = {}
        if pooled is not None or self.unet_inputs:
            added = self._added(inputs or [(x.shape[0], self.unet_inputs)], x.device) if self.unet_inputs else {}
            if pooled is not None:
                added["text_embeds"] = pooled
            extra["added_cond_kwargs"] = added
        with torch.autocast(x.device.type, self.autocast) if self.autocast else contextlib.nullcontext():
            return self.unet(x.to(self.dtype), t, encoder_hidden_states=context, **extra).sample.float()

    def conds_at(self, step: int) -> tuple[list[tuple[Cond, float]], Cond]:
        """The (cond, weight) of each sub-prompt and the uncond used at denoiser call `step`."""
        return [(scheduled.at(step), weight) for scheduled, weight in self.parts], self.uncond.at(step)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, level: float | None = None) -> torch.Tensor:
        """The guided prediction; `level`: the call's noise level, for the UncondSkips (None: never skipped)."""
        conds, uncond = self.conds_at(self.step)
        skip = None if level is None else self.skips.fields(self.step, self.total_calls, level)
        self.step += 1
        k, n = len(conds), x_in.shape[0]
        length = max(c.context.shape[0] for c, _ in conds)
        # sub-prompts of different chunk counts: the shorter are padded with their last vector (A1111)
        stacked = torch.stack([torch.cat([c.context, c.context[-1:].expand(length - c.context.shape[0], -1)])
                               for c, _ in conds])
        cond_context = stacked.repeat(n, 1, 1)  # image 0's sub-prompts, image 1's, ...
        x_cond = x_in.repeat_interleave(k, dim=0) if k > 1 else x_in
        uncond_context = uncond.context.expand(n, -1, -1)
        if self.pad and length != uncond_context.shape[1]:  # A1111 pads first: a skipped call's prompt too
            cond_context, uncond_context = self._padded(cond_context, uncond_context)
            length = cond_context.shape[1]
        cond_pooled = uncond_pooled = None
        if uncond.pooled is not None:
            cond_pooled = torch.stack([c.pooled for c, _ in conds]).repeat(n, 1)
            uncond_pooled = uncond.pooled.expand(n, -1)
        ic_uncond = ic_cond = self.image_cond  # one for all images (batch 1), or one per image
        if ic_uncond is not None and ic_uncond.shape[0] > 1 and k > 1:
            ic_cond = ic_uncond.repeat_interleave(k, dim=0)
        if skip is not None:  # A1111: each image's first sub-prompt stands in for the negative, guided at scale 1
            self.fields.update(skip)
            cond_out = self._unet(x_cond, t, cond_context, ic_cond, cond_pooled)
            stand_in = cond_out[0::k]
            if self.keep_uncond:
                self.last_uncond = stand_in
            self._keep_preview(stand_in, stand_in)  # A1111 puts the prompt's where the negative's would be
            out = stand_in.clone()
            for j, (_, weight) in enumerate(conds):
                out += (cond_out[j::k] - stand_in) * weight
            return self._checked(out, x_in, t, conds, uncond)
        scale = self.cfg_scale * self.cfg_multiplier
        if scale == 1 and k == 1 and conds[0][1] == 1 and not self.keep_uncond:  # guidance gives the cond prediction
            out = self._unet(x_in, t, cond_context, ic_cond, cond_pooled)
            self._keep_preview(out, out)  # (the negative prompt is not run: its preview shows the prompt's)
            return self._checked(out, x_in, t, conds, uncond)
        if length == uncond_context.shape[1] and self.batch_cond_uncond:
            ic_both = ic_cond if ic_cond is None or ic_cond.shape[0] == 1 else torch.cat([ic_cond, ic_uncond])
            pooled_both = None if cond_pooled is None else torch.cat([cond_pooled, uncond_pooled])
            both = self._unet(torch.cat([x_cond, x_in]), t, torch.cat([cond_context, uncond_context]), ic_both,
                              pooled_both, [(n * k, self.unet_inputs), (n, self.uncond_inputs)])
            cond_out, uncond_out = both[:n * k], both[n * k:]
        else:
            cond_out = self._unet(x_cond, t, cond_context, ic_cond, cond_pooled)
            uncond_out = self._unet(x_in, t, uncond_context, ic_uncond, uncond_pooled, [(n, self.uncond_inputs)])
        if self.keep_uncond:
            self.last_uncond = uncond_out
        self._keep_preview(cond_out[0::k], uncond_out)
        out = uncond_out.clone()
        for j, (_, weight) in enumerate(conds):
            out += (cond_out[j::k] - uncond_out) * (weight * scale)
        return self._checked(out, x_in, t, conds, uncond)

    def _keep_preview(self, prompt: torch.Tensor, negative: torch.Tensor) -> None:
        """Keep the prediction the live preview shows (see `preview`): each image's first sub-prompt's, as
        A1111's `denoised_image_indexes`, or the negative prompt's."""
        if self.preview != "Combined":
            self.preview_out = prompt if self.preview == "Prompt" else negative

    def _padded(self, cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's and the negative prompt's contexts made one length so that they go through the U-Net in one
        batch (A1111's pad_cond_uncond: the shorter gets the empty prompt's chunk repeated; v0: its own last
        vector repeated), and the infotext key that says so."""
        def extended(context: torch.Tensor, by: int, filler: torch.Tensor) -> torch.Tensor:
            """`filler` (one row, or one per row of `context`) appended `by` times to each row."""
            return torch.cat([context, filler.expand(context.shape[0], -1, -1).repeat(1, by, 1)], dim=1)

        if self.pad == "v0":
            self.fields["Pad conds v0"] = True
            if uncond.shape[1] < cond.shape[1]:
                return cond, extended(uncond, cond.shape[1] - uncond.shape[1], uncond[:, -1:])
            return extended(cond, uncond.shape[1] - cond.shape[1], cond[:, -1:]), uncond
        chunk = self.empty[None]
        repeats = (cond.shape[1] - uncond.shape[1]) // chunk.shape[1]
        if repeats == 0:  # not whole chunks apart (cannot happen with 75-token chunks)
            return cond, uncond
        self.fields["Pad conds"] = True
        if repeats > 0:
            return cond, extended(uncond, repeats, chunk)
        return extended(cond, -repeats, chunk), uncond

    def _checked(self, out: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor, conds, uncond) -> torch.Tensor:
        """`out`, unless it has NaNs: then NansError naming their cause, found in what the U-Net was given."""
        if not torch.isnan(out.flatten()[0]):
            return out
        if not all(c.is_finite() for c, _ in conds) or not uncond.is_finite():
            raise NonFiniteInput("The prompt's conditioning has infinite values: its emphasis weights are too large "
                                 "for the text encoder")
        if not torch.isfinite(x_in).all() or x_in.abs().max() > LATENT_OVERFLOW:
            raise NonFiniteInput(
                f"The sampler's latent became infinite, NaN or far too large before the U-Net call at timestep "
                f"{float(t):g} (step "
                f"{self.step}): the sampler's numbers overflowed, so the schedule's noise levels (the sigma_max, "
                "sigma_min and rho settings) or eta, s_noise or s_churn are out of range. This is not a "
                "precision problem; --no-half will not help")
        backend = getattr(self.unet, "precision", None)  # the OpenVINO U-Net says what it computes in
        if backend is not None:
            raise NansError(f"A tensor with NaNs was produced in the OpenVINO U-Net ({backend}) from finite inputs: "
                            "choose PyTorch (or the other OpenVINO precision) in Settings > Optimizations > U-Net "
                            "backend.")
        if self.dtype in (torch.float16, torch.bfloat16):
            raise NansError(f"A tensor with NaNs was produced in the U-Net, running in {str(self.dtype)[6:]} from "
                            "finite inputs. Try the --no-half flag (full precision); some checkpoints need it.")
        raise NansError("A tensor with NaNs was produced in the U-Net, in full precision (float32) and from finite "
                        "inputs: the checkpoint's weights may be broken (--no-half will not help).")


# A U-Net input (the latent scaled to about unit size) this large means the sampler's numbers overflowed, not the
# weights: NaNs then come from squares in the U-Net's normalisations, from inputs that are still finite.
LATENT_OVERFLOW = 1e6


@dataclass
class Start:
    """Where img2img sampling starts: the init latent (scaled), noised to step `steps - t_enc - 1` of the
    schedule, so that t_enc + 1 steps run. With `mask` (1 = repaint, 0 = keep; latent size) the init latent is
    blended in at every step, as A1111 does: into the x0 prediction after each U-Net call for the k-diffusion
    samplers, into the U-Net's input before it for DDIM, PLMS and UniPC (its `mask_before_denoising`), and into
    the result at the end. `soft`: A1111's Soft inpainting blend instead of the plain one (and no blend at the
    end)."""
    latent: torch.Tensor
    t_enc: int
    mask: torch.Tensor | None = None
    soft: SoftInpainting | None = None
    extra_noise: float = 0.0  # img2img_extra_noise: the start noise is added once more, this much of it

    def blend(self, current: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """`current` with the init latent outside the mask (A1111's current * nmask + init_latent * mask), or soft
        inpainting's blend at noise level `sigma`."""
        if self.mask is None:
            return current
        if self.soft is not None:
            return soft_inpainting.blend(self.soft, self.latent, current, self.mask, sigma)
        return self._plain(current)

    def final(self, samples: torch.Tensor) -> torch.Tensor:
        """The sampled latents blended with the init latent once more (A1111's img2img `sample`); soft
        inpainting keeps them as they are."""
        if self.mask is None or self.soft is not None:
            return samples
        return self._plain(samples)

    def _plain(self, current: torch.Tensor) -> torch.Tensor:
        return current * self.mask + self.latent * (1 - self.mask)


def sample(model, denoiser: Denoiser, noise: torch.Tensor, choice: samplers.SamplerChoice, steps: int,
           generators: list, hooks: Hooks, start: Start | None = None,
           options: samplers.SamplerOptions | None = None, seeds: list[int] | None = None) -> torch.Tensor:
    """Run the sampler over the `steps`-step schedule from pure noise (txt2img), or from `start` over its
    last t_enc + 1 steps (img2img). Hooks see the steps actually run. Per-step noise comes from the
    images' `generators` (the SDE samplers' from Brownian trees seeded with `seeds`)."""
    options = options or samplers.SamplerOptions()
    prepared = samplers.prepare(choice, steps, model.alphas_cumprod, options, sdxl=model.family.sampling.sdxl_schedules)
    # A1111 counts the calls a pass makes as its steps, twice for 2nd-order samplers
    denoiser.total_calls = choice.spec.total_steps(steps if start is None else start.t_enc + 1)
    if start is not None and start.extra_noise > 0:
        denoiser.fields["Extra noise"] = start.extra_noise
    sgm = start is None and prepared.state != "timestep" and options.sgm_noise_multiplier
    if sgm:  # A1111 scales a txt2img start so in its k-diffusion samplers only, and says so
        denoiser.fields["SGM noise multiplier"] = True
    if prepared.state == "timestep":
        out = _sample_timesteps(model, denoiser, noise, prepared, choice, generators, hooks, start)
    else:
        first = 0 if start is None else steps - start.t_enc - 1
        out = _sample_k(model, denoiser, noise, prepared, choice, first, generators, hooks, start, seeds, sgm,
                        quantize=options.quantize)
    return out if start is None else start.final(out)


def _previewing(denoiser: Denoiser, hooks: Hooks) -> list[torch.Tensor] | None:
    """Set the denoiser to keep the prediction a live preview shows (Hooks.preview); the list a sampler then puts
    its x0 in, or None when the preview shows the guided x0 (or nobody looks)."""
    showing = hooks.preview if hooks.on_preview is not None else "Combined"
    denoiser.preview, denoiser.preview_out = showing, None
    return [] if showing != "Combined" else None


def _sample_timesteps(model, denoiser: Denoiser, noise: torch.Tensor, prepared: samplers.PreparedSampler,
                      choice: samplers.SamplerChoice, generators: list, hooks: Hooks, start: Start | None
                      ) -> torch.Tensor:
    """A1111's DDIM, PLMS and UniPC: x starts as unit noise (txt2img), or as the init latent noised to
    timestep `timesteps[t_enc]` with sampling over `timesteps[:t_enc]` (img2img, as A1111 does it)."""
    timesteps, alphas = prepared.timesteps, prepared.alphas_cumprod.to(noise.device)
    if start is None:
        x = noise
    else:
        a = alphas[timesteps[min(start.t_enc, len(timesteps) - 1)]]
        x = start.latent * a.sqrt() + noise * (1 - a).sqrt()
        if start.extra_noise > 0:  # A1111: the same noise again, scaled to the start's signal level
            x = x + noise * start.extra_noise * a.sqrt()
        timesteps = timesteps[:start.t_enc]
    v_model = model.prediction_type == "v_prediction"
    kwargs = dict(prepared.kwargs)
    last_uncond: list[torch.Tensor] = []
    if choice.spec.cfg_pp:  # DDIM CFG++: guidance at cfg_scale / 12.5, re-noising with uncond eps
        denoiser.cfg_multiplier, denoiser.keep_uncond = 1 / 12.5, True
        kwargs["uncond_eps"] = lambda: last_uncond[-1]
    if prepared.function is ksampling.unipc:  # A1111 starts UniPC's img2img just above its last timestep
        kwargs["img2img"] = start is not None

    masked = start is not None and start.mask is not None
    blended_x0: list[torch.Tensor] = []  # masked: the x0 of the latest call, from the input the U-Net was given
    preview = _previewing(denoiser, hooks)  # the x0 of the prediction a live preview shows, when not the guided one

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if hooks.check:
            hooks.check()
        if denoiser.switch is not None:  # these samplers' model input is the timestep itself
            denoiser.maybe_switch(int(t))
        if start is not None:  # A1111 blends these samplers' U-Net input (its sampler goes on from x unblended)
            x = start.blend(x, t.float())
        out = denoiser(x, t.float(), level=float(t))
        a_t = alphas[int(t)]
        if denoiser.keep_uncond:
            u = denoiser.last_uncond
            last_uncond.append(a_t.sqrt() * u + (1 - a_t).sqrt() * x if v_model else u)
        def eps_of(out: torch.Tensor) -> torch.Tensor:
            return a_t.sqrt() * out + (1 - a_t).sqrt() * x if v_model else out

        e = eps_of(out)
        if masked:  # A1111's preview and interrupted result: the prediction from the blended input
            blended_x0[:] = [(x - (1 - a_t).sqrt() * e) / a_t.sqrt()]
        if preview is not None and denoiser.preview_out is not None:  # A1111's get_pred_x0, from the same input
            preview[:] = [(x - (1 - a_t).sqrt() * eps_of(denoiser.preview_out)) / a_t.sqrt()]
        return e

    shape = tuple(noise.shape[1:])
    # DDIM and PLMS step between the timesteps; UniPC runs one step per timestep (on its own time grid)
    total = len(timesteps) if prepared.function is ksampling.unipc else max(len(timesteps) - 1, 0)

    def on_step(i: int, latent: torch.Tensor, x0: torch.Tensor) -> None:
        if preview:
            hooks.on_preview(preview[0])
        if hooks.on_step:
            hooks.on_step(i + 1, total, blended_x0[0] if blended_x0 else x0)

    return prepared.function(eps, x, timesteps, alphas, lambda *_: rng.draw(generators, shape, noise.device),
                             on_step, **kwargs)


def _sample_k(model, denoiser: Denoiser, noise: torch.Tensor, prepared: samplers.PreparedSampler,
              choice: samplers.SamplerChoice, first: int, generators: list, hooks: Hooks, start: Start | None,
              seeds: list[int] | None, sgm: bool = False, quantize: bool = False) -> torch.Tensor:
    """The samplers written as k-diffusion functions: the U-Net wrapped as k-diffusion's CompVis
    denoiser (x in sigma units in, x0 prediction out), A1111's start x = noise * sigma_0 (with `sgm`, the SGM
    noise multiplier: noise * sqrt(1 + sigma_0^2)). `quantize` (enable_quantization): the U-Net's time is the
    nearest training timestep, as k-diffusion's quantized denoiser gives it."""
    sigmas = prepared.sigmas[first:].to(noise.device)
    trained = schedules.model_sigmas(prepared.alphas_cumprod)  # the training sigmas, computed once
    log_sigmas, table = trained.log().to(noise.device), trained.to(noise.device)
    v_model = model.prediction_type == "v_prediction"
    if start is None:
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0) if sgm else noise * sigmas[0]
    else:
        x = start.latent + noise * sigmas[0]
    if start is not None and start.extra_noise > 0:  # A1111: the same noise again, this much of it
        x = x + noise * start.extra_noise
    lcm_log = None if prepared.lcm_log_sigmas is None else prepared.lcm_log_sigmas.to(noise.device)
    preview = _previewing(denoiser, hooks)  # the x0 of the prediction a live preview shows, when not the guided one

    def model_time(sigma: torch.Tensor) -> torch.Tensor:
        # as a batch of levels, as k-diffusion's denoiser gets it: a 0-dim sigma would leave the arithmetic with
        # a 16-bit schedule (use_downcasted_alpha_bar) in 16 bits, where A1111's is in 32
        to_t = schedules.nearest_t if quantize else schedules.sigma_to_t
        return to_t(sigma.reshape(-1), log_sigmas).reshape(sigma.shape)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if hooks.check:
            hooks.check()
        if denoiser.switch is not None:  # the model timestep whose sigma is nearest (A1111's refiner test)
            denoiser.maybe_switch(int(torch.argmin((table - sigma.max()).abs())))
        c_in = 1 / (sigma ** 2 + 1) ** 0.5
        level = float(sigma.reshape(-1)[0])
        if lcm_log is not None:  # LCM: A1111 reads the output as eps at the grid timestep, then LCM-scales it
            t = ksampling.lcm_timestep(sigma, lcm_log, len(log_sigmas))

            def x0_of(out: torch.Tensor) -> torch.Tensor:
                return ksampling.lcm_x0(x, sigma, out, t)
        elif v_model:  # k-diffusion's CompVisVDenoiser scalings
            t = model_time(sigma)

            def x0_of(out: torch.Tensor) -> torch.Tensor:
                return x * (1 / (sigma ** 2 + 1)) + out * (-sigma / (sigma ** 2 + 1) ** 0.5)
        else:
            t = model_time(sigma)

            def x0_of(out: torch.Tensor) -> torch.Tensor:
                return x + out * -sigma
        x0 = x0_of(denoiser(x * c_in, t, level))
        if preview is not None and denoiser.preview_out is not None:  # A1111: not blended with the init latent
            preview[:] = [x0_of(denoiser.preview_out)]
        return x0 if start is None else start.blend(x0, sigma)  # the init latent outside the mask

    if choice.spec.brownian_noise and seeds is not None:
        step_noise = rng.BrownianNoise(x, sigmas, seeds)
    else:
        shape = tuple(x.shape[1:])

        def step_noise(sigma, sigma_next):
            return rng.draw(generators, shape, x.device)

    total = len(sigmas) - 1

    def on_step(i: int, latent: torch.Tensor, x0: torch.Tensor) -> None:
        if preview:
            hooks.on_preview(preview[0])
        if hooks.on_step:
            hooks.on_step(min(i + 1, total), total, x0)

    return prepared.function(denoise, x, sigmas, step_noise, on_step, **prepared.kwargs)


def stop_points(network) -> list[torch.nn.Module]:
    """Where a U-Net step (or a VAE decode) can be stopped: before each of its down, mid and up blocks and each
    of their layers (ResNet blocks, transformers, down- and upsamplers)."""
    mid = getattr(network, "mid_block", None)
    blocks = [*getattr(network, "down_blocks", []), *([mid] if mid is not None else []),
              *getattr(network, "up_blocks", [])]
    points = []
    for block in blocks:
        points.append(block)
        for name in ("resnets", "attentions", "downsamplers", "upsamplers"):
            points.extend(getattr(block, name, None) or [])
    return points


@dataclass
class CallTime:
    seconds: float = 0.0  # how long the network's latest complete call took


@contextlib.contextmanager
def stoppable(network, check: Callable[[], None] | None) -> Iterator[CallTime]:
    """Within this block `check` (which raises JobInterrupted or JobSkipped) runs at each of the network's stop
    points too, not only between steps: an interrupt lands within one layer of the step, which at a large
    size takes minutes on a CPU. Only calls from this thread are checked (the UI may decode a preview with the
    same VAE meanwhile). Yields how long the latest call took. The hooks are removed afterwards."""
    timing = CallTime()
    if check is None:
        yield timing
        return
    owner, started = threading.get_ident(), [0.0]

    def hook(_module, _args):
        if threading.get_ident() == owner:
            check()

    def start(_module, _args):
        started[0] = time.monotonic()

    def end(_module, _args, _out):
        timing.seconds = time.monotonic() - started[0]

    inner = getattr(network, "pytorch_unet", network)  # another backend's wrapper: the layers of the U-Net behind it
    handles = [module.register_forward_pre_hook(hook) for module in stop_points(inner)]
    handles += [network.register_forward_pre_hook(hook), network.register_forward_pre_hook(start),
                network.register_forward_hook(end)]
    try:
        yield timing
    finally:
        for handle in handles:
            handle.remove()


PARTIAL_DECODE_SECONDS = 5.0  # how long decoding may go on after an interrupt or skip


class _Abandoned(Exception):
    pass


def decode_unless_stopped(model, latents: torch.Tensor, stopping: Callable[[], bool], unet_seconds: float = 0.0,
                          decoder: torch.nn.Module | None = None, tiling: VaeTiling | None = None
                          ) -> list[Image.Image] | None:
    """`decode`, or None when `stopping()` has been true for PARTIAL_DECODE_SECONDS while it runs (it is asked
    before each of the VAE decoder's layers): A1111 decodes a batch that is interrupted or skipped, and one that
    was interrupted while it was decoded, which a GPU does in a second but a CPU takes minutes for at large
    sizes; the stop must still take effect within seconds. When a U-Net call at this size took longer than
    that (`unet_seconds`), the decode is given up at once: SD's VAE decoder costs about as much as a U-Net call,
    and one of its layers alone can take half a minute. With a TAESD `decoder` the decode takes a second or
    less and is not stopped."""
    if decoder is not None:
        return decode(model, latents, decoder)
    patience = 0.0 if unet_seconds > PARTIAL_DECODE_SECONDS else PARTIAL_DECODE_SECONDS
    since = None  # when `stopping()` was first true

    def check() -> None:
        nonlocal since
        if stopping():
            since = since or time.monotonic()
            if time.monotonic() - since >= patience:
                raise _Abandoned()

    try:
        with stoppable(model.vae.decoder, check):
            return decode(model, latents, tiling=tiling)
    except _Abandoned:
        log.info("Decoding the stopped batch would take too long here; showing its preview instead")
        return None


def sketch(latents: torch.Tensor) -> list[Image.Image]:
    """The live preview's cheap picture of each latent (no VAE), at the images' size."""
    size = (latents.shape[-1] * VAE_SCALE, latents.shape[-2] * VAE_SCALE)
    return [preview.latent_to_image(z).resize(size, resample=Image.Resampling.BILINEAR) for z in latents]


@torch.no_grad()
def decode(model, latents: torch.Tensor, decoder: torch.nn.Module | None = None,
           tiling: VaeTiling | None = None) -> list[Image.Image]:
    """VAE-decode one latent at a time (bounded memory), in tiles when `tiling` says so for their size. An fp16
    VAE that produces NaNs is switched to fp32 and the decode retried, as A1111's "auto VAE precision" does.
    With a TAESD `decoder` (see `taesd_part`) that decodes instead of the model's VAE (never tiled)."""
    images = []
    tiled = tiling is not None and tiling.applies(model.vae, latents.shape[-2] * VAE_SCALE,
                                                  latents.shape[-1] * VAE_SCALE)

    def run(z: torch.Tensor) -> torch.Tensor:
        return vae_tiling.decode(model.vae, z, tiling) if tiled and tiling else model.vae.decode(z).sample

    for latent in latents:
        if not torch.isfinite(latent).all():
            raise NonFiniteInput("The sampler's result is infinite or NaN: its numbers overflowed, so the schedule's "
                                 "noise levels (the sigma_max, sigma_min and rho settings) or eta, s_noise or s_churn "
                                 "are out of range. This is not a precision problem; --no-half will not help")
        if decoder is not None:
            images.append(_to_pil(taesd.decode(decoder, latent[None])[0]))
            continue
        z = latent[None] / model.vae.config.scaling_factor
        dtype = low_memory.compute_dtype(model.vae)
        out = run(z.to(dtype))
        if torch.isnan(out).any() and dtype != torch.float32:
            log.warning("The VAE produced NaNs in 16-bit precision; converting it to 32-bit float and retrying. "
                        "Use --no-half-vae to start that way.")
            model.upcast_vae()
            out = run(z.float())
        if torch.isnan(out).any():
            raise NansError("A tensor with NaNs was produced in the VAE.")
        images.append(_to_pil(out[0]))
    return images


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.moveaxis(arr, 2, 0).copy()) * 2.0 - 1.0


@torch.no_grad()
def encode(model, pixels: torch.Tensor, encoder: torch.nn.Module | None = None,
           tiling: VaeTiling | None = None) -> torch.Tensor:
    """VAE-encode (N, 3, H, W) pixels in [-1, 1] to scaled latents, in tiles when `tiling` says so for their
    size. Uses the mean of the VAE's latent distribution, not a random sample of it (A1111 samples): the same
    input always gives the same latent, so img2img is reproducible from its seed alone. An fp16 VAE that
    produces NaNs is retried in fp32. With a TAESD `encoder` (see `taesd_part`) that encodes instead (its
    latents are already scaled; never tiled)."""
    if encoder is not None:
        z = taesd.encode(encoder, pixels).to(model.device)
        if torch.isnan(z).any():
            raise NansError("A tensor with NaNs was produced in the TAESD encoder.")
        return z
    vae = model.vae
    out = []
    tiled = tiling is not None and tiling.applies(vae, pixels.shape[-2], pixels.shape[-1])

    def run(x: torch.Tensor) -> torch.Tensor:
        return vae_tiling.encode(vae, x, tiling) if tiled and tiling else vae.encode(x).latent_dist.mode()

    for x in pixels:
        dtype = low_memory.compute_dtype(vae)
        z = run(x[None].to(model.device, dtype))
        if torch.isnan(z).any() and dtype != torch.float32:
            log.warning("The VAE produced NaNs in 16-bit precision; converting it to 32-bit float and retrying.")
            model.upcast_vae()
            z = run(x[None].to(model.device, torch.float32))
        if torch.isnan(z).any():
            raise NansError("A tensor with NaNs was produced in the VAE encoder.")
        out.append(z.float() * vae.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def image_conditioning(model, pixels: torch.Tensor | None, mask: torch.Tensor | None, height: int,
                       width: int, weight: float = 1.0, tiling: VaeTiling | None = None) -> torch.Tensor | None:
    """The extra U-Net input of 9-channel inpainting models, [mask, masked-image latent] (None for other
    models). `pixels` (N, 3, H, W) in [-1, 1] and `mask` (1, 1, H, W), 1 = repaint. Without a mask the
    whole image is repainted: mask of ones, masked image uniform grey (what A1111 gives txt2img).
    `weight` is A1111's inpainting_mask_weight: the masked image is pixels * (1 - mask * weight), i.e.
    lerp(original, masked, weight); the mask channel itself is not weighted (as in A1111)."""
    if model.config.in_channels != 9:
        return None
    if pixels is None:
        pixels = torch.zeros(1, 3, height, width)  # 0.5 in [0,1] is 0 in [-1,1]
    if mask is None:
        mask = torch.ones(1, 1, *pixels.shape[-2:])
    masked = encode(model, pixels * (1.0 - mask * weight), tiling=tiling)  # weight 1: the masked area is grey
    latent_mask = torch.nn.functional.interpolate(mask, size=masked.shape[-2:]).to(model.device)
    return torch.cat([latent_mask.expand(masked.shape[0], -1, -1, -1), masked], dim=1)


def inpainting_conditioning(model, batch: int, height: int, width: int, tiling: VaeTiling | None = None
                            ) -> torch.Tensor | None:
    """For 9-channel inpainting models doing txt2img: mask of ones over a grey image."""
    return image_conditioning(model, None, None, height, width, tiling=tiling)


@dataclass
class Finished:
    """A batch's decoded images made into its results."""
    images: list[Image.Image]
    overlaid: list[masking.Overlaid] | None = None  # inpainting: each image before the original went back over it
    before_correction: list[Image.Image] | None = None  # color correction: each result as it would be without it


@dataclass
class _Plan:
    """What one kind of job adds to the shared batch loop."""
    shape: tuple[int, int, int]  # latent (C, H, W)
    image_cond: torch.Tensor | None = None
    start: Callable[[list[int]], Start] | None = None  # img2img: the start for a batch's seeds
    noise_multiplier: float = 1.0
    # img2img: color correction, and for inpainting the original pasted back (decoded images, the latents they were
    # decoded from, the batch's start -> the results and what was made on the way)
    finish: Callable[[list[Image.Image], torch.Tensor, Start | None], Finished] | None = None
    hires: bool = False  # txt2img with Hires. fix: a second pass after the first
    firstpass: Image.Image | None = None  # Hires. fix from this picture (each image of a batch), no first pass
    schedule_steps: int | None = None  # img2img: the schedule's length when it is not params.steps

    def finished(self, decoded: list[Image.Image], latents: torch.Tensor, start: Start | None) -> Finished:
        return self.finish(decoded, latents, start) if self.finish else Finished(decoded)


class RefinerMismatch(RuntimeError):
    """The refiner cannot continue what the job's model started (an inpainting refiner for another model)."""


class NeedsInitImage(ValueError):
    """txt2img with a model that makes images from a picture's depth (the SD 2 depth model)."""


def refuse_depth_txt2img(model) -> None:
    """A1111's txt2img feeds an SD 2 depth model the 5-channel inpainting conditioning and fails on a channel
    mismatch; here the request is refused with what to do instead."""
    if model.config.is_depth:
        raise NeedsInitImage(f"{model.info.name} is an SD 2 depth model: it makes images from the depth of an init "
                             "image, so use img2img with a picture (it cannot do txt2img)")


def depth_conditioning(model, hooks: Hooks | None, image: Image.Image, latent_size: tuple[int, int]
                       ) -> tuple[torch.Tensor, Image.Image]:
    """The depth model's fifth U-Net channel for `image` (the first init image at the processing size), and the
    depth map as a picture of the image's size."""
    if hooks is not None and hooks.depth_estimator is not None:
        estimator = hooks.depth_estimator(model)
    elif model.depth_model is not None:
        estimator = model.depth_model
    else:
        raise depth.DepthModelMissing(f"{model.info.name} has no depth estimator and nothing provides one")
    cond, picture = depth.conditioning(estimator, image_to_tensor(image)[None], latent_size,
                                       (image.height, image.width))
    return cond.to(model.device), depth.depth_image(picture)


@dataclass
class RefinerSwitch:
    """One pass's switch to the refiner (`ctx.refiner`), armed on the pass's Denoiser, which fires it once at
    the call `RefinerPlan.due` names: the refiner is loaded (the job's model is released first, see
    ModelManager), the prompts are encoded with its text encoder (A1111's setup_conds), and sampling goes on
    with the same latent, sampler state and call count."""
    plan: RefinerPlan
    load: Callable[[], Any]
    texts: tuple[str, str, Timeline]  # the prompt (networks taken out), the negative prompt, the steps they span
    size: tuple[int, int]  # the pass's width and height
    encoding: tuple[int, str]  # clip skip, emphasis
    on_switch: Callable[[Any], None]  # told the refiner model once it runs

    def fire(self, denoiser: Denoiser) -> None:
        model = self.load()
        prompt, negative, steps = self.texts
        clip_skip, emphasis = self.encoding
        image_cond = denoiser.image_cond if model.config.in_channels == 9 else None
        if model.config.in_channels == 9 and image_cond is None:
            raise RefinerMismatch(f"The refiner {self.plan.name} is an inpainting model; the job's model is not, "
                                  "so it has no masked image to give it")
        cond, uncond, empty = encode_texts(model, prompt, negative, steps, clip_skip, emphasis, denoiser.pad == "pad")
        width, height = self.size
        denoiser.rebind(model, cond, uncond, image_cond, model.text.unet_inputs(width, height),
                        model.text.unet_inputs(width, height, negative=True), empty)
        self.on_switch(model)


class _Models:
    """The models a job's batch runs on: the job's own (`base`) and, after a refiner switch, the refiner
    (`now`). Each batch and each Hires. fix pass starts on the base again, as in A1111."""

    def __init__(self, base, hooks: Hooks, ctx: JobContext):
        # A1111's Hypertile draws its tile splits from one generator per job, seeded with the job's first seed
        self.tiles = random.Random(ctx.seeds[0])
        self.base = self.now = base
        self.hires = None  # the Hires checkpoint's model, while it is the one loaded
        self.hooks = hooks
        self._stack: contextlib.ExitStack | None = None  # the sampling block the refiner is made stoppable in
        self._tiling = ctx.vae_tiling
        self._methods = (ctx.vae_decode_method, ctx.vae_encode_method)  # "Full" or "TAESD"
        self._merging = ctx.token_merging  # the first pass's token merging ratio (the hires pass sets its own)
        self._hooked = bool(ctx.token_merging or ctx.token_merging_hr)  # whether each model's U-Net needs the hooks
        self.vae_tiled = False  # whether the VAE has run in tiles for the job so far
        self._hires_networks_on = None  # the model that has the hires prompt's networks now (Hooks.hires_networks)

    def tiling(self, height: int, width: int) -> VaeTiling:
        """The job's VAE tiling, for a decode or encode of an image of this size, which is noted if it tiles."""
        self.vae_tiled = self.vae_tiled or self._tiling.applies(self.now.vae, height, width)
        return self._tiling

    def decode(self, latents: torch.Tensor, stopping: Callable[[], bool], unet_seconds: float
               ) -> list[Image.Image] | None:
        """`decode_unless_stopped` by the model in use: with TAESD when the job says so, else its VAE, tiled as
        the job says."""
        return decode_unless_stopped(self.now, latents, stopping, unet_seconds, **self._decoding(latents))

    def decode_now(self, latents: torch.Tensor) -> list[Image.Image]:
        """`decode` by the model in use, not stoppable (Hires. fix's pixel upscale)."""
        return decode(self.now, latents, **self._decoding(latents))

    def _decoding(self, latents: torch.Tensor) -> dict[str, Any]:
        """How the model in use decodes `latents` for the job: TAESD's decoder, or its VAE with the job's tiling."""
        decoder = taesd_part(self.hooks, self.now, "decoder", self._methods[0])
        if decoder is not None:
            return {"decoder": decoder}
        return {"tiling": self.tiling(latents.shape[-2] * VAE_SCALE, latents.shape[-1] * VAE_SCALE)}

    def encode_on_base(self, image: Image.Image) -> torch.Tensor:
        """An image encoded by the job's own model (loaded again after a refiner switch), as the job says."""
        return self._encode(self.base_again(), image)

    def encode_for_hires(self, image: Image.Image) -> torch.Tensor:
        """An image encoded by the model the hires pass runs on (A1111 encodes after loading the Hires checkpoint)."""
        return self._encode(self.for_hires(), image)

    def _encode(self, model, image: Image.Image) -> torch.Tensor:
        encoder = taesd_part(self.hooks, model, "encoder", self._methods[1])
        if encoder is not None:
            return encode(model, image_to_tensor(image)[None], encoder)
        return encode(model, image_to_tensor(image)[None], tiling=self.tiling(image.height, image.width))

    def base_again(self):
        if self.now is not self.base:
            self.base = self.hooks.load_base()  # made ready with the prompt's networks
            self._hires_networks_on = None
            self._use(self.base)
        elif self._hires_networks_on is self.base:
            self.hooks.hires_networks(self.base, False)
            self._hires_networks_on = None
        return self.base

    def use_hires_networks(self, model) -> None:
        """The hires prompt's networks on `model`, the one the hires pass runs on (when they differ from the
        prompt's); the next batch's `base_again` puts the prompt's back."""
        if self.hooks.hires_networks is not None and self._hires_networks_on is not model:
            self.hooks.hires_networks(model, True)
            self._hires_networks_on = model

    def for_hires(self):
        """The model the hires pass runs on: the Hires checkpoint when the job names one (loaded in the model's
        place, as A1111 reloads its weights; the next batch loads the job's own again), else the job's own."""
        if self.hooks.load_hires is None:
            return self.base_again()
        if self.hires is None or self.now is not self.hires:
            self.hires = self.hooks.load_hires()  # made ready with the prompt's networks
            self._hires_networks_on = None
            self._use(self.hires)
        return self.hires

    def switch(self, ctx: JobContext, second_pass: bool, texts: tuple[str, str, Timeline], size: tuple[int, int]
               ) -> RefinerSwitch | None:
        """The switch for a pass, or None when this pass does not switch."""
        plan = ctx.refiner
        if plan is None or self.hooks.load_refiner is None or not plan.allowed_in(ctx.hires, second_pass):
            return None
        return RefinerSwitch(plan, self.hooks.load_refiner, texts, size, (ctx.clip_skip, ctx.emphasis),
                             self._use)

    def _use(self, model) -> None:
        self.now = model
        if self._hooked:
            token_merging.prepare(model.unet)
        if self._stack is not None:
            self._stack.enter_context(stoppable(model.denoising_unet, self.hooks.check))

    @contextlib.contextmanager
    def sampling(self) -> Iterator[CallTime]:
        """Interrupts land within a layer of whichever model runs (see `stoppable`); the U-Net calls of this thread
        merge the first pass's share of tokens (see token_merging)."""
        if self._hooked:
            token_merging.prepare(self.now.unet)
        with contextlib.ExitStack() as stack:
            stack.enter_context(token_merging.merging(self._merging))
            timing = stack.enter_context(stoppable(self.now.denoising_unet, self.hooks.check))
            self._stack = stack
            try:
                yield timing
            finally:
                self._stack = None


def old_timelines_field(texts: tuple[str, str], used: Timeline, new: Timeline) -> dict[str, bool]:
    """A1111's infotext key `Old prompt editing timelines: True`: given when the pass counts in the old timelines
    (`used`, use_old_scheduling) and that changes the schedule of its prompt or negative prompt from the `new`
    ones'."""
    if not used.old:
        return {}
    prompt, negative = texts
    subs = [*dict.fromkeys(text for text, _ in prompt_syntax.split_and(prompt)), negative]
    changed = any(prompt_syntax.prompt_schedule(t, used) != prompt_syntax.prompt_schedule(t, new) for t in subs)
    return {"Old prompt editing timelines": True} if changed else {}


def encode_texts(model, prompt: str, negative: str, steps: int | Timeline, clip_skip: int, emphasis: str,
                 empty: bool = False) -> tuple[ComposableCond, ScheduledCond, torch.Tensor | None]:
    """A pass's conditioning over `steps` (its prompt editing timeline): the prompt's and the negative prompt's, and
    with `empty` the empty prompt's (one chunk:
    what pad_cond_uncond pads with, A1111's cond_stage_model_empty_prompt). In low-memory mode the text encoders are
    parked again until the next prompt (LoadedModel.park_text). What they freed is handed back before sampling (on
    a CPU their layers' 32-bit copies, see low_memory, leave the heap in holes the U-Net's large blocks cannot
    use)."""
    model.text_ready()
    cond = model.text.encode_prompt(prompt, steps, clip_skip, emphasis)
    uncond = model.text.encode_negative(negative, steps, clip_skip, emphasis)
    empty_cond = model.text.encode("", clip_skip, emphasis) if empty else None
    model.park_text()
    devices.empty_cache(model.device)
    return cond, uncond, empty_cond


def _generate(model, ctx: JobContext, hooks: Hooks, plan: _Plan) -> Iterator[BatchOutput]:
    """The loop every job shares: encode the prompts once, then per batch seed the generators, draw the
    noise, sample, decode. The prompt's extra-network tags (`<lora:...>`) are taken out before it is
    encoded; the negative prompt is used as written (A1111 reads tags from the prompt only)."""
    params, seeds, subseeds = ctx.params, list(ctx.seeds), ctx.variation_subseeds
    clip_skip, emphasis, randn_source, ensd = ctx.clip_skip, ctx.emphasis, ctx.randn_source, ctx.noise_seed_delta
    prompt = extra_networks.parse(params.prompt).text
    timeline = ctx.timeline()
    cond, uncond, empty = encode_texts(model, prompt, params.negative_prompt, timeline, clip_skip, emphasis,
                                       ctx.pad_conds == "pad")
    inputs = (model.text.unet_inputs(params.width, params.height),
              model.text.unet_inputs(params.width, params.height, negative=True))
    last_x0: list[torch.Tensor] = []  # the x0 the batch's latest step reported: what a stopped batch shows
    hooks = _keeping_x0(hooks, last_x0)
    models = _Models(model, hooks, ctx)
    # Hypertile, as A1111's script sets it once per job (its hires pass sets it again, see _hires_pass)
    use_hypertile(model, ctx, params.width, params.height, models.tiles, ctx.hypertile.unet.enable)
    for b in range(params.n_iter):
        if hooks.on_batch:
            hooks.on_batch(b)
        last_x0.clear()
        model = models.base_again()
        batch_seeds = seeds[b * params.batch_size:(b + 1) * params.batch_size]
        batch_subseeds = subseeds[b * params.batch_size:(b + 1) * params.batch_size] if subseeds else None
        generators = rng.create_generators(batch_seeds, randn_source, model.device)
        noise = rng.image_noise(batch_seeds, generators, plan.shape, model.device, randn_source, batch_subseeds,
                                params.subseed_strength, (params.seed_resize_from_w, params.seed_resize_from_h))
        if ensd:  # A1111: the per-step noise comes from generators seeded with seed + ENSD
            generators = rng.create_generators([s + ensd for s in batch_seeds], randn_source, model.device)
        if plan.noise_multiplier != 1.0:
            noise = noise * plan.noise_multiplier
        start = plan.start(batch_seeds) if plan.start else None
        # save_images_before_highres_fix: the first pass's pictures, filled by the hires pass
        kept: list[Image.Image] | None = [] if plan.hires and ctx.keep_before_hires else None
        denoiser = Denoiser(model, cond, uncond, params.cfg_scale, plan.image_cond, *inputs, empty=empty)
        denoiser.pad = ctx.pad_conds
        denoiser.switch = models.switch(ctx, False, (prompt, params.negative_prompt, timeline),
                                        (params.width, params.height))
        denoiser.skips, fields = ctx.uncond_skips, denoiser.fields  # the hires pass's keys join the first's
        fields.update(old_timelines_field((prompt, params.negative_prompt), timeline,
                                          dataclasses.replace(timeline, old=False)))
        first_hooks, second_hooks = hooks, None
        if plan.hires and plan.firstpass is None and hooks.on_step:  # progress over both passes, as A1111 counts it
            total = params.steps + (params.hr_second_pass_steps or params.steps)
            first_hooks = dataclasses.replace(hooks, on_step=lambda i, n, x: hooks.on_step(i, total, x))
            second_hooks = dataclasses.replace(hooks, on_step=lambda i, n, x: hooks.on_step(total - n + i, total, x))
        try:
            with models.sampling() as unet_time:
                if plan.firstpass is not None:  # A1111's firstpass_image: straight to the hires pass
                    latents = _hires_pass(models, ctx, None, batch_seeds, batch_subseeds, hooks, fields,
                                          plan.firstpass, keep=kept)
                else:
                    latents = sample(model, denoiser, noise, ctx.choice, plan.schedule_steps or params.steps,
                                     generators, first_hooks, start, ctx.options, batch_seeds)
                if plan.hires and plan.firstpass is None:
                    latents = _hires_pass(models, ctx, latents, batch_seeds, batch_subseeds, second_hooks or hooks,
                                          fields, keep=kept)
        except (JobSkipped, JobInterrupted) as stopped:
            # A1111 shows what a skipped or interrupted batch had become: its last prediction, decoded.
            skipped = isinstance(stopped, JobSkipped)
            partial = last_x0[-1] if last_x0 else None
            if partial is not None and start is not None:  # blended once more, as A1111 does what sampling returned
                partial = start.final(partial)
            if partial is not None:
                done = plan.finished(models.decode(partial, lambda: True, unet_time.seconds) or sketch(partial),
                                     partial, start)
                yield BatchOutput(done.images, batch_seeds, b, interrupted=not skipped, skipped=skipped,
                                  vae_tiled=models.vae_tiled, fields=dict(fields), overlaid=done.overlaid,
                                  before_correction=done.before_correction, before_hires=kept or None)
            if skipped:
                continue
            if partial is None:
                raise
            return
        stop: list[str] = []  # an interrupt or skip that came while the batch's images were decoded

        def stopping() -> bool:
            try:
                if hooks.check and not stop:
                    hooks.check()
            except JobInterrupted:
                stop.append("interrupted")
            except JobSkipped:
                stop.append("skipped")
            return bool(stop)

        # decoded by the model sampling ended with (the refiner's VAE after a switch, as in A1111); the U-Net's
        # freed activations are handed back first, so they do not add to the decode's peak
        devices.empty_cache(latents.device)
        images = models.decode(latents, stopping, unet_time.seconds)
        if images is None:  # a long decode that was stopped: shown as an interrupted / skipped batch
            done = plan.finished(sketch(latents), latents, start)
            yield BatchOutput(done.images, batch_seeds, b, interrupted=stop == ["interrupted"],
                              skipped=stop == ["skipped"], vae_tiled=models.vae_tiled, fields=dict(fields),
                              overlaid=done.overlaid, before_correction=done.before_correction,
                              before_hires=kept or None)
            if stop == ["skipped"]:
                continue
            return
        done = plan.finished(images, latents, start)
        yield BatchOutput(done.images, batch_seeds, b, vae_tiled=models.vae_tiled, fields=dict(fields),
                          overlaid=done.overlaid, before_correction=done.before_correction, before_hires=kept or None)


def use_hypertile(model, ctx: JobContext, width: int, height: int, tiles: random.Random, unet: bool) -> None:
    """Set A1111's Hypertile on the model's U-Net (on when `unet`) and VAE for a pass at width x height, splits drawn
    from `tiles`. A U-Net of another backend (OpenVINO's conversion) is not tiled."""
    table = hypertile.LAYERS_SDXL if model.family.name.startswith("sdxl") else hypertile.LAYERS_SD
    hypertile.configure(model.unet, table, width, height, dataclasses.replace(ctx.hypertile.unet, enable=unet), tiles)
    hypertile.configure(model.vae, hypertile.LAYERS_VAE, width, height, ctx.hypertile.vae, tiles)


def _hires_pass(models: _Models, ctx: JobContext, latents: torch.Tensor | None, seeds: list[int],
                subseeds: list[int] | None, hooks: Hooks, fields: dict[str, Any],
                first: Image.Image | None = None, keep: list[Image.Image] | None = None) -> torch.Tensor:
    """Hires. fix's second pass (see `hires`): upscale, fresh noise for the images' seeds at the new size
    (A1111 makes a new RNG there), then img2img over the end of the hires schedule, with the hires
    sampler and prompts when given (A1111 encodes them for the hires steps). A first pass that switched to
    the refiner decodes with it (for a pixel upscaler); the second pass starts on the job's model again.
    `first`: a given first-pass picture (A1111's firstpass_image) for every image, in place of `latents`. The
    infotext keys its sampling calls for are added to `fields`. `keep`: gets each image's first pass as a picture
    (A1111's save_images_before_highres_fix): as the image upscaler is given it, decoded for a latent upscaler
    (an extra decode, as in A1111, by the job's VAE decoder), or once the given first-pass picture (A1111 saves
    its VAE round trip for a latent upscaler)."""
    params, randn_source, ensd = ctx.params, ctx.randn_source, ctx.noise_seed_delta
    clip_skip, emphasis = ctx.clip_skip, ctx.emphasis
    up_x, up_y, cut_x, cut_y = hires.upscale_plan(params)
    latent_upscaler = ctx.hr_upscaler in hires.LATENT_UPSCALERS
    resize = None if latent_upscaler else pixel_resize(models.hooks, ctx.hr_upscaler)
    decode = models.decode_now
    if keep is not None:
        def decode(latents: torch.Tensor) -> list[Image.Image]:
            pictures = models.decode_now(latents)
            keep.extend(pictures)
            return pictures

        if first is not None:  # one picture for the batch, as A1111 saves it
            keep.append(hires.as_first_pass(images.flatten(first, ctx.background)))
        elif latent_upscaler:
            decode(latents)
    if first is not None:  # transparency flattened as init images are (A1111 fails on it); A1111 encodes it for a
        # latent upscaler before it loads a Hires checkpoint, for an image upscaler after
        encoder = models.encode_on_base if latent_upscaler else models.encode_for_hires
        latents = hires.upscale_image(images.flatten(first, ctx.background), len(seeds), ctx.hr_upscaler, up_x, up_y,
                                      encoder, resize)
    else:  # decoded by the model the first pass ended on, encoded by the one the hires pass runs on
        latents = hires.upscale_latents(latents, ctx.hr_upscaler, up_x, up_y, decode, models.encode_for_hires,
                                        resize)
    model = models.for_hires()
    # hires_fix_use_firstpass_conds (A1111: without a Hires checkpoint): its prompts are encoded with the first
    # pass's networks still on, and the hires prompt's are on for the U-Net only
    firstpass_conds = ctx.hires_firstpass_conds and models.hooks.load_hires is None
    if not firstpass_conds:
        models.use_hires_networks(model)
    if not ctx.hypertile.unet.enable:  # A1111's before_hr: a seed of its own for the second pass
        models.tiles.seed(ctx.seeds[0])
    use_hypertile(model, ctx, up_x, up_y, models.tiles, ctx.hypertile.unet_secondpass)
    latents = hires.crop(latents, cut_x, cut_y)
    shape = (LATENT_CHANNELS, *latents.shape[2:])
    height, width = shape[1] * VAE_SCALE, shape[2] * VAE_SCALE
    generators = rng.create_generators(seeds, randn_source, model.device)
    noise = rng.image_noise(seeds, generators, shape, model.device, randn_source, subseeds, params.subseed_strength,
                            (params.seed_resize_from_w, params.seed_resize_from_h))
    if ensd:
        generators = rng.create_generators([s + ensd for s in seeds], randn_source, model.device)
    steps, t_enc = hires.schedule(params)
    prompt = extra_networks.parse(params.hr_prompt or params.prompt).text
    negative = params.hr_negative_prompt or params.negative_prompt
    timeline = ctx.hires_timeline()
    fields.update(old_timelines_field((prompt, negative), timeline, ctx.hires_timeline(old=False)))
    cond, uncond, empty = encode_texts(model, prompt, negative, timeline, clip_skip, emphasis, ctx.pad_conds == "pad")
    models.use_hires_networks(model)
    image_cond = inpainting_conditioning(model, len(seeds), height, width, models.tiling(height, width))
    denoiser = Denoiser(model, cond, uncond, params.cfg_scale, image_cond, model.text.unet_inputs(width, height),
                        model.text.unet_inputs(width, height, negative=True), empty=empty)
    denoiser.pad = ctx.pad_conds
    denoiser.switch = models.switch(ctx, True, (prompt, negative, timeline), (width, height))
    denoiser.skips, denoiser.fields = ctx.uncond_skips, fields
    with token_merging.merging(ctx.token_merging_hr):  # A1111 sets the hires ratio for this pass only
        return sample(model, denoiser, noise, ctx.hr_choice, steps, generators, hooks,
                      Start(latents, t_enc, extra_noise=ctx.extra_noise), ctx.options, seeds)


@torch.no_grad()
def txt2img(model, ctx: JobContext, hooks: Hooks | None = None) -> Iterator[BatchOutput]:
    """Generate `params.n_iter` batches of `params.batch_size` images, one per seed of the context."""
    params = ctx.params
    refuse_depth_txt2img(model)
    shape = (LATENT_CHANNELS, params.height // VAE_SCALE, params.width // VAE_SCALE)
    plan = _Plan(shape, inpainting_conditioning(model, params.batch_size, params.height, params.width,
                                                ctx.vae_tiling), hires=ctx.hires,
                 firstpass=params.firstpass_image if ctx.firstpass else None)
    yield from _generate(model, ctx, hooks or Hooks(), plan)


@dataclass
class Img2ImgInputs:
    """An img2img job made ready: the init latents and masks in a plan for the batch loop, the number of
    sampler steps a batch runs, the infotext keys the job adds (A1111's extra generation parameters, in
    its order) and notes for the user."""
    plan: _Plan
    steps_run: int
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    depth_map: Image.Image | None = None  # the SD 2 depth model's depth map of the init image (near is white)


MASKED_CONTENT = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


def fill_mask(params: Img2ImgParams, prepared: masking.PreparedMask, size: tuple[int, int]) -> Image.Image:
    """What "fill" (and the latent noise modes' pre-fill) paints under: A1111's latent mask, the request's
    `latent_mask` (scaled to the input's size when it differs, where A1111 fails) or else the prepared mask."""
    if params.latent_mask is None:
        return prepared.mask
    latent = params.latent_mask
    return latent if latent.size == size else latent.resize(size)


@torch.no_grad()
def prepare_img2img(model, ctx: JobContext, hooks: Hooks | None = None) -> Img2ImgInputs:
    """Resize the init images to width x height by `resize_mode`, prepare the mask, pre-fill the area to
    repaint, VAE-encode. t_enc = int(min(denoising_strength, 0.999) * steps): each batch starts from the
    init latents noised to step steps - t_enc - 1 of the schedule and runs t_enc + 1 steps; with
    the context's `fix_steps` (img2img_fix_steps) exactly `steps` run, at the end of a longer schedule. Its
    `mask_weight` is inpainting_mask_weight, for 9-channel inpainting models (see image_conditioning). `hooks`
    gives the TAESD encoder when the context's vae_encode_method asks for it."""
    params: Img2ImgParams = ctx.params  # type: ignore[assignment]
    randn_source = ctx.randn_source
    width, height = params.width, params.height
    fields: dict[str, Any] = {}
    notes: list[str] = []
    prepared_mask = None
    soft = params.soft_inpainting if params.mask is not None else None
    if soft is not None:  # A1111's extension adds its keys before img2img adds its own, and unrounds the mask
        fields.update(soft.infotext_fields())
    round_mask = params.mask_round and soft is None
    if params.mask is not None:
        mask = params.mask
        if mask.size != params.init_images[0].size:  # the mask is drawn over the init image
            mask = mask.resize(params.init_images[0].size)
        if params.inpainting_mask_invert:
            fields["Mask mode"] = "Inpaint not masked"
        if params.mask_blur_x > 0 or params.mask_blur_y > 0:
            fields["Mask blur"] = params.mask_blur_x if params.mask_blur_x == params.mask_blur_y else None
        prepared_mask, note = masking.prepare(
            mask, width, height, params.resize_mode, bool(params.inpainting_mask_invert),
            params.mask_blur_x, params.mask_blur_y, params.inpaint_full_res, params.inpaint_full_res_padding,
            round_mask)
        if note:
            notes.append(note)
        if prepared_mask is not None and prepared_mask.crop is not None:
            fields["Inpaint area"] = "Only masked"
            fields["Masked area padding"] = params.inpaint_full_res_padding
        if prepared_mask is not None and params.inpainting_fill != 1:
            fields["Masked content"] = MASKED_CONTENT[params.inpainting_fill]
    if params.latent_mask is not None and prepared_mask is None:
        notes.append("latent_mask is used only with a mask (as in A1111): it was ignored")
    multiplier = 1.0 if params.initial_noise_multiplier is None else params.initial_noise_multiplier
    if multiplier != 1.0:
        fields["Noise multiplier"] = multiplier

    crop = prepared_mask.crop if prepared_mask else None
    originals, inputs = [], []  # what the result is pasted onto; what is encoded
    resize = pixel_resize(hooks, ctx.img2img_upscaler)
    for image in params.init_images:
        image = images.flatten(image, ctx.background)
        if crop is not None:
            originals.append(image)
            image = images.resize_image(2, image.crop(crop), width, height, resize)
        elif params.resize_mode == 3:  # encoded at its own size; the latent is resized. What a mask pastes onto is
            originals.append(images.resize_image(0, image, width, height))  # resized plainly: no upscaler work
        else:
            image = images.resize_image(params.resize_mode, image, width, height, resize)
            originals.append(image)
        if prepared_mask is not None and params.inpainting_fill != 1:  # A1111 fills under its latent mask
            image = masking.fill(image, fill_mask(params, prepared_mask, image.size))
        inputs.append(image)

    encoder = taesd_part(hooks, model, "encoder", ctx.vae_encode_method)
    latents = torch.cat([encode(model, image_to_tensor(im)[None], encoder, ctx.vae_tiling) for im in inputs])
    if encoder is None and any(ctx.vae_tiling.applies(model.vae, im.height, im.width) for im in inputs):
        fields[VAE_TILING_KEY] = True
    shape = (LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE)
    if latents.shape[-2:] != shape[1:]:  # latent upscale
        latents = torch.nn.functional.interpolate(latents, size=shape[1:], mode="bilinear")
    pixel_mask = latent_mask = None
    if prepared_mask is not None:
        m = np.asarray(prepared_mask.mask, dtype=np.float32) / 255.0
        pixel_mask = torch.from_numpy(np.around(m) if round_mask else m)[None, None]
        if params.latent_mask is not None:  # A1111: its first channel (of its RGB), straight to the latent's size
            latent = params.latent_mask
            first = latent.getchannel(0) if latent.mode in ("L", "RGB") else latent.convert("RGB").getchannel(0)
            small = first.resize((shape[2], shape[1]), resample=Image.Resampling.BICUBIC)  # per channel: the same
        else:
            small = prepared_mask.mask.resize((shape[2], shape[1]), resample=Image.Resampling.BICUBIC)
        lm = np.asarray(small, dtype=np.float32) / 255.0
        latent_mask = torch.from_numpy(np.around(lm) if round_mask else lm)[None, None].to(model.device)
    if soft is not None and latent_mask is not None and ctx.choice.spec.state == "timestep":
        notes.append(f"Soft inpainting with {ctx.choice.spec.name}: as in A1111, this sampler blends the original "
                     "into the U-Net's input only, so the area outside the mask may change too; a k-diffusion "
                     "sampler (Euler, DPM++ ...) keeps it")
    image_cond = depth_map = None
    if model.config.is_depth:  # the depth of the first (filled) input at the processing size, as A1111
        first = inputs[0] if inputs[0].size == (width, height) else images.resize_image(0, inputs[0], width, height)
        image_cond, depth_map = depth_conditioning(model, hooks, first, shape[1:])
    if model.config.in_channels == 9:  # conditioned on the (filled) inputs at the processing size
        sized = [im if im.size == (width, height) else images.resize_image(0, im, width, height) for im in inputs]
        pixels = torch.stack([image_to_tensor(im) for im in (sized if pixel_mask is not None else sized[:1])])
        image_cond = image_conditioning(model, pixels, pixel_mask, height, width, ctx.mask_weight, ctx.vae_tiling)

    schedule_steps, t_enc = samplers.img2img_schedule(params.steps, params.denoising_strength, ctx.fix_steps)

    def start(batch_seeds: list[int]) -> Start:
        init = latents if latents.shape[0] == len(batch_seeds) else latents.expand(len(batch_seeds), -1, -1, -1)
        if latent_mask is not None and params.inpainting_fill in (2, 3):
            keep = init * (1 - latent_mask)
            if params.inpainting_fill == 2:  # latent noise: fresh draws from the images' seeds
                fresh = rng.initial_noise(rng.create_generators(batch_seeds, randn_source, model.device),
                                          shape, model.device)
                init = keep + fresh * latent_mask
            else:  # latent nothing
                init = keep
        return Start(init, t_enc, latent_mask, soft if latent_mask is not None else None, ctx.extra_noise)

    # A1111 corrects towards each (filled) input as it is encoded, or Loopback's original init image
    corrections = [color_correction.target(images.flatten(im, ctx.background)) for im in
                   ([params.color_correction_image] if params.color_correction_image is not None else inputs)] \
        if ctx.color_correction else None

    def finish(decoded: list[Image.Image], latents: torch.Tensor, start: Start | None) -> Finished:
        overlays: list[masking.PreparedMask | None] = [prepared_mask] * len(decoded)
        if prepared_mask is not None and start is not None and start.soft is not None:
            # soft inpainting lays the original back where the picture changed little
            masks = soft_inpainting.overlay_masks(start.soft, start.mask, start.latent, latents, width, height)
            overlays = [masking.with_overlay(prepared_mask, m, originals[i % len(originals)].size)
                        for i, m in enumerate(masks)]

        def placed(i: int, image: Image.Image) -> tuple[Image.Image, masking.Overlaid | None]:
            overlay = overlays[i]
            if overlay is None:
                return image, None
            if not ctx.overlay:  # A1111's apply_overlay without an overlay: the picture as generated, not uncropped
                return image, masking.Overlaid(overlay.overlay.convert("L"), image)
            return masking.paste_back(image, originals[i % len(originals)], overlay)

        before = None
        if corrections:
            if ctx.keep_uncorrected:
                before = [placed(i, im)[0] for i, im in enumerate(decoded)]
            decoded = [color_correction.apply(corrections[i % len(corrections)], im) for i, im in enumerate(decoded)]
        done = [placed(i, im) for i, im in enumerate(decoded)]
        overlaid = [parts for _, parts in done] if prepared_mask is not None else None
        return Finished([image for image, _ in done], overlaid, before)

    plan = _Plan(shape, image_cond, start, multiplier,
                 finish if prepared_mask is not None or corrections else None, schedule_steps=schedule_steps)
    return Img2ImgInputs(plan, t_enc + 1, fields, notes, depth_map)


@torch.no_grad()
def img2img(model, ctx: JobContext, hooks: Hooks | None = None, inputs: Img2ImgInputs | None = None
            ) -> Iterator[BatchOutput]:
    """img2img and inpainting, A1111's way, in `params.n_iter` batches (`inputs` from `prepare_img2img`,
    made here when not given). With a mask only its white area is repainted: the latents outside it
    are kept at every step, and the original pixels are pasted back outside the blurred mask at the end."""
    inputs = inputs or prepare_img2img(model, ctx, hooks)
    yield from _generate(model, ctx, hooks or Hooks(), inputs.plan)
