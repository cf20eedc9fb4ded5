"""Matched noise (Outpainting mk2's start for the area it grows): the image kept where the mask is black, noise whose
colours have the image's distribution where it is white, the same numbers for the same inputs.

Checked once against A1111's own get_matched_noise with scikit-image 0.25.2 on five images and masks (sizes 64 to
320, fall-off 0.5-4, colour variation 0-1): bit-identical (see the session note); scikit-image is not a dependency,
so that comparison is not part of this suite."""

from __future__ import annotations

import numpy as np
import pytest

from modules import matched_noise


def image_and_mask(seed: int = 1, size=(48, 80)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3)).astype(np.float64) / 255.0
    mask = np.zeros((*size, 3))
    mask[:, 50:] = 1.0  # the right part is grown
    return image, mask


def test_the_image_is_kept_and_the_noise_has_its_colours():
    image, mask = image_and_mask()
    out = matched_noise.matched_noise(image.copy(), mask, 1.0, 0.05)
    assert np.array_equal(out[:, :50], image[:, :50])
    assert np.array_equal(out, matched_noise.matched_noise(image.copy(), mask, 1.0, 0.05))  # no hidden randomness
    for c in range(3):  # each channel's noise has the kept part's distribution: the same deciles, within a step
        kept, grown = image[:, :50, c].ravel(), out[:, 50:, c].ravel()
        assert np.abs(np.quantile(kept, np.linspace(0.1, 0.9, 9)) - np.quantile(grown, np.linspace(0.1, 0.9, 9))
                      ).max() < 0.05
    assert not np.array_equal(out[:, 50:], matched_noise.matched_noise(image.copy(), mask, 2.0, 0.5)[:, 50:])


def test_match_histogram_maps_quantiles_onto_the_reference():
    rng = np.random.default_rng(3)
    source, reference = rng.random((500, 3)), rng.normal(size=(500, 3))
    out = matched_noise.match_histogram(source, reference)
    for c in range(3):  # equal sizes, distinct values: exactly the reference's values, in the source's order
        assert np.array_equal(np.sort(out[:, c]), np.sort(reference[:, c]))
        assert np.array_equal(np.argsort(out[:, c]), np.argsort(source[:, c]))


def test_masks_it_cannot_match_and_canvases_too_large_are_refused():
    image, mask = image_and_mask()
    with pytest.raises(ValueError, match="leave some of the image"):
        matched_noise.matched_noise(image, np.ones_like(mask))
    with pytest.raises(ValueError, match="leave some of the image"):
        matched_noise.matched_noise(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="too large"):
        matched_noise.matched_noise(np.zeros((2049, 2048, 3)), np.zeros((2049, 2048, 3)))
