"""Seconds per U-Net call (the real SD 1.5 architecture, random weights) with A1111's Hypertile off and on, side by side
in one process, taking turns, with how far the tiled output is from the plain one.

    python bench/hypertile.py [--sizes 512,768] [--calls 2] [--max-tile 256] [--swap 3] [--depth 3]

The batch is a CFG batch of 2 (the same latent, two contexts), in fp32 with PyTorch's SDP attention, on the CPU (or
--device cuda). Hypertile is set as a job sets it (`modules.models.hypertile.configure`, the generator seeded with 0).
Prints one JSON object: per size the median seconds per call of each, the ratio, and the output's difference (max
absolute, PSNR over the output's range)."""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules import offline  # noqa: E402

offline.apply()

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from modules.models import hypertile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,768")
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--max-tile", type=int, default=256)
    parser.add_argument("--swap", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval().requires_grad_(False).to(device)
    context = torch.randn(2, 77, 768, device=device)
    t = torch.tensor([500.0], device=device)
    report = {"device": args.device, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "max_tile": args.max_tile, "swap": args.swap, "depth": args.depth,
              "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        latent = torch.randn(1, 4, size // 8, size // 8, device=device).expand(2, -1, -1, -1)
        seconds: dict[str, list[float]] = {"off": [], "on": []}
        outputs = {}
        for _ in range(args.calls + 1):  # the first round warms up and is not counted
            for name in ("off", "on"):
                options = hypertile.Options(name == "on", args.depth, args.max_tile, args.swap)
                hypertile.configure(unet, hypertile.LAYERS_SD, size, size, options, random.Random(0))
                started = time.perf_counter()
                with torch.no_grad():
                    out = unet(latent, t, encoder_hidden_states=context).sample
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - started)
                outputs[name] = out.float().cpu()
        off, on = (statistics.median(seconds[n][1:]) for n in ("off", "on"))
        diff = outputs["on"] - outputs["off"]
        mse, span = float((diff ** 2).mean()), float(outputs["off"].max() - outputs["off"].min())
        report["sizes"][str(size)] = {
            "off_s": round(off, 2), "on_s": round(on, 2), "speedup": round(off / on, 2),
            "max_abs_diff": round(float(diff.abs().max()), 4),
            "psnr_db": round(10 * torch.log10(torch.tensor(span ** 2 / mse)).item(), 1) if mse else None}
        print(json.dumps({"size": size, **report["sizes"][str(size)]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
