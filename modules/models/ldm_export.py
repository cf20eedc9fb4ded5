"""Write diffusers/transformers modules as an original-layout (LDM single-file) checkpoint.

This is the inverse of the conversion the loader uses, for files we create ourselves: the built-in
demo model, the test fixtures and the full-size benchmark checkpoint. The key names are those of the
original CompVis/Stability code that every Stable Diffusion `.safetensors`/`.ckpt` on the internet
uses; `tests/engine/test_loading.py` checks that every family loads back through the loader with the
weights that were written.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."
OPENCLIP = "cond_stage_model.model."
SDXL_CLIP_L = "conditioner.embedders.0.transformer.text_model."
SDXL_CLIP_G = "conditioner.embedders.1.model."
SDXL_REFINER_CLIP_G = "conditioner.embedders.0.model."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_key(key: str, layers_per_block: int, up_has_attention: set[int]) -> str:
    per = layers_per_block + 1
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    renamed = _rename_first(key, simple)
    if renamed != key:
        return renamed
    if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + i * per + j}.0.{_rename_first(rest, _UNET_RESNET)}"
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + i * per + j}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_first(m[2], _UNET_RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{i * per + j}.0.{_rename_first(rest, _UNET_RESNET)}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        i, j, rest = int(m[1]), int(m[2]), m[3]
        return f"output_blocks.{i * per + j}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        slot = 2 if i in up_has_attention else 1
        return f"output_blocks.{i * per + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for U-Net key {key}")


def unet_to_ldm(unet_sd: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    with_attention = {int(m[1]) for k in unet_sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return {UNET + unet_key(k, layers_per_block, with_attention): v for k, v in unet_sd.items()}


def vae_key(key: str, num_levels: int) -> tuple[str, bool]:
    """The LDM name of a VAE key, and whether its weight is a 1x1 conv in LDM (a Linear in diffusers)."""
    simple = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    renamed = _rename_first(key, simple)
    if renamed != key:
        return renamed, False
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = _rename_first(m[2], _VAE_ATTN)
        is_matrix = rest.endswith(".weight") and rest.split(".")[0] in ("q", "k", "v", "proj_out")
        return f"{m[1]}.mid.attn_1.{rest}", is_matrix
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_first(m[3], {'conv_shortcut': 'nin_shortcut'})}", False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename_first(m[3], {'conv_shortcut': 'nin_shortcut'})}", False
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{_rename_first(m[3], {'conv_shortcut': 'nin_shortcut'})}", False
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if key.startswith(("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                       "quant_conv", "post_quant_conv")):
        return key, False
    raise KeyError(f"no LDM name for VAE key {key}")


def vae_to_ldm(vae_sd: dict[str, torch.Tensor], num_levels: int, prefix: str = VAE) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in vae_sd.items():
        name, is_matrix = vae_key(k, num_levels)
        out[prefix + name] = v[:, :, None, None] if is_matrix else v
    return out


def clip_to_ldm(te_sd: dict[str, torch.Tensor], with_position_ids: bool = True,
                prefix: str = CLIP) -> dict[str, torch.Tensor]:
    """OpenAI CLIP text model (SD 1.x) under `cond_stage_model.transformer.text_model.` (SDXL: `prefix`)."""
    out = {prefix + k.removeprefix("text_model."): v for k, v in te_sd.items() if not k.endswith("position_ids")}
    if with_position_ids:
        positions = out[prefix + "embeddings.position_embedding.weight"].shape[0]
        out[prefix + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def open_clip_to_ldm(te_sd: dict[str, torch.Tensor], prefix: str = OPENCLIP) -> dict[str, torch.Tensor]:
    """A full OpenCLIP text tower (SD 2.x) under `cond_stage_model.model.` (SDXL's bigG: `prefix`), with fused
    attention. A transformers projection (`text_projection.weight`, applied as a Linear) is stored as
    OpenCLIP's (width, dim) matrix, its transpose; without one, an identity."""
    sd = {k.removeprefix("text_model."): v for k, v in te_sd.items() if not k.endswith("position_ids")}
    projection = sd.pop("text_projection.weight", None)
    out = {
        prefix + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    layer_names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat([sd.pop(src + f"self_attn.{p}_proj.{part}") for p in "qkv"])
        for key in [k for k in sd if k.startswith(src)]:
            out[dst + _rename_first(key[len(src):], layer_names)] = sd.pop(key)
    if sd:
        raise KeyError(f"no OpenCLIP name for {sorted(sd)[:3]}")
    hidden = out[prefix + "ln_final.weight"].shape[0]
    out[prefix + "text_projection"] = torch.eye(hidden) if projection is None else projection.T.contiguous()
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def schedule_buffers(linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000) -> dict:
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(), "alphas_cumprod_prev": prev.float()}


def checkpoint_state_dict(unet, vae, text_encoder, family: str, text_encoder_2=None) -> dict[str, torch.Tensor]:
    """The whole LDM state dict for a model. For SD 2.x `text_encoder` is the full OpenCLIP tower
    (the loader uses all but its last block, like the original penultimate-layer setting). For SDXL it is
    CLIP-L and `text_encoder_2` the bigG tower with its projection; for the SDXL refiner `text_encoder` is
    that bigG tower; like Stability's files, no schedule buffers are stored."""
    sd = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
    sd.update(vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)))
    te = text_encoder.state_dict()
    if family == "sdxl_refiner":
        sd.update(open_clip_to_ldm(te, prefix=SDXL_REFINER_CLIP_G))
        return sd
    if family == "sdxl":
        sd.update(clip_to_ldm(te, prefix=SDXL_CLIP_L))
        sd.update(open_clip_to_ldm(text_encoder_2.state_dict(), prefix=SDXL_CLIP_G))
        return sd
    sd.update(clip_to_ldm(te) if family == "sd1" else open_clip_to_ldm(te))
    sd.update(schedule_buffers())
    return sd


