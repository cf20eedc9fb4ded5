"""Stable Diffusion 2.x: OpenCLIP ViT-H/14 text encoder; epsilon (512-base) or v-prediction (768-v) U-Nets,
9-channel inpainting models (epsilon), and the 5-channel depth model (512-depth-ema, epsilon, with MiDaS
DPT-Hybrid: modules/models/depth.py).

v-prediction cannot be seen in the weights' shapes. Without a YAML beside the file it is read from a
marker in the file (see `family.marked_prediction_type`); failing that the match leaves it open and the
model manager runs A1111's probe after loading (`loader.probe_v_prediction`), then switches the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from accelerate import init_empty_weights
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextModel, CLIPTokenizer

from modules.models import depth, loader
from modules.models.checkpoint_file import CheckpointError
from modules.models.family import (BuiltModel, ConfigFiles, FamilyMatch, ModelConfig, SamplingHints, StateDict,
                                   cond_stage_target, marked_prediction_type, unet_in_channels)
from modules.models.prompt_encoder import OPEN_CLIP, PromptEncoder

OPENCLIP_PREFIX = "cond_stage_model.model."
CONFIG = "v2-inference.yaml"
V_CONFIG = "v2-inference-v.yaml"
INPAINTING_CONFIG = "v2-inpainting-inference.yaml"
DEPTH_CONFIG = "v2-midas-inference.yaml"
UNET_SETTINGS = MappingProxyType({"upcast_attention": True})  # SD 2.x attention overflows in fp16 without it


def build_text_encoder(config: ModelConfig, sd: StateDict) -> CLIPTextModel:
    """OpenCLIP's text tower as a transformers CLIP text model, with its shape read from the weights. SD 2.x
    uses the *penultimate* layer ("layer: penultimate" in the YAML), so the last block is dropped and the
    model's final layer norm applied to the one before, exactly what OpenCLIP's encoder did."""
    layers = loader.count_layers(sd, OPENCLIP_PREFIX + "transformer.resblocks.")
    if layers < 2:
        raise CheckpointError("OpenCLIP text encoder weights (cond_stage_model.model.*) are missing")
    last = f"{OPENCLIP_PREFIX}transformer.resblocks.{layers - 1}."
    used = {k: v for k, v in sd.items() if k.startswith(OPENCLIP_PREFIX) and not k.startswith(last)
            and not k.endswith(("text_projection", "logit_scale"))}
    cfg = loader.open_clip_config(used, OPENCLIP_PREFIX, layers - 1)
    with init_empty_weights():
        shape_only = CLIPTextModel(cfg)
    clip_sd = sfu.convert_open_clip_checkpoint(shape_only, used, prefix=OPENCLIP_PREFIX)
    clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    return loader.build_text_model(cfg, clip_sd, config)


@dataclass(frozen=True)
class StableDiffusion2:
    name: str = "sd2"
    label: str = "SD 2.x"
    sampling: SamplingHints = field(default_factory=SamplingHints)
    vae_kind: str = "sd"
    cpu_onednn_linear: bool = True
    shares_first_self_attention: bool = True

    def detect(self, sd: StateDict, metadata: dict) -> FamilyMatch | None:
        if not any(k.startswith(OPENCLIP_PREFIX) for k in sd):
            return None
        channels = unet_in_channels(sd)
        if channels == 5:  # the depth model (epsilon): A1111 tells it by its MiDaS tensors, which it may lack
            return FamilyMatch(False, "epsilon", depth=True)
        inpainting = channels == 9
        # inpainting 2.x models are epsilon; a plain one without a marker is probed after loading
        return FamilyMatch(inpainting, "epsilon" if inpainting else marked_prediction_type(sd, metadata))

    def describes(self, original: dict) -> bool:
        return "OpenCLIP" in cond_stage_target(original)

    def config_file(self, match: FamilyMatch, files: ConfigFiles) -> Path:
        if match.depth:
            return files.shipped / DEPTH_CONFIG
        if match.inpainting:
            return files.shipped / INPAINTING_CONFIG
        return files.shipped / (V_CONFIG if match.prediction_type == "v_prediction" else CONFIG)

    def default_size(self, config: ModelConfig) -> tuple[int, int]:
        return (768, 768) if config.prediction_type == "v_prediction" and not config.is_inpainting else (512, 512)

    def build(self, config: ModelConfig, sd: StateDict) -> BuiltModel:
        built = loader.build_components(config, sd, build_text_encoder, UNET_SETTINGS)
        if config.is_depth:  # its MiDaS, when the file carries it (else models/midas, when first used)
            weights = depth.weights_in_checkpoint(sd)
            built.depth_model = depth.build(weights) if weights else None
        return built

    def prompt_encoder(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> PromptEncoder:
        return PromptEncoder(tokenizer, text_encoder, OPEN_CLIP)


SD2 = StableDiffusion2()
