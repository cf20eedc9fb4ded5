"""Peak RSS of one U-Net call (the real SD 1.5 or SDXL architecture, random weights) at a size and batch.

    python bench/unet_memory.py sd15 512 [--batch 2] [--attention sdp|plain]

Prints JSON: the size, the U-Net batch (2 = one image with CFG, prompt and negative prompt batched), the RSS
of the process before the call (the U-Net built, its inputs drawn) and after, and their difference per latent
pixel and batch row. One call per process, so each peak is its own. Used for the constants in
modules/generation/memory.py (the estimate a job is checked against before it runs)."""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

SD15 = dict(cross_attention_dim=768, attention_head_dim=8)
SDXL = dict(block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                    "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            use_linear_projection=True)


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def reset_peak() -> None:
    """Start the peak (VmHWM) afresh from the resident set now: building the U-Net peaked higher than it stays."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("family", choices=("sd15", "sdxl"))
    ap.add_argument("size", type=int, help="image width and height in pixels (a multiple of 8)")
    ap.add_argument("--batch", type=int, default=2, help="U-Net batch rows (2: one image, CFG batched)")
    ap.add_argument("--attention", choices=("sdp", "plain"), default="sdp")
    ap.add_argument("--storage", choices=("float32", "float16", "bfloat16"), default="float32",
                    help="weights stored in this type and cast to float32 layer by layer as they run (low-memory mode)")
    args = ap.parse_args()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SD15 if args.family == "sd15" else SDXL)).eval().requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0() if args.attention == "sdp" else AttnProcessor())
    if args.storage != "float32":
        unet.enable_layerwise_casting(storage_dtype=getattr(torch, args.storage), compute_dtype=torch.float32)
    n = args.size // 8
    x = torch.randn(args.batch, 4, n, n)
    context = torch.randn(args.batch, 77, unet.config.cross_attention_dim)
    extra = {}
    if args.family == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(args.batch, 1280),
                                       "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size,
                                                                  args.size]] * args.batch, dtype=torch.float32)}}
    reset_peak()
    before = status_mb("VmRSS")
    start = time.monotonic()
    with torch.no_grad():
        unet(x, torch.tensor([500.0]), context, **extra)
    after = status_mb("VmHWM")
    rows = args.batch * n * n
    print(json.dumps({"family": args.family, "size": args.size, "batch": args.batch, "attention": args.attention,
                      "storage": args.storage, "rss_mb_before": round(before), "peak_mb_after": round(after),
                      "added_mb": round(after - before),
                      "bytes_per_latent_pixel_row": round((after - before) * 2**20 / rows),
                      "seconds": round(time.monotonic() - start, 1)}))


if __name__ == "__main__":
    main()
