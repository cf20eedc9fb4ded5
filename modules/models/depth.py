"""The SD 2 depth model's depth estimator: MiDaS DPT-Hybrid (MiDaS v3.0 `dpt_hybrid`, a ViT-B/16 on a ResNet-50
stem), built with transformers' DPT (hybrid embeddings on a BiT backbone) from weights in the original MiDaS
layout: the checkpoint's own `depth_model.model.*` tensors, or `models/midas/dpt_hybrid-midas-501f0c75.pt`
(the file A1111 uses). Nothing is downloaded.

The map from the MiDaS layout to transformers' names follows transformers' own DPT-Hybrid conversion: ViT blocks
become `dpt.encoder.layer.N` (the fused qkv split in three), the ResNet stem and stages `...backbone.bit.*`,
`scratch.refinenetN` the fusion layer 4 - N, `act_postprocess3/4` the reassemble layers 2 and 3.

`conditioning` computes the U-Net's fifth input channel as A1111 does for img2img: the init image to [0, 1];
MiDaS's own resize ("minimal": the side whose scale is closer to 1 becomes 384, the other keeps the aspect, each
rounded to a multiple of 32), bicubic; normalised with mean and std 0.5; the network; bicubic back to the
network's input size (MiDaSInference) and then to the latent size; min-max to [-1, 1] over the batch."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

from modules.models.checkpoint_file import CheckpointError


class DepthModelMissing(CheckpointError):
    """An SD 2 depth model saved without its MiDaS weights, and no models/midas file to take them from."""


MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
CHECKPOINT_PREFIX = "depth_model.model."  # the MiDaS weights inside an SD 2 depth checkpoint
NET_SIZE = 384  # MiDaS dpt_hybrid's input size (the side it resizes towards)
MULTIPLE = 32
VIT_HOOKS = (8, 11)  # the ViT blocks whose outputs feed the neck's third and fourth levels (MiDaS `hooks`)
GROUPS = 32  # the ResNet's GroupNorm groups
PATCH = 16  # pixels per ViT token (the ResNet's stride)
HEAD_WIDTH = 64  # ViT-B's attention head width: heads = hidden / 64

_VIT = "pretrained.model."
_BACKBONE = _VIT + "patch_embed.backbone."
_RULES = [  # (original MiDaS name pattern, transformers name); qkv is split separately
    (r"pretrained\.model\.cls_token", "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", "dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.patch_embed\.proj\.(weight|bias)", r"dpt.embeddings.projection.\1"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.weight",
     "dpt.embeddings.backbone.bit.embedder.convolution.weight"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.(weight|bias)",
     r"dpt.embeddings.backbone.bit.embedder.norm.\1"),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.((?:conv|norm)[123]|downsample\.conv|"
     r"downsample\.norm)\.(weight|bias)", r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers.\2.\3.\4"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.(weight|bias)", r"dpt.encoder.layer.\1.layernorm_before.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.(weight|bias)", r"dpt.encoder.layer.\1.layernorm_after.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"dpt.encoder.layer.\1.attention.output.dense.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"dpt.encoder.layer.\1.intermediate.dense.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"dpt.encoder.layer.\1.output.dense.\2"),
    (r"pretrained\.model\.norm\.(weight|bias)", r"dpt.layernorm.\1"),
    (r"pretrained\.act_postprocess([34])\.0\.project\.0\.(weight|bias)", None),  # readout projects 2 and 3
    (r"pretrained\.act_postprocess([34])\.3\.(weight|bias)", None),  # reassemble projections 2 and 3
    (r"pretrained\.act_postprocess4\.4\.(weight|bias)", r"neck.reassemble_stage.layers.3.resize.\1"),
    (r"scratch\.layer([1-4])_rn\.weight", None),  # neck convs 0..3
    (r"scratch\.refinenet([1-4])\.((?:out_conv|resConfUnit[12]\.conv[12])\.(?:weight|bias))", None),  # fusion 3..0
    (r"scratch\.output_conv\.([024])\.(weight|bias)", r"head.head.\1.\2"),
]
_COMPILED = [(re.compile(pattern + r"\Z"), target) for pattern, target in _RULES]
_DROPPED = re.compile(r"pretrained\.model\.head\.(weight|bias)\Z")  # the ViT's classifier, unused
_QKV = re.compile(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)\Z")


def _target(name: str) -> str | None:
    """transformers' name for one original MiDaS tensor name (None: not one of DPT-Hybrid's)."""
    for pattern, target in _COMPILED:
        m = pattern.match(name)
        if m is None:
            continue
        if target is not None:
            return m.expand(target)
        if name.startswith("pretrained.act_postprocess"):
            level = int(m.group(1)) - 1
            part = "readout_projects.{}.0" if ".0.project.0." in name else "layers.{}.projection"
            return f"neck.reassemble_stage.{part.format(level)}.{m.group(2)}"
        if name.startswith("scratch.layer"):
            return f"neck.convs.{int(m.group(1)) - 1}.weight"
        rest = m.group(2).replace("out_conv", "projection").replace("resConfUnit", "residual_layer")
        rest = re.sub(r"\bconv([12])\b", r"convolution\1", rest)
        return f"neck.fusion_stage.layers.{4 - int(m.group(1))}.{rest}"
    return None


def to_transformers(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MiDaS DPT-Hybrid weights (original names, without the checkpoint's `depth_model.model.` prefix) under
    transformers' names. Raises CheckpointError naming a tensor that belongs to no part of the model."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in original.items():
        if _DROPPED.match(name):
            continue
        qkv = _QKV.match(name)
        if qkv is not None:
            layer, kind = qkv.groups()
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"dpt.encoder.layer.{layer}.attention.attention.{part}.{kind}"] = chunk
            continue
        target = _target(name)
        if target is None:
            raise CheckpointError(f"the depth model's weights have a tensor MiDaS DPT-Hybrid does not: {name}")
        out[target] = tensor
    return out


def _count(original: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in original if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def config_from(original: dict[str, torch.Tensor]) -> DPTConfig:
    """The DPT-Hybrid configuration the weights' shapes describe (the full model: ViT-B with 768 wide tokens, 12
    blocks, a ResNet of 3, 4 and 9 blocks; smaller ones for tests)."""
    try:
        hidden = original[_VIT + "pos_embed"].shape[-1]
        tokens = original[_VIT + "pos_embed"].shape[1] - 1
        layers = _count(original, _VIT + "blocks.")
        stages = _count(original, _BACKBONE + "stages.")
        depths = [_count(original, f"{_BACKBONE}stages.{s}.blocks.") for s in range(stages)]
        widths = [original[f"{_BACKBONE}stages.{s}.blocks.0.conv3.weight"].shape[0] for s in range(stages)]
        stem = original[_BACKBONE + "stem.conv.weight"].shape[0]
        neck = [original[f"scratch.layer{i}_rn.weight"].shape[1] for i in range(1, 5)]
        fusion = original["scratch.layer1_rn.weight"].shape[0]
        mlp = original[_VIT + "blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"the depth model's weights lack {e.args[0]}: not MiDaS DPT-Hybrid") from None
    if stages != 3 or layers <= max(VIT_HOOKS):
        raise CheckpointError(f"the depth model's weights are not MiDaS DPT-Hybrid ({stages} ResNet stages, "
                              f"{layers} ViT blocks; it has 3 and 12)")
    grid = int(round(tokens ** 0.5))
    backbone = BitConfig(global_padding="same", layer_type="bottleneck", depths=depths, hidden_sizes=widths,
                         embedding_size=stem, num_groups=GROUPS, embedding_dynamic_padding=True,
                         out_features=["stage1", "stage2", "stage3"])
    return DPTConfig(is_hybrid=True, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // HEAD_WIDTH), intermediate_size=mlp,
                     image_size=grid * PATCH, patch_size=PATCH, backbone_config=backbone,
                     backbone_featmap_shape=[1, widths[-1], grid, grid],
                     backbone_out_indices=[0, 1, *VIT_HOOKS], neck_hidden_sizes=neck, fusion_hidden_size=fusion,
                     reassemble_factors=[1, 1, 1, 0.5], readout_type="project",
                     use_batch_norm_in_fusion_residual=False)


def build(original: dict[str, torch.Tensor]) -> DPTForDepthEstimation:
    """A DPT-Hybrid depth estimator (float32, eval) from weights in the original MiDaS layout."""
    config = config_from(original)
    model = DPTForDepthEstimation(config)
    weights = {k: v.float() for k, v in to_transformers(original).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"the depth model's weights do not fit MiDaS DPT-Hybrid (missing: {missing[:3]}, "
                              f"unexpected: {unexpected[:3]})")
    return model.eval().requires_grad_(False)


def weights_in_checkpoint(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MiDaS weights an SD 2 depth checkpoint carries (`depth_model.model.*`), prefix removed; empty when it
    was saved without them."""
    return {k[len(CHECKPOINT_PREFIX):]: v for k, v in sd.items() if k.startswith(CHECKPOINT_PREFIX)}


