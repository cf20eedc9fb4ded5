"""Peak RSS of one SD VAE decode (the real SD 1.x architecture, random weights), untiled or tiled.

    python bench/vae_memory.py 512 [--tiled] [--encode]

Prints the size, the peak RSS of the process before the decode (the VAE built, the latent drawn) and after,
and their difference. One size per process, so each peak is its own. Used for vae_tiling.AUTO_PIXELS."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules.generation import vae_tiling  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("size", type=int, help="image width and height in pixels (a multiple of 8)")
    ap.add_argument("--tiled", action="store_true", help="tiled (mode Always)")
    ap.add_argument("--tile", type=int, default=512, help="the tile size in pixels (setting vae_tile_size)")
    ap.add_argument("--encode", action="store_true", help="measure the encode instead")
    args = ap.parse_args()
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512).eval()
    n = args.size // 8
    z = torch.randn(1, 4, n, n)
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    before = peak_mb()
    tiling = vae_tiling.VaeTiling("Always", args.tile)
    start = time.monotonic()
    with torch.no_grad():
        if args.encode:
            vae_tiling.encode(vae, x, tiling) if args.tiled else vae.encode(x).latent_dist.mode()
        else:
            vae_tiling.decode(vae, z, tiling) if args.tiled else vae.decode(z).sample
    after = peak_mb()
    how = f"tiled ({args.tile} px)" if args.tiled else "untiled"
    print(f"{args.size}x{args.size} {'encode' if args.encode else 'decode'} {how}: "
          f"peak RSS {before:.0f} MB before, {after:.0f} MB after, +{after - before:.0f} MB "
          f"({(after - before) * 1e6 / args.size ** 2:.0f} B/pixel), {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
