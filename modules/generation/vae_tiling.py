"""Tiled VAE decode and encode: large images through the VAE a band of rows at a time, with the untiled result.

The VAE's memory goes into its full-resolution layers, where every layer of the untiled network makes a
temporary the size of the image times its channels (256 channels at 2048x2048 are 4 GiB each). Here those
layers run on bands of rows (each as large as `tile` x `tile` pixels of SD's last level, 128 channels),
with enough rows of their neighbours (a halo) for their convolutions to see what they would see untiled,
and only each ResNet block's or upsampler's input and output exist at full size.

Tiles decoded on their own do not match: SD's VAE normalises with GroupNorm, whose statistics are taken
over the whole image (diffusers' `enable_tiling` decodes tiles on their own; on a random-weight SD VAE its
tiles differ from the untiled decode by up to 235/255; statistics estimated from the image scaled down to
one tile, the extension "Tiled VAE"'s fast mode, still leave 15-45/255, re-measured over the tiles up to four
times or not). So each GroupNorm
gets the statistics of the whole image, measured: a block is run over the bands once per GroupNorm whose
input depends on the block's own layers, stopping at that GroupNorm to add up its input (each row once),
then once more with all of them known. For SD's ResNet blocks that is one extra half-block. The result is
the untiled one up to float rounding, so there are no seams to blend away.

The part at latent resolution (the decoder's conv_in and middle block, whose attention sees the whole image;
the encoder's middle block and output) is small (1/64 of the pixels) and runs untiled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers.models.upsampling import Upsample2D

VAE_SCALE = 8
# What an SD VAE decode adds to the process's peak memory per pixel, in float32 (bench/README.md: measured at
# 512x512 to 1024x1024 with SD's VAE; half of it in float16). Untiled it grows by ~3.7 KB a pixel, ~3.9 GB at
# 1024x1024, which with SDXL's 14 GB of fp32 weights passes 16 GB (bench/README.md), so Auto tiles from there
# on: AUTO_PIXELS.
UNTILED_BYTES_PER_PIXEL = 3700
TILED_BYTES_PER_PIXEL = 1900
AUTO_PIXELS = 1024 * 1024


def decode_peak_bytes(height: int, width: int, tiled: bool, bytes_per_value: int = 4) -> int:
    """About how much memory one decode of an image of this size adds (for a check before a job runs)."""
    per_pixel = TILED_BYTES_PER_PIXEL if tiled else UNTILED_BYTES_PER_PIXEL
    return height * width * per_pixel * bytes_per_value // 4

Stage = Callable[[torch.Tensor], torch.Tensor]


def supports(vae) -> bool:
    """Whether `vae` is built like SD's (diffusers AutoencoderKL: up and down blocks of ResNets), which tiling needs."""
    decoder, encoder = getattr(vae, "decoder", None), getattr(vae, "encoder", None)
    return hasattr(decoder, "up_blocks") and hasattr(encoder, "down_blocks")


@dataclass(frozen=True)
class VaeTiling:
    """When and how a job's VAE decodes and encodes in tiles (settings vae_tiling and vae_tile_size): a band
    holds as many numbers as `tile` x `tile` pixels of BAND_CHANNELS channels."""
    mode: str = "Auto"
    tile: int = 512
    auto_pixels: int = AUTO_PIXELS

    def tiles(self, height: int, width: int) -> bool:
        """Whether an image of this size (in pixels) goes through the VAE in tiles: never when it is one tile;
        with Auto, when it has `auto_pixels` pixels or more."""
        if self.mode == "Never" or height * width <= self.tile * self.tile:
            return False
        return self.mode == "Always" or height * width >= self.auto_pixels

    def applies(self, vae, height: int, width: int) -> bool:
        """Whether `vae` decodes or encodes an image of this size in tiles: `tiles` says so and it can (`supports`)."""
        return self.tiles(height, width) and supports(vae)


class _Stop(Exception):
    """Raised by the GroupNorm being measured: the rest of the block is not needed yet."""


