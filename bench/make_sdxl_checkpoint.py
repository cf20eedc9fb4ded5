"""Write a Stable Diffusion XL base 1.0-architecture checkpoint with random weights, for benchmarks.

    python bench/make_sdxl_checkpoint.py OUT.safetensors [--seed N] [--device cuda]

The shapes are SDXL base 1.0's (U-Net 2567.46M, VAE 83.65M, CLIP ViT-L/14 123.06M and OpenCLIP ViT-bigG/14
with its text projection 694.66M parameters), written in the original (sgm) single-file layout by
`modules/models/ldm_export.py` (the code the tests' tiny SDXL uses): `model.diffusion_model.*`,
`conditioner.embedders.0.transformer.text_model.*`, `conditioner.embedders.1.model.*` in OpenCLIP's naming
(fused `attn.in_proj_weight`, `text_projection`, `ln_final`) and `first_stage_model.*`, as fp16 (6.94 GB),
with no YAML beside it: the loader must recognise SDXL from the weights alone. Nothing is downloaded. The
weights are PyTorch's / transformers' default initialisation drawn from `--seed`, so the same seed writes
the same tensors; the text encoders' final LayerNorm biases are made non-zero, as in real models (with a
zero bias a freshly initialised encoder's pooled output has mean ~0, which real weights never give).
`--device cuda` draws the weights and runs the smoke test on the GPU, as in make_sd15_checkpoint.py (seeded,
but not the CPU build's tensors).

Memory: the U-Net and VAE are created on the meta device and materialised one layer at a time (fp32 init,
then cast to fp16), as in make_sd15_checkpoint.py; the text encoders (3.3 GB in fp32) are built normally
and cast to fp16. safetensors writes from the tensors' memory, so the peak is about the fp16 model plus the
largest fp32 text encoder during its build.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from bench.make_sd15_checkpoint import TEXT_CONFIG as CLIP_L_CONFIG  # noqa: E402
from bench.make_sd15_checkpoint import VAE_CONFIG as SD_VAE_CONFIG  # noqa: E402
from bench.make_sd15_checkpoint import (  # noqa: E402
    add_device_argument, check_counts, count_m, finite_stats, materialise, on_cpu)
from modules import logs  # noqa: E402
from modules.models import ldm_export  # noqa: E402

log = logging.getLogger("make_sdxl_checkpoint")

# Parameter counts of the real SDXL base 1.0 components (sd_xl_base_1.0.safetensors), in millions, to 2 decimals.
EXPECTED_M = {"unet": 2567.46, "vae": 83.65, "text_encoder": 123.06, "text_encoder_2": 694.66}

# diffusers' stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, i.e. configs/sd_xl_base.yaml.
UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    cross_attention_dim=2048, norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
# The SD VAE architecture; SDXL's latents are scaled by 0.13025.
VAE_CONFIG = {**SD_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025}
# OpenCLIP ViT-bigG/14 text tower: 32 blocks 1280 wide, 20 heads, GELU, a 1280x1280 projection, pads with 0.
BIGG_CONFIG = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)


def _final_norm_bias(text_model: torch.nn.Module) -> None:
    """Real text encoders have a non-zero final LayerNorm bias; a fresh one is 0 (see the module docstring)."""
    with torch.no_grad():
        # transformers 5's CLIPTextModel has no `text_model` level, CLIPTextModelWithProjection keeps it
        norm = next(m for name, m in text_model.named_modules() if name.endswith("final_layer_norm"))
        norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, device=norm.bias.device))


def build(seed: int, dtype: torch.dtype = torch.float16, device: str = "cpu"):
    torch.manual_seed(seed)  # seeds the CUDA generators too
    with init_empty_weights():
        unet = UNet2DConditionModel(**UNET_CONFIG)
    materialise(unet, dtype, device)
    with init_empty_weights():
        vae = AutoencoderKL(**VAE_CONFIG)
    materialise(vae, dtype, device)
    with torch.device(device):
        clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
    _final_norm_bias(clip_l)
    clip_l = clip_l.to(dtype)
    with torch.device(device):
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_CONFIG))
    _final_norm_bias(clip_g)
    clip_g = clip_g.to(dtype)
    for m in (unet, vae, clip_l, clip_g):
        m.eval().requires_grad_(False)
    return unet, vae, clip_l, clip_g


@torch.no_grad()
def smoke_test(unet, vae, clip_l, clip_g, seed: int) -> dict:
    """Small forward passes of each component in its own dtype (fp16 on the CPU is slow, so the latent is
    8x8): every output must be finite. The U-Net gets SDXL's conditioning: CLIP-L hidden state 11 beside
    bigG's penultimate, bigG's pooled projection and the six size/crop time ids."""
    g = torch.Generator().manual_seed(seed)
    dtype, device = next(unet.parameters()).dtype, next(unet.parameters()).device
    tokens = [49406, 320, 1125, 539, 550, 18376, 6765, 550, 4558, 49407]
    ids_l = torch.tensor([tokens + [49407] * (77 - len(tokens))], device=device)
    ids_g = torch.tensor([tokens + [0] * (77 - len(tokens))], device=device)
    ctx_l = clip_l(ids_l, output_hidden_states=True).hidden_states[11]
    out_g = clip_g(ids_g, output_hidden_states=True)
    ctx = torch.cat([ctx_l, out_g.hidden_states[-2]], dim=-1)
    pooled = out_g.text_embeds
    x = torch.randn((1, 4, 8, 8), generator=g).to(device, dtype)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]], dtype=dtype, device=device)
    eps = unet(x, torch.tensor([999.0], device=device), encoder_hidden_states=ctx.to(dtype),
               added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids}).sample
    img = vae.decode(x / vae.config.scaling_factor).sample
    return finite_stats((("context", ctx), ("pooled", pooled), ("unet", eps), ("vae_decode", img)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output .safetensors (or .ckpt) path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-smoke-test", action="store_true", help="do not run the small finite-output check")
    add_device_argument(ap)
    args = ap.parse_args(argv)
    logs.setup()

    yaml_beside = args.out.with_suffix(".yaml")
    if yaml_beside.exists():
        sys.exit(f"{yaml_beside} exists; remove it: this checkpoint must be recognised without a YAML")
    start = time.perf_counter()
    unet, vae, clip_l, clip_g = build(args.seed, device=args.device)
    check_counts({"unet": count_m(unet), "vae": count_m(vae), "text_encoder": count_m(clip_l),
                  "text_encoder_2": count_m(clip_g)}, EXPECTED_M, "SDXL base 1.0")
    log.info("built in %.1fs", time.perf_counter() - start)

    if not args.skip_smoke_test:
        t = time.perf_counter()
        stats = smoke_test(unet, vae, clip_l, clip_g, args.seed)
        log.info("smoke test (finite outputs) in %.1fs: %s", time.perf_counter() - t, stats)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sd = on_cpu(ldm_export.checkpoint_state_dict(unet, vae, clip_l, "sdxl", clip_g))
    del unet, vae, clip_l, clip_g
    t = time.perf_counter()
    ldm_export.save(args.out, sd, dtype=torch.float16,
                    metadata={"format": "pt", "bench.note": f"random SDXL base 1.0-shaped weights, seed {args.seed}"})
    log.info("wrote %s (%.2f GB, %d tensors) in %.1fs", args.out, args.out.stat().st_size / 1e9, len(sd),
             time.perf_counter() - t)


if __name__ == "__main__":
    main()