def midas_input_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) MiDaS's "minimal" resize gives an image: the side whose scale to 384 is closer to 1 is
    scaled to 384, the other by the same factor; each side rounded to a multiple of 32."""
    scale_w, scale_h = NET_SIZE / width, NET_SIZE / height
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h

    def multiple(x: float) -> int:
        return max(MULTIPLE, int(round(x / MULTIPLE)) * MULTIPLE)

    return multiple(scale * width), multiple(scale * height)


def preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """The network's input for images `pixels` (N, 3, H, W) in [-1, 1]: to [0, 1], resized (bicubic) to
    `midas_input_size`, normalised with mean and std 0.5."""
    unit = (pixels.float() + 1.0) * 0.5
    width, height = midas_input_size(unit.shape[-1], unit.shape[-2])
    resized = torch.nn.functional.interpolate(unit, size=(height, width), mode="bicubic", align_corners=False)
    return (resized - 0.5) / 0.5


@torch.no_grad()
def estimate(model: DPTForDepthEstimation, net_input: torch.Tensor) -> torch.Tensor:
    """Relative inverse depth (N, 1, h, w) at the input's size (as MiDaSInference returns it). The input's sides
    are multiples of 32 and need not be equal (MiDaS keeps the picture's aspect)."""
    height, width = net_input.shape[-2:]
    device = next(model.parameters()).device
    # transformers' hybrid DPT assumes a square grid of patches in its neck and checks the input against the
    # configured size (then resizes the position embeddings to any size, as MiDaS does). So its parts are run
    # here, the embeddings told the size they get and the neck given the grid
    model.dpt.embeddings.image_size = (height, width)
    out = model.dpt(pixel_values=net_input.to(device), output_hidden_states=True)
    hooks = model.config.backbone_out_indices[2:]
    features = list(out.intermediate_activations) + [h for i, h in enumerate(out.hidden_states[1:]) if i in hooks]
    predicted = model.head(model.neck(features, height // PATCH, width // PATCH))
    return torch.nn.functional.interpolate(predicted.unsqueeze(1), size=(height, width), mode="bicubic",
                                           align_corners=False)


@torch.no_grad()
def conditioning(model: DPTForDepthEstimation, pixels: torch.Tensor, latent_size: tuple[int, int],
                 picture_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The depth U-Net's extra input (1, 1, h, w) for the image `pixels` (1, 3, H, W) in [-1, 1]: MiDaS depth at
    `latent_size` (h, w), min-max normalised to [-1, 1] (A1111's depth2img_image_conditioning). With
    `picture_size`, also the same depth at that size, normalised alike (for showing it), from the same run."""
    raw = estimate(model, preprocess(pixels))

    def normalised(size: tuple[int, int]) -> torch.Tensor:
        resized = torch.nn.functional.interpolate(raw, size=size, mode="bicubic", align_corners=False)
        low, high = torch.aminmax(resized)
        return 2.0 * (resized - low) / (high - low).clamp_min(1e-12) - 1.0

    return normalised(latent_size), normalised(picture_size) if picture_size else None


def depth_image(cond: torch.Tensor):
    """The conditioning as a greyscale picture (near is white), for showing and saving."""
    from PIL import Image

    unit = ((cond[0, 0].float().cpu() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(unit.numpy(), mode="L")


def load_midas_file(path: Path) -> dict[str, torch.Tensor]:
    """The weights of dpt_hybrid-midas-501f0c75.pt through the project's restricted unpickler."""
    from modules.models import checkpoint_file

    return checkpoint_file.read_state_dict(path)


def missing_message(folder: Path, checkpoint: str) -> str:
    return (f"{checkpoint} is an SD 2 depth model saved without its depth estimator (MiDaS), and "
            f"{Path(folder) / MIDAS_FILE} does not exist: put MiDaS DPT-Hybrid's weights ({MIDAS_FILE}, the file "
            f"A1111 uses, from the isl-org/DPT releases) there. Nothing is downloaded.")
