"""Hypertile (A1111's built-in extension, after tfernd's HyperTile): the U-Net's and the VAE's largest self-attention
layers attend within tiles of the picture instead of across all of it, which is much faster for large images and
changes the details a little (the U-Net) or hardly (the VAE).

As A1111 does it:
- the layers: by depth, the self-attention of the transformer blocks at the full latent size (depth 0), half
  (1), a quarter (2) and the middle block (3) for SD 1.x/2.x; SDXL's own table (its ten-block levels at depth 1,
  its middle block at 2); the VAE decoder's middle attention at depth 0. A setting's "max depth" says how deep
  tiling goes.
- the tile size: the largest power of two dividing both the width and the height, at most the setting's maximum;
  in the latent, at least 128 // 8 = 16, doubled per depth.
- the split: each side cut into a number of equal tiles, chosen at random among the `swap_size` largest tile
  sizes that divide it (1: always the largest), from a random generator seeded with the job's first seed, drawn
  at every layer call (two draws: rows, then columns). A U-Net layer's token count is read as rows x columns from
  the picture's aspect ratio, as A1111 reads it (width / height, for its first factor).

The layers are wrapped once per model (their `forward`); each job configures them (`configure`), and a job with
Hypertile off leaves them passing through untouched. Only the thread that configured them (the job's) tiles: a live
preview decoded meanwhile by the same VAE in a progress poll's thread runs untiled and draws nothing from the job's
generator, whose draws (and so the picture) stay the same however often the page asks for previews. (In A1111 they
share it.)"""

from __future__ import annotations

import functools
import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from einops import rearrange

# A1111's layer tables (its names for the LDM layout, here in diffusers' names), by depth.
_SD_DIFFUSERS = {
    0: ["down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "up_blocks.3.attentions.0",
        "up_blocks.3.attentions.1", "up_blocks.3.attentions.2"],
    1: ["down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1", "up_blocks.2.attentions.2"],
    2: ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"],
    3: ["mid_block.attentions.0"],
}
LAYERS_SD: dict[int, list[str]] = {d: [f"{a}.transformer_blocks.0.attn1" for a in blocks]
                                   for d, blocks in _SD_DIFFUSERS.items()}
_XL_LEVEL1 = ["down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "up_blocks.1.attentions.0",
              "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"]  # LDM input 4, 5; output 3, 4, 5
_XL_LEVEL2 = ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "up_blocks.0.attentions.0",
              "up_blocks.0.attentions.1", "up_blocks.0.attentions.2"]  # LDM input 7, 8; output 0, 1, 2
LAYERS_SDXL: dict[int, list[str]] = {
    0: [f"{a}.transformer_blocks.0.attn1" for a in _XL_LEVEL1],
    1: [f"{a}.transformer_blocks.1.attn1" for a in _XL_LEVEL1]
    + [f"{a}.transformer_blocks.{i}.attn1" for i in range(10) for a in _XL_LEVEL2],
    2: [f"mid_block.attentions.0.transformer_blocks.{i}.attn1" for i in range(10)],
    3: [],
}
LAYERS_VAE: dict[int, list[str]] = {0: ["decoder.mid_block.attentions.0"], 1: [], 2: [], 3: []}


@dataclass(frozen=True)
class Options:
    """One model part's settings (A1111's hypertile_enable_unet, _max_depth_unet, _max_tile_unet, _swap_size_unet,
    and the VAE's)."""
    enable: bool = False
    max_depth: int = 3
    max_tile: int = 256
    swap_size: int = 3


