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
