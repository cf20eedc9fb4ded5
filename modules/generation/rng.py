"""Seeds and noise, following AUTOMATIC1111's rules.

Every image has its own generator seeded with its own seed; its starting noise is the first draw and
any per-step noise (ancestral samplers) the following ones. So image k of a batch is the same image
as seed+k generated alone. With the "CPU" source the generator is a CPU one and the noise is moved to
the device afterwards: one seed gives the same image on CPU, CUDA and MPS.
"""

from __future__ import annotations

import random

import torch

MAX_SEED = 4294967294  # A1111 draws random seeds below this


def fix_seed(seed: int | float | str | None) -> int:
    """-1, None or an empty/non-numeric value means a fresh random seed."""
    try:
        value = int(seed) if seed not in (None, "") else -1
    except (TypeError, ValueError):
        value = -1
    return random.randrange(MAX_SEED) if value == -1 else value


def generator_device(source: str, device: torch.device) -> torch.device:
    if source == "GPU" and device.type in ("cuda", "mps"):
        return device
    return torch.device("cpu")


def create_generators(seeds: list[int], source: str, device: torch.device) -> list[torch.Generator]:
    gen_device = generator_device(source, device)
    return [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One (C, H, W) float32 draw per generator, stacked and moved to `device`."""
    xs = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(xs).to(device)
