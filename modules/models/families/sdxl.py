"""Stable Diffusion XL base (and its 9-channel inpainting models): two text encoders side by side.

The checkpoint holds OpenAI's CLIP ViT-L/14 under `conditioner.embedders.0.transformer.` and OpenCLIP's
ViT-bigG/14 under `conditioner.embedders.1.model.`. Conditioning as in A1111 (v1.10, sgm's
GeneralConditioner):

- context (tokens, 768 + 1280): CLIP-L's hidden state `layer_idx` 11 of 12 (no final layer norm) beside
  bigG's penultimate hidden state (no final layer norm), each with A1111's chunking and emphasis; both
  encoders see the same 75-token chunks (one BPE vocabulary), CLIP-L padding with EOS, bigG with 0;
- pooled (1280): bigG's final-layer-normed state at the end token (the row's argmax, the first EOS)
  times its text projection, from the first chunk only, untouched by emphasis;
- time ids: original size (h, w), crop (top, left) = (0, 0), target size (h, w) of the job; the U-Net
  embeds each with sgm's 256-wide cos/sin timestep embedding (diffusers' `add_time_proj` is the same).

A negative prompt whose texts are all empty gives zeros for the context and the pooled vector (A1111's
`force_zero_embeddings`); any other is encoded. "Clip skip" leaves bigG alone and applies to CLIP-L only
when A1111's `sdxl_clip_l_skip` is on (the encoder's `clip_l_skip`; off by default, as in A1111).

The refiner (only bigG, under `conditioner.embedders.0.model.`) is its own family, `sdxl_refiner.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from modules.models import loader, low_memory
from modules.models.checkpoint_file import CheckpointError
from modules.models.family import (BuiltModel, ConfigFiles, FamilyMatch, ModelConfig, SamplingHints, StateDict,
                                   marked_prediction_type, unet_in_channels)
from modules.models.prompt_encoder import CHUNK, EOS, Cond, PromptEncoder, TextEncoderSpec

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = "conditioner.embedders.1.model."
BASE_KEY = BIGG_PREFIX + "ln_final.weight"
REFINER_KEY = "conditioner.embedders.0.model.ln_final.weight"
CONFIG = "sd_xl_base.yaml"
INPAINTING_CONFIG = "sd_xl_inpaint.yaml"
TIME_EMBED_DIM = 256  # sgm's ConcatTimestepEmbedderND outdim: each size/crop value becomes 256 numbers
CLIP_L_SPEC = TextEncoderSpec(pad_id=EOS, honours_clip_skip=False)  # Clip skip only with sdxl_clip_l_skip
BIGG_SPEC = TextEncoderSpec(pad_id=0, honours_clip_skip=False)


class SDXLTextEncoders(torch.nn.Module):
    """The two text encoders of an SDXL checkpoint, in one module so the model manager moves and casts
    them together. `clip_l_layer` is the CLIP-L hidden state the context uses (an index into
    `hidden_states`, whose 0 is the embeddings)."""

    def __init__(self, clip_l: CLIPTextModel, clip_g: CLIPTextModelWithProjection, clip_l_layer: int):
        super().__init__()
        self.clip_l = clip_l
        self.clip_g = clip_g
        self.clip_l_layer = clip_l_layer


def embedders(original: dict) -> list[dict]:
    """The conditioner's embedders an sgm YAML lists (`model.params.conditioner_config.params.emb_models`)."""
    conditioner = original["model"]["params"].get("conditioner_config") or {}
    return (conditioner.get("params") or {}).get("emb_models") or []


def _embedder_params(config: ModelConfig, index: int) -> dict:
    models = embedders(config.original)
    return (models[index].get("params") or {}) if index < len(models) else {}


def _time_embed_dim(config: ModelConfig) -> int:
    """How wide each size/crop (/aesthetic) value's embedding is: the YAML's first ConcatTimestepEmbedderND."""
    sizes = [m for m in embedders(config.original) if str(m.get("target", "")).endswith("ConcatTimestepEmbedderND")]
    return int(((sizes[0].get("params") or {}) if sizes else {}).get("outdim", TIME_EMBED_DIM))


def build_clip_l(config: ModelConfig, sd: StateDict) -> tuple[CLIPTextModel, int]:
    """CLIP ViT-L (quick-GELU), all its layers, shaped from the weights; and the hidden-state index the
    YAML's `layer: hidden, layer_idx` names (a model with fewer layers than it, such as the tests' tiny
    ones, uses its penultimate layer: what 11 of 12 is)."""
    clip_sd = {k.removeprefix(CLIP_L_PREFIX + "text_model."): v for k, v in sd.items()
               if k.startswith(CLIP_L_PREFIX + "text_model.")}
    clip_sd.pop("embeddings.position_ids", None)
    if "embeddings.token_embedding.weight" not in clip_sd:
        raise CheckpointError(f"SDXL CLIP-L text encoder weights ({CLIP_L_PREFIX}text_model.*) are missing")
    cfg = loader.openai_clip_config(clip_sd)
    layers = cfg.num_hidden_layers
    params = _embedder_params(config, 0)
    if params.get("layer", "hidden") == "last":
        layer = layers
    else:
        layer = int(params.get("layer_idx", layers - 1))
        layer = layer if layer < layers else layers - 1
    return loader.build_text_model(cfg, clip_sd, config), layer