def random_divisor(value: int, min_value: int, max_options: int, rng: random.Random) -> int:
    """How many tiles to cut `value` into: one of the `max_options` largest tile sizes of at least `min_value` that
    divide it (chosen by `rng`, which is drawn from even when there is one choice)."""
    min_value = min(min_value, value)
    divisors = [i for i in range(min_value, value + 1) if value % i == 0]
    counts = [value // i for i in divisors[:max(1, max_options)]]
    return counts[rng.randint(0, len(counts) - 1)]


@functools.lru_cache(maxsize=256)
def largest_tile_size(width: int, height: int) -> int:
    """The largest power of two dividing both sides."""
    gcd, size = math.gcd(width, height), 1
    while gcd % (size * 2) == 0:
        size *= 2
    return size


@functools.lru_cache(maxsize=256)
def rows_and_columns(tokens: int, aspect_ratio: float) -> tuple[int, int]:
    """`tokens` as a rows x columns grid of the picture's aspect ratio, as A1111 finds it: from the square roots,
    else the divisor pair whose ratio is closest."""
    h, w = round(math.sqrt(tokens * aspect_ratio)), round(math.sqrt(tokens / aspect_ratio))
    if h * w == tokens:
        return h, w
    if (tokens / h).is_integer():
        return h, int(tokens / h)
    if (tokens / w).is_integer():
        return int(tokens / w), w
    pairs = [(i, tokens // i) for i in range(2, tokens + 1) if tokens % i == 0]
    ratios = [w / h for h, w in pairs]
    best = min(ratios, key=lambda r: abs(r - aspect_ratio))
    return pairs[ratios.index(best)]


@dataclass
class _Layer:
    """A wrapped layer's own forward and what the current job set for it."""
    forward: Callable
    depth: int
    enabled: bool = False
    tile_size: int = 0
    swap_size: int = 1
    aspect_ratio: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    thread: int = 0  # the job's thread, which configured it: the only one that tiles

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled or threading.get_ident() != self.thread:
            return self.forward(*args, **kwargs)
        x, latent_tile = args[0], max(128, self.tile_size) // 8
        if x.ndim == 4:  # the VAE: (batch, channels, rows, columns)
            nh = random_divisor(x.shape[2], latent_tile, self.swap_size, self.rng)
            nw = random_divisor(x.shape[3], latent_tile, self.swap_size, self.rng)
            if nh * nw == 1:
                return self.forward(*args, **kwargs)
            tiles = rearrange(x, "b c (nh h) (nw w) -> (b nh nw) c h w", nh=nh, nw=nw)
            out = self.forward(tiles, *args[1:], **kwargs)
            return rearrange(out, "(b nh nw) c h w -> b c (nh h) (nw w)", nh=nh, nw=nw)
        h, w = rows_and_columns(x.shape[1], self.aspect_ratio)  # the U-Net: (batch, tokens, channels)
        factor = 2 ** self.depth
        nh = random_divisor(h, latent_tile * factor, self.swap_size, self.rng)
        nw = random_divisor(w, latent_tile * factor, self.swap_size, self.rng)
        if nh * nw == 1:
            return self.forward(*args, **kwargs)
        tiles = rearrange(x, "b (nh h nw w) c -> (b nh nw) (h w) c", h=h // nh, w=w // nw, nh=nh, nw=nw)
        out = self.forward(tiles, *args[1:], **kwargs)
        return rearrange(out, "(b nh nw) (h w) c -> b (nh h nw w) c", h=h // nh, w=w // nw, nh=nh, nw=nw)


def _layers(root: torch.nn.Module, table: dict[int, list[str]]) -> dict[str, _Layer]:
    """The root's wrapped layers, wrapping them the first time (their forward is replaced by the _Layer)."""
    layers = getattr(root, "_hypertile_layers", None)
    if layers is None:
        layers = {}
        for depth in range(4):
            for name, module in root.named_modules():
                if name not in layers and any(name.endswith(wanted) for wanted in table[depth]):
                    layers[name] = _Layer(module.forward, depth)
                    module.forward = layers[name]
        root._hypertile_layers = layers
    return layers


def configure(root: torch.nn.Module, table: dict[int, list[str]], width: int, height: int, options: Options,
              rng: random.Random) -> int:
    """Set the root's layers for a job at width x height (pixels): tiled up to `options.max_depth` when
    `options.enable`, else passed through. Layers are wrapped only once tiling is first asked for. Returns how many
    layers tile."""
    if not options.enable and getattr(root, "_hypertile_layers", None) is None:
        return 0
    tile_size = min(largest_tile_size(width, height), options.max_tile)
    tiling = 0
    for layer in _layers(root, table).values():
        layer.enabled = options.enable and layer.depth <= options.max_depth
        layer.tile_size, layer.swap_size, layer.aspect_ratio, layer.rng = \
            tile_size, options.swap_size, width / height, rng
        layer.thread = threading.get_ident()
        tiling += layer.enabled
    return tiling
