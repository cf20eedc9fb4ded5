"""Which kind of Stable Diffusion a checkpoint is, and which LDM YAML config describes it.

Order of evidence, as in AUTOMATIC1111: a `NAME.yaml` beside `NAME.safetensors` wins; otherwise the
family is read from the state dict's keys and shapes and one of the original LDM YAMLs shipped in
configs/ is used.

v-prediction (SD 2.x 768-v) cannot be seen in the weights' shapes. Without a YAML we look, in order,
for a `v_pred` marker tensor (written by several training tools), for Stability's model-spec
metadata (`modelspec.prediction_type` or a `...-768-v` architecture), and finally run A1111's probe:
one U-Net call on a constant input at t=999, where an epsilon model predicts the input back and a
v model predicts something far below it (see `probe_v_prediction` in loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from modules.models.checkpoint_file import CheckpointError
from modules.paths import CONFIGS

UNET_PREFIX = "model.diffusion_model."
UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
OPENCLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."

CONFIG_FILES = {
    ("sd1", False): "v1-inference.yaml",
    ("sd1", True): "v1-inpainting-inference.yaml",
    ("sd2", False): "v2-inference.yaml",
    ("sd2", True): "v2-inpainting-inference.yaml",
}
SD2_V_CONFIG = "v2-inference-v.yaml"


@dataclass(frozen=True)
class ModelConfig:
    yaml_path: Path
    original: dict  # the parsed LDM YAML
    family: str  # "sd1" (OpenAI CLIP text encoder) or "sd2" (OpenCLIP text encoder)
    prediction_type: str | None  # "epsilon", "v_prediction", or None: probe the U-Net after loading
    source: str  # "beside" (a YAML next to the file) or "detected"

    @property
    def params(self) -> dict:
        return self.original["model"]["params"]

    @property
    def unet_params(self) -> dict:
        return self.params["unet_config"]["params"]

    @property
    def in_channels(self) -> int:
        return int(self.unet_params["in_channels"])

    @property
    def is_inpainting(self) -> bool:
        return self.in_channels == 9

    @property
    def scale_factor(self) -> float:
        return float(self.params.get("scale_factor", 0.18215))

    @property
    def label(self) -> str:
        name = {"sd1": "SD 1.x", "sd2": "SD 2.x"}[self.family]
        if self.is_inpainting:
            name += " inpainting"
        if self.prediction_type == "v_prediction":
            name += " v-prediction"
        return name

    def with_prediction(self, prediction_type: str) -> "ModelConfig":
        if self.family == "sd2" and not self.is_inpainting and self.source == "detected":
            name = SD2_V_CONFIG if prediction_type == "v_prediction" else CONFIG_FILES[("sd2", False)]
            return load_yaml(CONFIGS / name, "sd2", prediction_type, "detected")
        return ModelConfig(self.yaml_path, self.original, self.family, prediction_type, self.source)


def load_yaml(path: Path, family: str | None, prediction_type: str | None, source: str) -> ModelConfig:
    try:
        original = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        params = original["model"]["params"]
        params["unet_config"]["params"]
        params["first_stage_config"]["params"]["ddconfig"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointError(f"config {path} is not a usable LDM YAML ({e.__class__.__name__}: {e})") from None
    if family is None:
        target = str((params.get("cond_stage_config") or {}).get("target", ""))
        if "FrozenCLIPEmbedder" in target:
            family = "sd1"
        elif "OpenCLIP" in target:
            family = "sd2"
        elif "Conditioner" in target or "sgm." in str(original["model"].get("target", "")):
            raise CheckpointError(f"{path.name} describes an SDXL-style model, which is not supported yet")
        else:
            raise CheckpointError(f"{path.name}: unknown text encoder {target!r}")
    if prediction_type is None and source == "beside":
        prediction_type = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    return ModelConfig(Path(path), original, family, prediction_type, source)


def _refuse_unsupported(sd: dict[str, torch.Tensor], name: str) -> None:
    if "conditioner.embedders.1.model.ln_final.weight" in sd or "conditioner.embedders.0.model.ln_final.weight" in sd:
        raise CheckpointError(f"{name} is an SDXL checkpoint. SDXL is not supported yet; use an SD 1.x or 2.x model.")
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


def marked_prediction_type(sd: dict[str, torch.Tensor], metadata: dict) -> str | None:
    """Prediction type from markers in the file itself, or None if it carries none."""
    if "v_pred" in sd:
        return "v_prediction"
    declared = str(metadata.get("modelspec.prediction_type", "")).lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if declared in ("epsilon", "eps"):
        return "epsilon"
    if str(metadata.get("modelspec.architecture", "")).endswith("768-v"):
        return "v_prediction"
    return None


def detect(path: Path, sd: dict[str, torch.Tensor], metadata: dict, default_sd1_config: Path) -> ModelConfig:
    """The config for checkpoint `path` whose tensors are `sd`."""
    _refuse_unsupported(sd, path.name)
    beside = path.with_suffix(".yaml")
    if beside.is_file():
        return load_yaml(beside, None, None, "beside")

    in_channels = sd[UNET_IN_KEY].shape[1]
    if in_channels == 8:
        raise CheckpointError(f"{path.name} is an InstructPix2Pix model (8 input channels), which is not supported yet.")
    if in_channels not in (4, 9):
        raise CheckpointError(f"{path.name}: unexpected U-Net input with {in_channels} channels")
    inpainting = in_channels == 9
    marked = marked_prediction_type(sd, metadata)

    if any(k.startswith(OPENCLIP_PREFIX) for k in sd):
        if marked == "v_prediction" and not inpainting:
            return load_yaml(CONFIGS / SD2_V_CONFIG, "sd2", "v_prediction", "detected")
        # Inpainting 2.x models are epsilon; a plain one without markers is probed after loading.
        prediction = "epsilon" if inpainting else marked
        return load_yaml(CONFIGS / CONFIG_FILES[("sd2", inpainting)], "sd2", prediction, "detected")

    if not any(k.startswith(CLIP_PREFIX) for k in sd):
        raise CheckpointError(f"{path.name} has no text encoder weights (cond_stage_model.*) "
                              "and cannot be used on its own")
    config_file = CONFIGS / CONFIG_FILES[("sd1", True)] if inpainting else default_sd1_config
    return load_yaml(config_file, "sd1", marked or "epsilon", "detected")