def _first_stage(vae) -> dict:
    v = vae.config
    return {"embed_dim": v.latent_channels, "ddconfig": {
        "double_z": True, "z_channels": v.latent_channels, "resolution": 256, "in_channels": v.in_channels,
        "out_ch": v.out_channels, "ch": v.block_out_channels[0],
        "ch_mult": [c // v.block_out_channels[0] for c in v.block_out_channels],
        "num_res_blocks": v.layers_per_block, "attn_resolutions": [], "dropout": 0.0},
        "lossconfig": {"target": "torch.nn.Identity"}}


def sdxl_yaml(unet, vae, clip_l_layers: int, prediction_type: str = "epsilon", refiner: bool = False) -> dict:
    """An sgm YAML for SDXL-architecture modules of any size, in the layout of configs/sd_xl_base.yaml (the
    refiner's: sd_xl_refiner.yaml); the CLIP-L hidden state used is the penultimate (`layer_idx` 11 of SDXL's
    12)."""
    u = unet.config
    base = u.block_out_channels[0]
    with_attention = [i for i, t in enumerate(u.down_block_types) if t.startswith("CrossAttn")]
    heads = u.attention_head_dim if isinstance(u.attention_head_dim, (list, tuple)) else [u.attention_head_dim] * 3
    level = with_attention[0]
    depth = u.transformer_layers_per_block
    network = {
        "adm_in_channels": u.projection_class_embeddings_input_dim, "num_classes": "sequential",
        "use_checkpoint": False, "in_channels": u.in_channels, "out_channels": u.out_channels, "model_channels": base,
        "attention_resolutions": [2 ** i for i in with_attention], "num_res_blocks": u.layers_per_block,
        "channel_mult": [c // base for c in u.block_out_channels],
        "num_head_channels": u.block_out_channels[level] // heads[level], "use_linear_in_transformer": True,
        "transformer_depth": list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(u.block_out_channels),
        "context_dim": u.cross_attention_dim, "spatial_transformer_attn_type": "softmax-xformers",
    }
    size_embedder = "sgm.modules.encoders.modules.ConcatTimestepEmbedderND"
    sizes = [{"is_trainable": False, "input_key": key, "target": size_embedder,
              "params": {"outdim": u.addition_time_embed_dim}}
             for key in ("original_size_as_tuple", "crop_coords_top_left",
                         "aesthetic_score" if refiner else "target_size_as_tuple")]
    encoders = "sgm.modules.encoders.modules."
    clip_l = {"is_trainable": False, "input_key": "txt", "target": encoders + "FrozenCLIPEmbedder",
              "params": {"layer": "hidden", "layer_idx": clip_l_layers - 1}}
    clip_g = {"is_trainable": False, "input_key": "txt", "target": encoders + "FrozenOpenCLIPEmbedder2",
              "params": {"arch": "ViT-bigG-14", "version": "laion2b_s39b_b160k", "freeze": True, "layer": "penultimate",
                         "always_return_pooled": True, "legacy": False}}
    embedders = [clip_g, *sizes] if refiner else [clip_l, clip_g, *sizes]
    params = {
        "scale_factor": float(vae.config.scaling_factor), "disable_first_stage_autocast": True,
        "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
            "num_idx": 1000,
            "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling."
                               + ("VScaling" if prediction_type == "v_prediction" else "EpsScaling")},
            "discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}},
        "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel", "params": network},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": embedders}},
        "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                               "params": _first_stage(vae)},
    }
    if prediction_type == "v_prediction":
        params = {"parameterization": "v", **params}
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": params}}