def _sums(layer: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Per group: the sum of x, the sum of its squares (in float64) and how many values they add up."""
    groups = layer.num_groups
    s = x.sum(dim=(0, 2, 3), dtype=torch.float64).view(groups, -1).sum(1)
    sq = (torch.linalg.vector_norm(x, dim=(0, 2, 3), dtype=torch.float64) ** 2).view(groups, -1).sum(1)
    return torch.stack([s, sq, torch.full_like(s, x.numel() // groups)])


def _normalise(layer: torch.nn.GroupNorm, x: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """GroupNorm of x with the statistics `sums` gives: x * scale + shift per channel, in one pass."""
    mean = sums[0] / sums[2]
    var = (sums[1] / sums[2] - mean * mean).clamp(min=0.0)  # GroupNorm's variance is the biased one
    per = x.shape[1] // layer.num_groups
    scale = torch.rsqrt(var + layer.eps).repeat_interleave(per)
    shift = -mean.repeat_interleave(per) * scale
    if layer.affine:
        weight, bias = layer.weight.double(), layer.bias.double()
        scale, shift = scale * weight, shift * weight + bias
    return torch.addcmul(shift.to(x.dtype)[None, :, None, None], x, scale.to(x.dtype)[None, :, None, None])


class _Norms:
    """While the `with` lasts, the GroupNorms of `parts` normalise with the whole image's statistics from
    `known`. The first one reached without them adds up its input's rows `rows` (fractions of the band's, the
    band without its halo) into `measuring` and stops the block. This is done with hooks that act in the
    thread that entered only, so a live preview decoding with the same VAE meanwhile is not affected."""

    def __init__(self, parts: list[torch.nn.Module]):
        self.layers = [m for part in parts for m in part.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.known: dict[int, torch.Tensor] = {}
        self.measuring: dict[int, torch.Tensor] = {}
        self.rows = (0.0, 1.0)
        self._owner = threading.get_ident()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Norms:
        self._owner = threading.get_ident()
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._measure(index, layer)))
            self._handles.append(layer.register_forward_hook(self._normalise(index, layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _measure(self, index: int, layer: torch.nn.GroupNorm):
        def hook(_module, args):
            if threading.get_ident() != self._owner or index in self.known:
                return None
            x = args[0]
            n = x.shape[-2]
            sums = _sums(layer, x[..., round(self.rows[0] * n):round(self.rows[1] * n), :])
            self.measuring[index] = self.measuring[index] + sums if index in self.measuring else sums
            raise _Stop()
        return hook

    def _normalise(self, index: int, layer: torch.nn.GroupNorm):
        def hook(_module, args, _out):
            if threading.get_ident() != self._owner:
                return None
            return _normalise(layer, args[0], self.known[index])
        return hook


BAND_CHANNELS = 128  # a band holds as many numbers as tile x tile pixels of this many channels (SD's last level)


def _band_rows(x: torch.Tensor, tile: int, growth: int = 1) -> int:
    """Rows per band of x: as many numbers as tile x tile pixels of BAND_CHANNELS channels, in the band or in
    its output (`growth`: 2 for an upsampler, whose output has four times the pixels), a multiple of 8 (so that
    stride-2 layers stay aligned)."""
    return max(8, (tile * tile * BAND_CHANNELS // (x.shape[-1] * x.shape[1] * growth * growth)) // 8 * 8)


def _bands(stage: Stage, x: torch.Tensor, halo: int, rows: int, norms: _Norms) -> torch.Tensor | None:
    """One pass of `stage` over x in bands of `rows` rows, each with `halo` rows more on both sides (fewer at
    the image's edges) that are cut from its output. None when a GroupNorm was measured instead."""
    n = x.shape[-2]
    result: torch.Tensor | None = None
    stopped = False
    for start in range(0, n, rows):
        end = min(n, start + rows)
        lo, hi = max(0, start - halo), min(n, end + halo)
        norms.rows = ((start - lo) / (hi - lo), (end - lo) / (hi - lo))
        try:
            out = stage(x[..., lo:hi, :])
        except _Stop:
            stopped = True
            continue
        ratio = out.shape[-2] / (hi - lo)  # 2 for an upsampler, 1/2 for a downsampler
        if result is None:
            result = out.new_empty((*out.shape[:-2], round(n * ratio), out.shape[-1]))
        result[..., round(start * ratio):round(end * ratio), :] = \
            out[..., round((start - lo) * ratio):round((end - lo) * ratio), :]
    return None if stopped else result


def _reach(module: torch.nn.Module) -> int:
    """How many rows beyond a row the convolutions of `module` see, in rows of its input (at most: a
    convolution after an upsampler sees half a row of the input per row it sees)."""
    return sum((m.kernel_size[0] // 2) * m.dilation[0] for m in module.modules() if isinstance(m, torch.nn.Conv2d))


def _run(stages: list[tuple[Stage, torch.nn.Module]], x: torch.Tensor, tile: int, norms: _Norms) -> torch.Tensor:
    """x through the stages (each with the module its reach is counted in) in bands: each stage is run once
    per GroupNorm whose statistics its own layers change, to measure them, and once more for its output."""
    for stage, module in stages:
        halo = (_reach(module) + 2) // 2 * 2  # even, so that stride-2 layers stay aligned
        rows = _band_rows(x, tile, 2 if isinstance(module, Upsample2D) else 1)
        while (out := _bands(stage, x, halo, rows, norms)) is None:
            norms.known.update(norms.measuring)
            norms.measuring = {}
        x = out
    return x


def _decoder_stages(decoder) -> list[tuple[Stage, torch.nn.Module]]:
    stages: list[tuple[Stage, torch.nn.Module]] = []
    for block in decoder.up_blocks:
        stages += [(lambda t, r=resnet: r(t, None), resnet) for resnet in block.resnets]
        stages += [(sampler, sampler) for sampler in block.upsamplers or []]
    out = torch.nn.Sequential(decoder.conv_norm_out, decoder.conv_act, decoder.conv_out)
    return stages + [(out, out)]


def _encoder_stages(encoder) -> list[tuple[Stage, torch.nn.Module]]:
    stages: list[tuple[Stage, torch.nn.Module]] = [(encoder.conv_in, encoder.conv_in)]
    for block in encoder.down_blocks:
        stages += [(lambda t, r=resnet: r(t, None), resnet) for resnet in block.resnets]
        stages += [(sampler, sampler) for sampler in block.downsamplers or []]
    return stages


@torch.no_grad()
def decode(vae, z: torch.Tensor, tiling: VaeTiling) -> torch.Tensor:
    """What `vae.decode(z).sample` gives (z: (1, 4, h, w), unscaled), its full-resolution part in bands."""
    decoder = vae.decoder
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    h = decoder.mid_block(decoder.conv_in(z))
    with _Norms([decoder.up_blocks, decoder.conv_norm_out]) as norms:
        return _run(_decoder_stages(decoder), h, tiling.tile, norms)


@torch.no_grad()
def encode(vae, x: torch.Tensor, tiling: VaeTiling) -> torch.Tensor:
    """What `vae.encode(x).latent_dist.mode()` gives (x: (1, 3, H, W), H and W multiples of 8), its
    full-resolution part in bands."""
    encoder = vae.encoder
    with _Norms([encoder.down_blocks]) as norms:
        h = _run(_encoder_stages(encoder), x, tiling.tile, norms)
    h = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(encoder.mid_block(h))))
    if vae.quant_conv is not None:
        h = vae.quant_conv(h)
    return h.chunk(2, dim=1)[0]
