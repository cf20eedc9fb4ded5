"""Says what an image of the shapes world (tools/shapes_world.py) shows, by plain pixel analysis.

- background: the palette colour most of the border pixels are nearest to;
- colour: the palette colour most of the other pixels are nearest to;
- shape: from how much of its bounding box the largest blob of that colour fills
  (circle pi/4 ~ 0.79, square 1, triangle 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tools.shapes_world import COLOURS, FILL_RATIO, PALETTE

_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)
MIN_AREA = 0.02  # a blob smaller than this fraction of the image is no shape
BORDER = 3  # pixels


@dataclass(frozen=True)
class Verdict:
    colour: str | None
    shape: str | None
    background: str
    fill: float  # blob area / bounding-box area (0 when there is no blob)
    area: float  # blob area / image area
    centre: tuple[float, float] | None = None  # (x, y) of the blob's bounding-box centre, pixels

    def matches(self, colour: str | None = None, shape: str | None = None, background: str | None = None) -> bool:
        """Whether every attribute given agrees."""
        return all(want is None or got == want for want, got in
                   ((colour, self.colour), (shape, self.shape), (background, self.background)))


def nearest_colours(image) -> np.ndarray:
    """HxW indices into COLOURS: the palette colour nearest to each pixel."""
    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    d = ((rgb[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def shape_from_fill(fill: float) -> str:
    ratios = sorted(FILL_RATIO.items(), key=lambda kv: kv[1])  # triangle 0.5, circle 0.785, square 1
    for (name, r), (_, r_next) in zip(ratios, ratios[1:]):
        if fill < (r + r_next) / 2:
            return name
    return ratios[-1][0]


def judge(image) -> Verdict:
    labels = nearest_colours(image)
    h, w = labels.shape
    border = np.concatenate([labels[:BORDER].ravel(), labels[-BORDER:].ravel(),
                             labels[:, :BORDER].ravel(), labels[:, -BORDER:].ravel()])
    bg = int(np.bincount(border, minlength=len(COLOURS)).argmax())
    inside = labels[labels != bg]
    if inside.size < MIN_AREA * h * w:
        return Verdict(None, None, COLOURS[bg], 0.0, inside.size / (h * w))
    fg = int(np.bincount(inside, minlength=len(COLOURS)).argmax())
    blobs, n = ndimage.label(labels == fg)
    sizes = np.bincount(blobs.ravel())[1:]
    blob = ndimage.binary_fill_holes(blobs == 1 + int(sizes.argmax()))
    area = int(blob.sum())
    if area < MIN_AREA * h * w:
        return Verdict(COLOURS[fg], None, COLOURS[bg], 0.0, area / (h * w))
    rows, cols = np.nonzero(blob.any(1))[0], np.nonzero(blob.any(0))[0]
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    fill = area / box
    centre = ((cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2)
    return Verdict(COLOURS[fg], shape_from_fill(fill), COLOURS[bg], fill, area / (h * w), centre)
