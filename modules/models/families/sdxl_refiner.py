"""The Stable Diffusion XL refiner: one text encoder (OpenCLIP ViT-bigG) and an aesthetic-score condition.

The checkpoint holds bigG under `conditioner.embedders.0.model.` (the base keeps it as embedder 1) and a
U-Net of 384 channels, transformer depth 4, context 1280 and an ADM input of 2560. Conditioning as in
A1111 (v1.10, sgm's GeneralConditioner with the refiner's embedders):

- context (tokens, 1280): bigG's penultimate hidden state (no final layer norm), with A1111's chunking and
  emphasis, padding with 0 (as the base's bigG);
- pooled (1280): bigG's final-layer-normed state at the end token times its text projection, from the
  first chunk only;
- time ids: original size (h, w), crop (top, left), and the aesthetic score: A1111's
  `sdxl_refiner_high_aesthetic_score` (6.0) for the prompt, `sdxl_refiner_low_aesthetic_score` (2.5) for
  the negative prompt. Each becomes 256 numbers: 1280 + 5 x 256 = 2560.

An all-empty negative prompt gives zero context and pooled vectors (A1111's `force_zero_embeddings`); its
aesthetic score is still the low one. Clip skip does not apply to bigG (as in A1111).

A refiner is usually chosen as the model a job switches to near its end (`refiner_checkpoint`); it also
loads as the main model, as in A1111.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from modules.models import loader, low_memory
from modules.models.families.sdxl import REFINER_KEY, ClipGEncoder, embedders, build_clip_g, unet_settings
from modules.models.family import (BuiltModel, ConfigFiles, FamilyMatch, ModelConfig, SamplingHints, StateDict,
                                   marked_prediction_type)
from modules.models.prompt_encoder import CHUNK, Cond, PromptEncoder

PREFIX = "conditioner.embedders.0.model."
CONFIG = "sd_xl_refiner.yaml"
HIGH_AESTHETIC = 6.0  # A1111's defaults of sdxl_refiner_high/low_aesthetic_score
LOW_AESTHETIC = 2.5


def build_text_encoder(config: ModelConfig, sd: StateDict) -> CLIPTextModelWithProjection:
    return build_clip_g(config, sd, PREFIX).eval().requires_grad_(False)


class SDXLRefinerPromptEncoder(ClipGEncoder):
    """Prompts to the refiner's conditioning (see the module docstring): bigG's context and pooled vector,
    chunking, emphasis, prompt editing, AND and the token counter as for every encoder."""

    def __init__(self, tokenizer: CLIPTokenizer, model: CLIPTextModelWithProjection):
        super().__init__(tokenizer, model)
        self.crop = (0, 0)  # (top, left): A1111's sdxl_crop_top/left (see use_settings)
        self.aesthetic = (HIGH_AESTHETIC, LOW_AESTHETIC)  # (prompt, negative prompt)

    @property
    def pooled_width(self) -> int:
        return self.text_model.config.projection_dim

    @property
    def embedding_signature(self) -> tuple[tuple[str, int], ...]:
        """SDXL textual-inversion files fit: their `clip_g` tensor is what this encoder splices."""
        return (("clip_g", self.width),)

    @property
    def lora_parts(self) -> dict[str, torch.nn.Module]:
        """A LoRA made for the refiner names its text encoder as kohya's single-encoder `lora_te_`."""
        return {"te": self.text_model}

    @torch.no_grad()
    def encode_conds(self, texts: list[str], clip_skip: int = 1, emphasis: str = "Original",
                     negative: bool = False) -> list[Cond]:
        if negative and all(t == "" for t in texts):
            p, dtype = next(self.text_model.parameters()), low_memory.compute_dtype(self.text_model)
            zero = Cond(torch.zeros(CHUNK + 2, self.width, device=p.device, dtype=dtype),
                        torch.zeros(self.pooled_width, device=p.device, dtype=dtype))
            return [zero for _ in texts]
        by_text: dict[str, Cond] = {}
        for text, (z, pooled) in zip(texts, self.encode_with_pooled(texts, clip_skip, emphasis)):
            by_text.setdefault(text, Cond(z, pooled))
        return [by_text[t] for t in texts]

    def unet_inputs(self, width: int, height: int, negative: bool = False) -> dict[str, torch.Tensor]:
        """Original size (h, w), crop (top, left) and the aesthetic score of the prompt or the negative prompt."""
        top, left = self.crop
        score = self.aesthetic[1 if negative else 0]
        return {"time_ids": torch.tensor([height, width, top, left, score], dtype=torch.float32)}

    def use_settings(self, settings) -> None:
        super().use_settings(settings)
        self.crop = (int(settings.sdxl_crop_top), int(settings.sdxl_crop_left))
        self.aesthetic = (float(settings.sdxl_refiner_high_aesthetic_score),
                          float(settings.sdxl_refiner_low_aesthetic_score))


@dataclass(frozen=True)
class StableDiffusionXLRefiner:
    name: str = "sdxl_refiner"
    label: str = "SDXL refiner"
    sampling: SamplingHints = field(default_factory=lambda: SamplingHints(sdxl_schedules=True))
    vae_kind: str = "sdxl"
    cpu_onednn_linear: bool = False  # +0.8-1.4 GB peak at 1024x1024 with it (bench/README.md)
    shares_first_self_attention: bool = False  # its pooled prompt is in the time embedding

    def detect(self, sd: StateDict, metadata: dict) -> FamilyMatch | None:
        if REFINER_KEY not in sd:
            return None
        return FamilyMatch(False, marked_prediction_type(sd, metadata) or "epsilon")

    def describes(self, original: dict) -> bool:
        targets = [str(m.get("target", "")).rsplit(".", 1)[-1] for m in embedders(original)]
        keys = [m.get("input_key") for m in embedders(original)]
        return targets.count("FrozenOpenCLIPEmbedder2") == 1 and "FrozenCLIPEmbedder" not in targets \
            and "aesthetic_score" in keys

    def config_file(self, match: FamilyMatch, files: ConfigFiles) -> Path:
        return files.shipped / CONFIG

    def default_size(self, config: ModelConfig) -> tuple[int, int]:
        return 1024, 1024

    def build(self, config: ModelConfig, sd: StateDict) -> BuiltModel:
        return loader.build_components(config, sd, build_text_encoder, unet_settings(config))

    def prompt_encoder(self, tokenizer: CLIPTokenizer, text_encoder: torch.nn.Module) -> PromptEncoder:
        return SDXLRefinerPromptEncoder(tokenizer, text_encoder)


SDXL_REFINER = StableDiffusionXLRefiner()
