"""Stable Diffusion 1.x (and its 9-channel inpainting models): OpenAI's CLIP ViT-L/14 text encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextModel, CLIPTokenizer

from modules.models import loader
from modules.models.checkpoint_file import CheckpointError
from modules.models.family import (BuiltModel, ConfigFiles, FamilyMatch, ModelConfig, SamplingHints, StateDict,
                                   cond_stage_target, marked_prediction_type, unet_in_channels)
from modules.models.prompt_encoder import OPENAI_CLIP, PromptEncoder

CLIP_PREFIX = "cond_stage_model.transformer."
INPAINTING_CONFIG = "v1-inpainting-inference.yaml"


def build_text_encoder(config: ModelConfig, sd: StateDict) -> CLIPTextModel:
    """OpenAI's CLIP text model (quick-GELU), its last layer used, with its shape read from the weights."""
    clip_sd = sfu.convert_ldm_clip_checkpoint(sd)
    clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    clip_sd.pop("embeddings.position_ids", None)  # a buffer we create; some files carry corrupted copies
    if "embeddings.token_embedding.weight" not in clip_sd:
        raise CheckpointError(f"text encoder weights ({CLIP_PREFIX}text_model.*) are missing or unrecognised")
    return loader.build_text_model(loader.openai_clip_config(clip_sd), clip_sd, config)


@dataclass(frozen=True)
class StableDiffusion1:
    name: str = "sd1"
    label: str = "SD 1.x"
    sampling: SamplingHints = field(default_factory=SamplingHints)
    vae_kind: str = "sd"
    cpu_onednn_linear: bool = True
    shares_first_self_attention: bool = True

    def detect(self, sd: StateDict, metadata: dict) -> FamilyMatch | None:
        if not any(k.startswith(CLIP_PREFIX) for k in sd):
            return None
        return FamilyMatch(unet_in_channels(sd) == 9, marked_prediction_type(sd, metadata) or "epsilon")

    def describes(self, original: dict) -> bool:
        return "FrozenCLIPEmbedder" in cond_stage_target(original)

    def config_file(self, match: FamilyMatch, files: ConfigFiles) -> Path:
        return files.shipped / INPAINTING_CONFIG if match.inpainting else files.sd1_default

    def default_size(self, config: ModelConfig) -> tuple[int, int]:
        return 512, 512

    def build(self, config: ModelConfig, sd: StateDict) -> BuiltModel:
        return loader.build_components(config, sd, build_text_encoder)

    def prompt_encoder(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> PromptEncoder:
        return PromptEncoder(tokenizer, text_encoder, OPENAI_CLIP)


SD1 = StableDiffusion1()
