"""Soft inpainting, as A1111's built-in extension computes it (extensions-builtin/soft-inpainting, v1.8 on).

Two parts, both driven by the unrounded latent mask (1 = repaint):
- every sampler step, the init latent and the model's latent are blended by the mask raised to the power
  sigma ** schedule_bias * preservation_strength, with the blended vectors' lengths interpolated separately
  ("transition contrast boost"), instead of the plain blend by the mask;
- after sampling, a per-image mask is made from how far each latent pixel moved from the init latent (a 5x5
  weighted-percentile filter, a threshold and a contrast curve), and the original pixels are laid back over the
  result through it instead of through the blurred inpainting mask.

Pure functions of tensors and images; the pipeline calls them (see pipeline.Start and prepare_img2img).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter

from modules import images
from modules.generation.params import SoftInpainting


def _wide(t: torch.Tensor) -> torch.dtype:
    """A1111 works out the vectors' lengths in 64 bits, or 32 where the device has none (MPS)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def step_mask(settings: SoftInpainting, mask: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The blend weight of the model's latent at noise level `sigma` (A1111: the sampler's sigma, or for DDIM,
    PLMS and UniPC the U-Net timestep): the mask to the power sigma ** schedule_bias * preservation_strength."""
    return torch.pow(mask, (sigma ** settings.mask_blend_power) * settings.mask_blend_scale)


def latent_blend(settings: SoftInpainting, init: torch.Tensor, current: torch.Tensor, weight: torch.Tensor
                 ) -> torch.Tensor:
    """init * (1 - weight) + current * weight, rescaled per pixel so that its length is the p-power mean of the two
    vectors' lengths (p = transition contrast boost), which keeps partly blended areas from going flat."""
    w = weight
    w1 = weight[:, :1]  # the lengths are per pixel: one channel of the weight
    mixed = init * (1 - w) + current * w
    wide = _wide(mixed)
    p = settings.inpaint_detail_preservation
    length = torch.norm(mixed, p=2, dim=1, keepdim=True).to(wide) + 0.00001
    wanted = (torch.norm(init, p=2, dim=1, keepdim=True).to(wide).pow(p) * (1 - w1)
              + torch.norm(current, p=2, dim=1, keepdim=True).to(wide).pow(p) * w1).pow(1 / p)
    return mixed * (wanted / length).to(mixed.dtype)


def blend(settings: SoftInpainting, init: torch.Tensor, current: torch.Tensor, mask: torch.Tensor,
          sigma: torch.Tensor) -> torch.Tensor:
    """One step's blend of the init latent with the model's (`sigma`: that step's; its first element counts)."""
    return latent_blend(settings, init, current, step_mask(settings, mask, sigma.reshape(-1)[0]))


