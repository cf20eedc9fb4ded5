"""Extras: A1111's post-processing of finished images (its "Upscale" operation; face restoration is
not available here).

The upscalers: the plain ones A1111 always lists ("Lanczos" and "Nearest" resample the image), and the model
upscalers found in the model folders (modules/models/upscalers), which the caller passes in as `PassFor`. As in
A1111's Extras, upscaler 1 "None" leaves the image as it is (no resize at all), and the size an upscaler
produces is rounded down to a multiple of 8 with a final Lanczos resize (modules/upscaling). An upscaler that
is not there, and GFPGAN/CodeFormer, are refused with a message saying so, never ignored.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

from PIL import Image
from pydantic import BaseModel, Field

from modules import images, infotext, upscaling

PassFor = Callable[[str, float], upscaling.Pass]  # (upscaler name, scale) -> one pass of that upscaler
MAX_SIDE = upscaling.MAX_SIDE  # the largest side an extras image may get (a guard against requests that exhaust memory)


class ExtrasError(ValueError):
    """The post-processing cannot be done as asked; the message says why."""


class ExtrasParams(BaseModel):
    """What to do to each image, with the field names and defaults of A1111's extras API."""
    resize_mode: Literal[0, 1] = Field(0, description="0: scale by upscaling_resize; 1: scale to "
                                                      "upscaling_resize_w x upscaling_resize_h")
    upscaling_resize: float = Field(2, gt=0, allow_inf_nan=False, description="Scale factor (resize_mode 0)")
    upscaling_max_side_length: int = Field(
        0, ge=0, le=MAX_SIDE, description="resize_mode 0: when the scaled image would be longer than this on "
                                          "its longest side, scale it to this length instead (0: no limit)")
    upscaling_resize_w: int = Field(512, ge=1, le=MAX_SIDE, description="Target width (resize_mode 1)")
    upscaling_resize_h: int = Field(512, ge=1, le=MAX_SIDE, description="Target height (resize_mode 1)")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop the scaled image to the target size")
    upscaler_1: str = Field("None", description="Main upscaler: None (leaves the image as it is), Lanczos, Nearest "
                                                "or a model upscaler's name (GET /sdapi/v1/upscalers lists them)")
    upscaler_2: str = Field("None", description="Second upscaler, blended over the first by its visibility")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False,
                                                description="How much of upscaler 2 shows")
    upscale_first: bool = Field(False, description="Upscale before face restoration (accepted; there is no face "
                                                   "restoration here)")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="GFPGAN face restoration: not available, must be 0")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="CodeFormer face restoration: not available, "
                                                                    "must be 0")
    codeformer_weight: float = Field(0, ge=0, le=1, description="CodeFormer weight (unused: not available)")


def check_upscaler(field: str, name: str, available: Sequence[str]) -> None:
    """ExtrasError naming the field when `name` is not one of the upscalers `available`."""
    if name not in available:
        raise ExtrasError(f"{field}: there is no upscaler {name!r}; available: {', '.join(available)}. "
                          f"{upscaling.WHERE_MODELS}")


def check(params: ExtrasParams, available: Sequence[str] = upscaling.BUILTIN) -> None:
    """Refuse what cannot be done, before any work is queued (ExtrasError naming the field); `available`: the
    upscalers' names."""
    check_upscaler("upscaler_1", params.upscaler_1, available)
    check_upscaler("upscaler_2", params.upscaler_2, available)
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(params, name) > 0:
            raise ExtrasError(f"{name}: face restoration (GFPGAN, CodeFormer) is not available here; "
                              "send gfpgan_visibility and codeformer_visibility 0")


def _limit_longest_side(w: float, h: float, limit: int) -> tuple[int, int]:
    """(w, h) shrunk in proportion so that the longer side is `limit`."""
    if h > w and h > limit:
        w, h = limit * w // h, limit
    elif w > limit:
        w, h = limit, limit * h // w
    return int(w), int(h)


