"""Noise-level schedules (sigmas) exactly as k-diffusion, and so AUTOMATIC1111, discretise them.

A model's sigmas are sqrt((1 - alphas_cumprod) / alphas_cumprod) for its 1000 training timesteps.
Between integer timesteps k-diffusion interpolates log-sigma linearly (diffusers interpolates sigma
itself, which differs by up to ~2e-5 relative): these functions follow k-diffusion, in float32,
operation for operation, so the same seed gives A1111's image.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def model_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The schedule rescaled to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed"), as A1111 does it: sqrt(alphas_cumprod) shifted so its last value is 0 and scaled so its
    first is unchanged, squared; the last is then set to 4.8973451890853435e-08 (A1111's number), so the last
    sigma is about 4500 rather than infinite. Computed in the schedule's own precision."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root ** 2
    rescaled[-1] = 4.8973451890853435e-08
    return rescaled


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


def nearest_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The training timestep whose sigma is nearest `sigma` in log sigma (k-diffusion's quantized sigma_to_t,
    A1111's enable_quantization)."""
    return (sigma.log() - log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)


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


def exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma, then a final 0."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp())


def polyexponential(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Log sigma falls along ramp**rho from log sigma_max to log sigma_min (rho = 1 is exponential)."""
    ramp = torch.linspace(1, 0, steps) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def _timestep_range(sigmas: torch.Tensor, sigma_min: float, sigma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    log_sigmas = sigmas.log()
    return sigma_to_t(torch.tensor(sigma_max), log_sigmas), sigma_to_t(torch.tensor(sigma_min), log_sigmas)


def normal(steps: int, sigmas: torch.Tensor, sgm: bool = False, sigma_min: float | None = None,
           sigma_max: float | None = None) -> torch.Tensor:
    """Timesteps evenly spaced between those of sigma_max and sigma_min (both ends included), or, for
    SGM Uniform, `steps` of `steps + 1` such points (the last, sigma_min's, left out). The range is the
    model's unless given."""
    lo = sigmas[0].item() if sigma_min is None else sigma_min
    hi = sigmas[-1].item() if sigma_max is None else sigma_max
    start, end = _timestep_range(sigmas, lo, hi)
    if sgm:
        t = torch.linspace(start.item(), end.item(), steps + 1)[:-1]
    else:
        t = torch.linspace(start.item(), end.item(), steps)
    log_sigmas = sigmas.log()
    return _append_zero(torch.stack([t_to_sigma(ts, log_sigmas) for ts in t]))


def sgm_uniform(steps: int, sigmas: torch.Tensor, sigma_min: float | None = None,
                sigma_max: float | None = None) -> torch.Tensor:
    return normal(steps, sigmas, True, sigma_min, sigma_max)


def kl_optimal(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma), i = 0..steps. As in A1111 the last level is sigma_min, not 0: the
    result keeps that little noise."""
    a_min, a_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    frac = torch.arange(steps + 1) / steps
    return torch.tan(frac * a_min + (1.0 - frac) * a_max)


# NVIDIA's Align Your Steps 10-step lists (sigma_max first), from its how-to page.
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def align_your_steps(steps: int, sdxl: bool = False) -> torch.Tensor:
    """The Align Your Steps list for the model family, resampled to `steps` levels by linear
    interpolation of log sigma (the list's own 11 levels when steps == 11), then a final 0."""
    points = AYS_SDXL if sdxl else AYS_SD1
    if steps == len(points):
        return torch.tensor(points + [0.0], dtype=torch.float32)
    log_rev = np.log(points[::-1])
    resampled = np.exp(np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(points)), log_rev))[::-1]
    return torch.tensor(np.append(resampled, 0.0), dtype=torch.float32)


def simple(steps: int, sigmas: torch.Tensor) -> torch.Tensor:
    """Every (1000 / steps)-th training sigma, from the largest down."""
    stride = len(sigmas) / steps
    return torch.tensor([float(sigmas[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


def ddim(steps: int, sigmas: torch.Tensor) -> torch.Tensor:
    """The training sigmas at timesteps 1, 1 + s, 1 + 2s, ... (s = 1000 // steps), largest first. As in
    A1111 this can give a level or two more than `steps` when 1000 is not a multiple of it."""
    stride = max(len(sigmas) // steps, 1)
    picked = [float(sigmas[i]) for i in range(1, len(sigmas), stride)]
    return torch.tensor(picked[::-1] + [0.0])


def _beta_ppf(q: float, a: float, b: float) -> float:
    from scipy import stats  # scipy comes with torchsde (a requirement)
    return float(stats.beta.ppf(q, a, b))


def beta(steps: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """"Beta Sampling is All You Need" (Lee et al., 2024) as A1111 1.10 applies it: the Beta(alpha, beta)
    quantiles of 1 - linspace(0, 1, steps), mapped linearly onto [sigma_min, sigma_max]."""
    qs = 1 - np.linspace(0, 1, steps)
    levels = [sigma_min + _beta_ppf(q, alpha, beta_) * (sigma_max - sigma_min) for q in qs]
    return torch.tensor(levels + [0.0], dtype=torch.float32)


SCHEDULES = {
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}


# A1111's default rho per schedule (the `rho` setting overrides it where there is one)
DEFAULT_RHO = {"karras": 7.0, "polyexponential": 1.0}


def sigmas_for(schedule: str, steps: int, sigmas: torch.Tensor, sdxl: bool = False, sigma_min: float | None = None,
               sigma_max: float | None = None, rho: float | None = None,
               beta_params: tuple[float, float] = (0.6, 0.6)) -> torch.Tensor:
    """`steps` noise levels plus a final 0 for a model with training sigmas `sigmas`. The range is the
    model's smallest and largest training sigma unless sigma_min/sigma_max are given (A1111's settings
    "sigma min/max"); `rho` overrides Karras's 7 and Polyexponential's 1."""
    lo = sigmas[0].item() if sigma_min is None else sigma_min
    hi = sigmas[-1].item() if sigma_max is None else sigma_max
    if schedule == "uniform":
        return uniform(steps, sigmas)
    if schedule == "karras":
        return karras(steps, lo, hi, rho or DEFAULT_RHO["karras"])
    if schedule == "exponential":
        return exponential(steps, lo, hi)
    if schedule == "polyexponential":
        return polyexponential(steps, lo, hi, rho or DEFAULT_RHO["polyexponential"])
    if schedule == "sgm_uniform":
        return sgm_uniform(steps, sigmas, sigma_min, sigma_max)
    if schedule == "kl_optimal":
        return kl_optimal(steps, lo, hi)
    if schedule == "align_your_steps":
        return align_your_steps(steps, sdxl)
    if schedule == "simple":
        return simple(steps, sigmas)
    if schedule == "normal":
        return normal(steps, sigmas, False, sigma_min, sigma_max)
    if schedule == "ddim":
        return ddim(steps, sigmas)
    if schedule == "beta":
        return beta(steps, lo, hi, *beta_params)
    raise ValueError(f"unknown schedule {schedule!r}")
