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
    extra: dict[str, torch.Tensor] | None = None  # more tensors in the file (an SD 2 depth model's MiDaS)

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = ldm_export.checkpoint_state_dict(self.unet, self.vae, self.text_encoder, self.family,
                                              self.text_encoder_2)
        return {**sd, **(self.extra or {})}

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


# A small MiDaS DPT-Hybrid in the original layout (timm's ViT-hybrid and MiDaS's `pretrained` / `scratch` names,
# written from that architecture, not from our map to transformers): 12 ViT blocks 32 wide (MiDaS reads blocks 8
# and 11), a ResNet of 1, 2 and 1 bottleneck blocks (128, 256, 512 wide; GroupNorm needs 32 channels), fusion 16.
MIDAS_WIDTH, MIDAS_BLOCKS, MIDAS_MLP, MIDAS_STEM = 32, 12, 64, 32
MIDAS_STAGES = ((1, 128), (2, 256), (1, 512))
MIDAS_FUSION = 16


def midas_shapes(with_head: bool = False) -> dict[str, tuple[int, ...]]:
    """{original MiDaS DPT-Hybrid tensor name: shape} of the small model (`with_head`: the ViT's classifier,
    which some files keep and nothing uses)."""
    h, vit, bb = MIDAS_WIDTH, "pretrained.model.", "pretrained.model.patch_embed.backbone."
    shapes: dict[str, tuple[int, ...]] = {vit + "cls_token": (1, 1, h), vit + "pos_embed": (1, 24 * 24 + 1, h),
                                          bb + "stem.conv.weight": (MIDAS_STEM, 3, 7, 7),
                                          bb + "stem.norm.weight": (MIDAS_STEM,), bb + "stem.norm.bias": (MIDAS_STEM,)}
    cin = MIDAS_STEM
    for s, (depth, width) in enumerate(MIDAS_STAGES):
        mid = width // 4
        for b in range(depth):
            pre = f"{bb}stages.{s}.blocks.{b}."
            inputs = cin if b == 0 else width
            for i, (out, inp, k) in enumerate(((mid, inputs, 1), (mid, mid, 3), (width, mid, 1)), start=1):
                shapes[f"{pre}conv{i}.weight"] = (out, inp, k, k)
                shapes[f"{pre}norm{i}.weight"] = shapes[f"{pre}norm{i}.bias"] = (out,)
            if b == 0:
                shapes[pre + "downsample.conv.weight"] = (width, inputs, 1, 1)
                shapes[pre + "downsample.norm.weight"] = shapes[pre + "downsample.norm.bias"] = (width,)
        cin = width
    shapes[vit + "patch_embed.proj.weight"] = (h, cin, 1, 1)
    shapes[vit + "patch_embed.proj.bias"] = (h,)
    for i in range(MIDAS_BLOCKS):
        pre = f"{vit}blocks.{i}."
        for name, shape in (("norm1", (h,)), ("norm2", (h,)), ("attn.proj", (h, h)), ("attn.qkv", (3 * h, h)),
                            ("mlp.fc1", (MIDAS_MLP, h)), ("mlp.fc2", (h, MIDAS_MLP))):
            shapes[f"{pre}{name}.weight"] = shape
            shapes[f"{pre}{name}.bias"] = (shape[0],)
    shapes[vit + "norm.weight"] = shapes[vit + "norm.bias"] = (h,)
    if with_head:
        shapes[vit + "head.weight"], shapes[vit + "head.bias"] = (1000, h), (1000,)
    neck = (MIDAS_STAGES[0][1], MIDAS_STAGES[1][1], h, h)
    for level in (3, 4):
        pre = f"pretrained.act_postprocess{level}."
        shapes[pre + "0.project.0.weight"], shapes[pre + "0.project.0.bias"] = (h, 2 * h), (h,)
        shapes[pre + "3.weight"], shapes[pre + "3.bias"] = (neck[level - 1], h, 1, 1), (neck[level - 1],)
    shapes["pretrained.act_postprocess4.4.weight"] = (neck[3], neck[3], 3, 3)
    shapes["pretrained.act_postprocess4.4.bias"] = (neck[3],)
    f = MIDAS_FUSION
    for level in range(1, 5):
        shapes[f"scratch.layer{level}_rn.weight"] = (f, neck[level - 1], 3, 3)
        pre = f"scratch.refinenet{level}."
        shapes[pre + "out_conv.weight"], shapes[pre + "out_conv.bias"] = (f, f, 1, 1), (f,)
        for unit in (1, 2):
            for conv in (1, 2):
                shapes[f"{pre}resConfUnit{unit}.conv{conv}.weight"] = (f, f, 3, 3)
                shapes[f"{pre}resConfUnit{unit}.conv{conv}.bias"] = (f,)
    for i, shape in ((0, (f // 2, f, 3, 3)), (2, (32, f // 2, 3, 3)), (4, (1, 32, 1, 1))):
        shapes[f"scratch.output_conv.{i}.weight"], shapes[f"scratch.output_conv.{i}.bias"] = shape, (shape[0],)
    return shapes


def build_midas(seed: int = 0, with_head: bool = False) -> dict[str, torch.Tensor]:
    """The small MiDaS DPT-Hybrid's weights (original names), random from `seed`, sized so every layer counts."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in midas_shapes(with_head).items():
        if "norm" in name and name.endswith("weight"):
            out[name] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias") or name.endswith(("cls_token", "pos_embed")):
            out[name] = 0.02 * torch.randn(shape, generator=g)
        else:
            fan_in = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else shape[0]
            out[name] = torch.randn(shape, generator=g) / fan_in ** 0.5
    # the head ends in ReLU, conv, ReLU: a last conv with positive weights and bias keeps its output above zero (a
    # random one leaves most of it at zero, a flat depth map)
    for name in ("scratch.output_conv.4.weight", "scratch.output_conv.4.bias"):
        out[name] = out[name].abs() + 0.05
    return out


def build(family: str = "sd1", inpainting: bool = False, prediction_type: str = "epsilon", seed: int = 0,
          depth: bool = False, midas: bool = True) -> TinyModel:
    """`depth`: an SD 2 depth model (a 5-channel U-Net), with its MiDaS weights in the file unless `midas` is
    False (as a file saved without them)."""
    if family == "sdxl":
        return build_sdxl(inpainting, prediction_type, seed)
    if family == "sdxl_refiner":
        return build_sdxl_refiner(seed)
    g = torch.Generator().manual_seed(seed)
    width = TEXT_WIDTH[family]
    unet_kwargs = dict(
        sample_size=8, in_channels=9 if inpainting else 5 if depth else 4, out_channels=4, layers_per_block=1,
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
    extra = None
    if depth and midas:
        from modules.models.depth import CHECKPOINT_PREFIX

        extra = {CHECKPOINT_PREFIX + k: v for k, v in build_midas(seed).items()}
    return TinyModel(unet, vae, text_encoder, family, prediction_type, extra=extra)