def build_clip_g(config: ModelConfig, sd: StateDict, prefix: str = BIGG_PREFIX) -> CLIPTextModelWithProjection:
    """OpenCLIP ViT-bigG (under `prefix`: the refiner keeps it as embedder 0) as transformers' CLIP text model
    with projection, all its layers (the context uses the penultimate, the pooled vector the last), shaped
    from the weights. OpenCLIP applies its `text_projection` (width, dim) as x @ P; the converter stores its
    transpose as the Linear's weight."""
    used = {k: v for k, v in sd.items() if k.startswith(prefix) and not k.endswith("logit_scale")}
    layers = loader.count_layers(used, prefix + "transformer.resblocks.")
    if layers < 2 or prefix + "text_projection" not in used:
        raise CheckpointError(f"SDXL OpenCLIP bigG text encoder weights ({prefix}*) are missing")
    cfg = loader.open_clip_config(used, prefix, layers)
    cfg.projection_dim = int(used[prefix + "text_projection"].shape[1])
    cfg.pad_token_id = 0
    with init_empty_weights():
        shape_only = CLIPTextModelWithProjection(cfg)
    clip_sd = sfu.convert_open_clip_checkpoint(shape_only, used, prefix=prefix)
    return loader.build_text_model(cfg, clip_sd, config, CLIPTextModelWithProjection)


def build_text_encoders(config: ModelConfig, sd: StateDict) -> SDXLTextEncoders:
    clip_l, layer = build_clip_l(config, sd)
    return SDXLTextEncoders(clip_l, build_clip_g(config, sd), layer).eval().requires_grad_(False)


def unet_settings(config: ModelConfig) -> dict:
    """SDXL's U-Net takes the pooled text vector and the time ids through `text_time` added embeddings.
    diffusers infers that only for a context width of 2048 or 1280; said here for any width."""
    return {"addition_embed_type": "text_time", "addition_time_embed_dim": _time_embed_dim(config),
            "class_embed_type": None,
            "projection_class_embeddings_input_dim": int(config.unet_params["adm_in_channels"])}


class SDXLPromptEncoder(PromptEncoder):
    """Prompts to SDXL's conditioning (see the module docstring). Chunking, prompt editing, AND and the
    token counter are PromptEncoder's (with CLIP-L's rows); each encoder applies emphasis to its own
    output, as each of A1111's two wrapped embedders does."""

    def __init__(self, tokenizer: CLIPTokenizer, encoders: SDXLTextEncoders, clip_l_skip: bool = False):
        super().__init__(tokenizer, encoders, CLIP_L_SPEC)
        self.clip_l = _ClipL(tokenizer, encoders.clip_l, encoders.clip_l_layer, clip_l_skip)
        self.clip_g = ClipGEncoder(tokenizer, encoders.clip_g)
        self.crop = (0, 0)  # (top, left) for the time ids: A1111's sdxl_crop_top/left (see use_settings)

    @property
    def width(self) -> int:
        return self.clip_l.width + self.clip_g.width

    @property
    def pooled_width(self) -> int:
        return self.clip_g.text_model.config.projection_dim

    @property
    def embedding_signature(self) -> tuple[tuple[str, int], ...]:
        """SDXL's textual-inversion files hold a `clip_g` and a `clip_l` tensor, each as wide as its encoder."""
        return (("clip_g", self.clip_g.width), ("clip_l", self.clip_l.width))

    @property
    def lora_parts(self) -> dict[str, torch.nn.Module]:
        """kohya's `lora_te1_` (diffusers' `text_encoder.`) is CLIP-L, `lora_te2_` (`text_encoder_2.`) bigG."""
        return {"te1": self.clip_l.text_model, "te2": self.clip_g.text_model}

    def _share_embeddings(self) -> None:
        # the model manager sets the vocabulary of SDXL embeddings on this encoder; both sub-encoders find
        # the same names at the same token positions and each splices its own tensor (`embedding_part`)
        for encoder in (self.clip_l, self.clip_g):
            encoder.embeddings = self.embeddings
            encoder.embeddings_used = self.embeddings_used

    @torch.no_grad()
    def encode_texts(self, texts: list[str], clip_skip: int = 1, emphasis: str = "Original") -> list[torch.Tensor]:
        return [c.context for c in self.encode_conds(texts, clip_skip, emphasis)]

    @torch.no_grad()
    def encode_conds(self, texts: list[str], clip_skip: int = 1, emphasis: str = "Original",
                     negative: bool = False) -> list[Cond]:
        self._share_embeddings()
        if negative and all(t == "" for t in texts):
            p, dtype = next(self.clip_g.text_model.parameters()), low_memory.compute_dtype(self.clip_g.text_model)
            zero = Cond(torch.zeros(CHUNK + 2, self.width, device=p.device, dtype=dtype),
                        torch.zeros(self.pooled_width, device=p.device, dtype=dtype))
            return [zero for _ in texts]
        contexts_l = self.clip_l.encode_texts(texts, clip_skip, emphasis)
        encoded_g = self.clip_g.encode_with_pooled(texts, clip_skip, emphasis)
        by_text: dict[str, Cond] = {}
        for text, z_l, (z_g, pooled) in zip(texts, contexts_l, encoded_g):
            if text not in by_text:
                by_text[text] = Cond(torch.cat([z_l, z_g.to(z_l.dtype)], dim=-1), pooled)
        return [by_text[t] for t in texts]

    def unet_inputs(self, width: int, height: int, negative: bool = False) -> dict[str, torch.Tensor]:
        """The time ids for a job of this size: original (h, w), crop (top, left), target (h, w), A1111's
        values (crop from its sdxl_crop_top/left settings, 0 by default)."""
        top, left = self.crop
        return {"time_ids": torch.tensor([height, width, top, left, height, width], dtype=torch.float32)}

    def use_settings(self, settings) -> None:
        super().use_settings(settings)
        for encoder in (self.clip_l, self.clip_g):  # each chunks its own tokens
            encoder.use_settings(settings)
        self.clip_l.clip_l_skip = bool(settings.sdxl_clip_l_skip)
        self.crop = (int(settings.sdxl_crop_top), int(settings.sdxl_crop_left))


