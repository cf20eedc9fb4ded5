"""Tiny Stable Diffusion models for tests: the real architecture with small widths, random weights
from a fixed seed, written in the original LDM single-file layout with a YAML beside them, so tests go
through exactly the loader path a downloaded SD 1.5 file takes.

The tiny SDXL keeps SDXL's layout rules at small widths: no attention on the first U-Net level, deeper
transformers further down, CLIP-L (32 wide) and bigG (64 wide, with a projection) whose widths add up to
the context (96), and adm_in_channels = pooled width + 6 x 256."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.models import ldm_export

TEXT_WIDTH = {"sd1": 32, "sd2": 64, "sdxl": 32}
SDXL_BIGG_WIDTH = 64
SDXL_TIME_EMBED = 256


@dataclass
class TinyModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel  # for SD 2.x: the full tower, one block more than the loader uses; SDXL: CLIP-L
    family: str
    prediction_type: str
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL: the bigG tower

    def state_dict(self) -> dict[str, torch.Tensor]:
        return ldm_export.checkpoint_state_dict(self.unet, self.vae, self.text_encoder, self.family,
                                                self.text_encoder_2)

    def yaml(self) -> dict:
        if self.family in ("sdxl", "sdxl_refiner"):
            return ldm_export.sdxl_yaml(self.unet, self.vae, self.text_encoder.config.num_hidden_layers,
                                        self.prediction_type, refiner=self.family == "sdxl_refiner")
        return ldm_export.ldm_yaml(self.unet, self.vae, self.family, self.prediction_type)

    def write(self, path: Path, yaml_beside: bool = True, dtype: torch.dtype | None = None, metadata=None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ldm_export.save(path, self.state_dict(), dtype=dtype, metadata=metadata)
        if yaml_beside:
            ldm_export.write_yaml(path.with_suffix(".yaml"), self.yaml())
        return path


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights large enough that every layer visibly affects the output (default init of some
    layers, e.g. zero-initialised output convs, would make a tiny model ignore its inputs)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in ** 0.5)


def _text_config(width: int, layers: int, act: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=1, max_position_embeddings=77, hidden_act=act, projection_dim=width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def _vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=64, scaling_factor=scaling_factor,
    )


def build_sdxl(inpainting: bool = False, prediction_type: str = "epsilon", seed: int = 0) -> TinyModel:
    g = torch.Generator().manual_seed(seed)
    clip_l_width, bigg_width = TEXT_WIDTH["sdxl"], SDXL_BIGG_WIDTH
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 1, 2], attention_head_dim=[1, 2, 2], use_linear_projection=True,
        cross_attention_dim=clip_l_width + bigg_width, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED, projection_class_embeddings_input_dim=bigg_width + 6 * SDXL_TIME_EMBED,
    )
    vae = _vae(0.13025)
    clip_l = CLIPTextModel(_text_config(clip_l_width, 3, "quick_gelu"))
    clip_g = CLIPTextModelWithProjection(_text_config(bigg_width, 3, "gelu"))
    for m in (unet, vae, clip_l, clip_g):
        _randomize(m, g)  # biases (the final layer norms' too) are non-zero, as in real models
        m.eval()
    return TinyModel(unet, vae, clip_l, "sdxl", prediction_type, clip_g)


def build_sdxl_refiner(seed: int = 0) -> TinyModel:
    """The refiner's layout at small widths: attention on the middle levels only, bigG alone (64 wide) as
    the context, adm_in_channels = pooled width + 5 x 256."""
    g = torch.Generator().manual_seed(seed)
    bigg_width = SDXL_BIGG_WIDTH
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=2, attention_head_dim=[1, 2, 2, 2], use_linear_projection=True,
        cross_attention_dim=bigg_width, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED, projection_class_embeddings_input_dim=bigg_width + 5 * SDXL_TIME_EMBED,
    )
    vae = _vae(0.13025)
    clip_g = CLIPTextModelWithProjection(_text_config(bigg_width, 3, "gelu"))
    for m in (unet, vae, clip_g):
        _randomize(m, g)
        m.eval()
    return TinyModel(unet, vae, clip_g, "sdxl_refiner", "epsilon")


def build(family: str = "sd1", inpainting: bool = False, prediction_type: str = "epsilon", seed: int = 0) -> TinyModel:
    if family == "sdxl":
        return build_sdxl(inpainting, prediction_type, seed)
    if family == "sdxl_refiner":
        return build_sdxl_refiner(seed)
    g = torch.Generator().manual_seed(seed)
    width = TEXT_WIDTH[family]
    unet_kwargs = dict(
        sample_size=8, in_channels=9 if inpainting else 4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width,
    )
    if family == "sd1":
        unet_kwargs.update(attention_head_dim=2)
    else:  # SD 2.x style: linear projections, heads sized 32 channels
        unet_kwargs.update(attention_head_dim=[1, 2, 2], use_linear_projection=True, upcast_attention=True)
    unet = UNet2DConditionModel(**unet_kwargs)
    vae = _vae(0.18215)
    text_encoder = CLIPTextModel(_text_config(width, 3 if family == "sd2" else 2,
                                              "quick_gelu" if family == "sd1" else "gelu"))
    for m in (unet, vae, text_encoder):
        _randomize(m, g)
        m.eval()
    return TinyModel(unet, vae, text_encoder, family, prediction_type)
