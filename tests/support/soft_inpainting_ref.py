"""A1111's soft inpainting (extensions-builtin/soft-inpainting/scripts/soft_inpainting.py, v1.8-1.10) restated
plainly, one pixel at a time, as the tests' reference for modules/generation/soft_inpainting.py."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter


def step_blend(init, current, nmask, sigma, power=1.0, scale=0.5, boost=4.0):
    """get_modified_nmask + latent_blend: the mask to the power sigma ** power * scale, a linear blend whose
    per-pixel length is the boost-power mean of the two vectors' lengths."""
    t = torch.pow(nmask, sigma ** power * scale)
    mixed = init * (1 - t) + current * t
    have = mixed.norm(dim=1, keepdim=True).double() + 1e-5
    want = (init.norm(dim=1, keepdim=True).double() ** boost * (1 - t[:, :1])
            + current.norm(dim=1, keepdim=True).double() ** boost * t[:, :1]) ** (1 / boost)
    return mixed * (want / have).float()


def kernel(stddev=1.5, radius=2):
    """get_gaussian_kernel: exp(-d^2 / stddev^2) minus its value at radius + 1, rescaled to 1 at the centre."""
    zero = math.exp(-((radius + 1.0) ** 2) / stddev ** 2)
    k = np.zeros((2 * radius + 1, 2 * radius + 1))
    for y in range(2 * radius + 1):
        for x in range(2 * radius + 1):
            g = math.exp(-(float(y - radius) ** 2.0 + float(x - radius) ** 2.0) / (stddev * stddev))
            k[y, x] = max(0.0, (g - zero) * (1 / (1 - zero)))
    return k


def percentile_filter(img, k, low, high, min_width=1):
    """weighted_histogram_filter, pixel by pixel: the window's values sorted (stably), stacked by weight, and
    the weighted mean of what lies between the low and high fractions of the stack (at least min_width)."""
    r = k.shape[0] // 2
    out = img.copy()
    h, w = img.shape
    for y in range(h):
        for x in range(w):
            items = []
            for yy in range(max(0, y - r), min(h, y + r + 1)):
                for xx in range(max(0, x - r), min(w, x + r + 1)):
                    items.append((img[yy, xx], k[yy - y + r, xx - x + r]))
            items.sort(key=lambda item: item[0])
            spans, total = [], 0
            for value, weight in items:
                spans.append((value, total, total + weight))
                total += weight
            lo, hi = total * low, total * high
            if hi - lo < min_width:
                centre = (lo + hi) / 2
                lo, hi = centre - min_width / 2, centre + min_width / 2
                if hi > total:
                    lo, hi = total - min_width, total
                if lo < 0:
                    lo, hi = 0, min_width
            acc = acc_w = 0
            for value, start, end in spans:
                if lo >= end:
                    continue
                if hi <= start:
                    break
                part = min(hi, end) - max(lo, start)
                acc += value * part
                acc_w += part
            out[y, x] = acc / acc_w if acc_w != 0 else 0
    return out


def overlay_masks(nmask, init, samples, width, height, scale=0.5, influence=0.0, threshold=0.5, contrast=2.0):
    """apply_adaptive_masks' masks (before uncrop): 0 where the original is laid back wholly."""
    latent_mask = nmask[0, 0].float()
    scalar = 1 - (torch.clamp(latent_mask, min=0, max=1) ** (scale / 2))
    scalar = 0.5 * (1 - influence) + scalar * influence
    scalar = (scalar / (1.00001 - scalar)).numpy()
    k = kernel()
    masks = []
    for distance in torch.norm(samples - init, p=2, dim=1):
        d = distance.float().numpy()
        d = percentile_filter(d, k, 0.9, 1)
        d = percentile_filter(d, k, 0.25, 0.75)
        d = d / (threshold * scalar)
        d = 1 / (1 + d ** contrast)
        d = d * d * d * (d * (6 * d - 15) + 10)
        d = (255. * (1 - d)).astype(np.uint8)
        m = Image.fromarray(d).resize((width, height), resample=Image.Resampling.LANCZOS)
        masks.append(m.filter(ImageFilter.GaussianBlur(radius=4)))
    return masks