def ldm_yaml(unet, vae, family: str, prediction_type: str = "epsilon") -> dict:
    """An LDM YAML describing modules of any size, in the layout of configs/v1-inference.yaml."""
    u, v = unet.config, vae.config
    base = u.block_out_channels[0]
    attention_resolutions = [2 ** i for i, t in enumerate(u.down_block_types) if t.startswith("CrossAttn")]
    unet_params = {
        "image_size": 32, "in_channels": u.in_channels, "out_channels": u.out_channels, "model_channels": base,
        "attention_resolutions": attention_resolutions, "num_res_blocks": u.layers_per_block,
        "channel_mult": [c // base for c in u.block_out_channels], "use_spatial_transformer": True,
        "transformer_depth": 1, "context_dim": u.cross_attention_dim, "use_checkpoint": False, "legacy": False,
    }
    heads = u.attention_head_dim
    if family == "sd1":
        unet_params["num_heads"] = heads if isinstance(heads, int) else heads[0]
        cond = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
    else:
        per_level = heads if isinstance(heads, (list, tuple)) else [heads] * len(u.block_out_channels)
        unet_params["num_head_channels"] = u.block_out_channels[0] // per_level[0]
        unet_params["use_linear_in_transformer"] = True
        cond = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
                "params": {"freeze": True, "layer": "penultimate"}}
    params = {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "timesteps": 1000,
        "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": v.latent_channels,
        "cond_stage_trainable": False, "conditioning_key": "hybrid" if u.in_channels == 9 else "crossattn",
        "scale_factor": float(v.scaling_factor), "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": _first_stage(vae)},
        "cond_stage_config": cond,
    }
    if prediction_type == "v_prediction":
        params = {"parameterization": "v", **params}
    target = "ldm.models.diffusion.ddpm." + ("LatentInpaintDiffusion" if u.in_channels == 9 else "LatentDiffusion")
    return {"model": {"base_learning_rate": 1.0e-4, "target": target, "params": params}}


def save(path: Path, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
         metadata: dict[str, str] | None = None) -> None:
    """Save as .safetensors, or as a .ckpt pickle ({"state_dict": ...}) for any other extension.
    Floating-point weights are cast to `dtype` if given; the schedule buffers stay float32 as in real files."""
    path = Path(path)
    keep_fp32 = {"betas", "alphas_cumprod", "alphas_cumprod_prev"}
    out = {}
    for k, v in state_dict.items():
        if dtype is not None and v.is_floating_point() and k not in keep_fp32:
            v = v.to(dtype)
        out[k] = v.detach().contiguous()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(out, str(path), metadata=metadata)
    else:
        torch.save({"state_dict": out, "global_step": 0}, path)


def write_yaml(path: Path, config: dict) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
