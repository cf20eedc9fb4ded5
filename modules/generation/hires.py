"""Hires. fix, A1111's way: the first pass at the base size, an upscale, then an img2img pass at the
target size over the last `hr_second_pass_steps` steps (0: the first pass's steps) of a longer schedule.

A1111 passes the hires steps to its img2img step setup explicitly, which then builds a schedule of
int(hr_steps / denoising_strength) steps and runs its last hr_steps; we do the same so a pasted infotext
gives A1111's image. Upscalers: the latent ones interpolate the latent; the others (None, Lanczos, Nearest and
the model upscalers) decode, resize as A1111's resize_image does (modules/upscaling) and encode.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from modules import infotext, upscaling
from modules.generation import samplers
from modules.generation.params import GenerationParams

DEFAULT_DENOISING = 0.7  # A1111's hires denoising strength when the request gives none

# A1111's latent upscale modes: name -> (torch interpolation mode, antialias)
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
def names(image_upscalers: Sequence[str] = upscaling.BUILTIN) -> list[str]:
    """The Hires. fix upscalers in A1111's order: the latent modes, then the image upscalers (None, Lanczos,
    Nearest and the model upscalers there are)."""
    return [*LATENT_UPSCALERS, *image_upscalers]


class UnknownUpscaler(ValueError):
    pass


def check_upscaler(name: str | None, image_upscalers: Sequence[str] = upscaling.BUILTIN) -> str:
    name = name or "Latent"
    if name not in LATENT_UPSCALERS and name not in image_upscalers:
        raise UnknownUpscaler(f"Unknown hires upscaler {name!r}. Available: {', '.join(names(image_upscalers))}. "
                              f"{upscaling.WHERE_MODELS}")
    return name


def upscale_plan(params: GenerationParams) -> tuple[int, int, int, int]:
    """(width, height) to upscale to and the latent columns/rows (truncate_x, truncate_y) to cut off
    afterwards, as A1111 plans it: the base size times hr_scale, or hr_resize_x/y with the other side in
    proportion when one is 0; with both given, the image is upscaled to cover that size and the latent
    centre-cropped to it."""
    w, h = params.width, params.height
    rx, ry = params.hr_resize_x, params.hr_resize_y
    if rx == 0 and ry == 0:
        return int(w * params.hr_scale), int(h * params.hr_scale), 0, 0
    if ry == 0:
        return rx, rx * h // w, 0, 0
    if rx == 0:
        return ry * w // h, ry, 0, 0
    if w / h < rx / ry:
        up_x, up_y = rx, rx * h // w
    else:
        up_x, up_y = ry * w // h, ry
    return up_x, up_y, (up_x - rx) // 8, (up_y - ry) // 8


def old_size_rule(params: GenerationParams) -> GenerationParams:
    """The setting use_old_hires_fix_width_height (A1111's calculate_target_resolution): Width and Height are the
    final size, which becomes the Hires resize; the first pass is about 512x512 pixels in its proportions."""
    width, height = infotext.old_first_pass_size(params.width, params.height)
    return params.model_copy(update={"width": width, "height": height, "hr_resize_x": params.width,
                                     "hr_resize_y": params.height})


def target_size(params: GenerationParams) -> tuple[int, int]:
    """(width, height) of the second pass's image."""
    up_x, up_y, cut_x, cut_y = upscale_plan(params)
    return up_x // 8 * 8 - cut_x * 8, up_y // 8 * 8 - cut_y * 8


def crop(latents: torch.Tensor, cut_x: int, cut_y: int) -> torch.Tensor:
    """A1111's centre crop of the upscaled latent (the odd column/row comes off the end)."""
    return latents[:, :, cut_y // 2:latents.shape[2] - (cut_y + 1) // 2, cut_x // 2:latents.shape[3] - (cut_x + 1) // 2]


def schedule(params: GenerationParams) -> tuple[int, int]:
    """(schedule steps, t_enc) of the second pass, as A1111's setup_img2img_steps with explicit steps."""
    strength = params.denoising_strength if params.denoising_strength is not None else DEFAULT_DENOISING
    return samplers.img2img_schedule(params.hr_second_pass_steps or params.steps, strength, fixed=True)


def upscale_latents(latents: torch.Tensor, upscaler: str, width: int, height: int, decode, encode,
                    resize: Callable[[Image.Image, int, int], Image.Image] | None) -> torch.Tensor:
    """Latents at width x height: interpolated (latent upscalers), or decoded, resized by `resize` (the image
    upscaler's, see upscaling.resize) and re-encoded."""
    if upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[upscaler]
        return torch.nn.functional.interpolate(latents, size=(height // 8, width // 8), mode=mode,
                                               antialias=antialias)
    assert resize is not None, f"the image upscaler {upscaler!r} needs its resize"
    return torch.cat([encode(resize(image, width, height)) for image in decode(latents)])


def as_first_pass(image: Image.Image) -> Image.Image:
    """A given first pass (A1111's firstpass_image, RGB) as A1111's pixel path sees it: stored as a -1..1 tensor and
    turned back into 8-bit pixels by truncation, which takes one off the values 1-63 (so the same image gives
    the same result)."""
    a = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0 * 2.0 - 1.0
    back = torch.clamp((torch.from_numpy(a) + 1.0) / 2.0, min=0.0, max=1.0).numpy()
    return Image.fromarray((255. * back).astype(np.uint8))


def upscale_image(first: Image.Image, count: int, upscaler: str, width: int, height: int, encode,
                  resize: Callable[[Image.Image, int, int], Image.Image] | None) -> torch.Tensor:
    """`count` latents at width x height from one given first-pass picture (RGB): encoded at its own size and
    interpolated (latent upscalers), or resized by `resize` (after A1111's round trip) and encoded, as
    `upscale_latents` does with decoded ones. Encoded once, for every image of the batch."""
    if upscaler in LATENT_UPSCALERS:
        latent = upscale_latents(encode(first), upscaler, width, height, None, None, None)
    else:
        assert resize is not None, f"the image upscaler {upscaler!r} needs its resize"
        latent = encode(resize(as_first_pass(first), width, height))
    return latent.repeat(count, 1, 1, 1)


SAME = (None, "", "Use same sampler", "Use same scheduler")  # hr_sampler_name / hr_scheduler: the first pass's


def infotext_fields(params: GenerationParams, sampler_label: str, schedule_label: str | None) -> dict:
    """A1111's hires keys, present only when they say something, in the order its txt2img `init` adds them:
    sampler, prompts and schedule type first, then the size, steps and upscaler."""
    fields: dict = {}
    if params.hr_sampler_name not in SAME and params.hr_sampler_name != params.sampler_name:
        fields["Hires sampler"] = sampler_label
    if params.hr_prompt and params.hr_prompt != params.prompt:
        fields["Hires prompt"] = params.hr_prompt
    if params.hr_negative_prompt and params.hr_negative_prompt != params.negative_prompt:
        fields["Hires negative prompt"] = params.hr_negative_prompt
    if params.hr_scheduler not in SAME and schedule_label:
        fields["Hires schedule type"] = schedule_label
    if params.hr_resize_x == 0 and params.hr_resize_y == 0:
        fields["Hires upscale"] = params.hr_scale
    else:
        fields["Hires resize"] = f"{params.hr_resize_x}x{params.hr_resize_y}"
    if params.hr_second_pass_steps:
        fields["Hires steps"] = params.hr_second_pass_steps
    fields["Hires upscaler"] = params.hr_upscaler or "Latent"
    return fields
