"""Write a Stable Diffusion 1.5-architecture checkpoint with random weights, for benchmarks.

    python bench/make_sd15_checkpoint.py OUT.safetensors [--seed N] [--device cuda]

The shapes are SD 1.5's (U-Net 859.52M, VAE 83.65M, CLIP ViT-L/14 text encoder 123.06M parameters),
written in the original LDM single-file layout (`modules/models/ldm_export.py`) as fp16, with no YAML
beside it: the loader must recognise SD 1.x from the weights alone, as it does for a downloaded file.
Nothing is downloaded. The weights are PyTorch's / transformers' default initialisation drawn from
`--seed`, so the same seed writes the same tensors. With `--device cuda` the weights are drawn and the smoke
test runs on the GPU (seconds instead of a minute; bench/gpu_check.sh builds its checkpoints so): same shapes
and file layout, seeded too, but the GPU's random numbers, so not the tensors a CPU build writes.

Memory: the U-Net and VAE are created on the meta device and materialised one layer at a time
(fp32 init, then cast to fp16), so the peak is about the size of the fp16 file plus what safetensors
needs to write it, not the 4.3 GB of an fp32 model.
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
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from modules import logs  # noqa: E402
from modules.models import ldm_export  # noqa: E402

log = logging.getLogger("make_sd15_checkpoint")

# Parameter counts of the real SD 1.5 components (v1-5-pruned-emaonly), in millions, to 2 decimals.
EXPECTED_M = {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06}

UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


def materialise(module: torch.nn.Module, dtype: torch.dtype, device: str = "cpu") -> None:
    """Give a meta-device module real weights on `device`, one layer at a time: each layer's own
    `reset_parameters()` (PyTorch's default init, from the device's global RNG) in fp32, then cast to `dtype`."""
    for name, sub in module.named_modules():
        own = list(sub.named_parameters(recurse=False))
        if not own or not any(p.is_meta for _, p in own):
            continue
        if not hasattr(sub, "reset_parameters"):
            raise RuntimeError(f"{name} ({type(sub).__name__}) has parameters but no reset_parameters()")
        sub.to_empty(device=device, recurse=False)
        sub.reset_parameters()
        sub.to(dtype)
    meta = [n for n, p in module.named_parameters() if p.is_meta]
    if meta:
        raise RuntimeError(f"still on the meta device: {meta[:3]}")


def count_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def build(seed: int, dtype: torch.dtype = torch.float16, device: str = "cpu"):
    torch.manual_seed(seed)  # seeds the CUDA generators too
    with init_empty_weights():
        unet = UNet2DConditionModel(**UNET_CONFIG)
    materialise(unet, dtype, device)
    with init_empty_weights():
        vae = AutoencoderKL(**VAE_CONFIG)
    materialise(vae, dtype, device)
    # The text encoder is small (0.5 GB in fp32): built normally, with transformers' CLIP init.
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).to(dtype)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return unet, vae, text_encoder


@torch.no_grad()
def smoke_test(unet, vae, text_encoder, seed: int) -> dict:
    """Small forward passes of each component in its own dtype (fp16 on the CPU is slow, but the
    inputs are tiny): every output must be finite."""
    g = torch.Generator().manual_seed(seed)
    dtype, device = next(unet.parameters()).dtype, next(unet.parameters()).device
    ids = torch.tensor([[49406] + [320, 1125, 539, 550, 18376, 6765, 550, 4558] + [49407] * 68], device=device)
    ctx = text_encoder(ids).last_hidden_state
    x = torch.randn((1, 4, 16, 16), generator=g).to(device, dtype)
    eps = unet(x, torch.tensor([999.0], device=device), encoder_hidden_states=ctx.to(dtype)).sample
    img = vae.decode(x / vae.config.scaling_factor).sample
    return finite_stats((("text_encoder", ctx), ("unet", eps), ("vae_decode", img)))


def check_counts(counts: dict[str, float], expected: dict[str, float], model: str) -> None:
    """Print each component's parameter count (millions) against the real model's; exit on a mismatch."""
    for name, m in counts.items():
        ok = round(m, 2) == expected[name]
        print(f"{name:>14}: {m:.2f}M parameters ({model}: {expected[name]:.2f}M) {'ok' if ok else 'MISMATCH'}")
        if not ok:
            sys.exit(f"{name} has {m:.2f}M parameters, {model} has {expected[name]:.2f}M")


def finite_stats(outputs) -> dict:
    """Mean and std of each (name, tensor) output; RuntimeError naming the first that is not finite."""
    stats = {}
    for name, t in outputs:
        t = t.float()
        if not torch.isfinite(t).all():
            raise RuntimeError(f"{name} output is not finite")
        stats[name] = {"mean": round(t.mean().item(), 4), "std": round(t.std().item(), 4)}
    return stats


def add_device_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="cpu",
                    help="where the weights are drawn and the smoke test runs, e.g. cuda (default cpu: the same "
                         "seed gives the same file as before; another device draws other numbers)")


def on_cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict's tensors in CPU memory, where they are written from."""
    return {k: v.cpu() for k, v in sd.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output .safetensors (or .ckpt) path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-smoke-test", action="store_true", help="do not run the small finite-output check")
    add_device_argument(ap)
    args = ap.parse_args(argv)
    logs.setup()

    start = time.perf_counter()
    unet, vae, text_encoder = build(args.seed, device=args.device)
    check_counts({"unet": count_m(unet), "vae": count_m(vae), "text_encoder": count_m(text_encoder)}, EXPECTED_M,
                 "SD 1.5")
    log.info("built in %.1fs", time.perf_counter() - start)

    if not args.skip_smoke_test:
        t = time.perf_counter()
        stats = smoke_test(unet, vae, text_encoder, args.seed)
        log.info("smoke test (finite outputs) in %.1fs: %s", time.perf_counter() - t, stats)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    yaml_beside = args.out.with_suffix(".yaml")
    if yaml_beside.exists():
        sys.exit(f"{yaml_beside} exists; remove it: this checkpoint must be recognised without a YAML")
    sd = on_cpu(ldm_export.checkpoint_state_dict(unet, vae, text_encoder, "sd1"))
    del unet, vae, text_encoder
    t = time.perf_counter()
    ldm_export.save(args.out, sd, dtype=torch.float16,
                    metadata={"format": "pt", "bench.note": f"random SD 1.5-shaped weights, seed {args.seed}"})
    log.info("wrote %s (%.2f GB, %d tensors) in %.1fs", args.out, args.out.stat().st_size / 1e9, len(sd),
             time.perf_counter() - t)


if __name__ == "__main__":
    main()
