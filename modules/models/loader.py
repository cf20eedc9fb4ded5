"""Build diffusers/transformers modules from an original (LDM single-file) checkpoint.

Key conversion is diffusers' own (`diffusers.loaders.single_file_utils`); configs come from the LDM
YAML and the state dict's shapes, never from a model hub. Modules are created on the meta device and
receive the file's tensors directly, so no random weights are ever materialised. What differs between
families (their text encoders, U-Net settings) is in the family modules (`modules/models/families/`),
which build from the parts here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedModel

from modules.models import low_memory
from modules.models.checkpoint_file import CheckpointError
from modules.models.family import BuiltModel, ModelConfig, StateDict

log = logging.getLogger(__name__)

CLIP_HEAD_DIM = 64  # both OpenAI CLIP ViT-L/14 and OpenCLIP ViT-H/14 text towers use 64-wide heads


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, config: ModelConfig) -> None:
    """Load `state_dict` into a meta-device `module` strictly, with a message a user can act on."""
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise CheckpointError(
            f"The {what} weights do not fit the config {config.yaml_path.name} ({detail}). If this model needs a "
            "different config, put a YAML with the checkpoint's name beside it.") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"The {what} weights do not match the config {config.yaml_path.name}: "
                              f"{'; '.join(parts)}. The file may be damaged or need its own YAML.")
    still_meta = [n for n, p in module.named_parameters() if p.is_meta]
    if still_meta:
        raise CheckpointError(f"The {what} is missing weights for {', '.join(still_meta[:3])}")


def build_unet(config: ModelConfig, sd: StateDict, overrides: Mapping | None = None) -> UNet2DConditionModel:
    """The U-Net; `overrides` change the config derived from the YAML (a family's own settings)."""
    unet_config = {**sfu.create_unet_diffusers_config_from_ldm(config.original, sd), **(overrides or {})}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    load_weights(unet, sfu.convert_ldm_unet_checkpoint(sd, unet_config), "U-Net", config)
    return unet.eval().requires_grad_(False)


def vae_config(config: ModelConfig, sd: dict[str, torch.Tensor]) -> dict:
    return sfu.create_vae_diffusers_config_from_ldm(config.original, sd, scaling_factor=config.scale_factor)


def build_vae(vae_cfg: dict, vae_sd: dict[str, torch.Tensor], config: ModelConfig, what: str = "VAE") -> AutoencoderKL:
    """An AutoencoderKL from LDM-layout VAE weights (with or without the `first_stage_model.` prefix)
    or from diffusers-layout ones (as some standalone VAE files are)."""
    if any(k.startswith("encoder.down_blocks.") for k in vae_sd):
        parts = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
        converted = {k: v for k, v in vae_sd.items() if k.startswith(parts)}
    else:
        converted = sfu.convert_ldm_vae_checkpoint(vae_sd, vae_cfg)
    with init_empty_weights():
        vae = AutoencoderKL.from_config(vae_cfg)
    load_weights(vae, converted, what, config)
    return vae.eval().requires_grad_(False)


def count_layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks `PREFIX<n>.` the state dict has."""
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def clip_config(vocab: int, hidden: int, intermediate: int, layers: int, positions: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // CLIP_HEAD_DIM), max_position_embeddings=positions, hidden_act=act,
        projection_dim=hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def openai_clip_config(clip_sd: dict[str, torch.Tensor]) -> CLIPTextConfig:
    """The shape of an OpenAI CLIP text model (quick-GELU, all its layers) read from its weights, named as
    transformers names them without the `text_model.` level."""
    vocab, hidden = clip_sd["embeddings.token_embedding.weight"].shape
    return clip_config(vocab, hidden, clip_sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
                       count_layers(clip_sd, "encoder.layers."),
                       clip_sd["embeddings.position_embedding.weight"].shape[0], "quick_gelu")


def open_clip_config(sd: dict[str, torch.Tensor], prefix: str, layers: int) -> CLIPTextConfig:
    """The shape of an OpenCLIP text tower (GELU) whose weights are under `prefix`, keeping `layers` blocks."""
    vocab, hidden = sd[prefix + "token_embedding.weight"].shape
    return clip_config(vocab, hidden, sd[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0], layers,
                       sd[prefix + "positional_embedding"].shape[0], "gelu")


def build_text_model(cfg: CLIPTextConfig, clip_sd: dict[str, torch.Tensor], config: ModelConfig,
                     cls: type[PreTrainedModel] = CLIPTextModel) -> PreTrainedModel:
    """A CLIP text model of shape `cfg` holding `clip_sd` (CLIPTextModel: transformers' names without
    `text_model.`; CLIPTextModelWithProjection: with it, and `text_projection.weight`)."""
    with init_empty_weights():
        model = cls(cfg)
    load_weights(model, clip_sd, "text encoder", config)
    return model.eval().requires_grad_(False)


def alphas_cumprod(config: ModelConfig, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training noise schedule as float32, as the original LDM model holds it.

    The file's own `alphas_cumprod` buffer wins (the original code loads it over the computed one, so
    fp16-saved files carry slightly rounded values, and A1111's sigmas follow them); otherwise it is
    computed from the YAML's linear beta schedule in float64, then stored as float32.
    """
    params = config.params
    timesteps = int(params.get("timesteps", 1000))
    stored = sd.get("alphas_cumprod")
    if stored is not None and stored.shape == (timesteps,):
        return stored.detach().to(torch.float32).clone()
    start, end = float(params.get("linear_start", 0.00085)), float(params.get("linear_end", 0.012))
    betas = torch.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


@torch.no_grad()
def probe_v_prediction(unet: UNet2DConditionModel) -> bool:
    """A1111's test for SD 2.x v-prediction: at t=999 an epsilon model given a constant 0.5 latent
    predicts roughly that latent back; a v model predicts values far below it (mean difference < -1)."""
    p, dtype = next(unet.parameters()), low_memory.compute_dtype(unet)
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=p.device, dtype=dtype)
    ctx = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, device=p.device, dtype=dtype)
    out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=ctx).sample
    return (out.float() - x.float()).mean().item() < -1


def build_components(config: ModelConfig, sd: StateDict,
                     build_text_encoder: Callable[[ModelConfig, StateDict], torch.nn.Module],
                     unet_overrides: Mapping | None = None) -> BuiltModel:
    """A Stable Diffusion model's U-Net, VAE and text encoder (in this order, so the first broken part is
    the one reported), with the family's text encoder builder and U-Net settings."""
    unet = build_unet(config, sd, unet_overrides)
    vcfg = vae_config(config, sd)
    vae = build_vae(vcfg, sd, config)
    text_encoder = build_text_encoder(config, sd)
    return BuiltModel(config, unet, vae, vcfg, text_encoder, alphas_cumprod(config, sd))


def build(path: Path, sd: StateDict, config: ModelConfig) -> BuiltModel:
    """All components of checkpoint `path` (tensors `sd`), as its family builds them."""
    return config.family.build(config, sd)
