"""Tiny model upscalers in the real key layouts, from a seed, for tests: an ESRGAN (RRDBNet, the layout of
Real-ESRGAN's and most models/ESRGAN files; x4) and a Real-ESRGAN Compact (SRVGGNetCompact, the layout of
realesr-general-x4v3.pth; any scale). Random weights: the images they make mean nothing, but they are
channel-asymmetric, so feeding RGB where BGR is due changes the output."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _conv(sd: dict, name: str, cin: int, cout: int, gen: torch.Generator, std: float = 0.1) -> None:
    sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * std
    sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.01


def esrgan_state_dict(seed: int = 0, features: int = 8, blocks: int = 1) -> dict[str, torch.Tensor]:
    """RRDBNet x4 with `features` channels and `blocks` RRDB blocks (the growth channels are 32, which is what
    spandrel reads every ESRGAN as)."""
    gen, sd, grow = torch.Generator().manual_seed(seed), {}, 32
    _conv(sd, "conv_first", 3, features, gen)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                _conv(sd, f"body.{b}.rdb{r}.conv{c}", features + (c - 1) * grow, grow if c < 5 else features, gen)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(sd, name, features, features, gen)
    _conv(sd, "conv_last", features, 3, gen)
    return sd


def compact_state_dict(seed: int = 0, scale: int = 2, features: int = 8, convs: int = 2) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact: conv, PReLU, `convs` x (conv, PReLU), then a conv to 3 * scale^2 channels (pixel shuffle)."""
    gen, sd = torch.Generator().manual_seed(seed), {}
    _conv(sd, "body.0", 3, features, gen, 0.3)
    sd["body.1.weight"] = torch.full((features,), 0.25)
    for i in range(convs):
        _conv(sd, f"body.{2 * i + 2}", features, features, gen, 0.3)
        sd[f"body.{2 * i + 3}.weight"] = torch.full((features,), 0.25)
    _conv(sd, f"body.{2 * convs + 2}", features, 3 * scale * scale, gen, 0.3)
    return sd


def write(path: Path, state: dict[str, torch.Tensor], wrap: str | None = None) -> Path:
    """`state` saved at `path`: .safetensors, or a pickle (.pth) as torch.save writes it, inside {wrap: ...} when
    given (Real-ESRGAN's files hold {"params_ema": state})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path
