"""Peak RSS, time and page faults of one SD VAE decode (the real SD 1.x architecture, random weights), untiled or tiled.

    python bench/vae_memory.py 512 [--tiled] [--encode] [--circular] [--keep-freed-memory [--mmap-threshold MIB]]
                               [--repeat N]

One size per process, so each peak is its own. With `--repeat N` the first decode is not counted and the next N
are (RSS is sampled every 10 ms, and glibc's malloc_trim hands back what each one freed, as the app does after a
decode). `--keep-freed-memory` sets glibc's allocator as the app does on a CPU (`devices.keep_freed_memory`: blocks
of 32 MiB and more are mapped on their own, and unmapped when freed); `--mmap-threshold` raises that threshold while
each decode runs, an experiment (bench/README.md). Prints one JSON object: RSS before the decodes (the VAE
built, the latent drawn) and the highest RSS over it while they ran, then per decode its seconds, system CPU
seconds and minor page faults. Used for vae_tiling.AUTO_PIXELS and the per-pixel estimates beside it. `--circular`
pads every Conv2d circularly, as a Tiling job does (LoadedModel.use_tiling), to see what the padded copies cost."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import txt2img as bench  # noqa: E402  (RssSampler; sets the offline environment before Hugging Face imports)

import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from modules import devices  # noqa: E402
from modules.generation import vae_tiling  # noqa: E402

MIB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("size", type=int, help="image width and height in pixels (a multiple of 8)")
    ap.add_argument("--tiled", action="store_true", help="tiled (mode Always)")
    ap.add_argument("--tile", type=int, default=512, help="the tile size in pixels (setting vae_tile_size)")
    ap.add_argument("--encode", action="store_true", help="measure the encode instead")
    ap.add_argument("--circular", action="store_true", help="every Conv2d pads circularly (a Tiling job)")
    ap.add_argument("--keep-freed-memory", action="store_true", help="glibc's allocator as the app sets it on a CPU")
    ap.add_argument("--mmap-threshold", type=int, metavar="MIB",
                    help="with --keep-freed-memory: glibc's mmap threshold while each decode runs")
    ap.add_argument("--repeat", type=int, default=0, help="decodes counted after a first one that is not")
    args = ap.parse_args()
    libc = devices._glibc()
    if args.keep_freed_memory and not devices.keep_freed_memory():
        sys.exit("--keep-freed-memory needs glibc")
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512).eval()
    for layer in vae.modules():
        if args.circular and type(layer) is torch.nn.Conv2d:
            layer.padding_mode = "circular"
    n = args.size // 8
    z = torch.randn(1, 4, n, n)
    x = torch.rand(1, 3, args.size, args.size) * 2 - 1
    tiling = vae_tiling.VaeTiling("Always", args.tile)

    def once() -> torch.Tensor:
        if args.mmap_threshold:
            libc.mallopt(devices._M_MMAP_THRESHOLD, args.mmap_threshold * MIB)
        try:
            with torch.no_grad():
                if args.encode:
                    return vae_tiling.encode(vae, x, tiling) if args.tiled else vae.encode(x).latent_dist.mode()
                return vae_tiling.decode(vae, z, tiling) if args.tiled else vae.decode(z).sample
        finally:
            if args.mmap_threshold:
                libc.mallopt(devices._M_MMAP_THRESHOLD, devices.KEEP_BLOCKS_UNDER)
            if libc is not None:
                libc.malloc_trim(0)

    if args.repeat:
        once()
    rss = bench.RssSampler()
    before = rss.reset()
    runs = []
    for _ in range(max(1, args.repeat)):
        use, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = once()
        done = resource.getrusage(resource.RUSAGE_SELF)
        runs.append({"s": round(time.perf_counter() - started, 2), "sys_s": round(done.ru_stime - use.ru_stime, 2),
                     "minor_faults": done.ru_minflt - use.ru_minflt, "output_sum": float(out.double().sum())})
        del out
    peak = rss.read_peak()
    rss.stop()
    print(json.dumps({"size": args.size, "what": "encode" if args.encode else "decode",
                      "tiled": args.tiled, "tile": args.tile if args.tiled else None, "circular": args.circular,
                      "keep_freed_memory": args.keep_freed_memory, "mmap_threshold_mib": args.mmap_threshold,
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "rss_before_mb": round(before / MIB, 1), "peak_rss_added_mb": round((peak - before) / MIB, 1),
                      "added_bytes_per_pixel": round((peak - before) / args.size ** 2), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
