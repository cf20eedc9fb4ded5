"""TAESD files for tests: the original madebyollin/taesd `Encoder` / `Decoder` (nn.Sequential, the layout of
the real `taesd_*.pth` files), written from here with random weights from a seed and saved with torch.save
as the originals are. The modules double as the reference the diffusers port is compared against."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def original_encoder(latent_channels: int = 4) -> nn.Sequential:
    """Pixels in [0, 1] -> scaled latents (taesd.py's Encoder)."""
    return nn.Sequential(
        conv(3, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, latent_channels),
    )


def original_decoder(latent_channels: int = 4) -> nn.Sequential:
    """Scaled latents -> pixels in [0, 1] (taesd.py's Decoder)."""
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), conv(64, 3),
    )


def build(part: str, seed: int = 0) -> nn.Sequential:
    """The original module with random weights from `seed` (PyTorch's default initialisation, drawn in order)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = original_decoder() if part == "decoder" else original_encoder()
    return module.eval()


def write(folder: Path, kind: str = "sd", parts: tuple[str, ...] = ("decoder", "encoder"), seed: int = 0
          ) -> dict[str, Path]:
    """`taesd_decoder.pth` / `taesd_encoder.pth` (kind "sd") or `taesdxl_*` (kind "sdxl") in `folder`, as the
    originals: torch.save of the Sequential's state dict. Returns {part: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = "taesd" if kind == "sd" else "taesdxl"
    out = {}
    for i, part in enumerate(parts):
        path = folder / f"{stem}_{part}.pth"
        torch.save(build(part, seed + i).state_dict(), path)
        out[part] = path
    return out