class _ClipL(PromptEncoder):
    embedding_part = "clip_l"

    def __init__(self, tokenizer: CLIPTokenizer, model: CLIPTextModel, layer: int, clip_l_skip: bool):
        super().__init__(tokenizer, model, CLIP_L_SPEC)
        self.layer = layer
        self.clip_l_skip = clip_l_skip

    def _run(self, ids: torch.Tensor, clip_skip: int) -> tuple[torch.Tensor, None]:
        hidden = self.text_model(ids, output_hidden_states=True).hidden_states
        # A1111's sdxl_clip_l_skip: hidden_states[-clip_skip], no final layer norm (Clip skip 1: the last layer)
        return (hidden[-max(clip_skip, 1)] if self.clip_l_skip else hidden[self.layer]), None


class ClipGEncoder(PromptEncoder):
    embedding_part = "clip_g"

    def __init__(self, tokenizer: CLIPTokenizer, model: CLIPTextModelWithProjection):
        super().__init__(tokenizer, model, BIGG_SPEC)

    def _run(self, ids: torch.Tensor, clip_skip: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_model(ids, output_hidden_states=True)
        # transformers pools the final-layer-normed state at the first EOS: OpenCLIP's ids.argmax()
        return out.hidden_states[-2], out.text_embeds


@dataclass(frozen=True)
class StableDiffusionXL:
    name: str = "sdxl"
    label: str = "SDXL"
    sampling: SamplingHints = field(default_factory=lambda: SamplingHints(sdxl_schedules=True))
    vae_kind: str = "sdxl"
    cpu_onednn_linear: bool = False  # +0.8-1.4 GB peak at 1024x1024 with it (bench/README.md)
    shares_first_self_attention: bool = False  # its pooled prompt is in the time embedding

    def detect(self, sd: StateDict, metadata: dict) -> FamilyMatch | None:
        if BASE_KEY not in sd:
            return None
        return FamilyMatch(unet_in_channels(sd) == 9, marked_prediction_type(sd, metadata) or "epsilon")

    def describes(self, original: dict) -> bool:
        models = embedders(original)
        targets = [str(m.get("target", "")).rsplit(".", 1)[-1] for m in models]
        return "FrozenCLIPEmbedder" in targets and "FrozenOpenCLIPEmbedder2" in targets

    def config_file(self, match: FamilyMatch, files: ConfigFiles) -> Path:
        return files.shipped / (INPAINTING_CONFIG if match.inpainting else CONFIG)

    def default_size(self, config: ModelConfig) -> tuple[int, int]:
        return 1024, 1024

    def build(self, config: ModelConfig, sd: StateDict) -> BuiltModel:
        return loader.build_components(config, sd, build_text_encoders, unet_settings(config))

    def prompt_encoder(self, tokenizer: CLIPTokenizer, text_encoder: torch.nn.Module) -> PromptEncoder:
        return SDXLPromptEncoder(tokenizer, text_encoder)


SDXL = StableDiffusionXL()
