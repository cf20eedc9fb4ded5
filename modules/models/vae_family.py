"""Whether an external VAE was made for the model it is used with, as far as its name and metadata say.

SD 1.x/2.x and SDXL VAEs have the same architecture and tensor shapes, so a VAE of the other kind loads
without complaint and decodes with wrong colours and contrast (SDXL's latents have another scale). The
weights cannot tell them apart, so (A1111 does not check at all) we read what the file says about itself:
Stability's model-spec `modelspec.architecture` metadata, or the words people put in VAE file names. A VAE
that says nothing gets no warning.
"""

from __future__ import annotations

import re
from pathlib import Path

from modules.models import checkpoint_file

SDXL, SD = "sdxl", "sd"  # the two VAE kinds: SDXL's, and the one SD 1.x and 2.x share

_SDXL_NAME = re.compile(r"(^|[^a-z0-9])(sdxl|xl)([^a-z0-9]|$)|sdxl")
_SD_NAME = re.compile(r"(^|[^a-z0-9])(sd[-_ .]?1[-_ .]?5|sd[-_ .]?15|sd[-_ .]?2[-_ .]?1?|v1[-_ .]5|"
                      r"vae[-_ .]ft[-_ .](mse|ema)|kl[-_ .]f8[-_ .]anime\d*|orangemix)([^a-z0-9]|$)")


def kind_from(name: str, metadata: dict) -> str | None:
    """The VAE kind a file declares: its model-spec architecture first, then its name; None if neither says."""
    architecture = str(metadata.get("modelspec.architecture", "")).lower()
    if architecture:
        if "stable-diffusion-xl" in architecture:
            return SDXL
        if architecture.startswith("stable-diffusion-v"):
            return SD
    stem = name.lower()
    if _SDXL_NAME.search(stem):
        return SDXL
    if _SD_NAME.search(stem):
        return SD
    return None


def mismatch(vae_path: Path, vae_name: str, model_vae_kind: str, model_label: str) -> str | None:
    """A warning when the VAE file says it is for the other kind of model than `model_vae_kind`, else None."""
    try:
        metadata = checkpoint_file.read_metadata(Path(vae_path))
    except checkpoint_file.CheckpointError:
        metadata = {}
    declared = kind_from(vae_name, metadata)
    if declared is None or declared == model_vae_kind:
        return None
    made_for = "SDXL" if declared == SDXL else "SD 1.x/2.x"
    return (f"The VAE {vae_name} looks made for {made_for} models (its name or metadata says so), but the model is "
            f"{model_label}: its colours will be wrong. Choose a VAE for {model_label} models, or Automatic.")
