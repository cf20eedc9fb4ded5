"""The model families there are, and which one a checkpoint is, with the LDM YAML that describes it.

Order of evidence, as in AUTOMATIC1111: a `NAME.yaml` beside `NAME.safetensors` wins (the family that
`describes` it is used); otherwise each family in `FAMILIES` is asked, in order, to `detect` the state
dict, and the YAML is one of the originals shipped in configs/. Adding a family is a module in this
package, an entry in `FAMILIES` and its YAMLs in configs/. Files of kinds we do not run (SD3, InstructPix2Pix)
are recognised and refused with what they are (`_refuse_unsupported`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from modules.models import checkpoint_file
from modules.models.checkpoint_file import CheckpointError
from modules.models.families.sd1 import SD1
from modules.models.families.sd2 import SD2
from modules.models.families.sdxl import SDXL
from modules.models.families.sdxl_refiner import SDXL_REFINER
from modules.models.family import (UNET_IN_KEY, UNET_PREFIX, ConfigFiles, ModelConfig, ModelFamily, StateDict,
                                   cond_stage_target, read_yaml, unet_in_channels)
from modules.paths import CONFIGS

# Asked in this order (A1111's: SDXL's conditioner keys first (base, then refiner), then OpenCLIP weights say
# SD 2.x before CLIP weights say SD 1.x).
FAMILIES: tuple[ModelFamily, ...] = (SDXL, SDXL_REFINER, SD2, SD1)


def load_yaml(path: Path) -> ModelConfig:
    """The config from a YAML beside a checkpoint: the family it describes, and v-prediction if it says
    `parameterization: v`."""
    original = read_yaml(path)
    params = original["model"]["params"]
    family = next((f for f in FAMILIES if f.describes(original)), None)
    if family is None:
        target = cond_stage_target(original)
        if "conditioner_config" in params or "sgm." in str(original["model"].get("target", "")):
            raise CheckpointError(f"{path.name} describes an SDXL-style model other than SDXL base, inpainting "
                                  "or refiner, which is not supported")
        raise CheckpointError(f"{path.name}: unknown text encoder {target!r}")
    prediction_type = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    return ModelConfig(Path(path), original, family, prediction_type, "beside")


def _refuse_unsupported(sd: StateDict, name: str) -> None:
    """Files that are no model of a family we have, refused with what they are and where they go."""
    if any(k.startswith(UNET_PREFIX + "x_embedder.") for k in sd) or any(k.startswith("text_encoders.") for k in sd):
        raise CheckpointError(f"{name} is an SD3-style checkpoint, which is not supported.")
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        hint = ""
        if any("lora_" in k for k in sd):
            hint = " It looks like a LoRA: put it in models/Lora."
        elif any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in sd):
            hint = " It looks like a VAE: put it in models/VAE."
        elif "string_to_param" in sd or "emb_params" in sd:
            hint = " It looks like a textual-inversion embedding: put it in embeddings/."
        raise CheckpointError(f"{name} is not a Stable Diffusion checkpoint: it has no U-Net weights "
                              f"({UNET_PREFIX}*).{hint}")
    if UNET_IN_KEY not in sd:
        raise CheckpointError(f"{name} is incomplete: the U-Net input layer ({UNET_IN_KEY}) is missing")


def trained_size(path: Path, metadata: dict) -> tuple[int, int] | None:
    """The size a checkpoint was trained at when the file says so: Stability's model-spec metadata
    (`modelspec.resolution`, "1024x1024"), or a name that says Turbo (SDXL Turbo and SD Turbo were distilled
    at 512x512, though their families' base models were not). None: the family's size."""
    found = re.fullmatch(r"\s*(\d{3,5})\s*[x*]\s*(\d{3,5})\s*", str(metadata.get("modelspec.resolution", "")))
    if found:
        return int(found.group(1)), int(found.group(2))
    if "turbo" in path.stem.lower():
        return 512, 512
    return None


def detect(path: Path, sd: StateDict, metadata: dict, default_sd1_config: Path) -> ModelConfig:
    """The config for checkpoint `path` whose tensors are `sd` (`metadata`: its safetensors header's)."""
    config = _detect(path, sd, metadata, default_sd1_config)
    size = trained_size(path, metadata)
    return replace(config, trained_size=size) if size else config


def _detect(path: Path, sd: StateDict, metadata: dict, default_sd1_config: Path) -> ModelConfig:
    _refuse_unsupported(sd, path.name)
    beside = path.with_suffix(".yaml")
    if beside.is_file():
        return load_yaml(beside)

    in_channels = unet_in_channels(sd)
    if in_channels == 8:
        raise CheckpointError(f"{path.name} is an InstructPix2Pix model (8 input channels), "
                              "which is not supported yet.")
    if in_channels not in (4, 5, 9):
        raise CheckpointError(f"{path.name}: unexpected U-Net input with {in_channels} channels")
    files = ConfigFiles(CONFIGS, default_sd1_config)
    for family in FAMILIES:
        match = family.detect(sd, metadata)
        if match is not None:
            yaml_path = family.config_file(match, files)
            return ModelConfig(yaml_path, read_yaml(yaml_path), family, match.prediction_type, "detected", files)
    raise CheckpointError(f"{path.name} has no text encoder weights (cond_stage_model.*) "
                          "and cannot be used on its own")


def detect_from_header(path: Path, default_sd1_config: Path) -> ModelConfig | None:
    """The config of a .safetensors checkpoint read from its header alone (tensor names and shapes, no weights),
    so it costs milliseconds; None for other formats (a pickle must be unpickled to be seen). Raises
    CheckpointError as `detect` does. SD 2.x v-prediction without a marker in the file stays undecided."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    header, metadata = checkpoint_file.read_safetensors_header(path)
    sd = {k: torch.empty(v.get("shape", []), device="meta") for k, v in header.items()}
    return detect(path, sd, metadata, default_sd1_config)


def family_of(sd: StateDict, metadata: dict) -> ModelFamily | None:
    """Which family's tensors `sd` holds (tensors on the meta device will do: only names and shapes are read),
    without the checks `detect` makes before loading (an 8-channel InstructPix2Pix U-Net is still SD 1.x here);
    None for a file that is no checkpoint of any family."""
    if UNET_IN_KEY not in sd:
        return None
    return next((f for f in FAMILIES if f.detect(sd, metadata) is not None), None)
