"""Model upscalers, measured (prints JSON; see bench/README.md).

    python bench/upscalers.py [--side 256] [--tile 192] [--overlap 8] [--threads 2]

Builds a full-size ESRGAN x4 with random weights (RRDBNet: 64 features, 23 blocks, 16.7M parameters, the
shape of 4x-UltraSharp and RealESRGAN_x4plus) in a temporary folder (never kept), then upscales a SIDExSIDE noise
image 4x, each variant in a process of its own:

- `tiled`: as Extras and Hires. fix run it (modules/models/upscalers: A1111's tiles of TILE pixels overlapping by
  OVERLAP, BGR, 8-bit tiles blended);
- `whole` (the reference): the same model called once on the whole image (A1111 with ESRGAN_tile 0).

For each: the seconds to load the model (through the safe loader and spandrel), the seconds of the upscale, and the
peak RSS above what the process held once the model was loaded; and how far apart the two images are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _peak_kb() -> tuple[int, int]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def variant(name: str, model_path: Path, side: int, tile: int, overlap: int, threads: int, out: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    from modules import devices
    from modules.models.upscalers import UpscalerModels

    plan = devices.DevicePlan(torch.device("cpu"), torch.float32, torch.float32)
    models = UpscalerModels((("ESRGAN", model_path.parent),), plan)
    item = models.find(model_path.stem)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")
    started = time.perf_counter()
    models.load(item)
    loaded = time.perf_counter() - started
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here on
        f.write("5")
    rss_before, _ = _peak_kb()
    started = time.perf_counter()
    result = models.model_pass(item, tile if name == "tiled" else 0, overlap)(image)
    seconds = time.perf_counter() - started
    _, peak = _peak_kb()
    result.save(out)
    return {"variant": name, "load_s": round(loaded, 2), "upscale_s": round(seconds, 2),
            "peak_rss_above_loaded_mb": round((peak - rss_before) / 1024), "output": list(result.size)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--tile", type=int, default=192)
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--variant", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, Path(args.model), args.side, args.tile, args.overlap, args.threads,
                                 Path(args.out))))
        return

    import numpy as np
    from PIL import Image

    from tests.support.upscalers import esrgan_state_dict, write

    with tempfile.TemporaryDirectory() as tmp:
        model = write(Path(tmp) / "ESRGAN" / "full-4x.safetensors", esrgan_state_dict(seed=0, features=64, blocks=23))
        runs = []
        for name in ("tiled", "whole"):
            out = Path(tmp) / f"{name}.png"
            done = subprocess.run([sys.executable, __file__, "--variant", name, "--model", str(model), "--side",
                                   str(args.side), "--tile", str(args.tile), "--overlap", str(args.overlap),
                                   "--threads", str(args.threads), "--out", str(out)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        a = np.asarray(Image.open(Path(tmp) / "tiled.png"), dtype=np.int16)
        b = np.asarray(Image.open(Path(tmp) / "whole.png"), dtype=np.int16)
        diff = np.abs(a - b)
        print(json.dumps({"model": "ESRGAN x4, 64 features, 23 blocks (random weights)", "side": args.side,
                          "tile": args.tile, "overlap": args.overlap, "threads": args.threads,
                          "model_mb": round(model.stat().st_size / 2**20, 1), "runs": runs,
                          "tiled_vs_whole": {"max_abs": int(diff.max()), "mean_abs": round(float(diff.mean()), 3)}},
                         indent=1))


if __name__ == "__main__":
    main()
