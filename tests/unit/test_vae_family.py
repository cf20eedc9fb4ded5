"""What a VAE file says about the models it is for (name words, model-spec metadata): SD 1.x/2.x and SDXL VAEs
have the same shapes, so this is all there is to warn with."""

from __future__ import annotations

import pytest

from modules.models.vae_family import SD, SDXL, kind_from


@pytest.mark.parametrize("name, kind", [
    ("sdxl_vae.safetensors", SDXL), ("sdxl-vae-fp16-fix.safetensors", SDXL), ("XL_VAE_C.safetensors", SDXL),
    ("vae-ft-mse-840000-ema-pruned.safetensors", SD), ("kl-f8-anime2.ckpt", SD), ("orangemix.vae.pt", SD),
    ("sd15-vae.safetensors", SD), ("SD1.5_vae.safetensors", SD), ("v1-5-vae.safetensors", SD),
    ("sd21-vae.safetensors", SD),
    ("other.safetensors", None), ("blessed2.vae.pt", None), ("axle.safetensors", None), ("xlr8.pt", None),
])
def test_kind_from_the_file_name(name, kind):
    assert kind_from(name, {}) == kind


def test_model_spec_metadata_wins_over_the_name():
    assert kind_from("sd15-vae.safetensors", {"modelspec.architecture": "stable-diffusion-xl-v1-base/vae"}) == SDXL
    assert kind_from("my-xl-vae.safetensors", {"modelspec.architecture": "stable-diffusion-v1/vae"}) == SD
    assert kind_from("plain.safetensors", {"modelspec.architecture": "something-else"}) is None