def _dest(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size an upscaler makes at `scale`: rounded down to a multiple of 8 (ExtrasError when a side would be
    smaller than 8 or larger than MAX_SIDE)."""
    dest = upscaling.dest_size(width, height, scale)
    if min(dest) < 8 or max(dest) > MAX_SIDE:
        raise ExtrasError(f"The upscaled image would be {dest[0]}x{dest[1]} pixels; each side must be between "
                          f"8 and {MAX_SIDE}")
    return dest


def _plan(width: int, height: int, p: ExtrasParams, info: dict[str, Any]) -> tuple[float, tuple[int, int] | None]:
    """How an upscaler treats a width x height image: (the scale, the size it is cropped to or None); its
    infotext keys go into `info`."""
    mode, crop, to_w, to_h = p.resize_mode, p.upscaling_crop, p.upscaling_resize_w, p.upscaling_resize_h
    if mode == 1:
        scale = max(to_w / width, to_h / height)
        info["Postprocess upscale to"] = f"{to_w}x{to_h}"
    else:
        scale = p.upscaling_resize
        info["Postprocess upscale by"] = scale
        limit = p.upscaling_max_side_length
        if limit and max(width, height) * scale > limit:  # scale to the limit instead, without cropping
            mode, crop = 1, False
            to_w, to_h = _limit_longest_side(width * scale, height * scale, limit)
            scale = max(to_w / width, to_h / height)
            info["Max side length"] = limit
    return scale, ((to_w, to_h) if mode == 1 and crop else None)


def _upscale(image: Image.Image, upscaler: str, p: ExtrasParams, info: dict[str, Any], pass_for: PassFor
             ) -> Image.Image:
    """One upscaler's result, as A1111's Upscale operation computes it; its infotext keys go into `info`."""
    scale, crop_to = _plan(image.width, image.height, p, info)
    _dest(image.width, image.height, scale)  # refused before the upscaler runs
    image = upscaling.upscale(image, scale, pass_for(upscaler, scale))
    if crop_to is not None:  # centred on a black canvas of the target size (A1111's "crop to fit")
        canvas = Image.new("RGB", crop_to)
        canvas.paste(image, box=(crop_to[0] // 2 - image.width // 2, crop_to[1] // 2 - image.height // 2))
        image = canvas
        info["Postprocess crop to"] = f"{image.width}x{image.height}"
    return image


def output_size(width: int, height: int, params: ExtrasParams) -> tuple[int, int]:
    """The size `run` makes of a width x height image, from the numbers alone (before anything is decoded);
    ExtrasError, as `run` gives, when the upscaled image would be too large or too small."""
    if params.upscaler_1 == "None":
        return width, height
    scale, crop_to = _plan(width, height, params, {})
    dest = _dest(width, height, scale)
    return crop_to or dest


def run(image: Image.Image, params: ExtrasParams, pass_for: PassFor = upscaling.plain_pass,
        available: Sequence[str] = upscaling.BUILTIN) -> tuple[Image.Image, str]:
    """Post-process one image with the upscalers `available`, `pass_for` giving their passes. Returns the result
    and A1111's extras infotext (`Postprocess upscale by: 2, Postprocess upscaler: Lanczos`; '' when nothing was
    done). The result's `info` keeps the original's text fields (its `parameters` too) and adds the infotext as
    `extras` and `postprocessing`, the chunks A1111 writes."""
    check(params, available)
    original_text, items = images.read_info(image)
    kept = {k: v for k, v in items.items() if isinstance(v, str)}
    if original_text:
        kept["parameters"] = original_text
    out = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    info: dict[str, Any] = {}
    if params.upscaler_1 != "None":
        first = _upscale(out, params.upscaler_1, params, info, pass_for)
        info["Postprocess upscaler"] = params.upscaler_1
        if params.upscaler_2 != "None" and params.extras_upscaler_2_visibility > 0:
            second = _upscale(out, params.upscaler_2, params, info, pass_for)
            if second.mode != first.mode:
                second = second.convert(first.mode)
            first = Image.blend(first, second, params.extras_upscaler_2_visibility)
            info["Postprocess upscaler 2"] = params.upscaler_2
        out = first
    elif out is image:
        out = image.copy()
    text = infotext.create("", "", info)
    out.info = {**kept, "postprocessing": text, "extras": text}
    return out, text
