"""k-diffusion, the sampler code AUTOMATIC1111 runs, as a reference implementation for tests.

k-diffusion's package __init__ imports training utilities that need torchvision, which does not
import beside this machine's torch build. The sampling code does not use it, so we load only
`k_diffusion.sampling` and `k_diffusion.external`, giving `utils` an inert torchvision module for its
unused import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch


def load():
    if "k_diffusion.external" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion torchsde torchdiffeq scipy)")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = pkg
    stubbed = {}
    if importlib.util.find_spec("torchvision") is None or True:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            stubbed[name] = sys.modules.get(name)
            sys.modules[name] = types.ModuleType(name)
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    try:
        sampling = importlib.import_module("k_diffusion.sampling")
        external = importlib.import_module("k_diffusion.external")
    finally:
        for name, previous in stubbed.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return sampling, external


class CompVisModel(torch.nn.Module):
    """What k-diffusion's CompVisDenoiser expects of an LDM model: `alphas_cumprod` and `apply_model`."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, image_cond: torch.Tensor | None = None):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.image_cond = image_cond

    def apply_model(self, x, t, cond):
        if self.image_cond is not None:
            x = torch.cat([x, self.image_cond.expand(x.shape[0], -1, -1, -1)], dim=1)
        return self.unet(x, t, encoder_hidden_states=cond).sample


class CFGDenoiser(torch.nn.Module):
    """A1111's CFG denoiser in its plain form: cond and uncond in one batch, guidance on x0."""

    def __init__(self, model_wrap, cond, uncond, scale):
        super().__init__()
        self.model_wrap, self.cond, self.uncond, self.scale = model_wrap, cond, uncond, scale

    def forward(self, x, sigma):
        n = x.shape[0]
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        ctx = torch.cat([self.cond.expand(n, -1, -1), self.uncond.expand(n, -1, -1)])
        denoised = self.model_wrap(x_in, sigma_in, cond=ctx)
        c, u = denoised.chunk(2)
        return u + (c - u) * self.scale


class PerImageNoise:
    """A1111's noise for ancestral samplers: the next draw of each image's own generator."""

    def __init__(self, generators, shape, device):
        self.generators, self.shape, self.device = generators, shape, device

    def __call__(self, sigma=None, sigma_next=None):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(self.device)


class TorchWithImageNoise:
    """What A1111 puts in place of k-diffusion's `torch` module while sampling: everything is torch's,
    except that randn_like (churn noise, DPM fast/adaptive's default noise) is the next draw of each
    image's generator."""

    def __init__(self, noise: PerImageNoise):
        self._noise = noise

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x, *args, **kwargs):
        return self._noise()


def lcm_denoiser(external, inner_model, train_steps=1000, original_steps=50):
    """A1111's LCM model wrapper (sd_samplers_lcm.LCMCompVisDenoiser), restated on k-diffusion's discrete
    eps denoiser: sigmas of timesteps 19, 39, ..., 999; model time snapped to that grid; LCM's
    boundary-condition scalings (timestep * 10, sigma_data 0.5) on the output."""
    skip = train_steps // original_steps

    class LCMDenoiser(external.DiscreteEpsDDPMDenoiser):
        def __init__(self):
            valid = inner_model.alphas_cumprod[skip - 1::skip].clone()
            super().__init__(inner_model, valid, quantize=None)

        def get_sigmas(self, n):
            start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
            t = torch.linspace(start, end, n)
            return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

        def sigma_to_t(self, sigma, quantize=None):
            dists = sigma.log() - self.log_sigmas[:, None]
            return dists.abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)

        def t_to_sigma(self, timestep):
            t = torch.clamp(((timestep - (skip - 1)) / skip).float(), min=0, max=len(self.sigmas) - 1)
            return super().t_to_sigma(t)

        def get_eps(self, *args, **kwargs):
            return self.inner_model.apply_model(*args, **kwargs)

        def forward(self, x, sigma, **kwargs):
            c_out, c_in = [c[:, None, None, None] for c in self.get_scalings(sigma)]
            eps = self.get_eps(x * c_in, self.sigma_to_t(sigma), **kwargs)
            x0 = x + eps * c_out
            ts = self.sigma_to_t(sigma)[:, None, None, None] * 10.0
            return ts / (ts ** 2 + 0.25) ** 0.5 * x0 + 0.25 / (ts ** 2 + 0.25) * x

    return LCMDenoiser()
