"""Noise-level schedules (sigmas) exactly as k-diffusion, and so AUTOMATIC1111, discretise them.

A model's sigmas are sqrt((1 - alphas_cumprod) / alphas_cumprod) for its 1000 training timesteps.
Between integer timesteps k-diffusion interpolates log-sigma linearly (diffusers interpolates sigma
itself, which differs by up to ~2e-5 relative): these functions follow k-diffusion, in float32,
operation for operation, so the same seed gives A1111's image.
"""

from __future__ import annotations

import torch


def model_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    t = t.float()
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The continuous timestep whose interpolated sigma is `sigma` (the U-Net's time input)."""
    log_sigma = sigma.log()
    dists = log_sigma - log_sigmas[:, None]
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def uniform(steps: int, sigmas: torch.Tensor) -> torch.Tensor:
    """k-diffusion's `get_sigmas(n)`: timesteps evenly spaced from 999 to 0, then a final 0."""
    t = torch.linspace(len(sigmas) - 1, 0, steps)
    return _append_zero(t_to_sigma(t, sigmas.log()))


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) noise levels, rho = 7, then a final 0."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


SCHEDULES = {
    "uniform": "Uniform",
    "karras": "Karras",
}


def sigmas_for(schedule: str, steps: int, sigmas: torch.Tensor) -> torch.Tensor:
    """`steps` noise levels plus a final 0 for a model with training sigmas `sigmas`."""
    if schedule == "uniform":
        return uniform(steps, sigmas)
    if schedule == "karras":
        return karras(steps, sigmas[0].item(), sigmas[-1].item())
    raise ValueError(f"unknown schedule {schedule!r}")
