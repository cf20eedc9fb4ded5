"""Inpainting masks, as AUTOMATIC1111 prepares them: binarised, optionally inverted, blurred, cropped for
"Only masked", used to pre-fill the area to repaint, and used at the end to put the original pixels back.

White (255) means "repaint here". Pure functions of PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from modules import images


def binary_mask(mask: Image.Image, round_mask: bool = True) -> Image.Image:
    """An 'L' mask from what a client sends, by A1111's `create_binary_mask`: the alpha channel of an RGBA image
    that has any transparency, rounded to 0/255 (threshold 128) unless `round_mask` is off; else its grey level
    as it is (a grey mask keeps its soft edges)."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        alpha = mask.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_mask else alpha
    return mask.convert("L")


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's kernel for GaussianBlur as A1111 calls it: size 2*int(2.5*sigma + 0.5) + 1."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def _blur_axis(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="reflect")  # OpenCV's default border, BORDER_REFLECT_101
    n = a.shape[axis]
    out = np.zeros_like(a)
    for i, w in enumerate(k):
        out += w * (p[i:i + n] if axis == 0 else p[:, i:i + n])
    return out


def blur(mask: Image.Image, sigma_x: float, sigma_y: float) -> Image.Image:
    """Gaussian blur in x and then y, each only when its sigma is > 0 (A1111's mask blur)."""
    if sigma_x <= 0 and sigma_y <= 0:
        return mask
    a = np.asarray(mask.convert("L"), dtype=np.float64)
    if sigma_x > 0:
        a = np.clip(np.round(_blur_axis(a, sigma_x, 1)), 0, 255)
    if sigma_y > 0:
        a = np.clip(np.round(_blur_axis(a, sigma_y, 0)), 0, 255)
    return Image.fromarray(a.astype(np.uint8), mode="L")


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box around the mask's non-zero pixels grown by `padding` (clipped to the image), or None
    for an empty mask."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    if not padding:
        return box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, wanted: float, limit: int) -> tuple[int, int]:
    diff = int(wanted - (hi - lo))
    lo -= diff // 2
    hi += diff - diff // 2
    if hi >= limit:
        lo -= hi - limit
        hi = limit
    if lo < 0:
        hi -= lo
        lo = 0
    return lo, min(hi, limit)


def expand_crop_region(box: tuple[int, int, int, int], width: int, height: int, image_width: int,
                       image_height: int) -> tuple[int, int, int, int]:
    """Grow `box` to the aspect ratio of the processing size width x height, staying inside the image
    where it can (a 128x32 box processed at 512x512 becomes 128x128)."""
    x1, y1, x2, y2 = box
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:
        y1, y2 = _grow(y1, y2, (x2 - x1) / ratio, image_height)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * ratio, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area painted with the surrounding colours, by compositing ever
    less blurred copies of the unmasked pixels (A1111's `masking.fill`)."""
    keep = ImageOps.invert(mask.convert("L"))
    visible = Image.new("RGBa", image.size)
    visible.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = visible.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


@dataclass
class PreparedMask:
    """A mask made ready for one job.

    `mask` is the blurred mask at the processing size (what the latent mask and the "fill" come from);
    `overlay` is the alpha used to put the original back over the result, at the size of the output
    (opaque original where it is 0); `crop` is the box "Only masked" works in, in original pixels."""
    mask: Image.Image
    overlay: Image.Image
    crop: tuple[int, int, int, int] | None = None


def prepare(mask: Image.Image, width: int, height: int, resize_mode: int, invert: bool, blur_x: int, blur_y: int,
            only_masked: bool, padding: int, round_mask: bool = True) -> tuple[PreparedMask | None, str | None]:
    """The mask for a job at width x height, and a note when "Only masked" could not be done (an empty
    mask: A1111 then runs plain img2img, without a mask)."""
    m = binary_mask(mask, round_mask)
    if invert:
        m = ImageOps.invert(m)
    m = blur(m, blur_x, blur_y)
    if only_masked:
        box = crop_region(m, padding)
        if box is None:
            return None, 'Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.'
        box = expand_crop_region(box, width, height, m.width, m.height)
        return PreparedMask(images.resize_image(2, m.crop(box), width, height), m, box), None
    m = images.resize_image(0 if resize_mode == 3 else resize_mode, m, width, height)
    overlay = Image.fromarray(np.clip(np.asarray(m, dtype=np.uint16) * 2, 0, 255).astype(np.uint8), mode="L")
    return PreparedMask(m, overlay), None


@dataclass
class Overlaid:
    """An inpainted image before the original went back over it: what A1111's `mask_for_overlay` and
    `original_denoised_image` are, from which its settings save_mask / return_mask and save_mask_composite /
    return_mask_composite make their pictures."""
    mask: Image.Image  # "L": the overlay mask (soft inpainting's own for each image), at the result's size
    denoised: Image.Image  # the generated picture placed as the result is ("Only masked": RGBA, clear around the box)

    def mask_image(self) -> Image.Image:
        """The "-mask" picture: the overlay mask as RGB."""
        return self.mask.convert("RGB")

    def composite(self) -> Image.Image:
        """The "-mask-composite" picture: the generated pixels where the mask is, transparent elsewhere (A1111 lays
        them through the mask in premultiplied RGBa, then back to RGBA)."""
        size = self.denoised.size
        alpha = images.resize_image(2, self.mask, size[0], size[1]).convert("L")
        return Image.composite(self.denoised.convert("RGBA").convert("RGBa"), Image.new("RGBa", size),
                               alpha).convert("RGBA")


def paste_back(generated: Image.Image, original: Image.Image, prepared: PreparedMask) -> tuple[Image.Image, Overlaid]:
    """The generated image with the original composited over it where the overlay mask is below 255:
    pixels outside the (blurred) mask are the original's exactly. For "Only masked" the generated crop is
    first scaled into its box of the full-size original. Also the parts the mask pictures are made from."""
    if prepared.crop is not None:
        generated = _uncrop(generated, original.size, prepared.crop, "RGBA")
    top = original.convert("RGB").copy()
    top.putalpha(ImageOps.invert(prepared.overlay.convert("L")))
    out = generated.convert("RGBA")
    out.alpha_composite(top)
    return out.convert("RGB"), Overlaid(prepared.overlay.convert("L"), generated)


def with_overlay(prepared: PreparedMask, overlay: Image.Image, size: tuple[int, int]) -> PreparedMask:
    """`prepared` with another overlay mask made at the processing size (soft inpainting's), placed as the
    original is: for "Only masked" scaled into the crop box of an image of `size`, 0 (the original) around it."""
    if prepared.crop is None:
        return replace(prepared, overlay=overlay.convert("L"))
    return replace(prepared, overlay=_uncrop(overlay.convert("L"), size, prepared.crop, "L"))


def _uncrop(image: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int], mode: str) -> Image.Image:
    """A1111's `uncrop`: `image` scaled to cover the box (crop and resize) and placed there on an empty canvas of
    `size` (transparent for RGBA, black for L)."""
    x1, y1, x2, y2 = box
    canvas = Image.new(mode, size)
    canvas.paste(images.resize_image(1, image, x2 - x1, y2 - y1), (x1, y1))
    return canvas
