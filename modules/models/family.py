"""What a model family is: the plug-in interface each kind of Stable Diffusion implements.

A family recognises its checkpoints from their tensors and metadata, names the LDM YAML that describes
them, builds their diffusers/transformers components, makes the prompt encoder that turns prompts into
the conditioning its U-Net takes, and tells the sampler setup what it needs to know. The families there
are, and detection across them, are in `modules.models.families`; adding one (SDXL, ...) is a module
there plus its configs, with nothing to change in the sampler loop, the API or the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTokenizer

from modules.models.checkpoint_file import CheckpointError
from modules.models.prompt_encoder import PromptEncoder

StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
TEXT_ENCODER_PREFIXES = ("cond_stage_model.", "conditioner.")  # SD 1.x/2.x, SDXL (base and refiner)


@dataclass(frozen=True)
class SamplingHints:
    """What choosing sigmas needs to know about a family."""
    sdxl_schedules: bool = False  # schedules with a table per family (Align Your Steps) take SDXL's


@dataclass(frozen=True)
class ConfigFiles:
    """Where the YAML of a checkpoint without one beside it comes from."""
    shipped: Path  # configs/: the original LDM YAMLs
    sd1_default: Path  # --config: the YAML for SD 1.x checkpoints


@dataclass(frozen=True)
class FamilyMatch:
    """What a family read from a checkpoint it recognised."""
    inpainting: bool  # a 9-channel U-Net input (latent + mask + masked image)
    prediction_type: str | None  # "epsilon", "v_prediction", or None: probe the U-Net after loading
    depth: bool = False  # a 5-channel U-Net input (latent + depth map): the SD 2 depth model


class ModelFamily(Protocol):
    """One kind of model. Implementations are immutable objects listed in `families.FAMILIES`."""

    name: str  # short and stable, e.g. "sd1"
    label: str  # for people, e.g. "SD 1.x"
    sampling: SamplingHints
    vae_kind: str  # which VAEs fit: "sd" (SD 1.x and 2.x share one) or "sdxl" (see `modules.models.vae_family`)
    cpu_onednn_linear: bool  # on a CPU the U-Net's linear layers and GEGLUs run oneDNN's (optimizations.OneDnnLinear,
    # OneDnnGEGLU): chosen per family from measured speed and peak memory
    shares_first_self_attention: bool  # the CFG batch's two halves can still be equal at the U-Net's first
    # self-attention, which then runs once for both (optimizations.SharedRows); not where a per-prompt embedding
    # joins the time embedding before it (SDXL's pooled prompt), which would make every call pay the comparison

    def detect(self, sd: StateDict, metadata: dict) -> FamilyMatch | None:
        """What a checkpoint is if its tensors (and safetensors metadata) are this family's, else None.
        Only asked about files with a complete U-Net and a 4-, 5- or 9-channel input and no YAML beside them."""
        ...

    def describes(self, original: dict) -> bool:
        """Whether a parsed LDM YAML (one beside a checkpoint) is this family's."""
        ...

    def config_file(self, match: FamilyMatch, files: ConfigFiles) -> Path:
        """The shipped YAML for a checkpoint this family detected."""
        ...

    def default_size(self, config: ModelConfig) -> tuple[int, int]:
        """(width, height) the model was trained at."""
        ...

    def build(self, config: ModelConfig, sd: StateDict) -> BuiltModel:
        """Its components from the file's tensors, on the CPU, still in the file's dtypes."""
        ...

    def prompt_encoder(self, tokenizer: CLIPTokenizer, text_encoder: torch.nn.Module) -> PromptEncoder:
        """What turns prompts into the conditioning this family's U-Net takes (`text_encoder`: what `build` put
        in `BuiltModel.text_encoder`)."""
        ...


@dataclass(frozen=True)
class ModelConfig:
    """A checkpoint's family and the LDM YAML that describes it."""
    yaml_path: Path
    original: dict  # the parsed LDM YAML
    family: ModelFamily
    prediction_type: str | None  # "epsilon", "v_prediction", or None: probe the U-Net after loading
    source: str  # "beside" (a YAML next to the file) or "detected"
    files: ConfigFiles | None = None  # where a detected config was chosen from
    trained_size: tuple[int, int] | None = None  # (width, height) the file itself says (see families.trained_size)

    @property
    def params(self) -> dict:
        return self.original["model"]["params"]

    @property
    def unet_params(self) -> dict:
        return unet_section(self.original)["params"]

    @property
    def in_channels(self) -> int:
        return int(self.unet_params["in_channels"])

    @property
    def is_inpainting(self) -> bool:
        return self.in_channels == 9

    @property
    def is_depth(self) -> bool:
        """The SD 2 depth model: the U-Net also takes a depth map of the init image (modules/models/depth.py)."""
        return self.in_channels == 5

    @property
    def scale_factor(self) -> float:
        return float(self.params.get("scale_factor", 0.18215))

    @property
    def default_size(self) -> tuple[int, int]:
        return self.trained_size or self.family.default_size(self)

    @property
    def label(self) -> str:
        name = self.family.label
        if self.is_inpainting:
            name += " inpainting"
        if self.is_depth:
            name += " depth"
        if self.prediction_type == "v_prediction":
            name += " v-prediction"
        return name

    def with_prediction(self, prediction_type: str) -> ModelConfig:
        """This config once the prediction type is known (probed): a detected one takes the family's YAML
        for it (SD 2.x v-prediction has its own), one from beside the file keeps its YAML."""
        if self.source == "detected" and self.files is not None:
            path = self.family.config_file(FamilyMatch(self.is_inpainting, prediction_type, self.is_depth), self.files)
            return replace(self, yaml_path=path, original=read_yaml(path), prediction_type=prediction_type)
        return replace(self, prediction_type=prediction_type)


def read_yaml(path: Path) -> dict:
    """A parsed LDM YAML that has the parts the loader reads."""
    try:
        original = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        params = original["model"]["params"]
        unet_section(original)["params"]["in_channels"]
        params["first_stage_config"]["params"]["ddconfig"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointError(f"config {path} is not a usable LDM YAML ({e.__class__.__name__}: {e})") from None
    return original


def unet_section(original: dict) -> dict:
    """The U-Net's part of an LDM YAML: `unet_config` (CompVis/SD 1.x and 2.x) or `network_config` (Stability's
    sgm code, SDXL)."""
    params = original["model"]["params"]
    return params.get("unet_config") or params["network_config"]


def cond_stage_target(original: dict) -> str:
    """The text encoder class an LDM YAML names (`model.params.cond_stage_config.target`)."""
    return str((original["model"]["params"].get("cond_stage_config") or {}).get("target", ""))


def unet_in_channels(sd: StateDict) -> int:
    return sd[UNET_IN_KEY].shape[1]


def marked_prediction_type(sd: StateDict, metadata: dict) -> str | None:
    """Prediction type from markers in the file itself, or None if it carries none: a `v_pred` tensor
    (written by several training tools) or Stability's model-spec metadata."""
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


@dataclass
class BuiltModel:
    """A checkpoint's components as a family built them."""
    config: ModelConfig
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    vae_config: dict
    text_encoder: torch.nn.Module  # a CLIPTextModel, or a module holding a family's several text encoders
    alphas_cumprod: torch.Tensor
    depth_model: torch.nn.Module | None = None  # the SD 2 depth model's MiDaS, when its file carries it
