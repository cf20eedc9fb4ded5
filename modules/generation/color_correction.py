"""A1111's img2img color correction (setting img2img_color_correction): each result's colours are brought back to
its init image's. In CIE L*a*b* (OpenCV's 8-bit conversion), each channel's histogram is matched to the init image's
(scikit-image's match_histograms), and the result's own luminosity is then laid back over the matched colours
(blendmodes' Luminosity blend). The three libraries do the work, so the pictures are A1111's; they are imported
only when the setting is on."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

REQUIREMENTS = "opencv-python-headless, scikit-image and blendmodes"


class ColorCorrectionUnavailable(RuntimeError):
    """The setting is on but a library it needs is not installed."""


def _libraries() -> tuple[Any, Any, Any, Any]:
    try:
        import cv2
        from blendmodes.blend import BlendType, blendLayers
        from skimage import exposure
    except ImportError as e:
        raise ColorCorrectionUnavailable(
            f"img2img color correction (the setting img2img_color_correction) needs {REQUIREMENTS}, and {e.name} "
            "is not installed: run the launcher again (it installs requirements.txt), or turn the setting off"
        ) from None
    return cv2, exposure, blendLayers, BlendType


def target(image: Image.Image) -> np.ndarray:
    """What results are corrected towards: the picture in OpenCV's 8-bit L*a*b* (A1111's setup_color_correction)."""
    cv2 = _libraries()[0]
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2LAB)


def apply(correction: np.ndarray, image: Image.Image) -> Image.Image:
    """`image` with its L*a*b* histograms matched to `correction`'s, its own luminosity kept (A1111's
    apply_color_correction)."""
    cv2, exposure, blend_layers, blend_type = _libraries()
    original = image.convert("RGB")
    lab = cv2.cvtColor(np.asarray(original), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(lab, correction, channel_axis=2)
    recoloured = Image.fromarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype("uint8"))
    return blend_layers(recoloured, original, blend_type.LUMINOSITY).convert("RGB")
