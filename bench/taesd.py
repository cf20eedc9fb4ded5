"""TAESD's cost on this machine: decode and encode at 512x512 and 1024x1024, the live preview, and (with
--reference) one SD 1.5 U-Net call with CFG (batch 2) and one full VAE decode at 512x512 to compare against.

All modules have the real architectures with random weights (TAESD: the original taesd.py layout from
tests/support/taesd.py, mapped as the app maps the real files; SD 1.5: bench/make_sd15_checkpoint.py's configs),
so the times are the real ones; nothing is downloaded. Prints one JSON object: the median of --repeat runs
(after one warm-up) for each figure, the single runs, and the 1-minute load average around each.

    python bench/taesd.py [--repeat 5] [--reference]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from modules.generation import preview  # noqa: E402
from modules.models import taesd  # noqa: E402
from tests.support import taesd as taesd_files  # noqa: E402


def timed(fn, repeat: int) -> dict:
    fn()  # warm-up
    runs, loads = [], [os.getloadavg()[0]]
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    return {"median_ms": round(statistics.median(runs) * 1000, 1), "runs_ms": [round(r * 1000, 1) for r in runs],
            "load_1min": [round(x, 2) for x in loads]}


@torch.inference_mode()
def reference(repeat: int) -> dict:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_sd15_checkpoint import UNET_CONFIG, VAE_CONFIG, materialise

    torch.manual_seed(0)
    with init_empty_weights():
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
    materialise(unet, torch.float32)
    materialise(vae, torch.float32)
    unet.eval()
    vae.eval()
    x, t, context = torch.randn(2, 4, 64, 64), torch.tensor([500, 500]), torch.randn(2, 77, 768)
    out = {"unet_cfg_call_512": timed(lambda: unet(x, t, encoder_hidden_states=context), max(1, repeat // 2))}
    out["full_vae_decode_512"] = timed(lambda: vae.decode(torch.randn(1, 4, 64, 64)), max(1, repeat // 2))
    return out


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reference", action="store_true", help="also an SD 1.5 U-Net CFG call and VAE decode")
    args = parser.parse_args()
    decoder = taesd.build(taesd_files.build("decoder", 0).state_dict(), "decoder")
    encoder = taesd.build(taesd_files.build("encoder", 1).state_dict(), "encoder")
    result: dict = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "figures": {}}
    for side in (512, 1024):
        latent = torch.randn(1, 4, side // 8, side // 8)
        pixels = torch.rand(1, 3, side, side) * 2 - 1
        result["figures"][f"taesd_decode_{side}"] = timed(lambda: taesd.decode(decoder, latent), args.repeat)
        result["figures"][f"taesd_encode_{side}"] = timed(lambda: taesd.encode(encoder, pixels), args.repeat)
        result["figures"][f"taesd_preview_{side}"] = timed(lambda: preview.taesd_image(decoder, latent[0]),
                                                           args.repeat)
    if args.reference:
        result["figures"].update(reference(args.repeat))
        figures = result["figures"]
        unet = figures["unet_cfg_call_512"]["median_ms"]
        result["preview_pct_of_step_512"] = round(100 * figures["taesd_preview_512"]["median_ms"] / unet, 2)
        result["decode_pct_of_step_512"] = round(100 * figures["taesd_decode_512"]["median_ms"] / unet, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
