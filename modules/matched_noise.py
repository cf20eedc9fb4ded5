"""Noise shaped like an image, to fill the area an outpainting pass repaints (A1111's Outpainting mk2 takes this from
g-diffuser-bot's `get_matched_noise`): grey-ish noise whose spectrum follows the image's (so its texture is the
image's at the same scale) and whose colours follow the image's histogram, pasted where the mask is white.

The same numbers as A1111's, step by step: the same float64 operations in the same order, numpy's generator seeded
with 0 (so the noise depends only on the image, the mask and the two parameters), and its histogram matching
(scikit-image's `match_histograms` on float data: each channel's sorted distinct values mapped through the
quantiles of the reference's) done here with numpy alone."""

from __future__ import annotations

import numpy as np

MAX_PIXELS = 2048 * 2048  # a canvas of H x W holds about ten complex H x W x 3 arrays at once (~1.6 GB at this size)


def _fft2(data: np.ndarray) -> np.ndarray:
    """The centred orthonormal 2-D transform of each channel."""
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(np.fft.fft2(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _ifft2(data: np.ndarray) -> np.ndarray:
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(np.fft.ifft2(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _falloff_window(rows: int, cols: int) -> np.ndarray:
    """A low-pass window, 1 / ((x^2 + 1)(y^2 + 1)) over [-1, 1] scaled to the longer side (g-diffuser's "mode 1",
    with its exponent std / 3.14 = 1)."""
    short = min(rows, cols)
    x = (np.arange(rows) / rows * 2. - 1.) * float(rows / short)
    y = (np.arange(cols) / cols * 2. - 1.) * float(cols / short)
    return (1 / ((x[:, None] ** 2 + 1.) * (y[None, :] ** 2 + 1.))) ** (3.14 / 3.14)


def match_histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`source` (N x C floats) with each channel's values replaced so that their distribution is the reference's
    (M x C): a value at quantile q becomes the reference's value at q (linear between the reference's)."""
    out = np.empty_like(source)
    for c in range(source.shape[1]):
        values, where, counts = np.unique(source[:, c], return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(reference[:, c], return_counts=True)
        quantiles = np.cumsum(counts) / source.shape[0]
        ref_quantiles = np.cumsum(ref_counts) / reference.shape[0]
        out[:, c] = np.interp(quantiles, ref_quantiles, ref_values)[where.reshape(-1)]
    return out


def _scale_to_one(values: np.ndarray) -> None:
    """Divide by the largest value, in place, unless it is 0 (A1111 divides anyway: NaN for a black image)."""
    peak = np.max(values)
    if peak != 0:
        values /= peak


def matched_noise(image: np.ndarray, mask: np.ndarray, falloff: float = 1.0, color_variation: float = 0.05
                  ) -> np.ndarray:
    """`image` (H x W x 3, floats in 0..1) with the area where `mask` (the same shape, 0..1) is white filled with
    matched noise; `falloff` is A1111's "Fall-off exponent (lower=higher detail)", `color_variation` its "Color
    variation". ValueError when the mask leaves nothing of the image to match (or covers nothing)."""
    rows, cols, channels = image.shape
    if rows * cols > MAX_PIXELS:
        raise ValueError(f"a {cols}x{rows} canvas is too large for matched noise (at most {MAX_PIXELS} pixels)")
    mask_grey = np.sum(mask, axis=2) / 3.
    to_fill, reference = mask_grey > 1e-6, mask_grey < 1e-3
    if not reference.any() or not to_fill.any():
        raise ValueError("the mask must leave some of the image and cover some of it")
    grey_rgb = np.repeat(mask_grey[:, :, None], 3, axis=2)

    windowed = image * (1. - grey_rgb)
    _scale_to_one(windowed)
    windowed += np.average(image) * mask  # the masked area at the image's average, not black, for the transform
    src_fft = _fft2(windowed)
    src_dist = np.absolute(src_fft)
    # where the spectrum is 0 (a flat image) A1111's division gives NaN: 0 here, the same numbers elsewhere
    src_phase = np.divide(src_fft, src_dist, out=np.zeros_like(src_fft), where=src_dist != 0)

    noise = np.random.default_rng(0).random((rows, cols, channels))
    noise_grey = np.sum(noise, axis=2) / 3.
    noise *= color_variation  # mostly grey: colour_variation of each channel's own noise
    for c in range(channels):
        noise[:, :, c] += (1. - color_variation) * noise_grey
    noise_fft = _fft2(noise)
    window = _falloff_window(rows, cols)
    for c in range(channels):
        noise_fft[:, :, c] *= window
    noise = np.real(_ifft2(noise_fft))
    shaped_fft = _fft2(noise)
    shaped_fft[:, :, :] = np.absolute(shaped_fft[:, :, :]) ** 2 * (src_dist ** falloff) * src_phase

    shaped = np.real(_ifft2(shaped_fft))
    shaped -= np.min(shaped)
    _scale_to_one(shaped)
    shaped[to_fill, :] = match_histogram(shaped[to_fill, :] ** 1., image[reference, :])
    shaped = image[:] * (1. - mask) + shaped * mask
    return np.clip(shaped, 0., 1.)
