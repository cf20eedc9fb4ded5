"""How much work one request may ask for, so that no request (nor a handful at once) can exhaust the
machine's memory or hold the queue for days.

The limits come from command-line flags, not from settings: a client that may change settings (POST
/sdapi/v1/options, override_settings) must not be able to raise them. The defaults are what an
AUTOMATIC1111 user never exceeds in normal use: its page's slider maxima (2048 pixels per side, batch
size 8, batch count 100), every step count up to the model's 1000 timesteps, input images up to
100 megapixels (photos from phone and camera sensors, 8192x8192 extras results), and Extras batches of up to
100 images whose results add up to 1100 megapixels (100 images of 1024x1024 upscaled to 3x, or four at the
largest size Extras makes, 16384x16384). A folder batch of Extras is read and saved one image at a time and
has no length limit; those two bound the results it keeps to show.
"""

from __future__ import annotations

from dataclasses import dataclass

MEGAPIXEL = 1_000_000
MEGABYTE = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_side: int = 2048  # --max-image-side: width and height of a generated image (A1111's slider maximum)
    max_batch_size: int = 8  # --max-batch-size: a batch holds at most this many images' pixels of the largest size
    max_batch_count: int = 100  # --max-batch-count: n_iter (A1111's slider maximum)
    max_steps: int = 1000  # --max-steps: steps and hr_second_pass_steps
    max_input_megapixels: float = 100.0  # --max-input-megapixels: an image sent to the server
    max_upload_mb: int = 100  # --max-upload-size: one request body, one uploaded file
    memory_limit_gb: float | None = None  # --memory-limit: what this process may hold, for the check before a job
    # --max-extras-images: images of one Extras batch (extra-batch-images, the tab's Batch Process); of a folder
    # batch (read and saved one at a time), the results kept to show
    max_extras_images: int = 100
    # --max-extras-megapixels: the results of one Extras batch, all held until it ends (of a folder batch, those
    # kept to show): 4 of the largest (16384x16384); Pillow holds 4 bytes a pixel, so 4 GiB
    max_extras_megapixels: float = 1100.0

    @property
    def max_pixels(self) -> int:
        """The most pixels of one generated image: the hires fix's target may have any shape within it."""
        return self.max_side * self.max_side

    @property
    def max_batch_pixels(self) -> int:
        """The most pixels of one batch (A1111's page at most: 8 images of 2048x2048); smaller images may come in
        larger batches."""
        return self.max_batch_size * self.max_pixels

    @property
    def memory_limit_bytes(self) -> int | None:
        return int(self.memory_limit_gb * 1024**3) if self.memory_limit_gb else None

    @property
    def max_input_pixels(self) -> int:
        return int(self.max_input_megapixels * MEGAPIXEL)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MEGABYTE

    @property
    def max_extras_pixels(self) -> int:
        return int(self.max_extras_megapixels * MEGAPIXEL)

    @property
    def decode_budget_pixels(self) -> int:
        """Pixels being decoded at once, over all requests: two of the largest input images."""
        return 2 * self.max_input_pixels


def from_args(ns) -> Limits:
    """The limits the parsed command-line flags (modules/cmd_args.py) give."""
    return Limits(max_side=ns.max_image_side, max_batch_size=ns.max_batch_size, max_batch_count=ns.max_batch_count,
                  max_steps=ns.max_steps, max_input_megapixels=ns.max_input_megapixels,
                  max_upload_mb=ns.max_upload_size, memory_limit_gb=ns.memory_limit,
                  max_extras_images=ns.max_extras_images, max_extras_megapixels=ns.max_extras_megapixels)


def megapixels(pixels: int) -> str:
    """169000000 -> '169', 67108864 -> '67.1', 40000 -> '0.04'."""
    value = pixels / MEGAPIXEL
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