def gaussian_kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A (2 * radius + 1)-square kernel exp(-d^2 / stddev^2), lowered and rescaled so that it reaches 0 one pixel
    beyond `radius` and is 1 at the centre."""
    def g(d2: float) -> float:
        return math.exp(-d2 / (stddev * stddev))

    floor = g((radius + 1.0) ** 2)
    scale = 1 / (1 - floor)
    size = 2 * radius + 1
    kernel = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            kernel[y, x] = max(0.0, (g(float(y - radius) ** 2.0 + float(x - radius) ** 2.0) - floor) * scale)
    return kernel


BAND = 32  # rows the filter works on at once (with the kernel's reach above and below): bounded memory


def percentile_filter(image: np.ndarray, kernel: np.ndarray, low: float, high: float, min_width: float = 1.0
                      ) -> np.ndarray:
    """Each pixel becomes the weighted mean of the part of its neighbourhood's weighted histogram that lies between
    the `low` and `high` fractions of the total weight (at least `min_width` of weight wide): with 0.9-1 a soft
    maximum, with 0.25-0.75 a soft median. The neighbourhood is the kernel's square, cut at the image's edges.

    Computed for a band of rows at a time, all its pixels at once, in the order and precision of A1111's
    per-pixel loop, so the result is the same to the bit."""
    r = kernel.shape[0] // 2
    out = np.empty_like(image)
    for top in range(0, image.shape[0], BAND):
        lo, hi = max(0, top - r), min(image.shape[0], top + BAND + r)  # the band and the rows its windows reach
        out[top:top + BAND] = _filter_rows(image[lo:hi], kernel, low, high, min_width)[top - lo:top - lo + BAND]
    return out


def _filter_rows(image: np.ndarray, kernel: np.ndarray, low: float, high: float, min_width: float) -> np.ndarray:
    """percentile_filter of `image` as if it were the whole picture (its first and last rows' windows cut)."""
    h, w = image.shape
    r = kernel.shape[0] // 2
    n = kernel.size
    values = np.zeros((h, w, n), dtype=image.dtype)
    weights = np.zeros((h, w, n), dtype=np.float64)
    valid = np.zeros((h, w, n), dtype=bool)
    ys, xs = np.mgrid[0:h, 0:w]
    k = 0
    for dy in range(-r, r + 1):  # the window's rows, then columns: the order A1111 collects them in
        for dx in range(-r, r + 1):
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            values[..., k] = np.where(inside, image[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0)
            weights[..., k] = np.where(inside, kernel[dy + r, dx + r], 0.0)
            valid[..., k] = inside
            k += 1
    # sort each window by value (stable, as Python's sort), the cut-off neighbours last
    order = np.argsort(np.where(valid, values, np.inf), axis=-1, kind="stable")
    values = np.take_along_axis(values, order, axis=-1)
    weights = np.take_along_axis(weights, order, axis=-1)
    valid = np.take_along_axis(valid, order, axis=-1)
    starts = np.zeros((h, w, n))
    total = np.zeros((h, w))
    for i in range(n):  # each value's span of the stacked weights, summed in order
        starts[..., i] = total
        total = np.where(valid[..., i], total + weights[..., i], total)
    ends = starts + np.where(valid, weights, 0.0)
    lo, hi = total * low, total * high
    narrow = hi - lo < min_width
    centre = (lo + hi) / 2
    nlo, nhi = centre - min_width / 2, centre + min_width / 2
    over = nhi > total
    nlo, nhi = np.where(over, total - min_width, nlo), np.where(over, total, nhi)
    under = nlo < 0
    nlo, nhi = np.where(under, 0.0, nlo), np.where(under, float(min_width), nhi)
    lo, hi = np.where(narrow, nlo, lo), np.where(narrow, nhi, hi)
    acc = np.zeros((h, w))
    acc_w = np.zeros((h, w))
    for i in range(n):
        overlap = valid[..., i] & (lo < ends[..., i]) & (hi > starts[..., i])
        part = np.minimum(hi, ends[..., i]) - np.maximum(lo, starts[..., i])
        acc = np.where(overlap, acc + values[..., i] * part, acc)
        acc_w = np.where(overlap, acc_w + part, acc_w)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(acc_w != 0, acc / np.where(acc_w != 0, acc_w, 1), 0.0)
    return out.astype(image.dtype)


def _smootherstep(x: np.ndarray) -> np.ndarray:
    return x * x * x * (x * (6 * x - 15) + 10)


def overlay_masks(settings: SoftInpainting, mask: torch.Tensor, init: torch.Tensor, samples: torch.Tensor,
                  width: int, height: int) -> list[Image.Image]:
    """Per image of the batch, the mask the original is laid back through ('L', width x height; 0 = the original
    wholly, 255 = the generated picture): where its latent moved less from the init latent than the difference
    threshold (scaled by the mask as far as `mask influence` says), the original shows."""
    latent_mask = mask[0, 0].float()
    scalar = 1 - (torch.clamp(latent_mask, min=0, max=1) ** (settings.mask_blend_scale / 2))
    influence = settings.composite_mask_influence
    scalar = 0.5 * (1 - influence) + scalar * influence
    scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
    distances = torch.norm(samples - init, p=2, dim=1)
    kernel = gaussian_kernel(1.5, 2)
    out = []
    for distance in distances:
        d = distance.float().cpu().numpy()
        d = percentile_filter(d, kernel, 0.9, 1.0)
        d = percentile_filter(d, kernel, 0.25, 0.75)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            d = d / (settings.composite_difference_threshold * scalar)  # the distance where the original is 50 %
            d = 1 / (1 + d ** settings.composite_difference_contrast)
            d = 255. * (1 - _smootherstep(d))
        d = np.nan_to_num(d, nan=0.0)  # 0 / 0 (no change, threshold 0): the original
        m = Image.fromarray(d.astype(np.uint8))
        m = images.resize_image(2, m, width, height).convert("L")
        out.append(m.filter(ImageFilter.GaussianBlur(radius=4)))  # no aliasing from the small latent grid
    return out
